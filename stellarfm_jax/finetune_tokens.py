"""Teach a trained model new tokens with LoRA adapters (``python -m stellarfm_jax.finetune_tokens``).

    python -m stellarfm_jax.finetune_tokens --model BASE --tokens alpha_m --out ADAPTER_DIR [--reference small]

:func:`run` is the command as a library call; ``--help`` describes the outputs.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import sys
import time

import jax
import numpy as np

from . import cli
from .config import apply_overrides
from .adapters import AdapterConfig, AdaptedModel, fine_tune, labelled_subset, load_adapter
from .evaluation.common import InputSet, calibration_stats, masked_inputs, predict_tokens, residual_stats
from .metrics import MONITOR_LABELS as DEFAULT_LABELS, spectra_colour_inputs
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


def run(model_spec: str, tokens: list[str], out, data: str | None = None, max_stars: int = 1000,
        config: AdapterConfig = AdapterConfig(), split: str = "test", reference: str | None = None) -> dict:
    """The whole command as a library call: draw the labelled subset, fine-tune, save the adapter in ``out`` with
    ``report.json`` (accuracy of the new tokens, optionally against ``reference``, and whether the base model's
    answers are unchanged). Returns the report."""
    from . import data as data_lib
    from . import resolve_model

    base = resolve_model(model_spec)
    if isinstance(base, AdaptedModel):
        raise cli.BadInputError("--model must be a base model, not an adapter")
    if not tokens:
        raise cli.BadInputError("--tokens names no token")
    if max_stars < 1:
        raise cli.BadInputError(f"--max-stars must be >= 1, got {max_stars}")
    dataset = data_lib.read_dataset(cli.data_path(data, base.vocab.schema))
    for t in tokens:
        dataset.vocab.token_id(t)  # unknown names raise, listing the closest
    train = dataset.train
    rows = labelled_subset(train.values, [dataset.vocab.token_id(t) - 1 for t in tokens], max_stars, config.seed)
    names = [n for n in dataset.vocab.names if n in base.vocab.names or n in tokens]
    cols = dataset.vocab.ids(names) - 1
    groups = [dataset.vocab.groups[dataset.vocab.token_id(t) - 1] for t in tokens]
    t0 = time.perf_counter()
    adapted = fine_tune(base, train.values[rows][:, cols], train.errors[rows][:, cols], names, tokens,
                        config=config, groups=groups)
    train_seconds = time.perf_counter() - t0
    out = pathlib.Path(out)
    adapted.save(out)
    reloaded = load_adapter(out, base)
    report = {"base_model": model_spec, "tokens": tokens, "labelled_stars": int(rows.size),
              "adapter_config": dataclasses.asdict(config), "train_seconds": round(train_seconds, 1),
              "split": split, "adapted": token_accuracy(reloaded, dataset, split, tokens),
              "base_answers_unchanged": base_unchanged(reloaded, dataset, split),
              "machine": f"{jax.default_backend()} ({jax.device_count()} device)"}
    if reference:
        ref = resolve_model(reference)
        report["reference_model"] = reference
        report["reference"] = token_accuracy(ref, dataset, split, tokens)
        report["scatter_ratio"] = {t: report["adapted"][t]["scatter"] / report["reference"][t]["scatter"] for t in tokens}
    (out / "report.json").write_text(json.dumps(report, indent=1))
    return report


DESCRIPTION = """Teach a trained model new tokens with LoRA adapters, from a small labelled subset.

The labelled stars are drawn (seeded) from the train split among those with every new token measured. The adapter
(new embedding rows and LoRA factors, not the base model) is written to --out with report.json: on the chosen
split, the new tokens' robust scatter, bias and calibration from spectra + colours, the same for --reference (a
model trained with those tokens from the start) and their ratio, and whether the base model's answers for its own
labels are unchanged bit for bit."""


def build_parser():
    p = cli.parser("finetune_tokens", DESCRIPTION)
    cli.add_model_arg(p, what="the base model")
    p.add_argument("--tokens", required=True, metavar="NAMES", help="comma-separated new token names (data columns)")
    cli.add_out_arg(p, "adapter directory (created)")
    cli.add_data_arg(p)
    p.add_argument("--max-stars", type=int, default=1000, metavar="N", help="labelled stars used")
    p.add_argument("--epochs", type=int, default=AdapterConfig.epochs, metavar="N", help="training epochs")
    p.add_argument("--rank", type=int, default=AdapterConfig.rank, help="LoRA rank (alpha = 2 x rank)")
    p.add_argument("--learning-rate", type=float, default=AdapterConfig.learning_rate, metavar="LR",
                   help="learning rate")
    p.add_argument("--seed", type=int, default=0, help="random seed (subset and initialisation)")
    p.add_argument("--split", default="test", choices=("val", "test"), help="split of the report")
    cli.add_model_arg(p, flag="--reference", required=False,
                      what="optional model trained with the new tokens from the start, to compare with")
    cli.add_set_arg(p, "new_token_weight=4",
                    f"--set keys (the adapter's config): {', '.join(f.name for f in dataclasses.fields(AdapterConfig))}.")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)

    def work():
        tokens = cli.split_list(args.tokens)
        config = apply_overrides(AdapterConfig(rank=args.rank, alpha=2.0 * args.rank, epochs=args.epochs,
                                               learning_rate=args.learning_rate, seed=args.seed), args.overrides)
        report = run(args.model, tokens, args.out, args.data, args.max_stars, config, args.split, args.reference)
        for t in tokens:
            a = report["adapted"][t]
            line = (f"{t}: scatter {a['scatter']:.4g}, bias {a['bias']:.3g}, z std {a['z_std']:.2f} ({a['n']} "
                    f"{args.split} stars)")
            if "reference" in report:
                line += (f"; reference scatter {report['reference'][t]['scatter']:.4g} (ratio "
                         f"{report['scatter_ratio'][t]:.2f})")
            print(line)
        print(f"base answers unchanged: {report['base_answers_unchanged']}; adapter in {args.out} "
              f"({report['train_seconds']:.0f} s)")

    return cli.run_command(work)


if __name__ == "__main__":
    sys.exit(main())
