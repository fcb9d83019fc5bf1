"""Parameter-efficient fine-tuning: teach a trained model new tokens (issue 7; the paper's foundation-model use).

A new token gets a new row in the embedding tables (used both as an input, ``gelu(W[t] v + B[t])``, and as a
request, ``W[t]``), and the decoder and output head get low-rank adapters (LoRA: ``W + (alpha / r) A B`` on
every attention and dense kernel). The base weights are frozen (``optim.freeze``: zero updates, no optimiser
state) and saved nowhere by this module.

The adapters are *gated by request*: requests do not attend to each other in the decoder, so a request for a
new token can be decoded with the adapted weights while a request for an old token is decoded with the base
weights, in the same call. A model taught a new token therefore answers every old question exactly as before
(bit for bit, for inputs without the new token), and the new token's own answers come from the adapted
decoder. The encoder is not adapted (adapting it would change every old answer); it sees the new token
through its embedding row only.

Functional core: :func:`init_adapter`, :func:`extend_params`, :func:`merge_lora`, :func:`adapted_forward`,
:func:`fine_tune` (the training seam of :mod:`stellarfm_jax.steps` with this module's loss). Object shell:
:class:`AdaptedModel` (a :class:`~stellarfm_jax.inference.StellarModel` whose ``perceive(...).request(...)``
routes requests as above), saved and loaded as an adapter directory separate from the base model.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import pathlib
import time
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
import optax

from . import forward
from .errors import BadFileError, BadInputError, MissingFileError
from .config import ModelConfig
from .forward import ModelSpec
from .inference import StellarModel
from .saved_model import atomic_directory, flatten_params, params_sha256, unflatten_params
from .vocab import PAD_ID, Vocabulary, align_columns, robust_scale

ADAPTER_FORMAT = "stellarfm_jax.adapter"
ADAPTER_VERSION = 1


@dataclass(frozen=True)
class AdapterConfig:
    """LoRA and fine-tuning settings."""

    rank: int = 8
    alpha: float = 16.0  # LoRA scale = alpha / rank
    learning_rate: float = 2e-3
    weight_decay: float = 0.01
    batch_size: int = 64
    epochs: int = 200
    outputs_per_star: int = 4
    new_token_weight: float = 8.0  # output sampling weight of each new token (old outputs weigh 1)
    max_padding: int = 0  # 0: the base model's training value (from its metadata), else context_length - 4
    seed: int = 0

    def validate(self) -> "AdapterConfig":
        if self.rank < 1:
            raise BadInputError(f"adapter rank must be >= 1, got {self.rank}")
        if self.batch_size < 1 or self.epochs < 1 or self.outputs_per_star < 1:
            raise BadInputError("adapter batch_size, epochs and outputs_per_star must be >= 1")
        if self.new_token_weight <= 0:
            raise BadInputError(f"new_token_weight must be > 0, got {self.new_token_weight}")
        return self

    @property
    def scale(self) -> float:
        return self.alpha / self.rank


# ====================================================================================== functional core
def lora_target_paths(params) -> list[str]:
    """"a.b.c" paths of the kernels that get adapters: every attention and dense kernel of the decoder
    blocks, the head MLP and the two output layers (not the encoder, not the embedding). Dots, not slashes,
    so that the adapter's own "/"-flattened file format keeps one entry per kernel."""
    paths = []
    for keys, _ in jax.tree_util.tree_flatten_with_path(params)[0]:  # shapes only: works on traced params
        parts = [str(k.key) for k in keys]
        if parts[-1].endswith("kernel") and (parts[0].startswith(("decoder_blocks_", "head_"))
                                             or parts[0] in ("mean_out", "logvar_out")):
            paths.append(".".join(parts))
    return sorted(paths)


def _matrix_shape(shape: tuple) -> tuple[int, int]:
    """(fan_in, fan_out) view of a kernel: [D, h, d] (q/k/v) -> (D, h*d); [h, d, D] (out) -> (h*d, D)."""
    if len(shape) == 2:
        return shape
    if len(shape) == 3 and shape[0] > shape[1]:  # [D, h, d]: input first
        return shape[0], shape[1] * shape[2]
    return shape[0] * shape[1], shape[2]


