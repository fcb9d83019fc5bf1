"""Typed, frozen configuration (DESIGN §8.7).

A run is described by one :class:`Config` built in a Python file under ``configs/`` (a function
``get_config() -> Config``) and optionally overridden on the command line with ``--set a.b=value``.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import pathlib
import typing
from dataclasses import dataclass, field

REPO_CONFIG_DIR = pathlib.Path(__file__).resolve().parent.parent / "configs"


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
        for name, (heads, dense) in [("encoder", s) for s in self.encoder_block_shapes()] + [
            ("decoder", s) for s in self.decoder_block_shapes()
        ]:
            if heads < 1 or self.embedding_dim % heads:
                raise ValueError(
                    f"model.{name}_heads: every block needs a head count >= 1 dividing embedding_dim="
                    f"{self.embedding_dim}; got {heads} after halving"
                )
            if dense < 1:
                raise ValueError(f"model.{name}_dense is too small for its halving rule (got {dense})")
        if self.compute_dtype not in ("float32", "bfloat16", "float64"):
            raise ValueError(f"model.compute_dtype must be 'float32' or 'bfloat16', got {self.compute_dtype!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"model.dropout must lie in [0, 1), got {self.dropout}")


# Task-aware context templates (stellarfm_jax.sampling); "half_spectrum" is blue -> red and red -> blue, half each.
TASK_TEMPLATE_NAMES = ("labels_to_spectrum", "spectrum_to_labels", "half_spectrum")


def validate_task_probabilities(items, where: str = "task_probabilities") -> None:
    """((name, p), ...): known, distinct template names, p >= 0, sum <= 1; else a ValueError naming the problem."""
    names = []
    for item in items:
        try:
            ok = len(item) == 2 and item[0] in TASK_TEMPLATE_NAMES and float(item[1]) >= 0
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise ValueError(f"{where} entries must be (template, probability >= 0) with template among "
                             f"{TASK_TEMPLATE_NAMES}, got {item!r}")
        names.append(item[0])
    if len(set(names)) != len(names):
        raise ValueError(f"{where} names a template twice: {names}")
    if sum(float(p) for _, p in items) > 1.0 + 1e-9:
        raise ValueError(f"{where} must sum to at most 1 (the rest is the paper's random subset), got "
                         f"{sum(float(p) for _, p in items)}")


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

    def validate(self) -> None:
        if self.batch_size < 1 or self.epochs < 1:
            raise ValueError("train.batch_size and train.epochs must be >= 1")
        if self.max_padding < 1:
            raise ValueError(f"train.max_padding must be >= 1 (p ~ U{{0..max_padding-1}}), got {self.max_padding}")
        if self.outputs_per_star < 1:
            raise ValueError(f"train.outputs_per_star must be >= 1, got {self.outputs_per_star}")
        if self.sgdr_period_epochs < 1:
            raise ValueError("train.sgdr_period_epochs must be >= 1")
        if self.length_buckets < 1:
            raise ValueError(f"train.length_buckets must be >= 1 (1 = off), got {self.length_buckets}")
        if self.best_metric not in ("val_loss", "label_scatter"):
            raise ValueError(f"train.best_metric must be 'val_loss' or 'label_scatter', got {self.best_metric!r}")
        for item in self.output_weights:
            if len(item) != 2 or not isinstance(item[0], str) or float(item[1]) < 0:
                raise ValueError(f"train.output_weights entries must be (name, weight >= 0), got {item!r}")
        validate_task_probabilities(self.task_probabilities, "train.task_probabilities")
        for name in ("task_logebv_probability", "task_colour_probability"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"train.{name} must lie in [0, 1], got {getattr(self, name)}")


@dataclass(frozen=True)
class DataConfig:
    """Where the training data come from."""

    path: str = ""  # our HDF5 file; empty = the embedded real data set (prepared and cached on first use)
    schema: str = "xp_sampled"
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
        self.model.validate()
        self.train.validate()
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, d: dict) -> "Config":
        return _from_dict(cls, d)


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
        raise ValueError(f"unknown config keys for {cls.__name__}: {sorted(unknown)}")
    return cls(**kwargs)


def model_config_from_dict(d: dict) -> ModelConfig:
    return _from_dict(ModelConfig, d)


def load_config(spec: str) -> Config:
    """Load a config from a path to a Python file defining ``get_config()``, or a built-in name
    (``tiny``, ``small``, ``medium``, ``paper``) resolved in the repository's ``configs/`` folder."""
    path = pathlib.Path(spec)
    if not path.suffix and not path.exists():
        path = REPO_CONFIG_DIR / f"{spec}.py"
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {spec!r} (give a path to a .py file or one of tiny, small, medium, paper)")
    module_spec = importlib.util.spec_from_file_location(f"_stellarfm_config_{path.stem}", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ValueError(f"config file {path} must define get_config() -> stellarfm_jax.config.Config")
    return module.get_config().validate()


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
    raise ValueError(f"--set {key}={raw!r}: cannot parse as {type(current).__name__}")


def apply_overrides(config: Config, overrides: list[str]) -> Config:
    """Apply ``a.b=value`` overrides; unknown keys and malformed values raise ValueError naming the key."""
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"--set expects key=value, got {item!r}")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        chain = [config]
        for part in parts[:-1]:
            obj = chain[-1]
            if not dataclasses.is_dataclass(obj) or part not in {f.name for f in dataclasses.fields(obj)}:
                raise ValueError(f"--set {key}: unknown config key {part!r}")
            chain.append(getattr(obj, part))
        leaf = chain[-1]
        if not dataclasses.is_dataclass(leaf) or parts[-1] not in {f.name for f in dataclasses.fields(leaf)}:
            raise ValueError(f"--set {key}: unknown config key {key!r}")
        value = _parse_value(raw, getattr(leaf, parts[-1]), key)
        new = dataclasses.replace(leaf, **{parts[-1]: value})
        for obj, part in zip(reversed(chain[:-1]), reversed(parts[:-1])):
            new = dataclasses.replace(obj, **{part: new})
        config = new
    return config.validate()
