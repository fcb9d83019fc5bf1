"""The labels -> spectrum reference (DESIGN §5, §7): a dedicated emulator in the style of The Payne (Ting et al.
2019) and the classical chi^2 inversion of observed spectra with it.

**Emulator.** An MLP from the standardised labels (teff, logg, m_h, alpha_m, logebv by default) to every flux token
of a vocabulary at once, in the vocabulary's standardised units (so it is compared with the model directly), with a
predicted log-variance per token. Plain JAX: the parameters are a pytree ``{"layers": [{"w", "b"}, ...]}`` of arrays;
:func:`emulator_apply` is pure, jittable and differentiable. Trained on the heteroscedastic Gaussian NLL the model
uses, ``0.5 * ((y - mu)^2 / V + ln V)`` with ``V = exp(logvar) + err^2`` (err = the observed flux error), averaged
over the observed (finite) flux tokens, with optax AdamW on mini-batches drawn from a ``jax.random`` permutation per
epoch (one jitted ``lax.scan`` per epoch), early-stopped on the validation split (the best validation parameters are
kept), deterministic from a seed.

Missing labels: a star enters training only with all of its labels finite, and a logebv at the data's floor
(``LOGEBV_FLOOR`` = -7, the RJCE failures, mostly hot dwarfs: docs/data.md) counts as missing: that value means
"unknown", not "no dust". The Payne's emulators are fitted on complete label vectors too; a star without alpha_m
(21% of the train split) has no label the emulator could be asked with. :func:`emulate` answers NaN for a row with
a missing label.

**chi^2 inversion.** :func:`fit_labels_chi2` fits the free labels (teff, logg, m_h, logebv by default, as in the
inversion issue; alpha_m fixed, by default at the training median, or per star) to observed flux tokens by
minimising ``0.5 * chi^2`` with ``chi^2 = sum_j (y_j - mu_j)^2 / V_j`` and ``V_j = err_j^2 + s_j^2``: ``s_j^2`` is
the emulator's own error on token j, either its median predicted variance over the training labels, a per-token
constant (``model_error="fixed"``, the default: the usual practice of adding the emulator's typical error to
the observed one), none (``"none"``, observed errors alone), or its prediction at the fitted labels (``"predicted"``,
then ``+ 0.5 * sum_j ln V_j``: the Gaussian NLL, the model's own inversion objective). On the real test split the
fixed floor gives calibrated errors where the observed errors alone give 4-5x too small ones, and the predicted
variance pulls the fits towards labels where the emulator claims to be precise (docs/evaluation.md). An optional
Gaussian prior over the free labels, fitted on the training labels (``prior=True``), adds
``0.5 * (theta - m)^T C^-1 (theta - m)``. Projected Adam (labels kept inside the emulator's training range) from
several starts per star (a teff x logg grid over the training quantiles, the other free labels at the training
median; its centre is the training median), all stars x starts in one vmapped, jitted call; the best start is
polished by damped Newton steps; the Laplace covariance is the inverse Hessian of the objective at the optimum.
A Hessian that is not positive definite is regularised
(eigenvalues floored) and flagged; an optimum at the edge of the training range is flagged: never a silent NaN.
"""

from __future__ import annotations

import functools
import json
import math
import pathlib
import time
from dataclasses import asdict, dataclass, field

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax

from ..errors import MissingFileError
from ..formats import atomic_directory, header, read_json
from ..vocab import robust_scale

EMULATOR_LABELS = ("teff", "logg", "m_h", "alpha_m", "logebv")
CHI2_FREE = ("teff", "logg", "m_h", "logebv")
MODEL_ERRORS = ("fixed", "none", "predicted")
LOGEBV_FLOOR = -7.0  # the data's floor (stellarfm_jax.data.catalogue.LOGEBV_FLOOR): "unknown", not a value
FORMAT = "stellarfm_jax.emulator"
VERSION = 1
# The predicted log-variance is softly bounded to [LOGVAR_MIN, LOGVAR_MAX] (standardised units: sigma from 3e-4 to
# 20 token scales), so that a token without observed error cannot drive its variance to zero.
LOGVAR_MIN, LOGVAR_MAX = -16.0, 6.0
ACTIVATIONS = {"silu": jax.nn.silu, "tanh": jnp.tanh, "sigmoid": jax.nn.sigmoid, "gelu": jax.nn.gelu}


# ============================================================================== functional core
def init_emulator_params(key, n_labels: int, n_flux: int, hidden=(300, 300), logvar_init: float = -4.0):
    """Parameters of the MLP: ``{"layers": [{"w": [in, out], "b": [out]}, ...]}`` float32, LeCun-normal weights,
    zero biases; the last layer maps to ``2 * n_flux`` outputs (means, then raw log-variances, whose bias starts at
    ``logvar_init``)."""
    sizes = (n_labels, *hidden, 2 * n_flux)
    keys = jax.random.split(key, len(sizes) - 1)
    layers = []
    for k, (fan_in, fan_out) in zip(keys, zip(sizes[:-1], sizes[1:])):
        w = jax.random.normal(k, (fan_in, fan_out), jnp.float32) / math.sqrt(fan_in)
        layers.append({"w": w, "b": jnp.zeros((fan_out,), jnp.float32)})
    last = layers[-1]
    last["b"] = last["b"].at[n_flux:].set(logvar_init)
    return {"layers": layers}