def init_adapter(key, base_params, num_new: int, rank: int) -> dict:
    """Trainable pytree: ``{"embeddings": [K, D], "bias": [K, D], "lora": {path: {"a": [in, r], "b": [r, out]}}}``.

    New rows start like the original's xavier-uniform embedding init; LoRA ``a`` ~ N(0, 1/in) and ``b`` = 0,
    so the adapted decoder starts equal to the base one."""
    table = base_params["embedding"]["embeddings"]
    rows, dim = table.shape
    bound = math.sqrt(6.0 / (rows + num_new + dim))
    k_w, k_b, k_lora = jax.random.split(key, 3)
    flat = flatten_params(base_params)
    lora = {}
    for i, path in enumerate(lora_target_paths(base_params)):
        fan_in, fan_out = _matrix_shape(flat[path.replace(".", "/")].shape)
        a = jax.random.normal(jax.random.fold_in(k_lora, i), (fan_in, rank), jnp.float32) / math.sqrt(fan_in)
        lora[path] = {"a": a, "b": jnp.zeros((rank, fan_out), jnp.float32)}
    return {
        "embeddings": jax.random.uniform(k_w, (num_new, dim), jnp.float32, -bound, bound),
        "bias": jax.random.uniform(k_b, (num_new, dim), jnp.float32, -bound, bound),
        "lora": lora,
    }


def extend_params(base_params, adapter) -> dict:
    """Base params with the new tokens' rows appended to both embedding tables (ids V+1 .. V+K)."""
    emb = base_params["embedding"]
    return {**base_params, "embedding": {
        "embeddings": jnp.concatenate([emb["embeddings"], adapter["embeddings"]], axis=0),
        "bias": jnp.concatenate([emb["bias"], adapter["bias"]], axis=0),
    }}


def merge_lora(params, adapter, scale: float) -> dict:
    """``params`` with every adapted kernel replaced by ``W + scale * (a @ b)`` (reshaped to W's shape)."""
    unknown = set(adapter["lora"]) - set(lora_target_paths(params))
    if unknown:
        raise ValueError(f"adapter has LoRA factors for kernels this model lacks: {sorted(unknown)}")

    def update(node, prefix):
        out = {}
        for key, value in node.items():
            path = f"{prefix}.{key}" if prefix else key
            if isinstance(value, dict):
                out[key] = update(value, path)
            elif path in adapter["lora"]:
                ab = adapter["lora"][path]
                out[key] = value + (scale * (ab["a"] @ ab["b"])).reshape(value.shape).astype(value.dtype)
            else:
                out[key] = value
        return out

    return update(params, "")


def _extended_spec(config: ModelConfig, base_vocab_size: int, adapter) -> ModelSpec:
    return ModelSpec(config, base_vocab_size + adapter["embeddings"].shape[0])


def _gated_decode(spec: ModelSpec, params, merged, perception, key_mask, requests, base_vocab_size: int,
                  dropout_key=None):
    """Decode ``requests`` [B, R] with the base weights (old tokens) or the LoRA-merged ones (new tokens)."""
    mean_b, logvar_b = forward.decode_fn(params, perception, key_mask, requests, spec=spec, dropout_key=dropout_key)
    mean_a, logvar_a = forward.decode_fn(merged, perception, key_mask, requests, spec=spec, dropout_key=dropout_key)
    new = requests > base_vocab_size
    return jnp.where(new, mean_a, mean_b), jnp.where(new, logvar_a, logvar_b)


def adapted_forward(base_params, adapter, values, tokens, requests, *, config: ModelConfig, base_vocab_size: int,
                    scale: float, dropout_key=None):
    """values [B, T], tokens [B, T] (ids up to V + K), requests [B, R] -> (mean, logvar) [B, R], standardised.

    Requests for old tokens (id <= V) are decoded with the base weights, requests for new tokens with the
    LoRA-merged ones; the encoder (base weights, extended embedding tables) runs once. Dropout on when a
    ``dropout_key`` is given."""
    spec = _extended_spec(config, base_vocab_size, adapter)
    params = extend_params(base_params, adapter)
    merged = merge_lora(params, adapter, scale)
    perception = forward.encode_fn(params, values, tokens, spec=spec, dropout_key=dropout_key)
    return _gated_decode(spec, params, merged, perception, tokens != PAD_ID, requests, base_vocab_size, dropout_key)


