"""Teach a trained model new tokens with LoRA adapters, from a small labelled subset (stellarfm_jax.adapters).

    python -m stellarfm_jax.finetune_tokens --model BASE_DIR --tokens alpha_m --out ADAPTER_DIR \\
        [--data FILE.h5] [--max-stars 1000] [--epochs 200] [--rank 8] [--reference small]

The labelled stars are drawn (seeded) from the train split among those with every new token measured. The
adapter (new embedding rows + LoRA factors, not the base model) is written to ``ADAPTER_DIR`` with
``report.json``: on the chosen split, the new tokens' robust scatter / bias / calibration from "spectra +
colours", the same for ``--reference`` (a model trained with those tokens from the start) and their ratio,
and whether the base model's answers for its own labels are unchanged bit for bit.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import sys
import time

import jax
import numpy as np

from . import cli
from .adapters import AdapterConfig, AdaptedModel, fine_tune, labelled_subset, load_adapter
from .evaluation.common import InputSet, calibration_stats, masked_inputs, predict_tokens, residual_stats
from .train import DEFAULT_LABELS, spectra_colour_inputs
from .vocab import align_columns


def _aligned(model, dataset, split) -> tuple[np.ndarray, np.ndarray]:
    """A split's raw values / errors with columns in ``model``'s vocabulary order (NaN where the data lack a token)."""
    return (align_columns(split.values, dataset.vocab.names, model.vocab.names),
            align_columns(split.errors, dataset.vocab.names, model.vocab.names))


def token_accuracy(model, dataset, split_name: str, tokens, input_names=None) -> dict:
    """Per token: robust residual statistics and calibration of ``tokens`` predicted from ``input_names``
    (default: the "spectra + colours" set of the model's vocabulary) on one split."""
    split = dataset.split(split_name)
    values, errors = _aligned(model, dataset, split)
    names = input_names or [n for n in spectra_colour_inputs(model.vocab, model.context_length) if n not in tokens]
    inputs = masked_inputs(model.vocab, values, InputSet("eval", "eval", tuple(names)))
    mean, sigma = predict_tokens(model, inputs, list(tokens))
    out = {}
    for j, name in enumerate(tokens):
        col = model.vocab.token_id(name) - 1
        out[name] = {**residual_stats(mean[:, j], values[:, col]),
                     **calibration_stats(mean[:, j], sigma[:, j], values[:, col], errors[:, col])}
    return out


def base_unchanged(adapted: AdaptedModel, dataset, split_name: str, max_stars: int = 512) -> bool:
    """True when the adapted model answers the base model's labels exactly as the base model (bit for bit) for
    inputs without the new tokens."""
    split = dataset.split(split_name)
    base = adapted.base
    labels = [n for n in DEFAULT_LABELS if n in base.vocab.names] or [base.vocab.names[0]]
    names = spectra_colour_inputs(base.vocab, base.context_length)
    values, _ = _aligned(base, dataset, split)
    inputs = masked_inputs(base.vocab, values[:max_stars], InputSet("eval", "eval", tuple(names)))
    a = adapted.perceive(align_columns(inputs, base.vocab.names, adapted.vocab.names),
                         list(adapted.vocab.names)).request(labels)
    b = base.perceive(inputs, list(base.vocab.names)).request(labels)
    return all(np.array_equal(a[k], b[k]) for k in b.keys())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stellarfm_jax.finetune_tokens", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="base model directory, training workdir, or shipped model name")
    parser.add_argument("--tokens", required=True, help="comma-separated new token names (columns of the data)")
    parser.add_argument("--out", required=True, help="adapter directory (created)")
    parser.add_argument("--data", default=None, help="our HDF5 data file (default: the embedded real data set)")
    parser.add_argument("--max-stars", type=int, default=1000, help="labelled stars used (default 1000)")
    parser.add_argument("--epochs", type=int, default=AdapterConfig.epochs)
    parser.add_argument("--rank", type=int, default=AdapterConfig.rank)
    parser.add_argument("--learning-rate", type=float, default=AdapterConfig.learning_rate)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--split", default="test", choices=("val", "test"), help="split of the report")
    parser.add_argument("--reference", default=None, help="a model trained with the new tokens from the start, to compare")
    args = parser.parse_args(argv)
    try:
        from . import data as data_lib
        from .evaluate import resolve_model

        base = resolve_model(args.model)
        if isinstance(base, AdaptedModel):
            raise ValueError("--model must be a base model, not an adapter")
        tokens = [t.strip() for t in args.tokens.split(",") if t.strip()]
        if not tokens:
            raise ValueError("--tokens names no token")
        dataset = data_lib.read_dataset(args.data or data_lib.default_dataset_path(schema=base.vocab.schema))
        for t in tokens:
            dataset.vocab.token_id(t)  # unknown names raise, listing the closest
        if args.max_stars < 1:
            raise ValueError(f"--max-stars must be >= 1, got {args.max_stars}")
        train = dataset.train
        rows = labelled_subset(train.values, [dataset.vocab.token_id(t) - 1 for t in tokens], args.max_stars, args.seed)
        names = [n for n in dataset.vocab.names if n in base.vocab.names or n in tokens]
        cols = dataset.vocab.ids(names) - 1
        groups = [dataset.vocab.groups[dataset.vocab.token_id(t) - 1] for t in tokens]
        config = AdapterConfig(rank=args.rank, alpha=2.0 * args.rank, epochs=args.epochs,
                               learning_rate=args.learning_rate, seed=args.seed)
        t0 = time.perf_counter()
        adapted = fine_tune(base, train.values[rows][:, cols], train.errors[rows][:, cols], names, tokens,
                            config=config, groups=groups)
        train_seconds = time.perf_counter() - t0
        out = pathlib.Path(args.out)
        adapted.save(out)
        reloaded = load_adapter(out, base)
        report = {"base_model": args.model, "tokens": tokens, "labelled_stars": int(rows.size),
                  "adapter_config": dataclasses.asdict(config), "train_seconds": round(train_seconds, 1),
                  "split": args.split, "adapted": token_accuracy(reloaded, dataset, args.split, tokens),
                  "base_answers_unchanged": base_unchanged(reloaded, dataset, args.split),
                  "machine": f"{jax.default_backend()} ({jax.device_count()} device)"}
        if args.reference:
            ref = resolve_model(args.reference)
            report["reference_model"] = args.reference
            report["reference"] = token_accuracy(ref, dataset, args.split, tokens)
            report["scatter_ratio"] = {t: report["adapted"][t]["scatter"] / report["reference"][t]["scatter"] for t in tokens}
        (out / "report.json").write_text(json.dumps(report, indent=1))
    except cli.USER_ERRORS as err:
        return cli.report(err)
    for t in tokens:
        a = report["adapted"][t]
        line = f"{t}: scatter {a['scatter']:.4g}, bias {a['bias']:.3g}, z std {a['z_std']:.2f} ({a['n']} {args.split} stars)"
        if "reference" in report:
            line += f"; reference scatter {report['reference'][t]['scatter']:.4g} (ratio {report['scatter_ratio'][t]:.2f})"
        print(line)
    print(f"base answers unchanged: {report['base_answers_unchanged']}; adapter in {out} ({train_seconds:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
