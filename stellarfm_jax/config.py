"""Typed, frozen configuration.

A run is described by one :class:`Config` built by a Python function ``get_config() -> Config``: the built-in
ones live in the package (``stellarfm_jax/configs/{tiny,small,medium,paper}.py``), a user's own in any ``.py``
file; values can be overridden on the command line with ``--set a.b=value``. :meth:`Config.validate` checks every
key up front (types and ranges) and raises :class:`stellarfm_jax.cli.BadConfigError` naming the key and its valid
range, before any data is read or anything is compiled.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import json
import math
import pathlib
import typing
from dataclasses import dataclass, field

from .errors import BadConfigError, MissingFileError
from .configs import BUILTIN as BUILTIN_CONFIGS


# The fields that shape the parameters (dropout and the compute dtype do not): a model to start from must share them.
ARCHITECTURE_FIELDS = ("embedding_dim", "encoder_heads", "encoder_dense", "encoder_blocks", "decoder_heads",
                       "decoder_dense", "decoder_blocks", "context_length")


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of the original model (original_spec §1); defaults are the paper's."""

    embedding_dim: int = 128
    encoder_heads: int = 16  # block k uses heads // 2**k (original rule)
    encoder_dense: int = 1024  # block k uses dense // 2**k
    encoder_blocks: int = 2
    decoder_heads: int = 16
    decoder_dense: int = 3096  # also sets the head MLP: G, G/2, G/4, G/8
    decoder_blocks: int = 3
    dropout: float = 0.1
    context_length: int = 64
    # "float32" or "bfloat16" (params stay float32); "float64" only for numerical checks under jax.enable_x64.
    compute_dtype: str = "float32"

    def encoder_block_shapes(self) -> list[tuple[int, int]]:
        """(heads, dense) of each encoder block."""
        return [(self.encoder_heads // 2**k, self.encoder_dense // 2**k) for k in range(self.encoder_blocks)]

    def decoder_block_shapes(self) -> list[tuple[int, int]]:
        """(heads, dense) of each decoder block."""
        return [(self.decoder_heads // 2**k, self.decoder_dense // 2**k) for k in range(self.decoder_blocks)]

    def head_widths(self) -> list[int]:
        """Hidden widths of the output MLP: G, G/2, G/4, G/8."""
        return [self.decoder_dense // 2**k for k in range(4)]

    def validate(self) -> None:
        _check_types(self, "model")
        for key in ARCHITECTURE_FIELDS:
            _check_at_least(self, "model", key, 1)
        for name, k, (heads, dense) in [("encoder", k, s) for k, s in enumerate(self.encoder_block_shapes())] + [
            ("decoder", k, s) for k, s in enumerate(self.decoder_block_shapes())
        ]:
            if heads < 1 or self.embedding_dim % heads:
                raise BadConfigError(
                    f"model.{name}_heads: every block needs a head count >= 1 dividing embedding_dim="
                    f"{self.embedding_dim} (block k uses {name}_heads // 2**k); got {heads} in block {k}"
                )
            if dense < 1:
                raise BadConfigError(f"model.{name}_dense is too small for its halving rule over "
                                     f"{getattr(self, name + '_blocks')} blocks (got {dense} in the last block)")
        if min(self.head_widths()) < 1:
            raise BadConfigError(f"model.decoder_dense must be >= 8 (the output head uses decoder_dense / 8), "
                                 f"got {self.decoder_dense}")
        if self.compute_dtype not in ("float32", "bfloat16", "float64"):
            raise BadConfigError(f"model.compute_dtype must be 'float32' or 'bfloat16' ('float64' for numerical "
                                 f"checks), got {self.compute_dtype!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise BadConfigError(f"model.dropout must lie in [0, 1), got {self.dropout}")


# Task-aware context templates (stellarfm_jax.sampling); "half_spectrum" is blue -> red and red -> blue, half each.
TASK_TEMPLATE_NAMES = ("labels_to_spectrum", "spectrum_to_labels", "sparse_spectrum_to_labels", "half_spectrum")


def validate_task_probabilities(items, where: str = "task_probabilities") -> None:
    """((name, p), ...): known, distinct template names, finite p >= 0, sum <= 1; else a BadConfigError."""
    names = []
    for item in items:
        try:
            ok = len(item) == 2 and item[0] in TASK_TEMPLATE_NAMES and math.isfinite(item[1]) and item[1] >= 0
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise BadConfigError(f"{where} entries must be (template, probability >= 0) with template among "
                                 f"{TASK_TEMPLATE_NAMES}, got {item!r}")
        names.append(item[0])
    if len(set(names)) != len(names):
        raise BadConfigError(f"{where} names a template twice: {names}")
    total = sum(float(p) for _, p in items)
    if total > 1.0 + 1e-9:
        raise BadConfigError(f"{where} must sum to at most 1 (the rest is the paper's random subset), got {total}")


@dataclass(frozen=True)
class TrainConfig:
    """Training procedure; defaults reproduce the paper's (original_spec §5.1)."""

    batch_size: int = 1024
    epochs: int = 4096
    learning_rate: float = 1e-4
    min_learning_rate: float = 1e-10
    sgdr_period_epochs: int = 512  # torch CosineAnnealingWarmRestarts(T_0), stepped once per epoch
    weight_decay: float = 0.01
    max_padding: int = 60  # trailing padding p ~ U{0..max_padding-1} (original outputs_padding)
    outputs_per_star: int = 1  # R requests per star per step, drawn without replacement
    # Per-token output sampling weights as ((name, weight), ...); unnamed tokens weigh 1.
    output_weights: tuple[tuple[str, float], ...] = ()
    # Excluding the requested token from the context (true masked modelling); off = the original.
    exclude_target_from_context: bool = False
    seed: int = 0
    eval_every_epochs: int = 1
    checkpoint_every_epochs: int = 1
    # Also checkpoint at the end of any epoch that finishes more than this many minutes after the last save.
    checkpoint_every_minutes: float = 10.0
    keep_checkpoints: int = 3
    # Validation metric for "best" checkpoint: "val_loss" or "label_scatter" (mean scaled label scatter).
    best_metric: str = "val_loss"
    val_max_stars: int = 4096  # validation subset size (fixed, deterministic)
    data_parallel: bool = False  # shard the batch over all local devices (jax.sharding Mesh)
    # > 1: stratify the random padding over the batch (each star's padding keeps its U{0..P-1} marginal)
    # and run the model per bucket on the context slots that can hold real tokens (~35% fewer FLOPs for 4).
    length_buckets: int = 1
    # > 0: accumulate each step's gradient over micro-batches of about this many stars (same step; on a
    # CPU, small micro-batches keep the activations in cache; on a GPU leave 0 = the whole batch at once).
    micro_batch_size: int = 0
    # Task-aware contexts (stellarfm_jax.sampling.task_templates): ((template, probability), ...) with templates
    # among TASK_TEMPLATE_NAMES; the rest of the probability is the paper's random subset; () = off (the paper).
    task_probabilities: tuple[tuple[str, float], ...] = ()
    # labels_to_spectrum: probability that logebv (resp. the colours) join the labels in the context.
    task_logebv_probability: float = 0.5
    task_colour_probability: float = 0.0
    # Start from a trained model's parameters instead of a random initialisation (a shipped model's name, a
    # saved-model directory or a training workdir); the architecture and vocabulary must match. "" = random.
    init_from: str = ""

    def validate(self) -> None:
        _check_types(self, "train")
        for key in ("batch_size", "epochs", "max_padding", "outputs_per_star", "sgdr_period_epochs",
                    "eval_every_epochs", "checkpoint_every_epochs", "keep_checkpoints", "val_max_stars",
                    "length_buckets"):
            _check_at_least(self, "train", key, 1)
        _check_at_least(self, "train", "micro_batch_size", 0)
        for key in ("learning_rate", "min_learning_rate", "weight_decay"):
            value = getattr(self, key)
            if not math.isfinite(value) or value < 0 or (key == "learning_rate" and value == 0):
                limit = "> 0" if key == "learning_rate" else ">= 0"
                raise BadConfigError(f"train.{key} must be a finite number {limit}, got {value}")
        if self.min_learning_rate > self.learning_rate:
            raise BadConfigError(f"train.min_learning_rate ({self.min_learning_rate}) must not exceed "
                                 f"train.learning_rate ({self.learning_rate})")
        if self.best_metric not in ("val_loss", "label_scatter"):
            raise BadConfigError(f"train.best_metric must be 'val_loss' or 'label_scatter', got {self.best_metric!r}")
        for item in self.output_weights:
            if (not isinstance(item, tuple) or len(item) != 2 or not isinstance(item[0], str)
                    or not isinstance(item[1], (int, float)) or not math.isfinite(item[1]) or item[1] < 0):
                raise BadConfigError(f"train.output_weights entries must be (name, finite weight >= 0), got {item!r}")
        validate_task_probabilities(self.task_probabilities, "train.task_probabilities")
        for key in ("task_logebv_probability", "task_colour_probability"):
            if not 0.0 <= getattr(self, key) <= 1.0:
                raise BadConfigError(f"train.{key} must lie in [0, 1], got {getattr(self, key)}")


@dataclass(frozen=True)
class DataConfig:
    """Where the training data come from."""

    path: str = ""  # our HDF5 file; empty = the embedded real data set (prepared and cached on first use)
    schema: str = "xp_coarse"  # stellarfm_jax.schemas.DEFAULT_SCHEMA
    # Tokens removed from the data and the vocabulary before training (e.g. to hold a label out and teach it
    # later as a new token, see stellarfm_jax.adapters); train.output_weights entries for them are ignored.
    drop_tokens: tuple[str, ...] = ()


@dataclass(frozen=True)
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)
    name: str = "custom"

    def validate(self) -> "Config":
        """Check every key (types and ranges); raises BadConfigError naming the first bad key. Returns self."""
        for key, cls in (("model", ModelConfig), ("train", TrainConfig), ("data", DataConfig)):
            if not isinstance(getattr(self, key), cls):
                raise BadConfigError(f"config.{key} must be a {cls.__name__}, got {type(getattr(self, key)).__name__}")
        if not isinstance(self.name, str):
            raise BadConfigError(f"config.name must be a string, got {self.name!r}")
        self.model.validate()
        self.train.validate()
        _check_types(self.data, "data")
        if not all(isinstance(n, str) for n in self.data.drop_tokens):
            raise BadConfigError(f"data.drop_tokens must be token names, got {self.data.drop_tokens!r}")
        if self.train.max_padding > self.model.context_length:
            raise BadConfigError(f"train.max_padding ({self.train.max_padding}) must not exceed model.context_length "
                                 f"({self.model.context_length}): a star padded that much would have no input")
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, d: dict) -> "Config":
        return _from_dict(cls, d)


def _check_types(cfg, section: str) -> None:
    """Every field of a config dataclass has the type its annotation names (an int is accepted for a float)."""
    hints = typing.get_type_hints(type(cfg))
    for f in dataclasses.fields(cfg):
        value, hint = getattr(cfg, f.name), hints[f.name]
        expected = typing.get_origin(hint) or hint
        if expected is float:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        elif expected is int:
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif expected in (bool, str, tuple):
            ok = isinstance(value, expected)
        else:
            continue
        if not ok:
            raise BadConfigError(f"{section}.{f.name} must be {expected.__name__}, got {value!r} "
                                 f"({type(value).__name__})")


def _check_at_least(cfg, section: str, key: str, low: int) -> None:
    value = getattr(cfg, key)
    if value < low:
        raise BadConfigError(f"{section}.{key} must be >= {low}, got {value}")


def _from_dict(cls, d: dict):
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in d:
            continue
        value = d[f.name]
        hint = hints[f.name]
        if dataclasses.is_dataclass(hint):
            value = _from_dict(hint, value)
        elif f.name in ("output_weights", "task_probabilities"):
            value = tuple((str(k), float(w)) for k, w in value)
        elif f.name == "drop_tokens":
            value = tuple(str(n) for n in value)
        kwargs[f.name] = value
    unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
    if unknown:
        raise BadConfigError(f"unknown config keys for {cls.__name__}: {sorted(unknown)}")
    return cls(**kwargs)


def model_config_from_dict(d: dict) -> ModelConfig:
    return _from_dict(ModelConfig, d)


def load_config(spec: str) -> Config:
    """Load a config: a path to a Python file defining ``get_config() -> Config``, or the name of a built-in one
    (``tiny``, ``small``, ``medium``, ``paper``, shipped in ``stellarfm_jax/configs/``). Validated."""
    path = pathlib.Path(spec)
    if path.is_file():
        module_spec = importlib.util.spec_from_file_location(f"_stellarfm_config_{path.stem}", path)
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
        where = str(path)
    elif spec in BUILTIN_CONFIGS:
        module = importlib.import_module(f"stellarfm_jax.configs.{spec}")
        where = f"the built-in config {spec!r}"
    else:
        raise MissingFileError(f"config {spec!r}: no such file, and not a built-in config name (give a path to a .py "
                               f"file or one of {', '.join(BUILTIN_CONFIGS)})")
    if not callable(getattr(module, "get_config", None)):
        raise BadConfigError(f"{where} must define get_config() -> stellarfm_jax.config.Config")
    config = module.get_config()
    if not isinstance(config, Config):
        raise BadConfigError(f"get_config() in {where} returned a {type(config).__name__}, expected a "
                             f"stellarfm_jax.config.Config")
    return config.validate()


def _parse_value(raw: str, current, key: str):
    """Parse an override string into the type of the field it replaces."""
    try:
        if isinstance(current, bool):
            if raw.lower() in ("true", "1", "yes"):
                return True
            if raw.lower() in ("false", "0", "no"):
                return False
            raise ValueError
        if isinstance(current, int):
            return int(raw)
        if isinstance(current, float):
            return float(raw)
        if isinstance(current, str):
            return raw
        if isinstance(current, tuple) and key.strip().endswith("drop_tokens"):
            # a JSON list or comma-separated names
            names = json.loads(raw) if raw.strip().startswith("[") else [n for n in raw.split(",") if n.strip()]
            if not all(isinstance(n, str) for n in names):
                raise ValueError
            return tuple(n.strip() for n in names)
        if isinstance(current, tuple):
            value = json.loads(raw)
            if not isinstance(value, (list, dict)):
                raise ValueError
            items = value.items() if isinstance(value, dict) else value
            return tuple((str(k), float(w)) for k, w in items)
    except (ValueError, TypeError, json.JSONDecodeError):
        pass
    raise BadConfigError(f"--set {key}={raw!r}: cannot parse as {type(current).__name__}")


def apply_overrides(config, overrides: list[str]):
    """Apply ``a.b=value`` overrides to a (frozen, nested) config dataclass - a :class:`Config` or the config of
    another command - and validate the result; unknown keys and malformed or out-of-range values raise
    BadConfigError naming the key."""
    for item in overrides:
        if "=" not in item:
            raise BadConfigError(f"--set expects key=value, got {item!r}")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        chain = [config]
        for part in parts[:-1]:
            obj = chain[-1]
            if not dataclasses.is_dataclass(obj) or part not in {f.name for f in dataclasses.fields(obj)}:
                raise BadConfigError(f"--set {key}: unknown config key {part!r}")
            chain.append(getattr(obj, part))
        leaf = chain[-1]
        if not dataclasses.is_dataclass(leaf) or parts[-1] not in {f.name for f in dataclasses.fields(leaf)}:
            raise BadConfigError(f"--set {key}: unknown config key {key!r}")
        value = _parse_value(raw, getattr(leaf, parts[-1]), key)
        new = dataclasses.replace(leaf, **{parts[-1]: value})
        for obj, part in zip(reversed(chain[:-1]), reversed(parts[:-1])):
            new = dataclasses.replace(obj, **{part: new})
        config = new
    validate = getattr(config, "validate", None)
    if validate is not None:
        try:
            validate()
        except BadConfigError:
            raise
        except ValueError as err:  # a dataclass of another module whose validate() raises plain ValueErrors
            raise BadConfigError(str(err)) from None
    return config
