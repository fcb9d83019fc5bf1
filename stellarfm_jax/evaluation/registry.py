"""The evaluation task registry (in the style of big_vision's evaluators): each task is registered once with its
name, its run function, what it writes to metrics.json, its figures, its report section and its printed summary;
:func:`stellarfm_jax.evaluation.report.run_evaluation`, ``render_report`` and ``summary_lines`` iterate over it.

A task is a :class:`Task`; its functions receive one :class:`EvalContext` (the model, the data set, the split
evaluated, the settings, the raw results of the tasks before it, a log function). Tasks run in registry order, so
a task may use the results of any task registered before it (``requires`` names the ones it cannot do without).
Which tasks run: :func:`select_tasks` (``EvalSettings.tasks``, or every task the settings do not switch off).

Adding a task touches one place: define its functions and :func:`register` it (the built-in ones are in
:mod:`stellarfm_jax.evaluation.tasks`).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any, Callable


@dataclass(frozen=True)
class EvalSettings:
    """What an evaluation runs and how big its references are.

    ``tasks``: the task names to run, in any order (they run in registry order; None = every task that is on by
    default). ``xgboost``: the per-input-set XGBoost experts (``xgboost_experts``); ``emulator``: the labels ->
    spectrum emulator (``emulator``); ``inversion_stars``: stars of the ``inversion`` task (0 = off). A task named
    in ``tasks`` but switched off by these flags is an error, not a silent skip."""

    max_stars: int | None = None  # evaluate the first N stars of the split (None = all)
    xgboost: bool = True
    xgb_max_train: int | None = None  # train the experts on the first N train stars (None = all)
    xgb_params: tuple = ()  # overrides of evaluation.XGB_PARAMS as (key, value) pairs
    kiel_grid: tuple[int, int] = (101, 26)
    tasks: tuple[str, ...] | None = None
    emulator: bool = True
    emulator_max_train: int | None = None  # fit the emulator on the first N train stars (None = all)
    emulator_config: tuple = ()  # overrides of emulator.EmulatorConfig as (key, value) pairs
    emulator_seed: int = 0
    inversion_stars: int = 500

    def __post_init__(self):
        if self.tasks is not None:
            if isinstance(self.tasks, str):
                raise ValueError(f"EvalSettings.tasks must be a sequence of task names, got the string {self.tasks!r}")
            object.__setattr__(self, "tasks", tuple(self.tasks))
        if self.max_stars is not None and self.max_stars < 1:
            raise ValueError(f"max_stars must be >= 1 (or None for every star), got {self.max_stars}")
        if self.inversion_stars < 0:
            raise ValueError(f"inversion_stars must be >= 0, got {self.inversion_stars}")

    @classmethod
    def quick(cls, **changes) -> "EvalSettings":
        """A smoke test of about a minute: a subset of stars, smaller experts and emulator, no inversion."""
        return cls(**{**dict(max_stars=600, xgb_max_train=4000, xgb_params=(("num_boost_round", 300),),
                             kiel_grid=(41, 11), emulator_max_train=4000,
                             emulator_config=(("max_epochs", 25), ("patience", 8)), inversion_stars=0), **changes})


@dataclass
class EvalContext:
    """What a task sees: the model, the data set and its evaluated ``split`` (name) / ``data`` (the Split, possibly
    its first ``settings.max_stars`` stars), the settings, ``results`` (task name -> what its run returned, for the
    tasks run so far) and ``log`` (a print-like function)."""

    model: Any
    dataset: Any
    split: str
    data: Any
    settings: EvalSettings
    results: dict = field(default_factory=dict)
    log: Callable = print

    @functools.cached_property
    def input_sets(self):
        """The paper's input sets for this model (computed once; :func:`stellarfm_jax.evaluation.paper_input_sets`)."""
        from .common import paper_input_sets

        train = self.dataset.train
        return paper_input_sets(self.model.vocab, self.model.context_length, train.values, train.errors)


def _no_metrics(ctx, result) -> dict:
    return {}


@dataclass(frozen=True)
class Task:
    """One evaluation task.

    * ``run(ctx) -> result``: the computation (its result, anything, goes to ``ctx.results[name]``); None for a task
      that only derives numbers from earlier results (it is not timed);
    * ``metrics(ctx, result) -> {key: value}``: the entries it adds to metrics.json (default ``{name: result}``;
      entries named ``arrays`` are left out of the file);
    * ``figures(ctx, result, out_dir)``: writes its PNG figures;
    * ``section(metrics) -> [lines]``: its part of report.md, from the metrics dictionary alone;
    * ``summary(metrics) -> [lines]``: what the command line prints for it;
    * ``requires``: tasks that must run before it; ``allowed(settings) -> str | None``: why these settings switch
      it off (None: it runs when ``settings.tasks`` is None or names it).
    """

    name: str
    run: Callable | None
    metrics: Callable | None = None
    figures: Callable | None = None
    section: Callable | None = None
    summary: Callable | None = None
    requires: tuple[str, ...] = ()
    allowed: Callable = lambda settings: None
    description: str = ""

    def metrics_of(self, ctx, result) -> dict:
        if self.metrics is not None:
            return self.metrics(ctx, result)
        return {} if result is None else {self.name: result}


TASKS: list[Task] = []


def register(task: Task, registry: list | None = None) -> Task:
    """Append ``task`` to ``registry`` (default: the built-in :data:`TASKS`); names are unique."""
    registry = TASKS if registry is None else registry
    if any(t.name == task.name for t in registry):
        raise ValueError(f"an evaluation task named {task.name!r} is registered already")
    missing = [r for r in task.requires if not any(t.name == r for t in registry)]
    if missing:
        raise ValueError(f"task {task.name!r} requires {missing}, which are not registered before it")
    registry.append(task)
    return task


def task_names(registry: list | None = None) -> list[str]:
    """The registered task names in run order (e.g. the choices of a ``--tasks`` option)."""
    from . import tasks as _builtin  # noqa: F401 - registers the built-in tasks

    return [t.name for t in (TASKS if registry is None else registry)]


def select_tasks(settings: EvalSettings, registry: list | None = None) -> list[Task]:
    """The tasks to run for ``settings``, in registry order: ``settings.tasks`` if given (unknown names, a missing
    required task or a task the settings switch off are errors), else every task the settings do not switch off."""
    from . import tasks as _builtin  # noqa: F401 - registers the built-in tasks

    registry = TASKS if registry is None else registry
    by_name = {t.name: t for t in registry}
    if settings.tasks is None:
        chosen = [t for t in registry if t.allowed(settings) is None]
    else:
        unknown = [n for n in settings.tasks if n not in by_name]
        if unknown:
            raise ValueError(f"unknown evaluation task(s) {unknown}; the tasks are {list(by_name)}")
        chosen = [t for t in registry if t.name in settings.tasks]
        for t in chosen:
            why = t.allowed(settings)
            if why is not None:
                raise ValueError(f"task {t.name!r} is selected but switched off: {why}")
    names = {t.name for t in chosen}
    for t in chosen:
        missing = [r for r in t.requires if r not in names]
        if missing:
            raise ValueError(f"task {t.name!r} needs task(s) {missing}; select them too")
    return chosen
