"""Training: the library function :func:`fit` and the ``python -m stellarfm_jax.train`` command.

    python -m stellarfm_jax.train --config configs/small.py --workdir runs/NAME [--data FILE.h5] [--set a.b=v ...]

The workdir receives ``config.json``, ``vocab.json``, Orbax checkpoints under ``checkpoints/``,
``metrics.jsonl`` (one JSON record per evaluated epoch), ``loss_curve.png`` and, at the end, the
trained model in the saved-model format under ``model/`` (plus ``model_best/`` when the best
checkpoint by the validation metric is not the last). Running again on an existing workdir resumes
from its latest readable checkpoint and continues exactly as an uninterrupted run would.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import pathlib
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from . import forward
from . import cli
from .errors import BadConfigError, BadInputError, MissingFileError, TrainingDivergedError
from .config import ARCHITECTURE_FIELDS, Config, apply_overrides, load_config
from .data.dataset import Dataset
from .forward import ModelSpec
from .metrics import MONITOR_LABELS, label_metrics, spectra_colour_inputs  # noqa: F401 (re-exported)
from .nn import StellarPerceptron, count_params, init_params
from .optim import make_optimizer, sgdr_learning_rate
from .sampling import SamplingConfig, StarData, output_weight_vector, to_star_data
from .saved_model import save_model
from .steps import (length_buckets, make_eval_loss, make_train_epoch, make_train_step, nll_loss, padding_strata,
                    token_sampler)
from .train_state import TrainState

VAL_KEY_DATA = 2**31 - 1  # fold_in constant for the fixed validation sampling key
DEFAULT_LABELS = MONITOR_LABELS
MAX_STEPS_PER_CALL = 16  # steps per device call: an interrupt is noticed within one call (~seconds on a CPU)
# TrainConfig fields that only steer the host loop (how long to train, when to evaluate and save): they enter no
# compiled program, so runs that differ only in them (e.g. a resume to more epochs) share the jitted functions.
HOST_LOOP_FIELDS = ("epochs", "eval_every_epochs", "checkpoint_every_epochs", "checkpoint_every_minutes",
                    "keep_checkpoints", "best_metric", "val_max_stars", "init_from")


@dataclass
class TrainResult:
    params: dict
    vocab: object
    model_config: object
    config: Config
    history: list = field(default_factory=list)
    workdir: pathlib.Path | None = None
    interrupted: bool = False


# ----------------------------------------------------------------------------- data checks
def check_training_data(dataset: Dataset, config: Config) -> None:
    """Refuse data that cannot train, before any compilation."""
    vocab, train = dataset.vocab, dataset.train
    if len(train) == 0:
        raise BadInputError("the training split is empty")
    if len(dataset.val) == 0:
        raise BadInputError("the validation split is empty (validation metrics and best-checkpoint selection need it)")
    if np.isinf(train.values).any():
        cols = sorted({vocab.names[j] for j in np.nonzero(np.isinf(train.values))[1]})
        raise BadInputError(f"training values contain +-inf in tokens {cols}; use NaN for missing values")
    empty = ~np.isfinite(train.values).any(axis=0)
    if empty.any():
        raise BadInputError(f"tokens with no finite value in the training split (all-NaN columns): "
                         f"{[n for n, e in zip(vocab.names, empty) if e]}")
    weights = output_weight_vector(vocab, _output_weights(config))
    if not np.any(np.asarray(weights) > 0):
        raise BadInputError("no token can be requested as an output (vocabulary outputs / train.output_weights)")


def _output_weights(config: Config) -> tuple:
    """train.output_weights without the tokens that data.drop_tokens removes."""
    return tuple((n, w) for n, w in config.train.output_weights if n not in config.data.drop_tokens)


def token_range(dataset: Dataset) -> dict:
    """Per-token min / max over the training split (physical units; null where a token has no value), saved with
    the model so that inference can flag inputs outside the training range."""
    values = dataset.train.values.astype(np.float64)
    has = np.isfinite(values).any(axis=0)
    lo = np.where(has, np.nanmin(np.where(np.isfinite(values), values, np.inf), axis=0), np.nan)
    hi = np.where(has, np.nanmax(np.where(np.isfinite(values), values, -np.inf), axis=0), np.nan)
    return {"min": [None if np.isnan(x) else float(x) for x in lo], "max": [None if np.isnan(x) else float(x) for x in hi]}


# ----------------------------------------------------------------------------- logging helpers
def _write_loss_curve(history: list[dict], path: pathlib.Path) -> None:
    # A bare Figure: no pyplot, so no global backend switch in the user's session.
    import matplotlib
    from matplotlib.figure import Figure

    with matplotlib.rc_context({"text.usetex": False}):  # some packages (gaiaxpy) switch LaTeX on globally
        fig = Figure(figsize=(6, 4))
        _plot_history(fig.subplots(), [h["epoch"] for h in history], history)
        fig.tight_layout()
        fig.savefig(path, dpi=100)


def _plot_history(ax, epochs, history) -> None:
    ax.plot(epochs, [h["loss"] for h in history], label="train loss")
    if any("val_loss" in h for h in history):
        ax.plot([h["epoch"] for h in history if "val_loss" in h], [h["val_loss"] for h in history if "val_loss" in h],
                label="val loss")
    ax.set_xlabel("epoch")
    ax.set_ylabel("Gaussian NLL (standardised)")
    ax.legend()


def _read_history(path: pathlib.Path, upto_epoch: int) -> list[dict]:
    if not path.exists():
        return []
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in records if r["epoch"] <= upto_epoch]


def _check_resume_config(saved: dict, config: Config) -> None:
    """Resuming may extend the number of epochs; anything else that changes the run is refused."""
    now = config.to_dict()
    for section in ("model", "train", "data"):
        for key, value in saved.get(section, {}).items():
            if section == "train" and key == "epochs":
                continue
            if section == "data" and key == "path":
                continue
            current = now[section].get(key)
            if json.loads(json.dumps(current)) != value:
                raise BadConfigError(
                    f"workdir was trained with {section}.{key}={value!r} but this run asks for {current!r}; "
                    f"use a new --workdir or the same settings (only train.epochs may change on resume)"
                )


# ----------------------------------------------------------------------------- one run's wiring
def model_forward(spec: ModelSpec) -> Callable:
    """``forward_fn(params, values, tokens, requests, dropout_key)`` of the base model, for :func:`steps.nll_loss`."""

    def forward_fn(params, values, tokens, requests, dropout_key):
        return forward.apply(params, values, tokens, requests, spec=spec, dropout_key=dropout_key)

    return forward_fn


def predictor(params, spec: ModelSpec, chunk_size: int | None = None) -> Callable:
    """``predict_fn(values_z, tokens, requests [R]) -> (mean, logvar) [N, R]`` on the host, in chunks (the shape
    :func:`metrics.label_metrics` takes)."""

    def predict_fn(values, tokens, requests):
        requests = jnp.asarray(requests, jnp.int32)
        out = forward.map_chunks(lambda v, t: forward.predict(params, v, t, requests, spec=spec)[:2],
                                 (np.asarray(values, np.float32), np.asarray(tokens, np.int32)), chunk_size)
        return out[0], out[1]

    return predict_fn


def steps_per_call(steps_per_epoch: int, limit: int = MAX_STEPS_PER_CALL) -> int:
    """The largest divisor of ``steps_per_epoch`` that is at most ``limit``: every call runs the same number of
    steps (one compiled program) and an interrupt waits for at most one call."""
    return max(d for d in range(1, min(limit, steps_per_epoch) + 1) if steps_per_epoch % d == 0)


@dataclass
class Run:
    """Everything a training loop needs, built once by :func:`setup_run` (and reused by the benchmarks and tests).

    ``train_chunk(state, data, epoch, first_step) -> (state, metrics)`` runs ``steps_per_call`` steps of an
    epoch (``steps_per_epoch / steps_per_call`` calls make the epoch; the batches are those of the whole-epoch
    scan, so the result does not depend on the call size)."""

    config: Config
    vocab: object
    spec: ModelSpec
    optimizer: object
    state: TrainState
    train_data: StarData
    train_chunk: Callable
    batch_size: int
    steps_per_epoch: int
    steps_per_call: int
    sampling: SamplingConfig
    output_weights: object
    num_devices: int
    platform: str


def setup_run(config: Config, dataset: Dataset, *, steps_limit: int = MAX_STEPS_PER_CALL) -> Run:
    """Model, optimiser, initial state, device data and the jitted training function of ``config`` on
    ``dataset.train`` (data-parallel over all local devices when ``train.data_parallel``)."""
    config.validate()
    check_training_data(dataset, config)
    mcfg, tcfg = config.model, config.train
    vocab = dataset.vocab
    spec = ModelSpec(mcfg, vocab.size)
    devices = jax.devices()
    n_train = len(dataset.train)
    batch_size = min(tcfg.batch_size, n_train)
    batch_sharding = replicated = None
    shards = 1
    if tcfg.data_parallel:
        from jax.sharding import Mesh, NamedSharding, PartitionSpec

        mesh = Mesh(np.array(devices), ("data",))
        batch_size -= batch_size % len(devices)
        if batch_size < len(devices):
            raise BadConfigError(f"data-parallel training on {len(devices)} devices needs at least that many stars per "
                                     f"batch")
        batch_sharding = NamedSharding(mesh, PartitionSpec("data"))
        replicated = NamedSharding(mesh, PartitionSpec())
        shards = len(devices)
    steps_per_epoch = max(1, n_train // batch_size)

    per_call = steps_per_call(steps_per_epoch, steps_limit)
    optimizer, output_weights, train_chunk = _training_programs(
        _program_config(config), vocab, batch_size, steps_per_epoch, shards, batch_sharding, per_call)
    params = init_params(StellarPerceptron(mcfg, vocab.size), jax.random.fold_in(jax.random.key(tcfg.seed), VAL_KEY_DATA - 1))
    if tcfg.init_from:
        params = initial_params_from(tcfg.init_from, mcfg, vocab, params)
    state = TrainState.create(params, optimizer)
    train_data = to_star_data(vocab, dataset.train.values, dataset.train.errors)
    # Committed to their device(s) as a restored checkpoint is: a fresh and a resumed run then call the epoch
    # function with the same input shardings and share one compiled program (else a resume compiles it again).
    state, train_data = jax.device_put((state, train_data), replicated if replicated is not None else devices[0])

    return Run(config, vocab, spec, optimizer, state, train_data, train_chunk, batch_size, steps_per_epoch, per_call,
               SamplingConfig.from_config(config), output_weights, shards, devices[0].platform)


def initial_params_from(spec, model_config, vocab, like):
    """The parameters of the trained model ``spec`` (a shipped model's name, a saved-model directory or a training
    workdir) as a run's starting point, shaped and typed like ``like`` (the run's own initialisation). The model
    must have the run's architecture and vocabulary (the same tokens with the same standardisation, i.e. the same
    prepared data): anything else is refused with the difference named, since its weights would mean nothing."""
    from .saved_model import load_model, resolve_model_dir

    path = resolve_model_dir(spec)
    flat, their_config, their_vocab, _ = load_model(path)
    for key in ARCHITECTURE_FIELDS:
        if getattr(their_config, key) != getattr(model_config, key):
            raise BadConfigError(f"train.init_from={spec!r} ({path}) has model.{key}={getattr(their_config, key)} but "
                                 f"this run's config has {getattr(model_config, key)}; start from a model of the same "
                                 f"architecture")
    if their_vocab.names != vocab.names:
        diff = sorted(set(their_vocab.names) ^ set(vocab.names))
        raise BadConfigError(f"train.init_from={spec!r} ({path}) was trained on other tokens than this run's data "
                             f"({len(their_vocab.names)} vs {len(vocab.names)}; differing: {diff[:8] or 'the order'}); "
                             f"use data of the same schema")
    for what in ("centre", "scale"):
        ours, theirs = getattr(vocab, what), getattr(their_vocab, what)
        if not np.allclose(ours, theirs, rtol=1e-6, atol=0.0):
            worst = int(np.argmax(np.abs(ours - theirs) / np.maximum(np.abs(ours), 1e-300)))
            raise BadConfigError(f"train.init_from={spec!r} ({path}) standardises {vocab.names[worst]!r} with {what} "
                                 f"{theirs[worst]:.6g} but this run's data has {ours[worst]:.6g}: the model was "
                                 f"trained on other prepared data")
    return jax.tree.map(lambda mine, theirs: jnp.asarray(theirs, mine.dtype), like, flat)


def _program_config(config: Config) -> Config:
    """``config`` with the host-loop fields at their defaults: the part of it the compiled programs depend on."""
    defaults = {k: getattr(type(config.train)(), k) for k in HOST_LOOP_FIELDS}
    return dataclasses.replace(config, train=dataclasses.replace(config.train, **defaults))


@functools.lru_cache(maxsize=8)
def _training_programs(config: Config, vocab, batch_size: int, steps_per_epoch: int, shards: int, batch_sharding,
                       steps_per_call: int):
    """(optimizer, output weights, jitted epoch-chunk function) of a run, memoised (the vocabulary by identity):
    fitting the same configuration on the same data set again in one process (a resume, a notebook) reuses the
    traced and compiled programs instead of tracing the model again."""
    optimizer = make_optimizer(config.train, steps_per_epoch)
    output_weights = output_weight_vector(vocab, _output_weights(config))
    return optimizer, output_weights, epoch_function(
        config, vocab, optimizer, output_weights, batch_size=batch_size, steps_per_epoch=steps_per_epoch,
        shards=shards, batch_sharding=batch_sharding, steps_per_call=steps_per_call)


@functools.lru_cache(maxsize=8)
def _validation_loss(config: Config, vocab, chunk: int) -> Callable:
    """The jitted validation loss of a run: its objective on the paper's random contexts (memoised like
    :func:`_training_programs`)."""
    spec = ModelSpec(config.model, vocab.size)
    output_weights = output_weight_vector(vocab, _output_weights(config))
    return make_eval_loss(nll_loss(model_forward(spec)), token_sampler(output_weights, SamplingConfig.from_config(config)),
                          chunk_size=chunk)


def epoch_function(config: Config, vocab, optimizer, output_weights, *, batch_size: int, steps_per_epoch: int,
                   shards: int = 1, batch_sharding=None, steps_per_call: int | None = None) -> Callable:
    """The jitted epoch (or epoch-chunk) function of ``config`` (:func:`steps.make_train_epoch` with the model's
    NLL, the token sampler with the config's task templates, length buckets and micro-batches as configured)."""
    mcfg, tcfg = config.model, config.train
    sampling = SamplingConfig.from_config(config)
    buckets, strata = (), None
    if tcfg.length_buckets > 1:
        buckets = length_buckets(batch_size, mcfg.context_length, tcfg.max_padding, tcfg.length_buckets, shards)
        strata = padding_strata(batch_size, shards)
    loss_fn = nll_loss(model_forward(ModelSpec(mcfg, vocab.size)))
    train_step = make_train_step(loss_fn, optimizer, buckets=buckets, shards=shards,
                                 micro_batch_size=tcfg.micro_batch_size)
    return make_train_epoch(train_step, token_sampler(output_weights, sampling, sampling.templates(vocab), strata),
                            batch_size=batch_size, steps_per_epoch=steps_per_epoch, seed=tcfg.seed,
                            batch_sharding=batch_sharding, steps_per_call=steps_per_call)


def run_epoch(run: Run, state: TrainState, epoch: int, stop_requested: Callable[[], bool] = lambda: False):
    """One epoch in ``steps_per_epoch / steps_per_call`` device calls -> (state, metrics), or (None, None) when
    ``stop_requested()`` turns true between two calls (the epoch is then abandoned)."""
    metrics = []
    for first in range(0, run.steps_per_epoch, run.steps_per_call):
        if stop_requested():
            return None, None
        state, m = run.train_chunk(state, run.train_data, epoch, first)
        metrics.append(m)
    total = sum(float(m["count"]) for m in metrics)
    out = {k: sum(float(m[k]) * float(m["count"]) for m in metrics) / max(total, 1.0) for k in metrics[0] if k != "count"}
    return state, out


class _Interrupt:
    """Turns the first Ctrl-C (SIGINT) into a flag checked between device calls; a second one interrupts at once."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():  # only the main thread may set handlers
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
        return False


# ----------------------------------------------------------------------------- fit
def fit(config: Config, dataset: Dataset, workdir=None, progress: bool = False, log=print) -> TrainResult:
    """Train ``config`` on ``dataset`` (optionally with checkpoints, logs and resume in ``workdir``).

    Returns the final parameters with the vocabulary and the per-evaluation history. Ctrl-C stops at the next
    device call (seconds), checkpoints the last finished epoch and returns with ``interrupted=True``; running
    the same command again resumes from there. A workdir is held by one run at a time
    (:func:`stellarfm_jax.formats.workdir_lock`: a second run is refused naming the first). Fitting the same
    configuration on the same ``dataset`` object again in one process (a notebook, a resume) reuses the jitted
    programs, so it does not trace or compile the model again; every fit starts from the config's initial state.
    """
    if workdir is None:
        return _fit(config, dataset, None, progress, log)
    from .formats import workdir_lock

    with workdir_lock(workdir, log=log):
        return _fit(config, dataset, workdir, progress, log)


def _fit(config: Config, dataset: Dataset, workdir, progress: bool, log) -> TrainResult:
    run = setup_run(config, dataset)
    mcfg, tcfg = config.model, config.train
    vocab, spec, state = run.vocab, run.spec, run.state
    workdir = pathlib.Path(workdir) if workdir is not None else None

    n_val = min(tcfg.val_max_stars, len(dataset.val))
    val = dataset.val.subset(slice(0, n_val))
    val_data = to_star_data(vocab, val.values, val.errors)
    chunk = min(run.batch_size, 1024)
    eval_loss = _validation_loss(_program_config(config), vocab, chunk)
    val_key = jax.random.fold_in(jax.random.key(tcfg.seed), VAL_KEY_DATA)
    label_names = [n for n in DEFAULT_LABELS if n in vocab.names]
    label_inputs = spectra_colour_inputs(vocab, mcfg.context_length)

    start_epoch, history, checkpointer = 0, [], None
    if workdir is not None:
        from .checkpoint import Checkpointer, abstract_like

        workdir.mkdir(parents=True, exist_ok=True)
        config_path = workdir / "config.json"
        if config_path.exists():
            _check_resume_config(json.loads(config_path.read_text()), config)
        config_path.write_text(config.to_json())
        vocab.save(workdir / "vocab.json")
        (workdir / "token_range.json").write_text(json.dumps(token_range(dataset)))
        checkpointer = Checkpointer(workdir / "checkpoints", keep=tcfg.keep_checkpoints,
                                    best_metric=tcfg.best_metric, log=log)
        restored = checkpointer.restore_latest(abstract_like(state))
        if restored is not None:
            start_epoch, state, _record = restored
            log(f"resuming from the checkpoint after epoch {start_epoch} in {workdir}")
        history = _read_history(workdir / "metrics.jsonl", start_epoch)
        (workdir / "metrics.jsonl").write_text("".join(json.dumps(h) + "\n" for h in history))

    log(f"training {config.name}: {count_params(state.params):,} parameters, {len(dataset.train):,} train stars, "
        f"{run.batch_size} per batch x {run.steps_per_epoch} steps/epoch, epochs {start_epoch}->{tcfg.epochs}, "
        f"{run.num_devices} device(s) [{run.platform}]")

    bar = None
    if progress:
        bar = forward.progress_bar(tcfg.epochs, "training", unit="epoch")
        bar.update(start_epoch)
    interrupted = False
    saved_epoch, last_save = start_epoch, time.monotonic()
    previous = None  # the state after the last finished epoch (train_chunk donates its input)

    def save(done: int, st, rank=None):
        nonlocal saved_epoch, last_save
        checkpointer.save(done, st, {"epoch": done}, rank)
        saved_epoch, last_save = done, time.monotonic()

    try:
        with _Interrupt() as interrupt:
            for epoch in range(start_epoch, tcfg.epochs):
                t0 = time.perf_counter()
                previous = jax.tree.map(jnp.copy, state) if workdir is not None else None
                new_state, metrics = run_epoch(run, state, epoch, lambda: interrupt.requested)
                if new_state is None:
                    interrupted, state = True, previous
                    break
                state = new_state
                loss = metrics["loss"]
                seconds = time.perf_counter() - t0
                if not np.isfinite(loss):
                    raise TrainingDivergedError(f"training loss became {loss} in epoch {epoch + 1}; stopping "
                                                    f"(last good checkpoint kept in {workdir})")
                done = epoch + 1
                record = {"epoch": done, "loss": loss, "mse": metrics["mse"],
                          "lr": float(sgdr_learning_rate(epoch, tcfg.learning_rate, tcfg.min_learning_rate,
                                                         tcfg.sgdr_period_epochs)),
                          "stars_per_s": run.steps_per_epoch * run.batch_size / seconds, "epoch_seconds": seconds}
                evaluate = done % tcfg.eval_every_epochs == 0 or done == tcfg.epochs
                if evaluate:
                    val_metrics = eval_loss(state.params, val_data, val_key)
                    record["val_loss"] = float(val_metrics["loss"])
                    record["val_mse"] = float(val_metrics["mse"])
                    if label_names:
                        record.update({f"val_{k}" if k != "label_scatter" else k: v for k, v in label_metrics(
                            predictor(state.params, spec, chunk), vocab, val.values, val.errors, label_inputs,
                            label_names).items()})
                history.append(record)
                if workdir is not None:
                    with open(workdir / "metrics.jsonl", "a") as f:
                        f.write(json.dumps(record) + "\n")
                    overdue = time.monotonic() - last_save > 60.0 * tcfg.checkpoint_every_minutes
                    if done % tcfg.checkpoint_every_epochs == 0 or done == tcfg.epochs or overdue:
                        rank = {"val_loss": record["val_loss"]} if evaluate else None
                        if evaluate and "label_scatter" in record:
                            rank["label_scatter"] = record["label_scatter"]
                        save(done, state, rank)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix({k: f"{record[k]:.4g}" for k in ("loss", "val_loss", "lr", "stars_per_s") if k in record})
                if interrupt.requested:  # noticed at the very end of an epoch: that epoch is finished and kept
                    interrupted = True
                    break
        if interrupted and workdir is not None:
            last = history[-1]["epoch"] if history else start_epoch
            if last > saved_epoch:
                save(last, state)
            log(f"interrupted: checkpoint after epoch {saved_epoch} in {workdir}; run the same command again to resume")
        elif interrupted:
            log("interrupted (no workdir, nothing saved)")
    finally:
        if bar is not None:
            bar.close()
        if checkpointer is not None:
            checkpointer.wait()

    params = jax.device_get(state.params)
    if interrupted:
        if checkpointer is not None:
            checkpointer.close()
        return TrainResult(params, vocab, mcfg, config, history, workdir, interrupted=True)
    if workdir is not None:
        _write_loss_curve(history, workdir / "loss_curve.png")
        meta = {"config": config.to_dict(), "epochs_trained": tcfg.epochs, "provenance": dataset.provenance,
                "final_metrics": history[-1] if history else {}, "token_range": token_range(dataset)}
        save_model(workdir / "model", params, mcfg, vocab, meta)
        best = checkpointer.best_step()
        if best is not None and best != tcfg.epochs:
            best_state, _ = checkpointer.restore(best, abstract_like(state))
            best_meta = dict(meta, epochs_trained=best,
                             final_metrics=next((h for h in history if h["epoch"] == best), {}))
            save_model(workdir / "model_best", jax.device_get(best_state.params), mcfg, vocab, best_meta)
        checkpointer.close()
    return TrainResult(params, vocab, mcfg, config, history, workdir)


def export_checkpoint(workdir, out, epoch: int | None = None, log=print) -> pathlib.Path:
    """Write the checkpoint of ``epoch`` (default: the best by the validation metric, else the latest) of a
    training workdir as a saved-model directory ``out`` - e.g. to use a model while its run goes on."""
    from .checkpoint import Checkpointer
    from .vocab import Vocabulary

    workdir = pathlib.Path(workdir)
    config = Config.from_dict(json.loads((workdir / "config.json").read_text()))
    vocab = Vocabulary.load(workdir / "vocab.json")
    checkpointer = Checkpointer(workdir / "checkpoints", keep=config.train.keep_checkpoints,
                                best_metric=config.train.best_metric, log=log)
    steps = checkpointer.steps()
    if not steps:
        raise MissingFileError(f"no checkpoint in {workdir / 'checkpoints'}")
    epoch = epoch if epoch is not None else (checkpointer.best_step() or steps[-1])
    if epoch not in steps:
        raise BadInputError(f"no checkpoint for epoch {epoch} in {workdir}; available: {steps}")
    # The optimiser state's structure depends only on the params and the optimiser, not on the data size.
    model = StellarPerceptron(config.model, vocab.size)
    abstract = jax.eval_shape(
        lambda key: TrainState.create(init_params(model, key), make_optimizer(config.train, 1)), jax.random.key(0))
    state, _ = checkpointer.restore(epoch, abstract)
    checkpointer.close()
    history = _read_history(workdir / "metrics.jsonl", epoch)
    meta = {"config": config.to_dict(), "epochs_trained": epoch, "exported_from": str(workdir),
            "final_metrics": next((h for h in history if h["epoch"] == epoch), {})}
    if (workdir / "token_range.json").exists():
        meta["token_range"] = json.loads((workdir / "token_range.json").read_text())
    return save_model(out, jax.device_get(state.params), config.model, vocab, meta)


# ----------------------------------------------------------------------------- CLI
def load_training_data(config: Config, data_path: str | None) -> Dataset:
    """Our HDF5 file (``data_path``, else ``config.data.path``) if given, else the embedded real data set of
    ``config.data.schema`` (prepared and cached on first use)."""
    from . import data as data_lib

    path = cli.data_path(data_path or config.data.path or None, config.data.schema)
    return data_lib.read_dataset(path).without_tokens(config.data.drop_tokens)


DESCRIPTION = """Train a model, with checkpoints, logs and resume in a run directory (--workdir).

The workdir receives config.json, vocab.json, checkpoints/, metrics.jsonl (one record per evaluated epoch),
loss_curve.png and, at the end, the trained model under model/ (plus model_best/ when the best checkpoint by the
validation metric is not the last). Running the same command again on an existing workdir resumes from its latest
readable checkpoint (only train.epochs may change). Ctrl-C stops within seconds and keeps the last finished epoch.
One run at a time per workdir."""


def build_parser():
    p = cli.parser("train", DESCRIPTION)
    p.add_argument("--config", default="small", metavar="CONFIG",
                   help="a built-in config (tiny, small, medium, paper) or the path to a .py file defining "
                        "get_config()")
    p.add_argument("--workdir", required=True, metavar="DIR", help="run directory (created; resumed if it exists)")
    p.add_argument("--init-from", default=None, metavar="MODEL",
                   help="start from this trained model's parameters (a shipped model's name, a model directory or a "
                        "workdir) instead of a random initialisation; the same as --set train.init_from=MODEL")
    cli.add_data_arg(p)
    cli.add_set_arg(p)
    cli.add_progress_arg(p)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)

    def work():
        overrides = args.overrides + ([f"train.init_from={args.init_from}"] if args.init_from else [])
        config = apply_overrides(load_config(args.config), overrides)
        dataset = load_training_data(config, args.data)
        result = fit(config, dataset, workdir=args.workdir, progress=not args.no_progress)
        if result.interrupted:
            return 130
        last = result.history[-1] if result.history else {}
        summary = ", ".join(f"{k}={v:.4g}" for k, v in last.items() if k != "epoch" and isinstance(v, float))
        print(f"done: {pathlib.Path(args.workdir) / 'model'} ({summary})")

    return cli.run_command(work)


if __name__ == "__main__":
    sys.exit(main())
