"""Fine-tune the contrastive search heads and build a test-split search database
(``python -m stellarfm_jax.finetune_search``).

    python -m stellarfm_jax.finetune_search --model small --out DIR [--data FILE.h5] [--epochs N]

:func:`run` is the command as a library call (the model and search database are loaded with
``stellarfm_jax.search.SearchModel.load`` / ``SearchDatabase.load``); ``--help`` describes the outputs.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import pathlib
import platform
import sys
import time

import numpy as np

from . import cli
from .config import apply_overrides
from .search import (
    HeadConfig,
    SearchModel,
    SearchTrainConfig,
    fit_search,
    full_query_embeddings,
    recovery_at_k,
)

# The paper's query examples (Task_TopKSearch, original_spec §7.5).
EXAMPLE_QUERIES = ({"teff": 4700.0, "logg": 2.5, "m_h": 0.0}, {"teff": 3900.0, "logg": 4.65, "m_h": 0.0}, {"jh": 0.6})
REPORT_K = (1, 10, 100)
# Partial queries also reported (recovery@100 of each star from only these of its tokens).
PARTIAL_QUERY_SETS = (("teff", "logg", "m_h"), ("teff", "logg", "m_h", "alpha_m"), ("jh", "jk"))


def example_report(db, queries=EXAMPLE_QUERIES, k: int = 10) -> list[dict]:
    """Top-k of each example query with the matches' true labels and the median |true - query| per query token."""
    out = []
    for query in queries:
        res = db.query(query, k)
        entry = {"query": query, "source_id": res.source_id.tolist(), "score": res.score.round(4).tolist(),
                 "labels": {n: [None if not np.isfinite(x) else round(float(x), 4) for x in v]
                            for n, v in res.labels.items()},
                 "median_abs_diff": {}}
        for name, value in query.items():
            if name in res.labels:
                diff = np.abs(res.labels[name] - value)
                entry["median_abs_diff"][name] = float(np.nanmedian(diff)) if np.isfinite(diff).any() else None
                entry.setdefault("n_with_truth", {})[name] = int(np.isfinite(diff).sum())
        out.append(entry)
    return out


def evaluate_test_split(model: SearchModel, dataset, k_values=REPORT_K, progress: bool = False):
    """Build the test-split database and measure recovery@k -> (database, report dict)."""
    test = dataset.test
    names = dataset.vocab.names
    labels = {n: test.values[:, names.index(n)] for n in model.query_names}
    t0 = time.perf_counter()
    db = model.build_database(test.values, names, test.source_id, labels, progress=progress,
                              metadata={"split": "test", "data": dataset.provenance.get("source", "")})
    db_seconds = time.perf_counter() - t0
    q, rows = full_query_embeddings(model, test.values, names)
    n = len(db)
    recovery = {str(k): recovery_at_k(q, db.embeddings, k, truth=rows) for k in k_values}
    partial = {}
    for subset in PARTIAL_QUERY_SETS:
        subset = [n for n in subset if n in model.query_names]
        if subset:
            qs, rs = full_query_embeddings(model, test.values, names, query_names=subset)
            partial[",".join(subset)] = {"n_queries": int(len(rs)),
                                         "recovery_at_100": recovery_at_k(qs, db.embeddings, 100, truth=rs)}
    report = {
        "n_database": n, "n_database_with_spectrum": int(db.valid.sum()), "n_queries": int(len(rows)),
        "query_tokens": model.query_names,
        "recovery_at_k": recovery, "random_baseline": {str(k): min(k / n, 1.0) for k in k_values},
        "ratio_to_baseline": {str(k): recovery[str(k)] / min(k / n, 1.0) for k in k_values},
        "partial_queries": partial, "database_seconds": db_seconds,
    }
    return db, report


