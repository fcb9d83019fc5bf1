"""Ship a trained model inside the package: export a checkpoint of a training workdir to
``stellarfm_jax/models/<name>/`` (saved-model format) and write its ``TRAINING.md``.

    python scripts/ship_model.py --workdir runs/small                 # best checkpoint so far (interim if unfinished)
    python scripts/ship_model.py --workdir runs/small --epoch 150     # a given checkpoint
    python scripts/ship_model.py --workdir runs/gpu --trained-on "NVIDIA H200, bf16" --command "python -m ..."

The model's metadata and TRAINING.md record the exact training command, the config, the data file's sha256
(and the source file's), the epochs trained out of the planned epochs (``interim`` while the run is
unfinished), the training time summed from ``metrics.jsonl``, where it was trained, the final metrics, and what
``invert`` uses by default: the prior (a Gaussian mixture fitted on the train split) and the model error (the residual
covariance on train stars, the systematic floor calibrated on the validation split).

    python scripts/ship_model.py --refresh-inversion stellarfm_jax/models/small  # only those, in place
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from stellarfm_jax.data import default_dataset_path, read_dataset  # noqa: E402
from stellarfm_jax.data.library import sha256_of  # noqa: E402
from stellarfm_jax.evaluation.inversion import observed_names  # noqa: E402
from stellarfm_jax.inference import StellarModel  # noqa: E402
from stellarfm_jax.inversion import (InversionPrior, calibrate_model_error, default_free_names,  # noqa: E402
                                     measure_model_error)
from stellarfm_jax.saved_model import load_model, save_model  # noqa: E402
from stellarfm_jax.train import export_checkpoint  # noqa: E402


def training_markdown(meta: dict) -> str:
    metrics = meta.get("final_metrics", {})
    rows = "\n".join(f"| {k} | {v:.6g} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in metrics.items())
    status = (f"**INTERIM**: exported at epoch {meta['epochs_trained']} of {meta['epochs_planned']} while the run was "
              "still going; replace it with the final one by running the same command when the run ends."
              if meta["interim"] else f"Final: all {meta['epochs_planned']} planned epochs.")
    start = meta.get("started_from")
    stage = "" if not start else (
        f"- Started from (`train.init_from={start['spec']}`): the model `{start['model_dir']}` (params sha256 "
        f"`{start['params_sha256']}`), itself trained {start['epochs_trained']} epochs "
        f"({start['training_seconds'] / 3600:.2f} h summed) with `{start['training_command']}` on "
        f"{start['trained_on']}. **In all: {start['epochs_trained'] + meta['epochs_trained']} epochs, "
        f"{(start['training_seconds'] + meta['training_seconds']) / 3600:.2f} h summed.**\n")
    return f"""# Shipped model `{meta['shipped_name']}`

{status}

- Training command: `{meta['training_command']}`
{stage}- Trained on: {meta['trained_on']}
- Epochs trained: {meta['epochs_trained']} of {meta['epochs_planned']} (training time summed over those epochs:
  {meta['training_seconds'] / 3600:.2f} h)
- Data file: `{meta['data_file']}`, sha256 `{meta['data_sha256']}`
- Data source: {meta['data_source']}, sha256 `{meta['data_source_sha256']}`
- Exported from `{meta['exported_from']}` on {meta['shipped_date']} with
  `{meta['ship_command']}`
- Load it with `stellarfm_jax.pretrained("{meta['shipped_name']}")`; evaluate it with
  `python -m stellarfm_jax.evaluate --model {meta['shipped_name']} --out runs/eval_{meta['shipped_name']}`
  (docs/evaluation.md holds the latest evaluation).

## Metrics at the exported epoch (validation split, from metrics.jsonl)

| metric | value |
|---|---|
{rows}

## Config

