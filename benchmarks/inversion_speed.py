"""Inversion speed on real spectra: stars/s of ``stellarfm_jax.inversion.invert`` for N test-split stars (their flux
tokens and jh with the observed errors, as the evaluation's inversion task; free teff, logg, m_h, logebv; default settings, the prior fitted on the train
split), batched, after a warm-up call that compiles.

    python benchmarks/inversion_speed.py [--model small] [--stars 1000] [--data FILE.h5] [--batch-size N]
                                         [--out benchmarks/results/inversion_speed.json]

Prints a table (stars, seconds, stars/s, s/star, flagged) and writes JSON.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import platform
import time

import numpy as np

from stellarfm_jax import data as data_lib
from stellarfm_jax import resolve_model
from stellarfm_jax.evaluation.inversion import observed_names, reason_counts
from stellarfm_jax.inversion import InversionPrior, default_free_names, invert

RESULTS = pathlib.Path(__file__).resolve().parent / "results"


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="small")
    parser.add_argument("--stars", type=int, default=10000)
    parser.add_argument("--data", default=None)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--model-error", default="auto", help="auto (the model's stored one), none, or a JSON file")
    parser.add_argument("--out", default=str(RESULTS / "inversion_speed.json"))
    args = parser.parse_args(argv)

    model = resolve_model(args.model)
    path = pathlib.Path(args.data) if args.data else data_lib.default_dataset_path(schema=model.vocab.schema)
    ds = data_lib.read_dataset(path)
    prior = InversionPrior.fit(ds.train.values, model.vocab, default_free_names(model.vocab))
    flux = observed_names(model.vocab)
    cols = model.vocab.ids(flux) - 1
    test = ds.test
    idx = np.resize(np.arange(len(test)), args.stars)  # repeats the split when more stars are asked for
    obs, err = test.values[idx][:, cols], test.errors[idx][:, cols]
    keep = np.isfinite(obs).any(axis=1)
    obs, err = obs[keep], err[keep]
    model_error = None if args.model_error == "none" else args.model_error
    t0 = time.perf_counter()
    from stellarfm_jax.forward import default_chunk_size

    warm = min(len(obs), args.batch_size or default_chunk_size())
    invert(model, obs[:warm], flux, err[:warm], prior=prior, chunk_size=args.batch_size,
           model_error=model_error)  # compile the chunk's program
    compile_s = time.perf_counter() - t0
    cpu0 = time.process_time()
    res = invert(model, obs, flux, err, prior=prior, chunk_size=args.batch_size, progress=True, model_error=model_error)
    cpu = time.process_time() - cpu0
    n = len(res)
    out = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
           "command": "python benchmarks/inversion_speed.py " + " ".join(argv or os.sys.argv[1:]),
           "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the end",
           "model": args.model, "data": str(path), "stars": n, "seconds": res.seconds, "stars_per_s": n / res.seconds,
           "seconds_per_star": res.seconds / n, "cpu_seconds": cpu, "cpu_seconds_per_star": cpu / n,
           "compile_and_first_call_s": compile_s, "flagged": int(res.flagged.sum()),
           "flag_reasons": reason_counts(res.reason),
           "median_steps": float(np.median(res.steps)), "prior": res.prior,
           "model_error": res.model_error}
    print("| stars | seconds | stars/s | s/star | CPU s/star | flagged | median steps |\n|---:|---:|---:|---:|---:|---:|---:|")
    print(f"| {n} | {res.seconds:.1f} | {out['stars_per_s']:.2f} | {out['seconds_per_star']:.3f} | "
          f"{out['cpu_seconds_per_star']:.3f} | {out['flagged']} | {out['median_steps']:.0f} |")
    pathlib.Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    pathlib.Path(args.out).write_text(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