@functools.partial(jax.jit, static_argnames=("config", "base_vocab_size", "scale"))
def predict_adapted(base_params, adapter, values, tokens, requests, *, config, base_vocab_size, scale):
    """Inference counterpart of :func:`adapted_forward` with the per-star embedding, like
    :func:`stellarfm_jax.forward.predict`: the encoder once, then one request at a time (so R requests in one
    call equal R calls) -> (mean [B, R], logvar [B, R], embedding [B, D])."""
    spec = _extended_spec(config, base_vocab_size, adapter)
    requests = forward.broadcast_requests(requests, tokens.shape[0])
    params = extend_params(base_params, adapter)
    merged = merge_lora(params, adapter, scale)
    perception = forward.encode_fn(params, values, tokens, spec=spec)
    key_mask = tokens != PAD_ID
    mean, logvar = forward.decode_requests(
        lambda r: _gated_decode(spec, params, merged, perception, key_mask, r, base_vocab_size), requests)
    return mean, logvar, forward.masked_mean_embedding(perception, key_mask)


# ====================================================================================== vocabulary
def extend_vocabulary(base: Vocabulary, names, values: np.ndarray, groups=None) -> Vocabulary:
    """``base`` plus tokens ``names`` (ids V+1..), standardised by median / 1.4826 MAD of ``values`` [N, K]
    (the labelled stars), all allowed as outputs."""
    names = tuple(names)
    clash = [n for n in names if n in base.names]
    if clash:
        raise BadInputError(f"tokens {clash} are already in the base model's vocabulary; a new token needs a new name")
    values = np.asarray(values, np.float64).reshape(-1, len(names))
    centre = np.nanmedian(values, axis=0)
    scale = robust_scale(values, axis=0)
    bad = [n for n, c, s in zip(names, centre, scale) if not (np.isfinite(c) and s > 0)]
    if bad:
        raise BadInputError(f"new tokens {bad} have no finite values or zero spread among the labelled stars")
    groups = tuple(groups) if groups is not None else ("other",) * len(names)
    return Vocabulary(base.names + names, np.concatenate([base.centre, centre]), np.concatenate([base.scale, scale]),
                      base.outputs + names, base.groups + groups, base.schema)


# ====================================================================================== object shell
class AdaptedModel(StellarModel):
    """A base :class:`StellarModel` taught new tokens. ``perceive(...).request(...)`` accepts the new tokens as
    inputs and as requests; old requests are answered with the untouched base weights (and, when every input is an
    old token, by the base model's own compiled program: bit for bit its answers).

    ``save(path)`` writes only the adapter (new rows, LoRA factors, the new tokens' standardisation and the base
    model's fingerprint); :func:`load_adapter` attaches it to the same base model again.
    """

    def __init__(self, base: StellarModel, adapter, vocab: Vocabulary, adapter_config: AdapterConfig,
                 metadata: dict | None = None):
        self.base = base
        self.adapter = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), adapter)
        self.adapter_config = adapter_config
        self.new_tokens = vocab.names[base.vocab.size:]
        base_range = base.token_range
        meta = dict(base.metadata, **(metadata or {}))
        meta.pop("token_range", None)  # the base range covers the old tokens only; set below
        super().__init__(extend_params(base.params, self.adapter), base.model_config, vocab, meta)
        if base_range is not None:
            k = len(self.new_tokens)
            self.token_range = tuple(np.concatenate([b, np.full(k, fill)]) for b, fill in zip(base_range, (-np.inf, np.inf)))

    def predict_standardized(self, values, tokens, requests, return_attention: bool = False):
        if return_attention:
            raise NotImplementedError("attention maps of an adapted model are not implemented; use the base model's")
        v = self.base.vocab.size
        req = np.asarray(requests)
        if req.ndim == 1 and not np.any(np.asarray(tokens) > v):
            # Only old input tokens: the old requests go through the base model's own compiled program, so their
            # answers are the base model's bit for bit whatever the compiler does with a different program.
            old = req <= v
            base = self.base.predict_standardized(values, tokens, jnp.asarray(req[old] if old.any() else req[:1]))
            if old.all():
                return base
            new = predict_adapted(self.base.params, self.adapter, values, tokens, jnp.asarray(req[~old]),
                                  config=self.model_config, base_vocab_size=v, scale=self.adapter_config.scale)
            mean = np.empty((np.shape(values)[0], len(req)), np.float32)
            logvar = np.empty_like(mean)
            if old.any():
                mean[:, old], logvar[:, old] = np.asarray(base[0]), np.asarray(base[1])
            mean[:, ~old], logvar[:, ~old] = np.asarray(new[0]), np.asarray(new[1])
            return mean, logvar, base[2]
        return predict_adapted(self.base.params, self.adapter, values, tokens, requests, config=self.model_config,
                               base_vocab_size=v, scale=self.adapter_config.scale)

    def invert(self, *args, **kwargs):
        raise NotImplementedError("inversion through an adapted model is not implemented; invert with the base model")

    def save(self, path) -> pathlib.Path:
        """Write the adapter directory (not the base model): adapter.json + adapter.npz."""
        return save_adapter(path, self)

    def __repr__(self) -> str:
        return (f"AdaptedModel(base={self.base!r}, new_tokens={list(self.new_tokens)}, "
                f"rank={self.adapter_config.rank})")