```json
{json.dumps(meta['config'], indent=1)}
```
"""


def training_command(config: dict, workdir) -> str:
    """The ``python -m stellarfm_jax.train`` command that reproduces ``config``: the named config plus a
    ``--set`` for every field that differs from it (or ``--config``-less fields when the name is unknown)."""
    from stellarfm_jax.config import load_config

    name = config.get("name", "small")
    try:
        base = json.loads(json.dumps(load_config(name).to_dict()))  # tuples -> lists, as in config.json
    except (ValueError, FileNotFoundError, KeyError):
        base = {}
    sets = []
    for section in ("model", "train", "data"):
        for key, value in config.get(section, {}).items():
            if base.get(section, {}).get(key) != value:
                text = json.dumps(value) if isinstance(value, (list, dict)) else str(value)
                sets.append(f"--set {section}.{key}={text}")
    return " ".join([f"python -m stellarfm_jax.train --config {name} --workdir {workdir}"] + sets)


def inversion_metadata(model, dataset, data_name: str, calibration_stars: int = 500, log=print) -> dict:
    """What ``invert(prior="auto", model_error="auto")`` uses, so a shipped model inverts the same way without the
    data set at hand: the prior (a Gaussian mixture on the train split) and the model error (the covariance of the
    observed tokens' residuals on train stars, its systematic floor calibrated on ``calibration_stars`` of the
    validation split)."""
    free = default_free_names(model.vocab)
    prior = InversionPrior.fit(dataset.train.values, model.vocab, free)
    prior.info["source"] = f"train split of {data_name}"
    t0 = time.perf_counter()
    error = measure_model_error(model, dataset.train.values, dataset.train.errors, observed_names(model.vocab), free)
    error = calibrate_model_error(model, error, dataset.val.values, dataset.val.errors, n_stars=calibration_stars,
                                  prior=prior)
    error.info["source"] = f"train split (covariance) and validation split (floor) of {data_name}"
    log(f"[ship] inversion model error: {len(error.names)} tokens, floor "
        + ", ".join(f"{n} {f:.3g}" for n, f in zip(error.free, error.floor)) + f" ({time.perf_counter() - t0:.0f} s)")
    return {"inversion_prior": prior.to_dict(), "inversion_model_error": error.to_dict()}


def refresh_inversion(dest, data: str | None = None) -> pathlib.Path:
    """Recompute a shipped model's inversion metadata (prior and model error) in place; its parameters and the
    rest of its metadata are unchanged."""
    dest = pathlib.Path(dest)
    params, model_config, vocab, meta = load_model(dest)
    data_path = pathlib.Path(data or default_dataset_path(schema=vocab.schema))
    meta.update(inversion_metadata(StellarModel(params, model_config, vocab, meta), read_dataset(data_path),
                                   data_path.name))
    meta["inversion_refreshed"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    record = (dest / "TRAINING.md").read_text() if (dest / "TRAINING.md").is_file() else None
    save_model(dest, params, model_config, vocab, meta)  # a new directory: the training record is put back
    dest.chmod(0o755)
    if record is not None:
        (dest / "TRAINING.md").write_text(record)
    return dest


def summed_epoch_seconds(workdir, upto_epoch: int) -> float:
    """The training time of a workdir's first ``upto_epoch`` epochs, summed from its metrics.jsonl."""
    lines = (pathlib.Path(workdir) / "metrics.jsonl").read_text().splitlines()
    return float(sum(h.get("epoch_seconds", 0.0) for h in map(json.loads, filter(str.strip, lines))
                     if h["epoch"] <= upto_epoch))


