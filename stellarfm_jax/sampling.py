"""Per-star token sampling as pure functions (DESIGN §4; original_spec §5.2), vmapped over a batch.

For one star with V vocabulary columns:
  * context: its available tokens first, in random order (a random-key argsort), cropped to the context
    length T, then ``p ~ U{0..P-1}`` trailing slots replaced by padding, so the star shows
    ``min(n_available, T - p)`` real tokens;
  * outputs: R distinct tokens drawn with probability proportional to the per-token output weight among
    the star's available allowed outputs (Gumbel top-k), independently of the context as in the
    original unless ``exclude_targets`` asks for true masked modelling;
  * a request with no eligible token is marked invalid (weight 0), so it never enters the loss (the
    original silently trained such stars on label 0).
Everything has static shapes: masks, never data-dependent slicing. The knobs are a hashable
:class:`SamplingConfig` (``SamplingConfig.from_config(config)``).

Task-aware contexts (beyond the paper; off unless ``train.task_probabilities`` is set): a uniform random
subset of ~93 tokens almost never shows labels alone or a whole spectrum, so with configurable
probabilities a star's context comes instead from a *template* of token groups (:func:`task_templates`,
built on the host from the vocabulary's groups: "spectrum", "colour", "label"):
  * ``labels_to_spectrum``: context = teff, logg, m_h, alpha_m (the label group without logebv), plus
    logebv with probability ``task_logebv_probability`` and the colours with ``task_colour_probability``;
    requests among the flux tokens;
  * ``spectrum_to_labels``: context = all flux + colour tokens; requests among the labels;
  * ``sparse_spectrum_to_labels``: the colours and a random subset of the flux tokens -> labels (a user's
    few photometric points or a low-S/N spectrum): the same groups, with the colours placed first and the
    paper's random padding, so the context holds the colours plus min(n_flux, T - p - n_colours) flux tokens;
  * ``half_spectrum``: half of it blue half -> red half, half red -> blue (flux tokens split by wavelength
    at the median; the paper schema's BP / RP coefficients are its blue / red halves);
  * ``random_subset``: the paper's sampler, with the rest of the probability.
Per star: a template is drawn (categorical); context = available tokens of its context groups, in random
order (its priority tokens first), cropped to T with *no random padding* (except ``sparse_spectrum_to_labels``
and ``random_subset``); requests by Gumbel top-k among the available allowed outputs of its request groups. A
template that is infeasible for a star (no available context token or no eligible request) falls back to ``random_subset`` for that star. A ``random_subset`` row consumes its key exactly as
the sampler without templates does, so it is bit-identical to it; with templates off the sampler is the
paper's, bit for bit. With stratified padding (``padding_strata``), a template row in stratum s keeps at
most ``T - floor(P * s / B)`` real tokens (cropped at random), so the train step's length-bucket bound
"a row in stratum s has padding >= floor(P * s / B)" holds for every row.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp


class StarData(NamedTuple):
    """Device-resident training data. values/errors: standardised, 0 where missing [N, V];
    available: bool [N, V]."""

    values: jax.Array
    errors: jax.Array
    available: jax.Array


class Batch(NamedTuple):
    """One sampled batch. Shapes: context [B, T], requests [B, R]."""

    values: jax.Array  # [B, T] float32 standardised, 0 in padding
    tokens: jax.Array  # [B, T] int32, 0 = padding
    requests: jax.Array  # [B, R] int32 token ids (a valid id even where weight = 0)
    targets: jax.Array  # [B, R] float32 standardised label
    target_errors: jax.Array  # [B, R] float32 standardised label error (0 if unknown)
    weights: jax.Array  # [B, R] float32, 1 for a valid request, 0 otherwise


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    """Hashable sampling knobs (a jit-static argument, not a pytree). ``task_*``: see :func:`task_templates`."""

    context_length: int
    max_padding: int
    num_outputs: int = 1
    exclude_targets: bool = False
    task_probabilities: tuple = ()  # ((template name, probability), ...); () = off (the paper)
    task_logebv_probability: float = 0.5
    task_colour_probability: float = 0.0

    def __post_init__(self):
        if self.context_length < 1 or self.max_padding < 1 or self.num_outputs < 1:
            raise ValueError(f"sampling needs context_length, max_padding and num_outputs >= 1, got "
                             f"{self.context_length}, {self.max_padding}, {self.num_outputs}")
        # lists (e.g. from JSON) become tuples, so the config stays hashable
        object.__setattr__(self, "task_probabilities", tuple((str(n), float(p)) for n, p in self.task_probabilities))

    @classmethod
    def from_config(cls, config) -> "SamplingConfig":
        """From a :class:`stellarfm_jax.config.Config` (model.context_length and the train section)."""
        t = config.train
        return cls(context_length=int(config.model.context_length), max_padding=int(t.max_padding),
                   num_outputs=int(t.outputs_per_star), exclude_targets=bool(t.exclude_target_from_context),
                   task_probabilities=t.task_probabilities,
                   task_logebv_probability=float(t.task_logebv_probability),
                   task_colour_probability=float(t.task_colour_probability))

    def templates(self, vocab) -> "TaskTemplates | None":
        """The :class:`TaskTemplates` of ``vocab`` for this config, None when templates are off."""
        if not self.task_probabilities:
            return None
        return task_templates(vocab, self.task_probabilities, logebv_probability=self.task_logebv_probability,
                              colour_probability=self.task_colour_probability)


@functools.partial(jax.tree_util.register_dataclass,
                   data_fields=["context", "optional", "optional_probability", "requests", "priority",
                                "probabilities", "random_padding"],
                   meta_fields=["names"])
@dataclasses.dataclass(frozen=True, eq=False)
class TaskTemplates:
    """Context templates as data (a pytree). K templates over V tokens, M optional groups; the last row is
    always ``random_subset`` (context and requests unrestricted, the paper's padding), the fallback.

    context: bool [K, V], tokens always offered to the context; optional: bool [K, M, V], groups added to
    the context with probability optional_probability [K, M]; requests: bool [K, V], tokens the requests
    are drawn among; priority: bool [K, V], context tokens placed before the others (kept when the context is
    cropped); probabilities: float32 [K], summing to 1; random_padding: bool [K]; names: K names."""

    context: jax.Array
    optional: jax.Array
    optional_probability: jax.Array
    requests: jax.Array
    priority: jax.Array
    probabilities: jax.Array
    random_padding: jax.Array
    names: tuple = ()


def _spectrum_halves(vocab) -> tuple[list[str], list[str]]:
    """(blue, red) halves of the vocabulary's spectrum tokens: flux tokens ("f<nm>") split at the median
    wavelength, XP coefficients into bp* / rp*, any other spectrum tokens by vocabulary order."""
    from .schemas import is_flux_token_name

    names = vocab.group_names("spectrum")
    if names and all(is_flux_token_name(n) for n in names):
        ordered = sorted(names, key=lambda n: float(n[1:]))
        return ordered[: len(ordered) // 2], ordered[len(ordered) // 2:]
    blue, red = [n for n in names if n.startswith("bp")], [n for n in names if n.startswith("rp")]
    if blue and red and len(blue) + len(red) == len(names):
        return blue, red
    return names[: len(names) // 2], names[len(names) // 2:]


def task_templates(vocab, probabilities, *, logebv_probability: float = 0.5,
                   colour_probability: float = 0.0) -> TaskTemplates:
    """Build the :class:`TaskTemplates` of ``vocab`` on the host (see the module docstring).

    ``probabilities``: ((name, p), ...) or a dict, names among ``config.TASK_TEMPLATE_NAMES``; the rest of
    the probability (1 - sum) goes to ``random_subset``. ``half_spectrum`` becomes two rows
    (``half_spectrum_blue_to_red``, ``half_spectrum_red_to_blue``) of p / 2 each. Tokens are found by
    group (``vocab.groups``) and logebv by name, never by count, so any flux grid works. A template
    whose groups this vocabulary lacks raises a ValueError naming them."""
    import numpy as np

    from .config import validate_task_probabilities

    items = tuple(probabilities.items()) if isinstance(probabilities, dict) else tuple(probabilities)
    validate_task_probabilities(items)
    if not 0.0 <= logebv_probability <= 1.0 or not 0.0 <= colour_probability <= 1.0:
        raise ValueError(f"task logebv/colour probabilities must lie in [0, 1], got {logebv_probability}, "
                         f"{colour_probability}")
    v = vocab.size
    outputs = vocab.output_mask_by_id[1:]

    def mask(names):
        m = np.zeros(v, bool)
        m[[vocab.token_id(n) - 1 for n in names]] = True
        return m

    spectrum, colours = mask(vocab.group_names("spectrum")), mask(vocab.group_names("colour"))
    labels = mask(vocab.group_names("label"))
    logebv = labels & mask([n for n in ("logebv",) if n in vocab.names])
    blue, red = (mask(h) for h in _spectrum_halves(vocab))
    none = np.zeros(v, bool)
    # name -> rows of (name, context, optional groups with their probabilities, requests, priority, random padding)
    table = {
        "labels_to_spectrum": [("labels_to_spectrum", labels & ~logebv,
                                [(logebv, logebv_probability), (colours, colour_probability)], spectrum, none, False)],
        "spectrum_to_labels": [("spectrum_to_labels", spectrum | colours, [], labels, none, False)],
        "sparse_spectrum_to_labels": [("sparse_spectrum_to_labels", spectrum | colours, [], labels, colours, True)],
        "half_spectrum": [("half_spectrum_blue_to_red", blue, [], red, none, False),
                          ("half_spectrum_red_to_blue", red, [], blue, none, False)],
    }
    rows, probs = [], []
    for name, p in items:
        for row in table[name]:
            _, context, _, requests, _, _ = row
            if not context.any() or not (requests & outputs).any():
                raise ValueError(
                    f"task template {name!r} needs context tokens and allowed output tokens of its groups; the "
                    f"vocabulary (schema {vocab.schema!r}) has {int(context.sum())} context and "
                    f"{int((requests & outputs).sum())} allowed request tokens for it (groups: "
                    f"{sorted(set(vocab.groups))})")
            rows.append(row)
            probs.append(float(p) / len(table[name]))
    rows.append(("random_subset", ~none, [], ~none, none, True))
    probs.append(max(0.0, 1.0 - sum(probs)))
    m = max(1, max(len(r[2]) for r in rows))
    optional = np.zeros((len(rows), m, v), bool)
    optional_p = np.zeros((len(rows), m), np.float32)
    for k, (_, _, groups, *_) in enumerate(rows):
        for j, (group, p) in enumerate(groups):
            optional[k, j], optional_p[k, j] = group, p
    probs = np.asarray(probs, np.float64)
    return TaskTemplates(
        context=jnp.asarray(np.stack([r[1] for r in rows])), optional=jnp.asarray(optional),
        optional_probability=jnp.asarray(optional_p), requests=jnp.asarray(np.stack([r[3] for r in rows])),
        priority=jnp.asarray(np.stack([r[4] for r in rows])),
        probabilities=jnp.asarray((probs / probs.sum()).astype(np.float32)),
        random_padding=jnp.asarray(np.array([r[5] for r in rows])), names=tuple(r[0] for r in rows),
    )


# fold_in constant for the template draw: the random_subset path keeps the paper sampler's three keys.
_TASK_KEY = 0x5A3C9E1


def draw_task(key, available, output_weights, templates: TaskTemplates):
    """One star's template: (index int32, context mask bool [V], request mask bool [V], priority mask bool [V],
    random padding bool).

    The index is drawn with ``templates.probabilities``, the optional groups of its context independently;
    an infeasible template (no available context token, or no available allowed request) becomes the last
    row, ``random_subset``."""
    chex.assert_rank([templates.context, templates.optional], [2, 3])
    k_task, k_optional = jax.random.split(key)
    task = jax.random.categorical(k_task, jnp.log(templates.probabilities))
    include = jax.random.uniform(k_optional, templates.optional_probability.shape) < templates.optional_probability
    context = templates.context | jnp.any(templates.optional & include[..., None], axis=1)  # [K, V]
    eligible = available & (output_weights > 0)
    feasible = jnp.any(context & available, axis=-1) & jnp.any(templates.requests & eligible, axis=-1)  # [K]
    task = jnp.where(feasible[task], task, templates.probabilities.shape[0] - 1).astype(jnp.int32)
    return task, context[task], templates.requests[task], templates.priority[task], templates.random_padding[task]


def _sample_tokens(key, available, output_weights, config: SamplingConfig, templates, padding_stratum, num_strata):
    """:func:`sample_star_tokens` plus the star's template index (-1 when templates are off)."""
    num_tokens = available.shape[0]
    k_out, k_perm, k_pad = jax.random.split(key, 3)

    eligible = available & (output_weights > 0)
    in_context = available
    first = jnp.zeros(num_tokens, bool)
    if templates is not None:
        task, context_mask, request_mask, first, random_padding = draw_task(
            jax.random.fold_in(key, _TASK_KEY), available, output_weights, templates)
        eligible = eligible & request_mask
        in_context = available & context_mask
    gumbel = jax.random.gumbel(k_out, (num_tokens,))
    scores = jnp.where(eligible, jnp.log(jnp.where(eligible, output_weights, 1.0)) + gumbel, -jnp.inf)
    top_scores, output_index = jax.lax.top_k(scores, config.num_outputs)
    output_valid = jnp.isfinite(top_scores)

    if config.exclude_targets:
        chosen = jnp.zeros(num_tokens, bool).at[output_index].set(output_valid)
        in_context = in_context & ~chosen
    # Context tokens first, in random order: sort uniform keys shifted by 2 for the others (and by -1 for a
    # template's priority tokens, so they survive the crop; none without templates, which keeps the paper's order).
    sort_key = jnp.where(in_context, 0.0, 2.0) - (in_context & first) + jax.random.uniform(k_perm, (num_tokens,))
    order = jnp.argsort(sort_key).astype(jnp.int32)
    if num_tokens < config.context_length:
        order = jnp.pad(order, (0, config.context_length - num_tokens))
    order = order[: config.context_length]
    if padding_stratum is None:
        padding = jax.random.randint(k_pad, (), 0, config.max_padding)
        min_padding = 0
    else:
        padding = stratified_padding(k_pad, padding_stratum, num_strata, config.max_padding)
        min_padding = stratum_min_padding(padding_stratum, num_strata, config.max_padding)
    if templates is not None:  # whole-group templates: the group, cropped to the stratum's bound
        padding = jnp.where(random_padding, padding, min_padding)
    else:
        task = jnp.int32(-1)
    n_real = jnp.minimum(in_context.sum(), config.context_length - padding)
    context_real = jnp.arange(config.context_length) < n_real
    return order, context_real, output_index.astype(jnp.int32), output_valid, task


