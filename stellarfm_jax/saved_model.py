"""A saved model directory: everything needed to run a trained model, framework-free on disk.

Layout::

    MODEL_DIR/
      model.json    {"format": "stellarfm_jax.model", "version": 1, "model": ModelConfig, "metadata": {...}}
      vocab.json    the Vocabulary (names, standardisation, outputs, groups)
      params.npz    float32 parameters, one array per "a/b/c" path of the Flax params tree

NumPy's npz keeps the directory readable without JAX or Orbax (a few MB for the small config).
Training checkpoints (optimiser state, resume) are Orbax's business (``checkpoint.py``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pathlib
import shutil
import tempfile

import jax
import numpy as np

from .config import ModelConfig, model_config_from_dict
from .vocab import Vocabulary

FORMAT = "stellarfm_jax.model"
VERSION = 1


def flatten_params(params, prefix="") -> dict[str, np.ndarray]:
    flat = {}
    for key, value in params.items():
        path = f"{prefix}/{key}" if prefix else str(key)
        if isinstance(value, dict) or hasattr(value, "items"):
            flat.update(flatten_params(value, path))
        else:
            flat[path] = np.asarray(value)
    return flat


def unflatten_params(flat: dict[str, np.ndarray]) -> dict:
    tree: dict = {}
    for path, value in flat.items():
        node = tree
        parts = path.split("/")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return tree


@contextlib.contextmanager
def atomic_directory(path):
    """Yield a temporary sibling directory of ``path``; on success it replaces ``path`` (a reader never sees a
    half-written directory), on any error it is removed."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp", dir=path.parent))
    try:
        yield tmp
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def params_sha256(params) -> str:
    """sha256 over a params tree's paths, shapes and float32 bytes: the identity of a base model that adapters and
    search heads were trained on."""
    digest = hashlib.sha256()
    for key, value in sorted(flatten_params(jax.device_get(params)).items()):
        arr = np.ascontiguousarray(np.asarray(value, np.float32))
        digest.update(key.encode())
        digest.update(str(arr.shape).encode())
        digest.update(arr.tobytes())
    return digest.hexdigest()


def save_model(path, params, model_config: ModelConfig, vocab: Vocabulary, metadata: dict | None = None) -> pathlib.Path:
    """Write a model directory atomically (a temporary sibling renamed into place)."""
    with atomic_directory(path) as tmp:
        flat = {k: np.asarray(v, dtype=np.float32) for k, v in flatten_params(params).items()}
        np.savez(tmp / "params.npz", **flat)
        vocab.save(tmp / "vocab.json")
        doc = {"format": FORMAT, "version": VERSION, "model": _asdict(model_config), "metadata": metadata or {}}
        (tmp / "model.json").write_text(json.dumps(doc, indent=2))
    return pathlib.Path(path)


def _asdict(cfg: ModelConfig) -> dict:
    import dataclasses

    return dataclasses.asdict(cfg)


def is_model_dir(path) -> bool:
    path = pathlib.Path(path)
    return (path / "model.json").is_file() and (path / "params.npz").is_file() and (path / "vocab.json").is_file()


def load_model(path):
    """Read a model directory -> (params dict of np.ndarray, ModelConfig, Vocabulary, metadata)."""
    path = pathlib.Path(path)
    if not is_model_dir(path):
        raise FileNotFoundError(f"{path} is not a stellarfm_jax model directory (expected model.json, vocab.json, params.npz)")
    doc = json.loads((path / "model.json").read_text())
    if doc.get("format") != FORMAT:
        raise ValueError(f"{path / 'model.json'}: unknown format {doc.get('format')!r}, expected {FORMAT!r}")
    if doc.get("version", 0) > VERSION:
        raise ValueError(f"{path}: model format version {doc['version']} is newer than this stellarfm_jax ({VERSION})")
    with np.load(path / "params.npz") as npz:
        params = unflatten_params({k: npz[k] for k in npz.files})
    return params, model_config_from_dict(doc["model"]), Vocabulary.load(path / "vocab.json"), doc.get("metadata", {})
