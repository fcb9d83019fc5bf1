"""Peak memory of the predict CLI on a large synthetic catalogue (default 1,000,000 stars x 64 tokens).

    python benchmarks/predict_memory.py [--stars 1000000] [--config small] [--workdir /tmp/predict_memory]

Writes a random-init model of the chosen config (paper vocabulary) and an HDF5 catalogue in our data-set
format (written chunk by chunk), runs ``python -m stellarfm_jax.predict`` on it in a child process, and
reports the child's peak resident memory (ru_maxrss), its wall time, and checks one output row per input
star in input order. Writes benchmarks/results/predict_memory.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import resource
import subprocess
import sys
import time

import h5py
import jax
import numpy as np

from stellarfm_jax.config import load_config
from stellarfm_jax.inference import StellarModel
from stellarfm_jax.nn.model import StellarPerceptron, init_params
from stellarfm_jax.schemas import paper_vocabulary

RESULTS = pathlib.Path(__file__).resolve().parent / "results"


def write_catalogue(path: pathlib.Path, vocab, n: int, tokens: list[str], chunk: int = 100_000) -> None:
    """Our HDF5 format (attributes + a 'test' split; tiny train/val), filled chunk by chunk."""
    cols = [vocab.token_id(t) - 1 for t in tokens]
    rng = np.random.default_rng(0)
    with h5py.File(path, "w") as f:
        f.attrs["format"] = "stellarfm_jax.dataset"
        f.attrs["format_version"] = 1
        f.attrs["schema"] = vocab.schema
        f.attrs["token_names"] = np.array(vocab.names, dtype=h5py.string_dtype())
        f.attrs["vocabulary"] = json.dumps(vocab.to_dict())
        f.attrs["provenance"] = json.dumps({"source": "benchmarks/predict_memory.py"})
        for split, size in (("train", 1), ("val", 1), ("test", n)):
            g = f.create_group(split)
            values = g.create_dataset("values", (size, vocab.size), np.float32, chunks=(min(size, 4096), vocab.size))
            errors = g.create_dataset("errors", (size, vocab.size), np.float32, chunks=(min(size, 4096), vocab.size))
            g.create_dataset("source_id", data=np.arange(size, dtype=np.int64) + 1)
            for start in range(0, size, chunk):
                m = min(chunk, size - start)
                block = np.full((m, vocab.size), np.nan, np.float32)
                block[:, cols] = rng.normal(size=(m, len(cols)))
                values[start:start + m] = block
                errors[start:start + m] = np.where(np.isnan(block), np.nan, 0.01)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--stars", type=int, default=1_000_000)
    parser.add_argument("--config", default="small")
    parser.add_argument("--workdir", default="/tmp/predict_memory")
    parser.add_argument("--batch-size", type=int, default=None, help="predict's --batch-size (stars per device call)")
    args = parser.parse_args()
    work = pathlib.Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    vocab = paper_vocabulary()
    cfg = load_config(args.config).model
    params = init_params(StellarPerceptron(cfg, vocab.size), jax.random.PRNGKey(0))
    StellarModel.from_params(params, cfg, vocab).save(work / "model")
    tokens = [f"bp{i}" for i in range(32)] + [f"rp{i}" for i in range(32)]
    data = work / "catalogue.h5"
    t0 = time.perf_counter()
    write_catalogue(data, vocab, args.stars, tokens)
    print(f"wrote {args.stars:,} stars x 64 tokens in {time.perf_counter() - t0:.0f} s", flush=True)
    out = work / "pred.h5"
    cmd = [sys.executable, "-m", "stellarfm_jax.predict", "--model", str(work / "model"), "--input", str(data),
           "--request", "teff,logg,m_h", "--output", str(out), "--split", "test"]
    if args.batch_size:
        cmd += ["--batch-size", str(args.batch_size)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # Linux: KiB
    if proc.returncode != 0:
        raise SystemExit(f"predict failed:\n{proc.stderr[-4000:]}")
    summary_line = proc.stdout.strip().splitlines()[-1]
    with h5py.File(out, "r") as f:
        ids = f["source_id"][...]
        rows_ok = bool(ids.shape == (args.stars,) and np.array_equal(ids, np.arange(args.stars) + 1))
        finite = bool(np.isfinite(f["teff"][...]).all())
    result = {"stars": args.stars, "input_tokens": 64, "config": args.config, "requests": 3,
              "batch_size": args.batch_size or "default",
              "peak_rss_mb": peak_mb, "wall_s": wall, "stars_per_s": args.stars / wall,
              "one_row_per_star_in_order": rows_ok, "all_finite": finite, "summary": summary_line,
              "date": datetime.datetime.now().isoformat(timespec="seconds"), "cpus": os.cpu_count(),
              "backend": jax.default_backend()}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "predict_memory.json").write_text(json.dumps(result, indent=2))
    print(f"{'stars':>10} {'peak RSS MB':>12} {'wall s':>8} {'stars/s':>8} {'rows ok':>8}")
    print(f"{args.stars:10,} {peak_mb:12.0f} {wall:8.0f} {args.stars / wall:8.0f} {str(rows_ok):>8}")


if __name__ == "__main__":
    main()