def machine() -> dict:
    import jax

    return {"platform": platform.platform(), "python": platform.python_version(), "cpu_count": os.cpu_count(),
            "jax": jax.__version__, "backend": jax.default_backend(),
            "devices": [str(d) for d in jax.devices()],
            "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}


def run(model_spec: str, out, data: str | None = None, config: SearchTrainConfig = SearchTrainConfig(),
        head: HeadConfig = HeadConfig(), progress: bool = False, log=print, command: str | None = None) -> dict:
    """The whole command as a library call: train, save, build the test database, write ``report.json``."""
    from . import data as data_lib
    from . import resolve_model

    out = pathlib.Path(out)
    t_start = time.perf_counter()
    base = resolve_model(model_spec)
    data_path = cli.data_path(data, base.vocab.schema)
    dataset = data_lib.read_dataset(data_path)
    fit = fit_search(base, dataset, config, head, progress=progress, log=log, base_source=model_spec)
    model = fit.model
    out.mkdir(parents=True, exist_ok=True)
    model_dir = model.save(out / "search_model")
    db, test = evaluate_test_split(model, dataset, progress=progress)
    db.save(out / "database_test.h5", model_path=model_dir)
    report = {
        "command": command,
        "model": model_spec, "data": str(data_path), "train_config": dataclasses.asdict(config),
        "head_config": dataclasses.asdict(head), "spectra_tokens": model.spectra_names,
        "n_train_pairs": fit.n_train_pairs, "best_epoch": fit.best_epoch, "train_seconds": fit.train_seconds,
        "history": fit.history, "test": test, "examples": example_report(db), "machine": machine(),
        "total_seconds": time.perf_counter() - t_start,
    }
    (out / "report.json").write_text(json.dumps(report, indent=2))
    return report


def summary(report: dict) -> str:
    t = report["test"]
    lines = [f"test split: {t['n_queries']} queries ({', '.join(t['query_tokens'])} where available) against "
             f"{t['n_database']} spectra"]
    for k, rec in t["recovery_at_k"].items():
        lines.append(f"  recovery@{k}: {100 * rec:.1f}%  (random {100 * t['random_baseline'][k]:.2f}%, "
                     f"x{t['ratio_to_baseline'][k]:.1f})")
    for subset, part in t.get("partial_queries", {}).items():
        lines.append(f"  recovery@100 from {subset} only: {100 * part['recovery_at_100']:.1f}% "
                     f"({part['n_queries']} queries)")
    for ex in report["examples"]:
        q = ", ".join(f"{n}={v:g}" for n, v in ex["query"].items())
        med = ", ".join(f"median |d{n}| = {v:.3g}" if v is not None else f"{n}: no truth"
                        for n, v in ex["median_abs_diff"].items())
        lines.append(f"query {q}: top-10 {med}")
        for n, vals in ex["labels"].items():
            lines.append(f"    {n:>7}: " + " ".join("nan" if v is None else f"{v:.4g}" for v in vals))
    lines.append(f"heads trained in {report['train_seconds']:.0f} s (best epoch {report['best_epoch']}); "
                 f"total {report['total_seconds']:.0f} s")
    return "\n".join(lines)


DESCRIPTION = """Fine-tune the contrastive search heads of a trained model and build a test-split search database.

The model's encoder stays frozen; the heads train on the train split (best epoch by validation recovery@100).
The output folder receives search_model/ (the heads with a copy of the base model), database_test.h5 (spectra
embeddings of every test-split star with their source_id and true labels) and report.json (recovery@k on the test
split against the random baseline, the paper's example queries with the true labels of their top 10, timings)."""


def build_parser():
    p = cli.parser("finetune_search", DESCRIPTION)
    cli.add_model_arg(p, what="the base model")
    cli.add_out_arg(p, "output folder (created)")
    cli.add_data_arg(p)
    defaults = SearchTrainConfig()
    p.add_argument("--epochs", type=int, default=defaults.epochs, metavar="N", help="training epochs of the heads")
    p.add_argument("--batch-size", type=int, default=defaults.batch_size, metavar="N", help="stars per step")
    p.add_argument("--seed", type=int, default=defaults.seed, help="random seed")
    cli.add_set_arg(p, "train.temperature=0.1",
                    f"--set keys: train.<key> for {', '.join(f.name for f in dataclasses.fields(SearchTrainConfig))}; "
                    f"head.<key> for {', '.join(f.name for f in dataclasses.fields(HeadConfig))}.")
    cli.add_progress_arg(p)
    return p


@dataclasses.dataclass(frozen=True)
class SearchRun:
    """What --set overrides: the heads' training and their architecture."""

    train: SearchTrainConfig = SearchTrainConfig()
    head: HeadConfig = HeadConfig()

    def validate(self) -> "SearchRun":
        self.train.validate()
        return self


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)

    def work():
        train = dataclasses.replace(SearchTrainConfig(), epochs=args.epochs, batch_size=args.batch_size,
                                    seed=args.seed)
        settings = apply_overrides(SearchRun(train=train), args.overrides)
        command = "python -m stellarfm_jax.finetune_search " + " ".join(sys.argv[1:] if argv is None else argv)
        report = run(args.model, args.out, args.data, settings.train, settings.head, progress=not args.no_progress,
                     command=command)
        print(summary(report))
        out = pathlib.Path(args.out)
        print(f"saved: {out / 'search_model'}, {out / 'database_test.h5'}, {out / 'report.json'}")

    return cli.run_command(work)


if __name__ == "__main__":
    sys.exit(main())