def _resolve(config, kwargs) -> SamplingConfig:
    """The new ``config`` argument or the old keyword API (context_length=..., max_padding=..., ...)."""
    if config is None:
        return SamplingConfig(**kwargs)
    if kwargs:
        raise TypeError(f"pass either a SamplingConfig or its fields as keywords, not both (got {sorted(kwargs)})")
    if not isinstance(config, SamplingConfig):
        raise TypeError(f"config must be a SamplingConfig, got {type(config).__name__}")
    return config


def sample_star_tokens(key, available, output_weights, config: SamplingConfig | None = None, templates=None,
                       padding_stratum=None, num_strata: int = 1, **kwargs):
    """Choose the context slots and the requested tokens of one star.

    Args:
      key: PRNG key.
      available: bool [V], the star's non-missing tokens.
      output_weights: float [V], >= 0 sampling weight of each token as an output (0 = never requested).
      config: a :class:`SamplingConfig` (or its fields as keywords: context_length, max_padding, ...).
      templates: optional :class:`TaskTemplates` (task-aware contexts; None = the paper's sampler).
      padding_stratum, num_strata: optional stratified padding (see :func:`stratified_padding`); by
        default the padding is drawn independently, ``p ~ U{0..max_padding-1}``.
    Returns:
      context_index [T] int32 (column index, meaningful where context_real), context_real [T] bool,
      output_index [R] int32, output_valid [R] bool.
    """
    config = _resolve(config, kwargs)
    return _sample_tokens(key, available, output_weights, config, templates, padding_stratum, num_strata)[:4]


