"""One-shot accelerator check for the paper config (issue #8): training stars/s in float32 and bfloat16
(the paper's procedure, and with ``train.length_buckets``), compile time, model FLOPs per star and the
fraction of the device's peak (MFU), inference stars/s over 1M stars, peak device memory.

    python benchmarks/gpu_check.py [--dry-run] [--steps 100] [--batch 1024] [--infer-stars 1000000]
                                   [--peak-tflops X] [--out DIR]

Needs only jax, flax, optax and numpy (no network, no data files: synthetic standardised stars in the
paper data's missingness pattern; speed does not depend on the values). ``--dry-run`` runs every stage
with tiny sizes (tiny model, a few steps, 2k stars) so CI can keep it from rotting on a CPU. Writes
``gpu_check.json`` to ``--out`` (default ``$OUT`` when set) and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import pathlib
import platform
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from stellarfm_jax.config import load_config  # noqa: E402
from stellarfm_jax.inference import ModelSpec, map_chunks, predict  # noqa: E402
from stellarfm_jax.nn import StellarPerceptron, count_params, init_params  # noqa: E402
from stellarfm_jax.optim import make_optimizer  # noqa: E402
from stellarfm_jax.sampling import StarData, output_weight_vector  # noqa: E402
from stellarfm_jax.schemas import paper_vocabulary  # noqa: E402
from stellarfm_jax.train import epoch_function  # noqa: E402
from stellarfm_jax.train_state import TrainState  # noqa: E402

# Dense peak TFLOP/s per device kind (vendor datasheets, without sparsity): (float32 non-tensor, bf16 tensor).
PEAK_TFLOPS = {
    "H200": (67.0, 989.0), "H100": (67.0, 989.0), "A100": (19.5, 312.0), "L4": (30.3, 121.0),
    "RTX 4070 Ti": (40.1, 160.4), "RTX 4090": (82.6, 330.3), "A10": (31.2, 125.0), "V100": (15.7, 125.0),
}


def model_flops_per_star(cfg, context: int, requests: int = 1) -> float:
    """Training FLOPs per star (3 x forward; forward = 2 x multiply-adds) of the matmuls and attention,
    counting every one of the ``context`` slots (the paper's procedure computes padding too)."""
    d, L, R = cfg.embedding_dim, context, requests
    macs = 0
    for _, dense in cfg.encoder_block_shapes():
        macs += 4 * L * d * d + 2 * L * (L + 1) * d + 2 * L * d * dense
    for _, dense in cfg.decoder_block_shapes():
        macs += 2 * R * d * d + 2 * L * d * d + 2 * R * (L + 1) * d + 2 * R * d * dense
    widths = [d] + list(cfg.head_widths())
    macs += R * sum(a * b for a, b in zip(widths[:-1], widths[1:])) + 2 * R * widths[-1]
    return 3 * 2 * float(macs)


def peak_tflops(device, dtype: str, override: float | None):
    if override:
        return override
    kind = getattr(device, "device_kind", "")
    for name, (f32, bf16) in PEAK_TFLOPS.items():
        if name.lower() in kind.lower():
            return bf16 if dtype == "bfloat16" else f32
    return None


def synthetic_star_data(vocab, n: int, seed: int = 0) -> StarData:
    rng = np.random.default_rng(seed)
    names = np.array(vocab.names)
    present = np.zeros((n, vocab.size), bool)
    for band in ("bp", "rp"):
        cols = np.flatnonzero(np.char.startswith(names, band) & (names != "bprp"))
        present[:, cols] = np.arange(cols.size)[None, :] < rng.integers(30, 56, n)[:, None]
    rest = np.flatnonzero(~(np.char.startswith(names, "bp") | np.char.startswith(names, "rp")) | (names == "bprp"))
    present[:, rest] = rng.random((n, rest.size)) < 0.6
    values = np.where(present, rng.normal(size=present.shape), 0.0).astype(np.float32)
    return StarData(jnp.asarray(values), jnp.asarray(np.where(present, 0.05, 0.0).astype(np.float32)),
                    jnp.asarray(present))


def bench_train(cfg, vocab, dtype: str, buckets: int, steps: int, batch: int, epochs: int, peak, log,
                micro: int = 0) -> dict:
    mcfg = dataclasses.replace(cfg.model, compute_dtype=dtype)
    model = StellarPerceptron(mcfg, vocab.size)
    optimizer = make_optimizer(cfg.train, steps)
    state = TrainState.create(init_params(model, jax.random.key(0)), optimizer)
    data = synthetic_star_data(vocab, batch * steps)
    run_cfg = dataclasses.replace(cfg, model=mcfg, train=dataclasses.replace(
        cfg.train, length_buckets=buckets, micro_batch_size=micro, outputs_per_star=1))
    epoch_fn = epoch_function(run_cfg, vocab, optimizer, output_weight_vector(vocab), batch_size=batch,
                              steps_per_epoch=steps)
    t0 = time.perf_counter()
    compiled = epoch_fn.lower(state, data, 0).compile()
    compile_s = time.perf_counter() - t0
    hlo_flops = None
    try:
        cost = compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, (list, tuple)) else cost
        hlo_flops = float(cost["flops"]) / (batch * steps) if cost and cost.get("flops") else None
    except Exception:  # cost analysis is best effort (not every backend reports it)
        pass
    state, m = compiled(state, data, 0)  # warm-up epoch
    float(m["loss"])
    times = []
    for e in range(1, epochs + 1):
        t0 = time.perf_counter()
        state, m = compiled(state, data, e)
        loss = float(m["loss"])
        times.append(time.perf_counter() - t0)
    stars_per_s = batch * steps / float(np.median(times))
    flops = model_flops_per_star(mcfg, mcfg.context_length)
    row = {"dtype": dtype, "length_buckets": buckets, "micro_batch_size": micro, "batch": batch, "steps_per_epoch": steps,
           "compile_s": compile_s, "epoch_s": times, "stars_per_s": stars_per_s, "final_loss": loss,
           "model_flops_per_star": flops, "hlo_flops_per_star": hlo_flops,
           "achieved_tflops": stars_per_s * flops / 1e12, "peak_tflops": peak(dtype),
           "mfu": (stars_per_s * flops / 1e12 / peak(dtype)) if peak(dtype) else None}
    log(f"train {dtype:8s} buckets={buckets} micro={micro}: {stars_per_s:,.0f} stars/s, compile {compile_s:.1f} s, "
        f"MFU {row['mfu'] if row['mfu'] is None else round(row['mfu'], 3)}")
    return row