def started_from(spec: str) -> dict:
    """What a run with ``train.init_from=spec`` started from: the model's directory, parameter checksum and its
    own training record (read before anything is shipped over it)."""
    from stellarfm_jax.saved_model import resolve_model_dir

    path = resolve_model_dir(spec)
    doc = json.loads((path / "model.json").read_text())
    meta = doc.get("metadata", {})
    # a training workdir's model/: its time is in the run's log
    if "training_seconds" not in meta and path.name == "model" and (path.parent / "metrics.jsonl").is_file():
        meta["training_seconds"] = summed_epoch_seconds(path.parent, meta.get("epochs_trained", 0))
    return {"spec": spec, "model_dir": str(path.relative_to(REPO) if path.is_relative_to(REPO) else path),
            "params_sha256": sha256_of(path / "params.npz"), "epochs_trained": int(meta.get("epochs_trained", 0)),
            "training_seconds": float(meta.get("training_seconds", 0.0)),
            "training_command": meta.get("training_command", "unknown"), "trained_on": meta.get("trained_on", "unknown")}


def ship(workdir, name: str = "small", epoch: int | None = None, data: str | None = None, command: str | None = None,
         trained_on: str = "CPU (2 cores, float32)", dest=None) -> pathlib.Path:
    workdir = pathlib.Path(workdir)
    dest = pathlib.Path(dest) if dest else REPO / "stellarfm_jax" / "models" / name
    with tempfile.TemporaryDirectory() as tmp:
        exported = export_checkpoint(workdir, pathlib.Path(tmp) / "model", epoch=epoch)
        params, model_config, vocab, meta = load_model(exported)
    config = meta["config"]
    data_path = pathlib.Path(data or config["data"].get("path") or default_dataset_path(schema=config["data"]["schema"]))
    dataset = read_dataset(data_path)
    provenance = dataset.provenance
    planned = int(config["train"]["epochs"])
    meta.update(
        shipped_name=name, epochs_planned=planned, interim=meta["epochs_trained"] < planned,
        training_command=command or training_command(config, workdir),
        trained_on=trained_on, data_file=data_path.name, data_sha256=sha256_of(data_path),
        data_source=provenance.get("file", provenance.get("source")), data_source_sha256=provenance.get("source_sha256"),
        training_seconds=summed_epoch_seconds(workdir, meta["epochs_trained"]),
        shipped_date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        ship_command="python scripts/ship_model.py " + " ".join(sys.argv[1:]),
    )
    if config["train"].get("init_from"):
        meta["started_from"] = started_from(config["train"]["init_from"])
    meta.update(inversion_metadata(StellarModel(params, model_config, vocab, meta), dataset, data_path.name))
    save_model(dest, params, model_config, vocab, meta)
    dest.chmod(0o755)  # the atomic save's temporary folder is private; a shipped model is package data
    (dest / "TRAINING.md").write_text(training_markdown(meta))
    return dest


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", default=None, help="training workdir (config.json, checkpoints/, metrics.jsonl)")
    parser.add_argument("--name", default="small", help="shipped model name (folder under stellarfm_jax/models/)")
    parser.add_argument("--epoch", type=int, default=None, help="checkpoint epoch (default: best by validation, else latest)")
    parser.add_argument("--data", default=None, help="the HDF5 file trained on (default: the config's / the embedded set)")
    parser.add_argument("--command", default=None, help="the exact training command (default: reconstructed from the config)")
    parser.add_argument("--trained-on", default="CPU (2 cores, float32)", help="where it was trained")
    parser.add_argument("--refresh-inversion", default=None, metavar="MODEL_DIR",
                        help="only recompute the inversion prior and model error of this shipped model, in place")
    args = parser.parse_args(argv)
    if args.refresh_inversion:
        print(f"refreshed the inversion metadata of {refresh_inversion(args.refresh_inversion, args.data)}")
        return 0
    if not args.workdir:
        parser.error("--workdir is required (or --refresh-inversion MODEL_DIR)")
    dest = ship(args.workdir, args.name, args.epoch, args.data, args.command, args.trained_on)
    meta = json.loads((dest / "model.json").read_text())["metadata"]
    print(f"shipped {dest} (epoch {meta['epochs_trained']} of {meta['epochs_planned']}{', interim' if meta['interim'] else ''})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