def stratum_min_padding(stratum, num_strata: int, max_padding: int):
    """``floor(P * stratum / num_strata)``, exactly (integers): the least padding of a row in ``stratum``."""
    return (max_padding * jnp.asarray(stratum, jnp.int32)) // num_strata


def stratified_padding(key, stratum, num_strata: int, max_padding: int):
    """Padding ``p = floor(P * (stratum + u) / num_strata)``, ``u ~ U[0, 1)``.

    When the strata of a batch are a permutation of 0..num_strata-1 (and the batch rows are a random
    permutation of the stars), each star's padding is still exactly ``U{0..P-1}`` - the paper's
    marginal - but the batch's paddings are stratified instead of independent, so a star in stratum s
    is known in advance to have ``p >= floor(P * s / num_strata)`` (:func:`stratum_min_padding`; the
    float rounding of the draw is clamped to that bound). The train step uses that static bound
    to drop context slots that can only hold padding (steps.length_buckets)."""
    u = (stratum + jax.random.uniform(key, ())) / num_strata
    p = jnp.minimum(jnp.floor(max_padding * u).astype(jnp.int32), max_padding - 1)
    return jnp.maximum(p, stratum_min_padding(stratum, num_strata, max_padding))


def _star_example(key, values, errors, available, output_weights, config, templates, padding_stratum, num_strata):
    index, real, out_index, out_valid, task = _sample_tokens(
        key, available, output_weights, config, templates, padding_stratum, num_strata)
    batch = Batch(
        values=jnp.where(real, values[index], 0.0),
        tokens=jnp.where(real, index + 1, 0),
        requests=out_index + 1,
        targets=jnp.where(out_valid, values[out_index], 0.0),
        target_errors=jnp.where(out_valid, errors[out_index], 0.0),
        weights=out_valid.astype(jnp.float32),
    )
    return batch, task


