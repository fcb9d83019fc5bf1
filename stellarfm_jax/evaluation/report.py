"""Run the registered evaluation tasks and write the report: :func:`run_evaluation` (metrics.json, figures,
report.md), :func:`render_report` (report.md from a metrics dictionary) and :func:`summary_lines` (what the
command line prints). Each iterates over the task registry (:mod:`stellarfm_jax.evaluation.registry`)."""

from __future__ import annotations

import json
import pathlib
import time

import numpy as np

from .markdown import headline_table, jsonable  # noqa: F401 - headline_table: the report's table, for notebooks
from .registry import TASKS, EvalContext, EvalSettings, select_tasks, task_names  # noqa: F401
from . import tasks as _builtin  # noqa: F401 - registers the built-in tasks


def _ran(m: dict, registry) -> list:
    names = m.get("tasks")
    registry = TASKS if registry is None else registry
    return [t for t in registry if names is None or t.name in names]


def run_evaluation(model, dataset, split: str = "test", out=None, settings: EvalSettings = EvalSettings(),
                   log=print, registry: list | None = None) -> dict:
    """Run the selected tasks (``settings.tasks``; :func:`select_tasks`) on ``dataset``'s ``split`` in registry
    order and (with ``out``) write report.md, metrics.json and each task's figures there.

    Returns the metrics dictionary (what metrics.json holds); ``metrics["tasks"]`` lists the tasks run."""
    t_start = time.perf_counter()
    chosen = select_tasks(settings, registry)
    vocab = model.vocab
    # Values are in physical units, so only the token names must match (each side standardises with its own).
    if list(vocab.names) != list(dataset.vocab.names):
        raise ValueError(f"the model's vocabulary ({vocab.schema}, {vocab.size} tokens) does not match the data set's "
                         f"({dataset.vocab.schema}, {dataset.vocab.size} tokens)")
    data = dataset.split(split)
    if settings.max_stars is not None:
        data = data.subset(np.arange(min(settings.max_stars, len(data))))
    out = pathlib.Path(out) if out is not None else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    ctx = EvalContext(model, dataset, split, data, settings, log=log)
    seconds: dict = {}
    metrics: dict = {"split": split, "n_stars": len(data), "settings": jsonable(vars(settings)),
                     "model": {k: model.metadata.get(k) for k in ("epochs_trained", "interim", "exported_from",
                                                                  "training_command", "data_sha256", "trained_on")},
                     "date": time.strftime("%Y-%m-%d %H:%M:%S"), "tasks": [t.name for t in chosen]}
    for task in chosen:
        result = None
        if task.run is not None:
            t0 = time.perf_counter()
            result = task.run(ctx)
            seconds[task.name] = time.perf_counter() - t0
            log(f"[evaluate] {task.name}: {seconds[task.name]:.1f} s")
        ctx.results[task.name] = result
        metrics.update(task.metrics_of(ctx, result))
    seconds["total"] = time.perf_counter() - t_start
    metrics["seconds"] = seconds

    if out is not None:
        t0 = time.perf_counter()
        for task in chosen:
            if task.figures is not None:
                task.figures(ctx, ctx.results[task.name], out)
        seconds["figures"] = time.perf_counter() - t0
        (out / "metrics.json").write_text(json.dumps(jsonable(metrics), indent=1))
        (out / "report.md").write_text(render_report(metrics, registry))
    return jsonable(metrics)


def render_report(m: dict, registry: list | None = None) -> str:
    """report.md from the metrics dictionary: a header, each task's section in registry order, the timings."""
    mm = m["model"]
    lines = [f"# Evaluation report ({m['date']})", "",
             f"Split `{m['split']}`, {m['n_stars']} stars. Model: epochs trained {mm.get('epochs_trained')}"
             f"{' (interim)' if mm.get('interim') else ''}, from `{mm.get('exported_from')}`.", "",
             "Robust scatter σ = 1.4826 MAD of prediction - truth; z = (pred - truth) / sqrt(σ_model² + σ_label²).", ""]
    for task in _ran(m, registry):
        if task.section is not None:
            lines += task.section(m)
    lines += ["## Timings (s)", "", "| step | seconds |", "|---|---:|"] + [f"| {k} | {v:.1f} |" for k, v in m["seconds"].items()]
    return "\n".join(lines) + "\n"


def summary_lines(m: dict, registry: list | None = None) -> list[str]:
    """The printed summary of an evaluation: each task's summary lines in registry order."""
    lines = []
    for task in _ran(m, registry):
        if task.summary is not None:
            lines += task.summary(m)
    return lines