def save_adapter(path, model: AdaptedModel) -> pathlib.Path:
    path = pathlib.Path(path)
    v, k = model.vocab, model.base.vocab.size
    info = {
        "format": ADAPTER_FORMAT, "version": ADAPTER_VERSION,
        "base_fingerprint": params_sha256(model.base.params),
        "adapter_config": dataclasses.asdict(model.adapter_config),
        "new_tokens": {"names": list(v.names[k:]), "centre": [float(x) for x in v.centre[k:]],
                       "scale": [float(x) for x in v.scale[k:]], "groups": list(v.groups[k:])},
        "metadata": {key: val for key, val in model.metadata.items() if key.startswith("adapter_")},
    }
    flat = {key: np.asarray(val, np.float32) for key, val in flatten_params(jax.device_get(model.adapter)).items()}
    with atomic_directory(path) as tmp:
        np.savez(tmp / "adapter.npz", **flat)
        (tmp / "adapter.json").write_text(json.dumps(info, indent=1))
    return path


def load_adapter(path, base) -> AdaptedModel:
    """Attach the adapter directory ``path`` to ``base`` (a StellarModel or a model path). Refuses a base model
    whose parameters differ from the one the adapter was trained on."""
    path = pathlib.Path(path)
    if not (path / "adapter.json").is_file() or not (path / "adapter.npz").is_file():
        raise MissingFileError(f"{path} is not an adapter directory (adapter.json + adapter.npz)")
    info = json.loads((path / "adapter.json").read_text())
    if info.get("format") != ADAPTER_FORMAT:
        raise BadFileError(f"{path / 'adapter.json'} is not a {ADAPTER_FORMAT} file")
    base = base if isinstance(base, StellarModel) else StellarModel.load(base)
    if params_sha256(base.params) != info["base_fingerprint"]:
        raise BadFileError(f"the adapter in {path} was trained on a different base model (parameter fingerprint "
                         f"{info['base_fingerprint'][:12]}..., this base {params_sha256(base.params)[:12]}...)")
    with np.load(path / "adapter.npz") as z:
        adapter = unflatten_params({key: z[key] for key in z.files})
    new = info["new_tokens"]
    b = base.vocab
    vocab = Vocabulary(b.names + tuple(new["names"]), np.concatenate([b.centre, new["centre"]]),
                       np.concatenate([b.scale, new["scale"]]), b.outputs + tuple(new["names"]),
                       b.groups + tuple(new["groups"]), b.schema)
    return AdaptedModel(base, adapter, vocab, AdapterConfig(**info["adapter_config"]), info.get("metadata"))


# ====================================================================================== training
def labelled_subset(values: np.ndarray, new_columns: list[int], max_stars: int, seed: int) -> np.ndarray:
    """Row indices of at most ``max_stars`` stars (random, seeded) with every new token finite."""
    ok = np.flatnonzero(np.isfinite(values[:, new_columns]).all(axis=1))
    if ok.size == 0:
        raise BadInputError("no star has a finite value for every new token")
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(ok, size=min(max_stars, ok.size), replace=False))