def sample_star(key, values, errors, available, output_weights, config: SamplingConfig | None = None,
                templates=None, padding_stratum=None, num_strata: int = 1, **kwargs) -> Batch:
    """One star's training example (see module docstring); values/errors/available are [V].

    ``config``: a :class:`SamplingConfig`, or its fields as keywords (the older API)."""
    config = _resolve(config, kwargs)
    return _star_example(key, values, errors, available, output_weights, config, templates, padding_stratum,
                         num_strata)[0]


def sample_batch(key, data: StarData, output_weights, config: SamplingConfig | None = None, templates=None,
                 padding_strata=None, *, return_tasks: bool = False, **kwargs):
    """vmap of :func:`sample_star` over the rows of ``data`` (one key per star, ``split(key, B)``).

    ``config``: a :class:`SamplingConfig`, or its fields as keywords (the older API:
    ``sample_batch(key, data, w, padding_strata=..., context_length=..., max_padding=..., ...)``).
    ``templates``: optional :class:`TaskTemplates` (``config.templates(vocab)``); None samples as the paper
    whatever ``config.task_probabilities`` says (e.g. a validation loss comparable across recipes): the
    config's task fields only build the templates.
    ``padding_strata``: optional int [B], a permutation of 0..B-1 giving each row's padding stratum
    (:func:`stratified_padding`); None draws every star's padding independently (the original).
    Returns a :class:`Batch` [B, ...], or ``(Batch, tasks)`` with ``return_tasks``: int32 [B], each row's
    template index in ``templates.names`` (after the infeasible fallback; -1 when templates are off)."""
    config = _resolve(config, kwargs)
    chex.assert_rank([data.values, data.available], 2)
    num_stars = data.values.shape[0]
    keys = jax.random.split(key, num_stars)
    strata = jnp.zeros(num_stars, jnp.int32) if padding_strata is None else padding_strata
    chex.assert_shape(strata, (num_stars,))

    def one(k, v, e, a, s):
        return _star_example(k, v, e, a, output_weights, config, templates,
                             None if padding_strata is None else s, num_stars)

    batch, tasks = jax.vmap(one)(keys, data.values, data.errors, data.available, strata)
    return (batch, tasks) if return_tasks else batch


def output_weight_vector(vocab, extra_weights=()) -> jax.Array:
    """float32 [V]: 1 for allowed outputs (0 for withheld tokens), times the configured per-token weights."""
    import numpy as np

    weights = vocab.output_mask_by_id[1:].astype(np.float32)
    for name, w in extra_weights:
        i = vocab.token_id(name) - 1
        if not weights[i]:
            raise ValueError(f"train.output_weights names {name!r}, which is not an allowed output of this vocabulary")
        weights[i] = float(w)
    return jnp.asarray(weights)


def to_star_data(vocab, values, errors) -> StarData:
    """Standardise raw physical values/errors [N, V] (NaN = missing) into device-ready StarData."""
    import numpy as np

    ids = np.arange(1, vocab.size + 1, dtype=np.int32)
    z, tok, err = vocab.standardize(values, ids, errors)
    return StarData(jnp.asarray(z), jnp.asarray(err), jnp.asarray(tok != 0))