def _soft_bound(x, lo, hi):
    """A smooth clamp of x into (lo, hi), the identity well inside."""
    return hi - jax.nn.softplus(hi - (lo + jax.nn.softplus(x - lo)))


def emulator_apply(params, z_labels, activation: str = "silu"):
    """The emulator for standardised labels ``z_labels`` [..., L] -> (mean, logvar) [..., F] in the vocabulary's
    standardised flux units. Pure, jittable and differentiable in both arguments (``activation`` is static)."""
    act = ACTIVATIONS[activation]
    h = z_labels
    layers = params["layers"]
    for layer in layers[:-1]:
        h = act(h @ layer["w"] + layer["b"])
    out = h @ layers[-1]["w"] + layers[-1]["b"]
    n_flux = out.shape[-1] // 2
    return out[..., :n_flux], _soft_bound(out[..., n_flux:], LOGVAR_MIN, LOGVAR_MAX)


def gaussian_nll(mean, logvar, y, err2, mask):
    """Mean over the observed entries (``mask``) of 0.5 * ((y - mean)^2 / V + ln V), V = exp(logvar) + err2."""
    var = jnp.exp(logvar) + err2
    terms = 0.5 * ((y - mean) ** 2 / var + jnp.log(var))
    return jnp.sum(jnp.where(mask, terms, 0.0)) / jnp.maximum(jnp.sum(mask), 1)


def _loss(params, batch, activation):
    mean, logvar = emulator_apply(params, batch["x"], activation)
    return gaussian_nll(mean, logvar, batch["y"], batch["err2"], batch["mask"])


def _optimizer(config, steps_per_epoch: int):
    """AdamW (after global-norm clipping) on a warm-up + cosine schedule over ``config.max_epochs`` epochs."""
    total = max(2, config.max_epochs * steps_per_epoch)
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, config.learning_rate, min(max(1, config.warmup_epochs * steps_per_epoch), total - 1), total,
        end_value=0.01 * config.learning_rate)
    return optax.chain(optax.clip_by_global_norm(config.grad_clip),
                       optax.adamw(schedule, weight_decay=config.weight_decay))


@functools.partial(jax.jit, static_argnames=("config", "batch_size"))
def _train_epoch(params, opt_state, key, data, config, batch_size: int):
    """One epoch: a permutation of the N stars cut into N // batch_size mini-batches (the remainder waits for a
    later epoch's permutation), one AdamW step per batch inside a ``lax.scan``. Returns (params, opt_state, mean
    loss). ``config`` (hashable) and the batch size key the compiled program, so fits with the same recipe and data
    shapes share one compilation."""
    n = data["x"].shape[0]
    n_batches = n // batch_size
    optimizer = _optimizer(config, n_batches)
    order = jax.random.permutation(key, n)[: n_batches * batch_size].reshape(n_batches, batch_size)

    def step(carry, idx):
        params, opt_state = carry
        batch = jax.tree.map(lambda a: a[idx], data)
        loss, grads = jax.value_and_grad(_loss)(params, batch, config.activation)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), loss

    (params, opt_state), losses = jax.lax.scan(step, (params, opt_state), order)
    return params, opt_state, jnp.mean(losses)


_eval_loss = jax.jit(_loss, static_argnames=("activation",))


