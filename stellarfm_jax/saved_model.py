"""A saved model directory: everything needed to run a trained model, framework-free on disk.

Layout::

    MODEL_DIR/
      model.json    {"format": "stellarfm_jax.model", "version": 1, "model": ModelConfig,
                     "checksums": {"params": ..., "model": ..., "vocab": ...}, "metadata": {...}}
      vocab.json    the Vocabulary (names, standardisation, outputs, groups)
      params.npz    float32 parameters, one array per "a/b/c" path of the Flax params tree

NumPy's npz keeps the directory readable without JAX or Orbax (a few MB for the small config). Loading checks
the directory against itself: the parameter tree must be exactly the one the config builds (every array's path
and shape, nothing missing or extra), every parameter finite, and the sha256 checksums recorded at save time
must match: of the parameters (:func:`~stellarfm_jax.formats.params_sha256`), of the architecture in model.json
(every ModelConfig key but ``compute_dtype``, which a caller may change on purpose) and of vocab.json.
Directories written before the checksums were recorded load without that last check. The first mismatch is
named in a :class:`~stellarfm_jax.cli.BadFileError`.

Training checkpoints (optimiser state, resume) are Orbax's business (``checkpoint.py``).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import pathlib
import zipfile
import zlib

import jax
import numpy as np

from .errors import BadFileError, BadInputError, MissingFileError
from .config import ModelConfig, model_config_from_dict
from .formats import (atomic_directory, flatten_params, params_sha256, read_json, sha256_file,  # noqa: F401
                      unflatten_params)
from .nn.model import StellarPerceptron, init_params
from .vocab import Vocabulary

# atomic_directory, flatten_params, unflatten_params and params_sha256 live in formats.py; re-exported here for
# the modules that still import them from this one.
__all__ = ["FORMAT", "VERSION", "SHIPPED_MODELS_DIR", "atomic_directory", "flatten_params", "unflatten_params",
           "params_sha256", "save_model", "load_model", "is_model_dir", "expected_param_shapes", "check_params",
           "shipped_model_names", "resolve_model_dir"]

FORMAT = "stellarfm_jax.model"
VERSION = 1
SHIPPED_MODELS_DIR = pathlib.Path(__file__).resolve().parent / "models"
FILES = ("model.json", "vocab.json", "params.npz")


def save_model(path, params, model_config: ModelConfig, vocab: Vocabulary, metadata: dict | None = None) -> pathlib.Path:
    """Write a model directory atomically (a temporary sibling renamed into place), with the parameters'
    sha256 in ``model.json``."""
    flat = {k: np.asarray(v, dtype=np.float32) for k, v in flatten_params(jax.device_get(params)).items()}
    with atomic_directory(path) as tmp:
        np.savez(tmp / "params.npz", **flat)
        vocab.save(tmp / "vocab.json")
        doc = {"format": FORMAT, "version": VERSION, "model": dataclasses.asdict(model_config),
               "checksums": checksums(flat, model_config, tmp / "vocab.json"), "metadata": metadata or {}}
        (tmp / "model.json").write_text(json.dumps(doc, indent=2))
    return pathlib.Path(path)


def config_sha256(model_config: ModelConfig) -> str:
    """sha256 of the architecture: the canonical JSON of every ModelConfig key but ``compute_dtype``."""
    arch = {k: v for k, v in dataclasses.asdict(model_config).items() if k != "compute_dtype"}
    return hashlib.sha256(json.dumps(arch, sort_keys=True).encode()).hexdigest()


def checksums(flat: dict, model_config: ModelConfig, vocab_path) -> dict:
    """What model.json records at save time: sha256 of the parameters, of the architecture, of vocab.json."""
    return {"params": params_sha256(flat), "model": config_sha256(model_config), "vocab": sha256_file(vocab_path)}


def _check_checksums(path: pathlib.Path, doc: dict, flat: dict, config: ModelConfig) -> None:
    recorded = doc.get("checksums")
    if recorded is None:
        return  # written before checksums were recorded
    if not isinstance(recorded, dict):
        raise BadFileError(f"{path / 'model.json'}: 'checksums' must be an object, got {recorded!r}")
    if "model" in recorded and recorded["model"] != config_sha256(config):
        saved = ((doc.get("metadata") or {}).get("config") or {}).get("model") or {}
        changed = [k for k, v in dataclasses.asdict(config).items() if k in saved and saved[k] != v and k != "compute_dtype"]
        hint = f" (differs from the training config in {', '.join(changed)})" if changed else ""
        raise BadFileError(f"{path / 'model.json'}: the model config is not the one saved with these parameters"
                           f"{hint}; the file was edited")
    if "vocab" in recorded and recorded["vocab"] != sha256_file(path / "vocab.json"):
        raise BadFileError(f"{path / 'vocab.json'}: its sha256 differs from the one recorded in model.json at save "
                           f"time (edited or corrupted)")
    if "params" in recorded and recorded["params"] != params_sha256(flat):
        raise BadFileError(f"{path / 'params.npz'}: the parameters' sha256 differs from the one recorded in "
                           f"model.json at save time (edited or corrupted)")


def is_model_dir(path) -> bool:
    path = pathlib.Path(path)
    return all((path / name).is_file() for name in FILES)


@functools.lru_cache(maxsize=16)
def expected_param_shapes(model_config: ModelConfig, vocab_size: int) -> dict[str, tuple[int, ...]]:
    """{"a/b/c": shape} of the parameter tree the model of ``model_config`` builds (shapes only, nothing
    computed: ``jax.eval_shape`` of its initialisation)."""
    model = StellarPerceptron(model_config, vocab_size)
    tree = jax.eval_shape(lambda key: init_params(model, key), jax.random.key(0))
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {"/".join(str(k.key) for k in keys): tuple(leaf.shape) for keys, leaf in leaves}


def check_params(flat: dict[str, np.ndarray], model_config: ModelConfig, vocab_size: int, where: str) -> None:
    """Refuse parameters that are not the tree ``model_config`` builds (path and shape of every array, nothing
    missing or extra) or that are not finite; the BadFileError names ``where`` and the first mismatch."""
    expected = expected_param_shapes(model_config, vocab_size)
    for key in sorted(set(expected) | set(flat)):
        if key not in flat:
            raise BadFileError(f"{where}: array {key!r} (shape {expected[key]}) is missing; the model config "
                               f"needs it - was model.json or params.npz edited?")
        if key not in expected:
            raise BadFileError(f"{where}: unexpected array {key!r} (shape {tuple(flat[key].shape)}) that the model "
                               f"config does not build - was model.json or params.npz edited?")
        shape = tuple(flat[key].shape)
        if shape != expected[key]:
            raise BadFileError(f"{where}: array {key!r} has shape {shape} but the model config (and a vocabulary "
                               f"of {vocab_size} tokens) needs {expected[key]}")
        if not np.issubdtype(flat[key].dtype, np.floating):
            raise BadFileError(f"{where}: array {key!r} has dtype {flat[key].dtype}, expected float32")
    for key in sorted(flat):
        bad = int(np.size(flat[key]) - np.count_nonzero(np.isfinite(flat[key])))
        if bad:
            raise BadFileError(f"{where}: array {key!r} holds {bad} non-finite value(s) (NaN or inf)")


def _read_params(path: pathlib.Path) -> dict[str, np.ndarray]:
    try:
        npz = np.load(path, allow_pickle=False)
        if not isinstance(npz, np.lib.npyio.NpzFile):
            raise ValueError("a single array, not an archive of named arrays")
        with npz:
            return {k: npz[k] for k in npz.files}
    except (zipfile.BadZipFile, zlib.error, EOFError, ValueError, OSError) as err:
        raise BadFileError(f"{path}: cannot read the parameters ({type(err).__name__}: {err}); the file is "
                           f"truncated or not a NumPy .npz archive") from None


def load_model(path):
    """Read and check a model directory -> (params dict of np.ndarray, ModelConfig, Vocabulary, metadata)."""
    path = pathlib.Path(path)
    if not is_model_dir(path):
        missing = [name for name in FILES if not (path / name).is_file()]
        raise MissingFileError(f"{path} is not a stellarfm_jax model directory (missing {', '.join(missing)}; "
                               f"expected {', '.join(FILES)})")
    doc = read_json(path / "model.json", FORMAT, VERSION)
    try:
        config = model_config_from_dict(doc["model"])
        config.validate()
    except (KeyError, TypeError, BadInputError) as err:
        raise BadFileError(f"{path / 'model.json'}: invalid model config ({err})") from None
    try:
        vocab = Vocabulary.load(path / "vocab.json")
    except (KeyError, TypeError, ValueError) as err:
        raise BadFileError(f"{path / 'vocab.json'}: not a valid vocabulary ({type(err).__name__}: {err})") from None
    flat = _read_params(path / "params.npz")
    check_params(flat, config, vocab.size, str(path / "params.npz"))
    _check_checksums(path, doc, flat, config)
    return unflatten_params(flat), config, vocab, doc.get("metadata", {})


# ------------------------------------------------------------------------------------------------ names
def shipped_model_names() -> list[str]:
    """Names of the models shipped inside the package (``stellarfm_jax/models/<name>/``)."""
    return sorted(p.name for p in SHIPPED_MODELS_DIR.glob("*") if is_model_dir(p))


def resolve_model_dir(spec) -> pathlib.Path:
    """The model directory ``spec`` names: an existing saved-model directory, a training workdir (its ``model/``),
    or the name of a shipped model (``small``). An existing path wins over a shipped name."""
    path = pathlib.Path(spec)
    if path.exists():
        if is_model_dir(path):
            return path
        if is_model_dir(path / "model"):
            return path / "model"
        raise MissingFileError(f"{path} is neither a stellarfm_jax model directory ({', '.join(FILES)}) nor a "
                               f"training workdir containing one at model/")
    if str(spec) in shipped_model_names():
        return SHIPPED_MODELS_DIR / str(spec)
    raise MissingFileError(f"model {str(spec)!r}: no such directory, and no shipped model of that name "
                           f"(shipped: {', '.join(shipped_model_names()) or 'none'})")