def fine_tune(base: StellarModel, values: np.ndarray, errors: np.ndarray, names, new_tokens, *,
              config: AdapterConfig = AdapterConfig(), groups=None, log=print) -> AdaptedModel:
    """Teach ``base`` the tokens ``new_tokens`` from labelled stars.

    values/errors: raw physical [N, n] of the labelled stars, columns named ``names`` (must include every base
    token the stars have and the new tokens; extra columns are an error). Only the new embedding rows and the
    LoRA factors train (AdamW, cosine decay over the run); each step samples inputs and ``outputs_per_star``
    requests per star exactly like pre-training, with new tokens ``new_token_weight`` times as likely to be
    requested as an old output.
    """
    from .optim import freeze
    from .sampling import SamplingConfig, output_weight_vector, to_star_data
    from .steps import make_train_epoch, make_train_step, nll_loss, token_sampler
    from .train_state import TrainState

    config.validate()
    max_padding = config.max_padding or int(base.metadata.get("config", {}).get("train", {}).get(
        "max_padding", base.context_length - 4))
    if not 1 <= max_padding < base.context_length:
        raise BadInputError(f"max_padding must lie in [1, context_length={base.context_length}), got {max_padding}")
    config = dataclasses.replace(config, max_padding=max_padding)
    names, new_tokens = list(names), list(new_tokens)
    clash = [n for n in new_tokens if n in base.vocab.names]
    if clash:
        raise BadInputError(f"tokens {clash} are already in the base model's vocabulary; a new token needs a new name")
    missing = [n for n in new_tokens if n not in names]
    if missing:
        raise BadInputError(f"the data have no column for the new tokens {missing}")
    unknown = [n for n in names if n not in base.vocab.names and n not in new_tokens]
    if unknown:
        raise BadInputError(f"columns {unknown} are neither base-model tokens nor new tokens")
    values, errors = np.asarray(values, np.float64), np.asarray(errors, np.float64)
    if values.shape != errors.shape or values.ndim != 2 or values.shape[1] != len(names):
        raise BadInputError(f"values and errors must both be [N, {len(names)}], got {values.shape} and {errors.shape}")
    new_cols = [names.index(n) for n in new_tokens]
    vocab = extend_vocabulary(base.vocab, new_tokens, values[:, new_cols], groups)
    # Columns in the extended vocabulary's order (a base token absent from the data stays missing).
    full_values = align_columns(values, names, vocab.names)
    full_errors = align_columns(errors, names, vocab.names)

    n_stars = values.shape[0]
    batch_size = min(config.batch_size, n_stars)
    steps_per_epoch = max(1, n_stars // batch_size)
    total_steps = steps_per_epoch * config.epochs
    schedule = optax.cosine_decay_schedule(config.learning_rate, total_steps, alpha=1e-3)
    optimizer = freeze(optax.adamw(schedule, weight_decay=config.weight_decay), {"base": False, "adapter": True})
    key = jax.random.key(config.seed)
    adapter = init_adapter(key, base.params, len(new_tokens), config.rank)
    # A copy of the base parameters: the epoch function donates (deletes) its state's buffers.
    state = TrainState.create({"base": jax.tree.map(jnp.copy, base.params), "adapter": adapter}, optimizer)
    weights = np.array(output_weight_vector(vocab))
    weights[base.vocab.size:] = config.new_token_weight
    sampling = SamplingConfig(context_length=base.context_length, max_padding=max_padding,
                              num_outputs=config.outputs_per_star)

    def forward_fn(params, values, tokens, requests, dropout_key):
        return adapted_forward(jax.lax.stop_gradient(params["base"]), params["adapter"], values, tokens, requests,
                               config=base.model_config, base_vocab_size=base.vocab.size, scale=config.scale,
                               dropout_key=dropout_key)

    train_step = make_train_step(nll_loss(forward_fn), optimizer)
    epoch_fn = make_train_epoch(train_step, token_sampler(jnp.asarray(weights), sampling), batch_size=batch_size,
                                steps_per_epoch=steps_per_epoch, seed=config.seed)
    data = to_star_data(vocab, full_values, full_errors)
    trainable = sum(x.size for x in jax.tree_util.tree_leaves(adapter))
    log(f"fine-tuning {len(new_tokens)} new token(s) {new_tokens} on {n_stars} labelled stars: {trainable:,} trainable "
        f"parameters (base {sum(x.size for x in jax.tree_util.tree_leaves(base.params)):,} frozen), "
        f"{config.epochs} epochs x {steps_per_epoch} steps")
    t0 = time.perf_counter()
    history = []
    for epoch in range(config.epochs):
        state, metrics = epoch_fn(state, data, epoch)
        if (epoch + 1) % max(1, config.epochs // 10) == 0 or epoch + 1 == config.epochs:
            history.append({"epoch": epoch + 1, "loss": float(metrics["loss"])})
            log(f"  epoch {epoch + 1}: loss {history[-1]['loss']:.4f}")
    seconds = time.perf_counter() - t0
    meta = {"adapter_training": {"stars": int(n_stars), "epochs": config.epochs, "seconds": round(seconds, 1),
                                 "history": history, "trainable_parameters": int(trainable)}}
    return AdaptedModel(base, jax.device_get(state.params["adapter"]), vocab, config, meta)
