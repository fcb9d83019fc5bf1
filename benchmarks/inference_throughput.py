"""Inference throughput (stars/s) for the small and paper configs, 64 input tokens per star, 1 and 3 requests:
R requests in one call against R single-request calls; and the inversion time per star.

    python benchmarks/inference_throughput.py [--stars 2048] [--configs small,paper] [--inversion-stars 8]
                                              [--dtypes float32,bfloat16] [--batch-size 1024] [--out FILE]

With several ``--dtypes`` every config runs in each compute dtype on the same weights and inputs, and each row
reports the largest difference of its R=1 answer (teff, in K) from the first dtype's.

Random-init weights (speed does not depend on the weights). Prints a table and writes
benchmarks/results/inference_throughput.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import pathlib
import platform
import time

import jax
import numpy as np

from stellarfm_jax.config import load_config
from stellarfm_jax.inference import StellarModel
from stellarfm_jax.nn.model import StellarPerceptron, init_params
from stellarfm_jax.schemas import paper_vocabulary

RESULTS = pathlib.Path(__file__).resolve().parent / "results"
REQUESTS = ["teff", "logg", "m_h"]


def make_model(config_name: str, compute_dtype: str | None = None) -> StellarModel:
    cfg = load_config(config_name).model
    if compute_dtype is not None:
        cfg = dataclasses.replace(cfg, compute_dtype=compute_dtype)
    vocab = paper_vocabulary()
    params = init_params(StellarPerceptron(cfg, vocab.size), jax.random.PRNGKey(0))
    return StellarModel.from_params(params, cfg, vocab)


def xp_inputs(model: StellarModel, n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    names = [f"bp{i}" for i in range(32)] + [f"rp{i}" for i in range(32)]  # 64 input tokens
    return rng.normal(size=(n, 64)), names


def timed(fn, repeats: int = 2) -> float:
    fn()  # compile
    best = np.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--stars", type=int, default=2048)
    parser.add_argument("--configs", default="small,paper")
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--inversion-stars", type=int, default=8)
    parser.add_argument("--dtypes", default="float32", help="compute dtypes to run each config in (first = reference)")
    parser.add_argument("--out", default=str(RESULTS / "inference_throughput.json"))
    args = parser.parse_args()
    rows = []
    for name, dtype in [(c, d) for c in args.configs.split(",") for d in args.dtypes.split(",")]:
        model = make_model(name, dtype)
        values, names = xp_inputs(model, args.stars)
        perception = model.perceive(values, names, chunk_size=args.batch_size)
        one = timed(lambda: perception.request(REQUESTS[:1]))
        three = timed(lambda: perception.request(REQUESTS))
        three_single = timed(lambda: [perception.request([r]) for r in REQUESTS])
        answer = perception.request(REQUESTS[:1])[REQUESTS[0]]
        if dtype == args.dtypes.split(",")[0]:
            reference = answer
        row = {"config": name, "compute_dtype": dtype, "batch_size": args.batch_size, "stars": args.stars,
               "input_tokens": 64, "stars_per_s_R1": args.stars / one, "stars_per_s_R3_one_call": args.stars / three,
               "stars_per_s_R3_three_calls": args.stars / three_single, "speedup_R3": three_single / three,
               "max_abs_diff_R1_vs_first_dtype": float(np.max(np.abs(answer - reference)))}
        if args.inversion_stars:
            n = args.inversion_stars
            spectrum = [f"bp{i}" for i in range(55)] + [f"rp{i}" for i in range(55)]
            rng = np.random.default_rng(1)
            observed = rng.normal(size=(n, len(spectrum)))
            model.invert(observed[:1], spectrum, 0.05)  # compile the 8-row program
            res = model.invert(observed, spectrum, 0.05)
            row.update(inversion_stars=n, inversion_free=list(res.names), inversion_observed_tokens=len(spectrum),
                       inversion_steps=300, inversion_starts=4, inversion_s_per_star=res.seconds / n)
        rows.append(row)
        print(json.dumps(row), flush=True)
    meta = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "machine": platform.machine(),
            "cpus": os.cpu_count(), "jax": jax.__version__, "backend": jax.default_backend(),
            "note": "best of 2 after a compile run; CPU shared with other processes when measured"}
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    print(f"\n{'config':8} {'dtype':9} {'R=1':>10} {'R=3 one call':>14} {'R=3 as 3 calls':>15} {'speedup':>8} {'invert s/star':>14}")
    for r in rows:
        print(f"{r['config']:8} {r['compute_dtype']:9} {r['stars_per_s_R1']:10.0f} {r['stars_per_s_R3_one_call']:14.0f} "
              f"{r['stars_per_s_R3_three_calls']:15.0f} {r['speedup_R3']:8.2f} {r.get('inversion_s_per_star', float('nan')):14.3f}")


if __name__ == "__main__":
    main()
