"""Training throughput (stars/s) and compile time on the current device, per config and compute dtype,
with the paper's procedure, with ``train.length_buckets`` and with ``train.micro_batch_size``.

    python benchmarks/train_throughput.py [--configs tiny,small,paper] [--dtypes float32,bfloat16]
                                          [--buckets 1,4] [--micro 0,32] [--steps 4] [--epochs 2]

Synthetic stars in the paper data's missingness pattern, each config's own batch size, one output per
star. Prints a table and writes benchmarks/results/train_throughput.json. (On a CPU, bfloat16 is
emulated and slower than float32; it is there for accelerators.)
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import platform
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import jax  # noqa: E402

from gpu_check import bench_train, peak_tflops  # noqa: E402
from stellarfm_jax.config import load_config  # noqa: E402
from stellarfm_jax.schemas import paper_vocabulary  # noqa: E402

RESULTS = pathlib.Path(__file__).resolve().parent / "results"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", default="tiny,small,paper")
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--buckets", default="1,4")
    parser.add_argument("--micro", default="0,32", help="train.micro_batch_size values (0 = whole batch)")
    parser.add_argument("--steps", type=int, default=4, help="optimiser steps per timed epoch")
    parser.add_argument("--epochs", type=int, default=2, help="timed epochs (median reported)")
    parser.add_argument("--out", default=str(RESULTS / "train_throughput.json"))
    args = parser.parse_args(argv)
    vocab = paper_vocabulary()
    device = jax.devices()[0]
    rows = []
    for name in args.configs.split(","):
        cfg = load_config(name)
        for dtype in args.dtypes.split(","):
            for buckets in (int(b) for b in args.buckets.split(",")):
                for micro in (int(m) for m in args.micro.split(",")):
                    row = bench_train(cfg, vocab, dtype, buckets, args.steps, cfg.train.batch_size, args.epochs,
                                      lambda dt: peak_tflops(device, dt, None),
                                      lambda m: print(f"[{name}] {m}", flush=True), micro=micro)
                    rows.append({"config": name, **row})
    meta = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "device": device.device_kind,
            "platform": device.platform, "cpus": os.cpu_count(), "machine": platform.machine(), "jax": jax.__version__,
            "command": " ".join(["train_throughput.py"] + (argv if argv is not None else sys.argv[1:]))}
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    print(f"\n{'config':7} {'dtype':9} {'buckets':>7} {'micro':>6} {'batch':>6} {'stars/s':>10} {'compile s':>10}")
    for r in rows:
        print(f"{r['config']:7} {r['dtype']:9} {r['length_buckets']:7d} {r['micro_batch_size']:6d} {r['batch']:6d} "
              f"{r['stars_per_s']:10.1f} "
              f"{r['compile_s']:10.1f}")
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