# ============================================================================== object shell
@dataclass(frozen=True)
class EmulatorConfig:
    """Architecture and training recipe (The Payne: 2 hidden layers of a few hundred units, a smooth activation).

    ``learning_rate`` is AdamW's peak, reached after ``warmup_epochs`` and decayed along a cosine to 1% of it at
    ``max_epochs``; training stops when the validation NLL has not improved for ``patience`` epochs (the best
    epoch's parameters are returned)."""

    hidden: tuple[int, ...] = (300, 300)
    activation: str = "silu"
    learning_rate: float = 2e-3
    weight_decay: float = 1e-5
    batch_size: int = 256
    max_epochs: int = 150
    warmup_epochs: int = 5
    patience: int = 30
    logvar_init: float = -4.0
    grad_clip: float = 1.0
    logebv_floor: float | None = LOGEBV_FLOOR  # logebv <= floor counts as missing (None: keep every value)

    def __post_init__(self):
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {self.activation!r}")
        if not self.hidden or any(int(h) < 1 for h in self.hidden):
            raise ValueError(f"hidden must be a non-empty tuple of positive widths, got {self.hidden!r}")
        object.__setattr__(self, "hidden", tuple(int(h) for h in self.hidden))
        for name in ("batch_size", "max_epochs", "patience"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")


@dataclass(frozen=True, eq=False)
class Emulator:
    """A fitted emulator: parameters (pytree of float32 np arrays), the standardisation of its labels and flux tokens
    (the vocabulary's), the label range and a sample of the training labels (for starts and edge flags), the config
    and a record of the fit (``info``: epochs, best epoch, loss curves, seconds, stars)."""

    params: dict
    label_names: tuple[str, ...]
    flux_names: tuple[str, ...]
    label_centre: np.ndarray  # [L] physical
    label_scale: np.ndarray  # [L]
    flux_centre: np.ndarray  # [F]
    flux_scale: np.ndarray  # [F]
    label_low: np.ndarray  # [L] physical: the training stars' range
    label_high: np.ndarray  # [L]
    train_labels: np.ndarray  # [S, L] physical: up to 4096 training label vectors (quantiles for the starts)
    config: EmulatorConfig = EmulatorConfig()
    info: dict = field(default_factory=dict)

    def standardize_labels(self, labels):
        return (np.asarray(labels, np.float64) - self.label_centre) / self.label_scale

    def apply(self, z_labels):
        """(mean, logvar) [..., F], standardised units, for standardised labels [..., L]."""
        return emulator_apply(self.params, z_labels, self.config.activation)


def _label_matrix(vocab, values, label_names, logebv_floor):
    cols = vocab.ids(list(label_names)) - 1
    labels = np.asarray(values, np.float64)[:, cols]
    if logebv_floor is not None and "logebv" in label_names:
        j = list(label_names).index("logebv")
        labels[:, j] = np.where(labels[:, j] <= logebv_floor + 1e-6, np.nan, labels[:, j])
    return labels


def _prepare(vocab, values, errors, label_names, flux_names, logebv_floor, name):
    values = np.asarray(values)
    errors = np.asarray(errors)
    if values.ndim != 2 or values.shape[1] != vocab.size or errors.shape != values.shape:
        raise ValueError(f"{name} values and errors must both be [N, {vocab.size}] in vocabulary order; got "
                         f"{values.shape} and {errors.shape}")
    labels = _label_matrix(vocab, values, label_names, logebv_floor)
    keep = np.isfinite(labels).all(axis=1)
    if keep.sum() < 1:
        raise ValueError(f"no {name} star has all of the labels {list(label_names)}")
    label_ids = vocab.ids(list(label_names))
    flux_ids = vocab.ids(list(flux_names))
    x, _, _ = vocab.standardize(labels[keep], label_ids)
    fcols = flux_ids - 1
    y, ids, err = vocab.standardize(values[keep][:, fcols], flux_ids, errors[keep][:, fcols])
    data = {"x": jnp.asarray(x), "y": jnp.asarray(y), "err2": jnp.asarray(err.astype(np.float32) ** 2),
            "mask": jnp.asarray(ids != 0)}
    return data, labels[keep], int(keep.sum())


def fit_emulator(vocab, train_values, train_errors, val_values, val_errors, label_names=EMULATOR_LABELS,
                 flux_names=None, config: EmulatorConfig = EmulatorConfig(), seed=0, log=None) -> Emulator:
    """Train an emulator on ``train`` and early-stop it on ``val``.

    ``*_values`` / ``*_errors``: [N, V] physical units in vocabulary order (NaN = missing), e.g. a data set split's
    ``values`` / ``errors``. ``flux_names``: the output tokens (default: the vocabulary's ``spectrum`` group). Stars
    with a missing label (or logebv at ``config.logebv_floor``) are left out; a missing flux token is masked out of
    the loss. Deterministic for a given ``seed`` (an int, or a typed ``jax.random.key``: the initialisation and
    every epoch's permutation come from it). ``log``: optional ``print``-like callable for one line per epoch."""
    label_names = tuple(label_names)
    flux_names = tuple(vocab.group_names("spectrum") if flux_names is None else flux_names)
    if not flux_names:
        raise ValueError("the emulator needs at least one flux token (the vocabulary has no 'spectrum' group)")
    overlap = sorted(set(label_names) & set(flux_names))
    if overlap:
        raise ValueError(f"tokens cannot be both labels and outputs of the emulator: {overlap}")
    train, train_labels, n_train = _prepare(vocab, train_values, train_errors, label_names, flux_names,
                                            config.logebv_floor, "train")
    val, _, n_val = _prepare(vocab, val_values, val_errors, label_names, flux_names, config.logebv_floor, "val")
    batch_size = min(config.batch_size, n_train)
    optimizer = _optimizer(config, n_train // batch_size)
    key = seed if isinstance(seed, jax.Array) else jax.random.key(int(seed))
    key_init, key_epochs = jax.random.split(key)
    params = init_emulator_params(key_init, len(label_names), len(flux_names), config.hidden, config.logvar_init)
    opt_state = optimizer.init(params)
    best_params, best_val, best_epoch = params, float("inf"), -1
    train_curve, val_curve = [], []
    t0 = time.perf_counter()
    for epoch in range(config.max_epochs):
        params, opt_state, train_loss = _train_epoch(params, opt_state, jax.random.fold_in(key_epochs, epoch), train,
                                                     config, batch_size)
        val_loss = float(_eval_loss(params, val, config.activation))
        train_curve.append(float(train_loss))
        val_curve.append(val_loss)
        if not np.isfinite(val_loss):
            raise FloatingPointError(f"emulator training diverged at epoch {epoch} (validation NLL {val_loss}); "
                                     f"lower EmulatorConfig.learning_rate (now {config.learning_rate})")
        if val_loss < best_val:
            best_params, best_val, best_epoch = params, val_loss, epoch
        if log is not None:
            log(f"epoch {epoch:4d}  train NLL {float(train_loss):+.4f}  val NLL {val_loss:+.4f}  best {best_val:+.4f} @ {best_epoch}")
        if epoch - best_epoch >= config.patience:
            break
    seconds = time.perf_counter() - t0
    sample = train_labels[np.linspace(0, n_train - 1, min(n_train, 4096)).astype(int)]
    label_ids = vocab.ids(list(label_names))
    flux_ids = vocab.ids(list(flux_names))
    info = {"epochs": len(val_curve), "best_epoch": best_epoch, "best_val_nll": best_val, "train_nll": train_curve,
            "val_nll": val_curve, "seconds": seconds, "n_train": n_train, "n_val": n_val,
            "seed": None if isinstance(seed, jax.Array) else int(seed),
            "schema": vocab.schema}
    return Emulator(
        params=jax.tree.map(np.asarray, best_params), label_names=label_names, flux_names=flux_names,
        label_centre=vocab.centre_by_id[label_ids], label_scale=vocab.scale_by_id[label_ids],
        flux_centre=vocab.centre_by_id[flux_ids], flux_scale=vocab.scale_by_id[flux_ids],
        label_low=train_labels.min(axis=0), label_high=train_labels.max(axis=0), train_labels=sample,
        config=config, info=info)


@functools.partial(jax.jit, static_argnames=("activation",))
def _apply_jit(params, z, activation):
    return emulator_apply(params, z, activation)


def emulate(emulator: Emulator, labels, chunk_size: int = 65536):
    """Flux for physical labels ``labels`` [N, L] (columns in ``emulator.label_names`` order) ->
    (flux_mean, flux_sigma) [N, F] float64 physical units; sigma is the emulator's own predictive spread (add the
    observed error in quadrature to compare with a measured spectrum). Rows with a missing (NaN) label, or logebv at
    the floor the emulator treats as missing, are NaN."""
    labels = np.asarray(labels, np.float64)
    if labels.ndim != 2 or labels.shape[1] != len(emulator.label_names):
        raise ValueError(f"labels must be [N, {len(emulator.label_names)}] with columns {list(emulator.label_names)}, "
                         f"got shape {labels.shape}")
    labels = labels.copy()
    if emulator.config.logebv_floor is not None and "logebv" in emulator.label_names:
        j = emulator.label_names.index("logebv")
        labels[:, j] = np.where(labels[:, j] <= emulator.config.logebv_floor + 1e-6, np.nan, labels[:, j])
    ok = np.isfinite(labels).all(axis=1)
    z = np.where(ok[:, None], emulator.standardize_labels(labels), 0.0).astype(np.float32)
    means, logvars = [], []
    for start in range(0, max(len(z), 1), chunk_size):
        m, lv = _apply_jit(emulator.params, z[start:start + chunk_size], emulator.config.activation)
        means.append(np.asarray(m, np.float64))
        logvars.append(np.asarray(lv, np.float64))
    mean = np.concatenate(means) * emulator.flux_scale + emulator.flux_centre
    sigma = np.exp(0.5 * np.concatenate(logvars)) * emulator.flux_scale
    return np.where(ok[:, None], mean, np.nan), np.where(ok[:, None], sigma, np.nan)


def emulator_nll(emulator: Emulator, vocab, values, errors) -> float:
    """The training objective (mean Gaussian NLL per observed flux token, standardised units) of ``emulator`` on
    [N, V] vocabulary-ordered ``values`` / ``errors``, over the stars with all of its labels (the number early
    stopping watches on the validation split)."""
    data, _, _ = _prepare(vocab, values, errors, emulator.label_names, emulator.flux_names,
                          emulator.config.logebv_floor, "given")
    return float(_eval_loss(emulator.params, data, emulator.config.activation))


def emulator_labels(emulator: Emulator, vocab, values) -> np.ndarray:
    """The emulator's label columns [N, L] of vocabulary-ordered physical ``values`` [N, V] (input to :func:`emulate`)."""
    return _label_matrix(vocab, values, emulator.label_names, emulator.config.logebv_floor)


# ------------------------------------------------------------------------------ files
_ARRAYS = ("label_centre", "label_scale", "flux_centre", "flux_scale", "label_low", "label_high", "train_labels")


def save_emulator(emulator: Emulator, path) -> pathlib.Path:
    """Write ``path/`` atomically: ``emulator.json`` (format, version, names, config, info) and ``arrays.npz``
    (parameters as ``layers/<i>/w|b`` plus the standardisation and label range, each array's own dtype, so a load
    is bit-exact)."""
    arrays = {f"layers/{i}/{k}": np.asarray(v) for i, layer in enumerate(emulator.params["layers"]) for k, v in layer.items()}
    arrays.update({name: np.asarray(getattr(emulator, name)) for name in _ARRAYS})
    doc = header(FORMAT, VERSION, label_names=list(emulator.label_names), flux_names=list(emulator.flux_names),
                 n_layers=len(emulator.params["layers"]), config=asdict(emulator.config), info=emulator.info)
    with atomic_directory(path) as tmp:
        np.savez(tmp / "arrays.npz", **arrays)
        (tmp / "emulator.json").write_text(json.dumps(doc, indent=1))
    return pathlib.Path(path)


def load_emulator(path) -> Emulator:
    """Read a directory written by :func:`save_emulator` (a missing file, another format or a newer version: a
    :class:`~stellarfm_jax.cli.BadFileError` / ``MissingFileError`` naming it)."""
    path = pathlib.Path(path)
    meta, arrays_file = path / "emulator.json", path / "arrays.npz"
    if not meta.is_file() or not arrays_file.is_file():
        raise MissingFileError(f"{path} is not an emulator directory (expected emulator.json and arrays.npz)")
    doc = read_json(meta, FORMAT, VERSION)
    with np.load(arrays_file) as npz:
        arrays = {k: npz[k] for k in npz.files}
    layers = [{"w": arrays[f"layers/{i}/w"], "b": arrays[f"layers/{i}/b"]} for i in range(doc["n_layers"])]
    cfg = dict(doc["config"])
    cfg["hidden"] = tuple(cfg["hidden"])
    return Emulator(params={"layers": layers}, label_names=tuple(doc["label_names"]),
                    flux_names=tuple(doc["flux_names"]), config=EmulatorConfig(**cfg), info=doc["info"],
                    **{name: arrays[name] for name in _ARRAYS})


# ============================================================================== chi^2 inversion
@dataclass(frozen=True)
class Chi2Settings:
    """Settings of :func:`fit_labels_chi2` (static: part of the jit key).

    ``model_error``: what is added to the observed variance: ``"fixed"`` (the emulator's median predicted variance
    over its training labels, per token), ``"none"`` (the classical chi^2 with the observed errors alone) or
    ``"predicted"`` (its predicted variance at the fitted labels, with the ln V term: the Gaussian NLL). ``prior``:
    add a Gaussian prior over the free labels (mean and covariance of the emulator's training labels, widened by
    ``prior_scale``). ``steps`` projected Adam steps
    at ``learning_rate`` (standardised label units) decayed along a cosine to 1%, then ``newton_steps`` damped Newton
    steps on the best start. ``grid_quantiles``: the teff x logg start grid, as quantiles of the training labels."""

    model_error: str = "fixed"
    prior: bool = False
    prior_scale: float = 1.0
    steps: int = 300
    learning_rate: float = 0.05
    newton_steps: int = 20
    grid_quantiles: tuple[float, ...] = (0.15, 0.5, 0.85)
    hessian_floor: float = 1e-6  # eigenvalues of the Hessian below floor x the largest are regularised (and flagged)
    edge_tolerance: float = 1e-3  # standardised units: closer than this to the training range is "at the edge"
    chunk_size: int = 512

    def __post_init__(self):
        if self.model_error not in MODEL_ERRORS:
            raise ValueError(f"model_error must be one of {MODEL_ERRORS}, got {self.model_error!r}")


@dataclass(frozen=True, eq=False)
class Chi2Fit:
    """Result of :func:`fit_labels_chi2` for N stars and the P free labels ``names``.

    values / errors [N, P] physical (errors = sqrt of the Laplace covariance's diagonal); covariance [N, P, P];
    chi2 [N] (sum over the star's used tokens of (y - mu)^2 / V at the optimum), n_tokens [N] (tokens used),
    objective [N] (the minimised 0.5 chi^2 (+ 0.5 sum ln V)), best_start [N]; flags: hessian_regularised [N],
    at_edge [N] (some free label at the training range's edge), no_data [N] (no usable flux token: the starts'
    best is returned, errors are the regularised ones); reason [N] strings ('' when none). Never a NaN without a
    flag."""

    names: tuple[str, ...]
    values: np.ndarray
    errors: np.ndarray
    covariance: np.ndarray
    chi2: np.ndarray
    n_tokens: np.ndarray
    objective: np.ndarray
    best_start: np.ndarray
    hessian_regularised: np.ndarray
    at_edge: np.ndarray
    no_data: np.ndarray
    reason: np.ndarray
    starts: np.ndarray  # [S, P] physical, the starts used (shared by all stars)
    seconds: float = 0.0

    @property
    def flagged(self) -> np.ndarray:
        return self.hessian_regularised | self.at_edge | self.no_data


def _star_objective(theta, star, params, activation, free_cols, fixed_cols, n_labels, predicted, prior):
    """Objective and chi^2 of one star at free labels ``theta`` [P] (standardised). ``star["err2"]`` already holds
    any fixed model error; ``predicted`` adds the emulator's variance at theta (and the ln V term); ``prior`` the
    Gaussian prior ``star["prior_mean"]`` [P], ``star["prior_precision"]`` [P, P]."""
    z = jnp.zeros((n_labels,), theta.dtype).at[np.asarray(free_cols, int)].set(theta)
    z = z.at[np.asarray(fixed_cols, int)].set(star["fixed"])
    mean, logvar = emulator_apply(params, z, activation)
    var = star["err2"] + (jnp.exp(logvar) if predicted else 0.0)
    var = jnp.where(star["mask"], var, 1.0)
    r2 = jnp.where(star["mask"], (star["y"] - mean) ** 2 / var, 0.0)
    obj = 0.5 * jnp.sum(r2)
    if predicted:
        obj = obj + 0.5 * jnp.sum(jnp.where(star["mask"], jnp.log(var), 0.0))
    if prior:
        d = theta - star["prior_mean"]
        obj = obj + 0.5 * d @ star["prior_precision"] @ d
    return obj, jnp.sum(r2)


@functools.partial(jax.jit, static_argnames=("activation", "free_cols", "fixed_cols", "n_labels", "predicted", "prior",
                                             "steps", "learning_rate", "newton_steps"))
def _fit_chunk(params, stars, starts, low, high, activation, free_cols, fixed_cols, n_labels, predicted, prior,
               steps, learning_rate, newton_steps):
    """stars: dict of [B, ...] arrays; starts [S, P]; low/high [P] (standardised). Returns per star the optimum
    theta [P], objective, chi2, Hessian [P, P], best start index."""
    objective = functools.partial(_star_objective, params=params, activation=activation, free_cols=free_cols,
                                  fixed_cols=fixed_cols, n_labels=n_labels, predicted=predicted, prior=prior)
    value = lambda theta, star: objective(theta, star)[0]  # noqa: E731
    schedule = optax.cosine_decay_schedule(learning_rate, max(steps, 1), alpha=0.01)
    opt = optax.adam(schedule)

    def adam_one(theta0, star):
        def step(carry, _):
            theta, state = carry
            g = jax.grad(value)(theta, star)
            g = jnp.where(jnp.isfinite(g), g, 0.0)
            upd, state = opt.update(g, state, theta)
            return (jnp.clip(optax.apply_updates(theta, upd), low, high), state), None

        (theta, _), _ = jax.lax.scan(step, (theta0, opt.init(theta0)), None, length=steps)
        return theta, value(theta, star)

    def newton_one(theta, star):
        def step(carry, _):
            theta, obj, lam = carry
            g = jax.grad(value)(theta, star)
            h = jax.hessian(value)(theta, star)
            h = 0.5 * (h + h.T)
            scale = jnp.maximum(jnp.max(jnp.abs(jnp.diag(h))), 1e-12)
            trial = jnp.clip(theta - jnp.linalg.solve(h + lam * scale * jnp.eye(h.shape[0]), g), low, high)
            trial_obj = value(trial, star)
            better = jnp.isfinite(trial_obj) & (trial_obj < obj)
            return (jnp.where(better, trial, theta), jnp.where(better, trial_obj, obj),
                    jnp.where(better, lam * 0.3, lam * 10.0)), None

        (theta, obj, _), _ = jax.lax.scan(step, (theta, value(theta, star), jnp.asarray(1e-3, theta.dtype)), None,
                                          length=newton_steps)
        return theta, obj

    def one_star(star):
        thetas, objs = jax.vmap(adam_one, in_axes=(0, None))(starts, star)
        objs = jnp.where(jnp.isfinite(objs), objs, jnp.inf)
        best = jnp.argmin(objs)
        theta, obj = newton_one(thetas[best], star)
        _, chi2 = objective(theta, star)
        return theta, obj, chi2, jax.hessian(value)(theta, star), best

    return jax.vmap(one_star)(stars)


def default_starts(emulator: Emulator, free=CHI2_FREE, quantiles=(0.15, 0.5, 0.85)) -> np.ndarray:
    """[S, P] physical starts: a teff x logg grid at the training labels' ``quantiles`` (the free labels other than
    teff and logg at the training median; with 0.5 among the quantiles the grid's centre is the training median)."""
    free = list(free)
    median = emulator.label_centre
    base = np.array([median[emulator.label_names.index(n)] for n in free])
    grid_labels = [n for n in ("teff", "logg") if n in free]
    if not grid_labels:
        return base[None, :]
    axes = [np.quantile(emulator.train_labels[:, emulator.label_names.index(n)], quantiles) for n in grid_labels]
    mesh = np.stack([a.ravel() for a in np.meshgrid(*axes, indexing="ij")], axis=1)
    starts = np.repeat(base[None, :], len(mesh), axis=0)
    for k, n in enumerate(grid_labels):
        starts[:, free.index(n)] = mesh[:, k]
    return starts


def fit_labels_chi2(emulator: Emulator, flux, flux_err, free=CHI2_FREE, fixed=None, starts=None,
                    settings: Chi2Settings = Chi2Settings()) -> Chi2Fit:
    """Fit the ``free`` labels of N stars to their observed flux with the emulator (module docstring).

    flux, flux_err: [N, F] physical, columns in ``emulator.flux_names`` order; NaN flux = missing (masked), NaN
    error = 0 (then only the emulator's error weighs that token; with ``model_error="none"`` such tokens are
    masked). ``fixed``: {label: scalar or [N]} for the emulator labels that are not free (default: the training
    median for each). ``starts``: [S, P] physical (default :func:`default_starts`). Returns a :class:`Chi2Fit`."""
    t0 = time.perf_counter()
    names = emulator.label_names
    free = tuple(free)
    unknown = [n for n in free if n not in names]
    if unknown or len(set(free)) != len(free) or not free:
        raise ValueError(f"free labels must be distinct names among the emulator's labels {list(names)}; got {list(free)}")
    fixed = dict(fixed or {})
    bad = [n for n in fixed if n not in names or n in free]
    if bad:
        raise ValueError(f"fixed labels {bad} are not emulator labels outside the free ones {list(free)}")
    flux = np.asarray(flux, np.float64)
    flux_err = np.asarray(flux_err, np.float64)
    n_flux = len(emulator.flux_names)
    if flux.ndim != 2 or flux.shape[1] != n_flux or flux_err.shape != flux.shape:
        raise ValueError(f"flux and flux_err must both be [N, {n_flux}] in emulator.flux_names order; got "
                         f"{flux.shape} and {flux_err.shape}")
    n = flux.shape[0]
    fixed_names = tuple(nm for nm in names if nm not in free)
    fixed_phys = np.stack([np.broadcast_to(np.asarray(fixed.get(nm, emulator.label_centre[names.index(nm)]), np.float64), (n,))
                           for nm in fixed_names], axis=1) if fixed_names else np.zeros((n, 0))
    if not np.isfinite(fixed_phys).all():
        raise ValueError(f"fixed labels {list(fixed_names)} must be finite for every star")
    free_cols = tuple(names.index(nm) for nm in free)
    fixed_cols = tuple(names.index(nm) for nm in fixed_names)
    f_idx, x_idx = np.asarray(free_cols), np.asarray(fixed_cols, int)
    starts = default_starts(emulator, free, settings.grid_quantiles) if starts is None else np.asarray(starts, np.float64)
    if starts.ndim != 2 or starts.shape[1] != len(free) or not np.isfinite(starts).all():
        raise ValueError(f"starts must be a finite [S, {len(free)}] array (columns {list(free)}), got shape {starts.shape}")
    centre, scale = emulator.label_centre, emulator.label_scale
    low = ((emulator.label_low - centre) / scale)[f_idx]
    high = ((emulator.label_high - centre) / scale)[f_idx]
    starts_z = np.clip((starts - centre[f_idx]) / scale[f_idx], low, high)

    y = (flux - emulator.flux_centre) / emulator.flux_scale
    err = np.nan_to_num(flux_err, nan=0.0) / emulator.flux_scale
    mask = np.isfinite(y) & (err >= 0)
    if settings.model_error == "none":
        mask &= err > 0
    var = err**2 + (model_error_variance(emulator)[None, :] if settings.model_error == "fixed" else 0.0)
    stars_np = {"y": np.where(mask, y, 0.0).astype(np.float32), "err2": np.where(mask, var, 1.0).astype(np.float32),
                "mask": mask, "fixed": ((fixed_phys - centre[x_idx]) / scale[x_idx]).astype(np.float32)}
    if settings.prior:
        mean, precision = _label_prior(emulator, f_idx, settings.prior_scale)
        stars_np["prior_mean"] = np.broadcast_to(mean, (n, len(free))).astype(np.float32)
        stars_np["prior_precision"] = np.broadcast_to(precision, (n, len(free), len(free))).astype(np.float32)
    chunk = max(1, min(settings.chunk_size, n))
    outs = []
    for start in range(0, n, chunk):
        part = {k: v[start:start + chunk] for k, v in stars_np.items()}
        pad = chunk - len(part["y"])
        if pad:  # one trace for every chunk: pad the last one
            part = {k: np.concatenate([v, np.repeat(v[-1:], pad, axis=0)]) for k, v in part.items()}
        res = _fit_chunk(emulator.params, part, jnp.asarray(starts_z, jnp.float32), jnp.asarray(low, jnp.float32),
                         jnp.asarray(high, jnp.float32), emulator.config.activation, free_cols, fixed_cols, len(names),
                         settings.model_error == "predicted", settings.prior, settings.steps, settings.learning_rate,
                         settings.newton_steps)
        outs.append([np.asarray(r)[: chunk - pad] for r in res])
    theta, obj, chi2, hess, best = (np.concatenate([o[k] for o in outs]) for k in range(5)) if n else \
        (np.zeros((0, len(free))), np.zeros(0), np.zeros(0), np.zeros((0, len(free), len(free))), np.zeros(0, int))

    cov_z, regularised = _laplace(hess.astype(np.float64), settings.hessian_floor)
    s = scale[f_idx]
    cov = cov_z * s[None, :, None] * s[None, None, :]
    values = theta.astype(np.float64) * s + centre[f_idx]
    at_edge = ((theta - low < settings.edge_tolerance) | (high - theta < settings.edge_tolerance)).any(axis=1)
    n_tokens = mask.sum(axis=1)
    no_data = n_tokens == 0
    reason = np.array(["; ".join(r for r, f in (("no usable flux token", nd), ("Hessian not positive definite: "
                       "eigenvalues floored", rg), ("optimum at the edge of the training range", ed)) if f)
                       for nd, rg, ed in zip(no_data, regularised, at_edge)], dtype=object)
    return Chi2Fit(names=free, values=values, errors=np.sqrt(np.diagonal(cov, axis1=1, axis2=2)), covariance=cov,
                   chi2=chi2.astype(np.float64), n_tokens=n_tokens, objective=obj.astype(np.float64),
                   best_start=best.astype(int), hessian_regularised=regularised, at_edge=at_edge, no_data=no_data,
                   reason=reason, starts=starts, seconds=time.perf_counter() - t0)


def model_error_variance(emulator: Emulator) -> np.ndarray:
    """[F] the emulator's typical error per token, standardised units: the median of its predicted variance over
    its sample of training labels (the ``model_error="fixed"`` floor of :func:`fit_labels_chi2`)."""
    z = emulator.standardize_labels(emulator.train_labels).astype(np.float32)
    _, logvar = _apply_jit(emulator.params, z, emulator.config.activation)
    return np.median(np.exp(np.asarray(logvar, np.float64)), axis=0)


def _label_prior(emulator: Emulator, free_idx, widen: float):
    """Gaussian prior over the free labels (standardised units): mean and precision of the training label sample,
    the covariance widened by ``widen``^2."""
    z = emulator.standardize_labels(emulator.train_labels)[:, free_idx]
    cov = np.atleast_2d(np.cov(z, rowvar=False)) * widen**2
    return z.mean(axis=0), np.linalg.inv(cov)


def _laplace(hess, floor):
    """Inverse of symmetric Hessians [N, P, P] through their eigen-decomposition; eigenvalues below ``floor`` x the
    largest |eigenvalue| (or non-finite Hessians) are replaced by that floor (flagged). Returns (cov, regularised [N])."""
    chex.assert_rank(hess, 3)
    finite = np.isfinite(hess).all(axis=(1, 2))
    h = np.where(finite[:, None, None], 0.5 * (hess + np.swapaxes(hess, 1, 2)), np.eye(hess.shape[1]))
    eig, vec = np.linalg.eigh(h)
    top = np.maximum(np.abs(eig).max(axis=1, initial=0.0), 1e-30)[:, None]
    small = eig < floor * top
    regularised = small.any(axis=1) | ~finite
    eig = np.where(small, floor * top, eig)
    cov = np.einsum("nij,nj,nkj->nik", vec, 1.0 / eig, vec)
    return cov, regularised


# ============================================================================== reports
def emulator_spectrum_report(emulator: Emulator, vocab, split) -> dict:
    """The labels -> spectrum task for the emulator on ``split`` (a data set split): the flux of every star with all
    of the emulator's labels, against the observed flux (:func:`stellarfm_jax.evaluation.spectrum_residuals`), plus
    the flux z-scores' robust std, z = (pred - obs) / sqrt(sigma_emulator^2 + err_obs^2)."""
    from .common import flux_tokens
    from .spectra import spectrum_residuals

    labels = emulator_labels(emulator, vocab, split.values)
    ok = np.isfinite(labels).all(axis=1)
    pred, sigma = emulate(emulator, labels[ok])
    cols = vocab.ids(list(emulator.flux_names)) - 1
    obs = split.values[ok][:, cols].astype(np.float64)
    err = split.errors[ok][:, cols].astype(np.float64)
    names, waves = flux_tokens(vocab)
    wave_of = dict(zip(names, waves))
    out = spectrum_residuals(pred, sigma, obs, err, [wave_of.get(n, np.nan) for n in emulator.flux_names])
    z = (pred - obs) / np.sqrt(sigma**2 + np.nan_to_num(err) ** 2)
    z = z[np.isfinite(z)]
    out["flux_z_robust_std"] = float(robust_scale(z))
    out["flux_z_rms"] = float(np.sqrt(np.mean(z**2)))
    out["n_stars_without_labels"] = int((~ok).sum())
    out["arrays"] = dict(pred=pred, sigma=sigma, observed=obs, observed_error=err, stars=np.flatnonzero(ok))
    return out