def bench_inference(cfg, vocab, dtype: str, n: int, chunk: int, log) -> dict:
    mcfg = dataclasses.replace(cfg.model, compute_dtype=dtype)
    spec = ModelSpec(mcfg, vocab.size)
    params = init_params(StellarPerceptron(mcfg, vocab.size), jax.random.key(0))
    rng = np.random.default_rng(1)
    values = rng.normal(size=(n, 64)).astype(np.float32)
    tokens = np.broadcast_to(np.arange(1, 65, dtype=np.int32), (n, 64))  # bp0..bp54, rp0..rp8: 64 tokens
    requests = jnp.asarray(vocab.ids(["teff"]))
    fn = lambda v, t: predict(params, v, t, requests, spec=spec)[:2]  # noqa: E731
    t0 = time.perf_counter()
    map_chunks(fn, [values[:chunk], tokens[:chunk]], chunk_size=chunk)
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    mean, _ = map_chunks(fn, [values, tokens], chunk_size=chunk)
    seconds = time.perf_counter() - t0
    assert mean.shape == (n, 1) and np.isfinite(mean).all()
    row = {"dtype": dtype, "stars": n, "input_tokens": 64, "requests": 1, "chunk": chunk, "compile_s": compile_s,
           "seconds": seconds, "stars_per_s": n / seconds, "includes": "host->device copy of the inputs and back"}
    log(f"inference {dtype}: {n:,} stars in {seconds:.2f} s = {n / seconds:,.0f} stars/s")
    return row


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="tiny sizes: exercise every stage in seconds on a CPU")
    parser.add_argument("--config", default="paper")
    parser.add_argument("--steps", type=int, default=100, help="optimiser steps per timed epoch")
    parser.add_argument("--batch", type=int, default=None, help="default: the config's batch size")
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs (median reported)")
    parser.add_argument("--buckets", type=int, default=4, help="train.length_buckets of the extra bf16 row (1: skip)")
    parser.add_argument("--infer-stars", type=int, default=1_000_000)
    parser.add_argument("--infer-chunk", type=int, default=65536)
    parser.add_argument("--peak-tflops", type=float, default=None, help="override the device's peak (per dtype row)")
    parser.add_argument("--out", default=os.environ.get("OUT"))
    args = parser.parse_args(argv)

    cfg = load_config("tiny" if args.dry_run else args.config)
    if args.dry_run:
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, batch_size=32))
        args.steps, args.epochs, args.infer_stars, args.infer_chunk = 2, 1, 2048, 1024
        args.buckets = min(args.buckets, 2)
    vocab = paper_vocabulary()
    batch = args.batch or cfg.train.batch_size
    device = jax.devices()[0]
    log = lambda msg: print(msg, flush=True)  # noqa: E731
    peak = lambda dtype: peak_tflops(device, dtype, args.peak_tflops)  # noqa: E731
    log(f"device: {device.device_kind} ({device.platform}), {len(jax.devices())} device(s); config {cfg.name}, "
        f"{count_params(init_params(StellarPerceptron(cfg.model, vocab.size), jax.random.key(0))):,} params")

    t_start = time.perf_counter()
    train = [bench_train(cfg, vocab, dtype, 1, args.steps, batch, args.epochs, peak, log)
             for dtype in ("float32", "bfloat16")]
    if args.buckets > 1:
        train.append(bench_train(cfg, vocab, "bfloat16", args.buckets, args.steps, batch, args.epochs, peak, log))
    inference = bench_inference(cfg, vocab, "bfloat16", args.infer_stars, args.infer_chunk, log)
    stats = device.memory_stats() or {}
    report = {
        "dry_run": args.dry_run, "config": cfg.name,
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "device": {"kind": device.device_kind, "platform": device.platform, "count": len(jax.devices()),
                   "host": platform.node(), "jax": jax.__version__},
        "train": train, "inference": inference,
        "peak_memory_bytes": stats.get("peak_bytes_in_use"),
        "targets": {"train_stars_per_s_bf16": 150_000, "inference_stars_per_s": 1_000_000},
        "total_s": time.perf_counter() - t_start,
    }
    print("\n| stage | dtype | buckets | stars/s | compile s | MFU |\n|---|---|---|---:|---:|---:|")
    for r in train:
        mfu = f"{r['mfu']:.1%}" if r["mfu"] is not None else "n/a"
        print(f"| train (batch {r['batch']}) | {r['dtype']} | {r['length_buckets']} | {r['stars_per_s']:,.0f} | "
              f"{r['compile_s']:.1f} | {mfu} |")
    print(f"| inference ({inference['stars']:,} stars, 64 tokens, R=1) | {inference['dtype']} | - | "
          f"{inference['stars_per_s']:,.0f} | {inference['compile_s']:.1f} | - |")
    print(f"\nmodel FLOPs per training star: {train[0]['model_flops_per_star'] / 1e6:.1f} MFLOP; "
          f"peak device memory: {report['peak_memory_bytes']}; total {report['total_s']:.0f} s")
    if args.out:
        out = pathlib.Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "gpu_check.json").write_text(json.dumps(report, indent=2))
        print(f"wrote {out / 'gpu_check.json'}")
    return report


if __name__ == "__main__":
    main()
