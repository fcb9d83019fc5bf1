"""Training: the library function :func:`fit` and the ``python -m stellarfm_jax.train`` command.

    python -m stellarfm_jax.train --config configs/small.py --workdir runs/NAME [--data FILE.h5] [--set a.b=v ...]

The workdir receives ``config.json``, ``vocab.json``, Orbax checkpoints under ``checkpoints/``,
``metrics.jsonl`` (one JSON record per evaluated epoch), ``loss_curve.png`` and, at the end, the
trained model in the saved-model format under ``model/`` (plus ``model_best/`` when the best
checkpoint by the validation metric is not the last). Running again on an existing workdir resumes
from its latest readable checkpoint and continues exactly as an uninterrupted run would.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time
from dataclasses import dataclass, field

import jax
import jax.numpy as jnp
import numpy as np

from .cli import USER_ERRORS, report
from .config import Config, apply_overrides, load_config
from .data.dataset import Dataset
from .nn import StellarPerceptron, count_params, init_params
from .optim import make_optimizer, sgdr_learning_rate
from .sampling import output_weight_vector, to_star_data
from .saved_model import save_model
from .steps import make_eval_loss, make_predict, make_train_epoch
from .train_state import TrainState
from .vocab import evenly_spaced, robust_scale

VAL_KEY_DATA = 2**31 - 1  # fold_in constant for the fixed validation sampling key
DEFAULT_LABELS = ("teff", "logg", "m_h")


@dataclass
class TrainResult:
    params: dict
    vocab: object
    model_config: object
    config: Config
    history: list = field(default_factory=list)
    workdir: pathlib.Path | None = None


# ----------------------------------------------------------------------------- validation metrics
def spectra_colour_inputs(vocab, context_length: int) -> list[str]:
    """The "spectra + colours" input set used to monitor label accuracy: every colour token and as many
    spectrum tokens as fit in the context, evenly spaced over the spectrum."""
    colours = vocab.group_names("colour")
    return evenly_spaced(vocab.group_names("spectrum"), max(context_length - len(colours), 0)) + colours


def label_metrics(predict, params, vocab, values, errors, input_names, label_names) -> dict:
    """Robust scatter (1.4826 MAD), bias and robust z-score std of labels predicted from ``input_names``.

    values/errors: raw [N, V]. Only stars with a finite true label enter each label's numbers.
    """
    in_ids = vocab.ids(input_names)
    cols = in_ids - 1
    z, tokens, _ = vocab.standardize(values[:, cols], in_ids)
    label_ids = vocab.ids(label_names)
    requests = np.broadcast_to(label_ids, (values.shape[0], len(label_ids)))
    mean, logvar = predict(params, jnp.asarray(z), jnp.asarray(tokens), jnp.asarray(requests))
    pred = vocab.destandardize(np.asarray(mean), requests)
    sigma = vocab.destandardize_error(np.sqrt(np.exp(np.asarray(logvar, np.float64))), requests)
    out = {}
    for j, name in enumerate(label_names):
        truth = values[:, label_ids[j] - 1].astype(np.float64)
        ok = np.isfinite(truth) & np.isfinite(pred[:, j])
        if ok.sum() < 2:
            continue
        resid = pred[ok, j] - truth[ok]
        label_err = np.nan_to_num(errors[ok, label_ids[j] - 1].astype(np.float64))
        zscore = resid / np.sqrt(sigma[ok, j] ** 2 + label_err**2)
        out[f"{name}_scatter"] = float(robust_scale(resid))
        out[f"{name}_bias"] = float(np.median(resid))
        out[f"{name}_z_std"] = float(robust_scale(zscore))
    scaled = [out[f"{n}_scatter"] / vocab.scale[vocab.token_id(n) - 1] for n in label_names if f"{n}_scatter" in out]
    if scaled:
        out["label_scatter"] = float(np.mean(scaled))
    return out


# ----------------------------------------------------------------------------- data checks
def check_training_data(dataset: Dataset, config: Config) -> None:
    """Refuse data that cannot train, before any compilation."""
    vocab, train = dataset.vocab, dataset.train
    if len(train) == 0:
        raise ValueError("the training split is empty")
    if len(dataset.val) == 0:
        raise ValueError("the validation split is empty (validation metrics and best-checkpoint selection need it)")
    if np.isinf(train.values).any():
        cols = sorted({vocab.names[j] for j in np.nonzero(np.isinf(train.values))[1]})
        raise ValueError(f"training values contain +-inf in tokens {cols}; use NaN for missing values")
    empty = ~np.isfinite(train.values).any(axis=0)
    if empty.any():
        raise ValueError(f"tokens with no finite value in the training split (all-NaN columns): "
                         f"{[n for n, e in zip(vocab.names, empty) if e]}")
    weights = output_weight_vector(vocab, _output_weights(config))
    if not np.any(np.asarray(weights) > 0):
        raise ValueError("no token can be requested as an output (vocabulary outputs / train.output_weights)")


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
                raise ValueError(
                    f"workdir was trained with {section}.{key}={value!r} but this run asks for {current!r}; "
                    f"use a new --workdir or the same settings (only train.epochs may change on resume)"
                )


# ----------------------------------------------------------------------------- fit
def fit(config: Config, dataset: Dataset, workdir=None, progress: bool = False, log=print) -> TrainResult:
    """Train ``config`` on ``dataset`` (optionally with checkpoints, logs and resume in ``workdir``).

    Returns the final parameters with the vocabulary and the per-evaluation history.
    """
    config.validate()
    check_training_data(dataset, config)
    mcfg, tcfg = config.model, config.train
    vocab = dataset.vocab
    workdir = pathlib.Path(workdir) if workdir is not None else None

    model = StellarPerceptron(mcfg, vocab.size)
    devices = jax.devices()
    n_train = len(dataset.train)
    batch_size = min(tcfg.batch_size, n_train)
    batch_sharding = replicated = None
    if tcfg.data_parallel:
        from jax.sharding import Mesh, NamedSharding, PartitionSpec

        mesh = Mesh(np.array(devices), ("data",))
        batch_size -= batch_size % len(devices)
        if batch_size < len(devices):
            raise ValueError(f"data-parallel training on {len(devices)} devices needs at least that many stars per batch")
        batch_sharding = NamedSharding(mesh, PartitionSpec("data"))
        replicated = NamedSharding(mesh, PartitionSpec())
    steps_per_epoch = max(1, n_train // batch_size)

    optimizer = make_optimizer(tcfg, steps_per_epoch)
    params = init_params(model, jax.random.fold_in(jax.random.key(tcfg.seed), VAL_KEY_DATA - 1))
    state = TrainState.create(params, optimizer)
    if replicated is not None:
        state = jax.device_put(state, replicated)

    sample_kwargs = dict(context_length=mcfg.context_length, max_padding=tcfg.max_padding,
                         num_outputs=tcfg.outputs_per_star, exclude_targets=tcfg.exclude_target_from_context)
    output_weights = output_weight_vector(vocab, _output_weights(config))
    train_data = to_star_data(vocab, dataset.train.values, dataset.train.errors)
    if replicated is not None:
        train_data = jax.device_put(train_data, replicated)
    train_epoch = make_train_epoch(model, optimizer, batch_size=batch_size, steps_per_epoch=steps_per_epoch,
                                   output_weights=output_weights, seed=tcfg.seed, sample_kwargs=sample_kwargs,
                                   batch_sharding=batch_sharding, num_buckets=tcfg.length_buckets,
                                   micro_batch_size=tcfg.micro_batch_size)

    n_val = min(tcfg.val_max_stars, len(dataset.val))
    val = dataset.val.subset(slice(0, n_val))
    val_data = to_star_data(vocab, val.values, val.errors)
    chunk = min(batch_size, 1024)
    eval_loss = make_eval_loss(model, output_weights=output_weights,
                               sample_kwargs={**sample_kwargs, "max_padding": tcfg.max_padding}, chunk_size=chunk)
    predict = make_predict(model, chunk)
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

    log(f"training {config.name}: {count_params(state.params):,} parameters, {n_train:,} train stars, "
        f"{batch_size} per batch x {steps_per_epoch} steps/epoch, epochs {start_epoch}->{tcfg.epochs}, "
        f"{len(devices) if tcfg.data_parallel else 1} device(s) [{devices[0].platform}]")

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=tcfg.epochs, initial=start_epoch, unit="epoch", dynamic_ncols=True)
    try:
        for epoch in range(start_epoch, tcfg.epochs):
            t0 = time.perf_counter()
            state, metrics = train_epoch(state, train_data, epoch)
            loss = float(metrics["loss"])
            seconds = time.perf_counter() - t0
            if not np.isfinite(loss):
                raise FloatingPointError(f"training loss became {loss} in epoch {epoch + 1}; stopping "
                                         f"(last good checkpoint kept in {workdir})")
            done = epoch + 1
            record = {"epoch": done, "loss": loss, "mse": float(metrics["mse"]),
                      "lr": float(sgdr_learning_rate(epoch, tcfg.learning_rate, tcfg.min_learning_rate,
                                                     tcfg.sgdr_period_epochs)),
                      "stars_per_s": steps_per_epoch * batch_size / seconds, "epoch_seconds": seconds}
            evaluate = done % tcfg.eval_every_epochs == 0 or done == tcfg.epochs
            if evaluate:
                val_metrics = eval_loss(state.params, val_data, val_key)
                record["val_loss"] = float(val_metrics["loss"])
                record["val_mse"] = float(val_metrics["mse"])
                if label_names:
                    record.update({f"val_{k}" if k != "label_scatter" else k: v for k, v in label_metrics(
                        predict, state.params, vocab, val.values, val.errors, label_inputs, label_names).items()})
            history.append(record)
            if workdir is not None:
                with open(workdir / "metrics.jsonl", "a") as f:
                    f.write(json.dumps(record) + "\n")
                if done % tcfg.checkpoint_every_epochs == 0 or done == tcfg.epochs:
                    rank = {"val_loss": record["val_loss"]} if evaluate else None
                    if evaluate and "label_scatter" in record:
                        rank["label_scatter"] = record["label_scatter"]
                    checkpointer.save(done, state, {"epoch": done}, rank)
            if bar is not None:
                bar.update(1)
                bar.set_postfix({k: f"{record[k]:.4g}" for k in ("loss", "val_loss", "lr", "stars_per_s") if k in record})
    finally:
        if bar is not None:
            bar.close()
        if checkpointer is not None:
            checkpointer.wait()

    params = jax.device_get(state.params)
    if workdir is not None:
        _write_loss_curve(history, workdir / "loss_curve.png")
        meta = {"config": config.to_dict(), "epochs_trained": tcfg.epochs, "provenance": dataset.provenance,
                "final_metrics": history[-1] if history else {}, "token_range": token_range(dataset)}
        save_model(workdir / "model", params, mcfg, vocab, meta)
        best = checkpointer.best_step()
        if best is not None and best != tcfg.epochs:
            _, best_state, _ = (best, *checkpointer.restore(best, abstract_like(state)))
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
        raise FileNotFoundError(f"no checkpoint in {workdir / 'checkpoints'}")
    epoch = epoch if epoch is not None else (checkpointer.best_step() or steps[-1])
    if epoch not in steps:
        raise ValueError(f"no checkpoint for epoch {epoch} in {workdir}; available: {steps}")
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
    """Our HDF5 file if given, else the embedded real data set (prepared and cached on first use)."""
    from . import data as data_lib

    path = data_path or config.data.path
    if not path:
        if not hasattr(data_lib, "default_dataset_path"):
            raise RuntimeError("no --data given and the embedded data set is not available in this installation")
        path = data_lib.default_dataset_path(schema=config.data.schema)
    return data_lib.read_dataset(path).without_tokens(config.data.drop_tokens)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stellarfm_jax.train", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="small", help="path to a config .py file, or tiny|small|medium|paper")
    parser.add_argument("--workdir", required=True, help="run directory (created; resumed if it exists)")
    parser.add_argument("--data", default=None, help="our HDF5 data file (default: the embedded real data set)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config field, e.g. --set train.epochs=3 (repeatable)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    try:
        config = apply_overrides(load_config(args.config), args.overrides)
        dataset = load_training_data(config, args.data)
        result = fit(config, dataset, workdir=args.workdir, progress=not args.no_progress)
    except USER_ERRORS as err:
        return report(err)
    last = result.history[-1] if result.history else {}
    summary = ", ".join(f"{k}={v:.4g}" for k, v in last.items() if k != "epoch" and isinstance(v, float))
    print(f"done: {args.workdir}/model ({summary})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
