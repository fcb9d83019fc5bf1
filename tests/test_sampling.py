"""Token sampling properties (DESIGN §4; original_spec §5.2) on random stars with random missingness, and the
task-aware context templates (issue 16)."""

import dataclasses
import json

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from stellarfm_jax.config import Config, apply_overrides, load_config
from stellarfm_jax.sampling import (Batch, SamplingConfig, StarData, output_weight_vector, sample_batch, sample_star,
                                    task_templates)
from stellarfm_jax.schemas import paper_vocabulary, xp_sampled_vocabulary
from stellarfm_jax.vocab import Vocabulary

V, T, P = 100, 64, 60


def _random_data(seed, n=256, vocab=V, min_frac=0.0):
    rng = np.random.default_rng(seed)
    frac = rng.uniform(min_frac, 1.0, (n, 1))
    available = rng.random((n, vocab)) < frac
    values = np.where(available, rng.normal(size=(n, vocab)), 0.0).astype(np.float32)
    errors = np.where(available, rng.uniform(0, 0.1, (n, vocab)), 0.0).astype(np.float32)
    weights = (rng.random(vocab) < 0.9).astype(np.float32)  # some tokens never requested
    return StarData(jnp.asarray(values), jnp.asarray(errors), jnp.asarray(available)), jnp.asarray(weights)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("num_outputs,exclude", [(1, False), (4, False), (3, True)])
def test_sampling_properties(seed, num_outputs, exclude):
    data, weights = _random_data(seed)
    kw = dict(context_length=T, max_padding=P, num_outputs=num_outputs, exclude_targets=exclude)
    batch = jax.jit(lambda k: sample_batch(k, data, weights, **kw))(jax.random.key(seed))
    available = np.asarray(data.available)
    tokens, values = np.asarray(batch.tokens), np.asarray(batch.values)
    for i in range(tokens.shape[0]):
        real = tokens[i] > 0
        n_avail = available[i].sum()
        # Real tokens are contiguous at the front, distinct and available, with their own values.
        assert not np.any(real[1:] & ~real[:-1])
        ids = tokens[i][real]
        assert len(set(ids)) == len(ids)
        assert available[i, ids - 1].all()
        np.testing.assert_array_equal(values[i][real], np.asarray(data.values)[i, ids - 1])
        assert np.all(values[i][~real] == 0)
        # The real-token count is min(n_available, T - p) with p in [0, P).
        eligible_ctx = n_avail - (np.asarray(batch.weights[i]).sum() if exclude else 0)
        assert min(eligible_ctx, T - P + 1) <= real.sum() <= min(eligible_ctx, T)
        # Requests: distinct, available and allowed when valid; invalid only when too few are eligible.
        eligible = available[i] & (np.asarray(weights) > 0)
        valid = np.asarray(batch.weights[i]) > 0
        req = np.asarray(batch.requests[i])
        assert valid.sum() == min(num_outputs, eligible.sum())
        assert eligible[req[valid] - 1].all()
        assert len(set(req[valid])) == valid.sum()
        np.testing.assert_array_equal(np.asarray(batch.targets[i])[valid], np.asarray(data.values)[i, req[valid] - 1])
        if exclude:
            assert not set(req[valid]) & set(ids)


def test_real_token_count_distribution_for_complete_stars():
    """Stars with >= 64 available tokens show 5..64 real tokens, uniformly (p ~ U{0..59})."""
    data, weights = _random_data(0, n=4000, min_frac=1.0)
    batch = sample_batch(jax.random.key(0), data, weights, context_length=T, max_padding=P, num_outputs=1)
    counts = np.asarray((batch.tokens > 0).sum(1))
    assert counts.min() == 5 and counts.max() == 64
    hist = np.bincount(counts - 5, minlength=60)
    assert hist.min() > 0.5 * 4000 / 60 and hist.max() < 1.5 * 4000 / 60


def test_star_without_eligible_output_is_excluded():
    values = jnp.zeros(10)
    available = jnp.zeros(10, bool).at[3].set(True)
    weights = jnp.ones(10).at[3].set(0.0)  # the only available token is not an allowed output
    ex = sample_star(jax.random.key(0), values, values, available, weights, context_length=8, max_padding=2,
                     num_outputs=2)
    np.testing.assert_array_equal(ex.weights, 0.0)


def test_output_weights_shape_the_request_distribution():
    data, _ = _random_data(1, n=3000, min_frac=1.0, vocab=20)
    data = StarData(data.values, data.errors, jnp.ones_like(data.available))
    weights = jnp.ones(20).at[0].set(10.0)
    batch = sample_batch(jax.random.key(3), data, weights, context_length=16, max_padding=4, num_outputs=1)
    freq = np.mean(np.asarray(batch.requests[:, 0]) == 1)
    assert abs(freq - 10 / 29) < 0.03


def test_deterministic_for_a_key_jit_equals_eager_and_no_retrace():
    data, weights = _random_data(2, n=64)
    kw = dict(context_length=T, max_padding=P, num_outputs=2)
    eager = sample_batch(jax.random.key(7), data, weights, **kw)
    again = sample_batch(jax.random.key(7), data, weights, **kw)
    other = sample_batch(jax.random.key(8), data, weights, **kw)

    @jax.jit
    @chex.assert_max_traces(n=1)
    def jitted(key, data):
        return sample_batch(key, data, weights, **kw)

    for step in range(3):
        jitted(jax.random.key(step), data)
    jit_out = jitted(jax.random.key(7), data)
    for a, b, c in zip(eager, again, jit_out):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c)
    assert not np.array_equal(eager.tokens, other.tokens)


def test_small_vocabulary_shorter_than_context():
    data, weights = _random_data(3, n=32, vocab=10)
    batch = sample_batch(jax.random.key(0), data, weights, context_length=16, max_padding=3, num_outputs=1)
    assert batch.tokens.shape == (32, 16)
    assert int((batch.tokens > 0).sum(1).max()) <= 10


# ---------------------------------------------------------------------------------------------- typed config, paper path
def _reference_paper_sampler(key, data, weights, T, P, R, exclude, strata=None):
    """The paper procedure (module docstring) written out in NumPy on the sampler's own random draws
    (``split(key, B)``, then ``split(k, 3)`` -> gumbel / uniform / padding per star): an independent
    expectation for 'templates off is today's sampler, bit for bit'."""
    n, v = data.values.shape

    @jax.jit
    def draws(key):
        k3 = jax.vmap(lambda k: jax.random.split(k, 3))(jax.random.split(key, n))
        return (jax.vmap(lambda k: jax.random.gumbel(k, (v,)))(k3[:, 0]),
                jax.vmap(lambda k: jax.random.uniform(k, (v,)))(k3[:, 1]),
                jax.vmap(lambda k: jax.random.randint(k, (), 0, P))(k3[:, 2]),
                jax.vmap(lambda k: jax.random.uniform(k, ()))(k3[:, 2]))

    gumbel, perm_u, padding, u = (np.asarray(x) for x in draws(key))
    if strata is not None:
        padding = np.minimum(np.floor(np.float32(P) * ((np.asarray(strata) + u) / np.float32(n))).astype(int), P - 1)
    available, w = np.asarray(data.available), np.asarray(weights)
    values, errors = np.asarray(data.values), np.asarray(data.errors)
    out = {f: [] for f in ("values", "tokens", "requests", "targets", "target_errors", "weights")}
    for i in range(n):
        eligible = available[i] & (w > 0)
        scores = np.where(eligible, np.log(np.where(eligible, w, 1.0)).astype(np.float32) + gumbel[i], -np.inf)
        req = np.argsort(-scores, kind="stable")[:R]
        valid = np.isfinite(scores[req])
        ctx = available[i].copy()
        if exclude:
            ctx[req[valid]] = False
        order = np.argsort(np.where(ctx, 0.0, 2.0).astype(np.float32) + perm_u[i], kind="stable")
        order = np.pad(order, (0, max(0, T - v)))[:T]
        real = np.arange(T) < min(ctx.sum(), T - padding[i])
        out["values"].append(np.where(real, values[i, order], 0.0))
        out["tokens"].append(np.where(real, order + 1, 0))
        out["requests"].append(req + 1)
        out["targets"].append(np.where(valid, values[i, req], 0.0))
        out["target_errors"].append(np.where(valid, errors[i, req], 0.0))
        out["weights"].append(valid.astype(np.float32))
    return {f: np.stack(x) for f, x in out.items()}


@pytest.mark.parametrize("vocab_size,T,P,R,exclude,stratified", [(100, 64, 60, 4, False, False),
                                                                   (100, 64, 60, 3, True, True),
                                                                   (10, 16, 3, 2, False, True)])
def test_templates_off_is_the_paper_sampler_bit_for_bit(vocab_size, T, P, R, exclude, stratified):
    data, weights = _random_data(4, n=48, vocab=vocab_size)
    weights = weights * jnp.linspace(0.5, 3.0, vocab_size)  # non-uniform output weights
    strata = jnp.asarray(np.random.default_rng(0).permutation(48).astype(np.int32)) if stratified else None
    key = jax.random.key(11)
    expected = _reference_paper_sampler(key, data, weights, T, P, R, exclude, strata)
    config = SamplingConfig(context_length=T, max_padding=P, num_outputs=R, exclude_targets=exclude)
    typed = jax.jit(lambda k: sample_batch(k, data, weights, config, padding_strata=strata))(key)
    for field in Batch._fields:
        np.testing.assert_array_equal(getattr(typed, field), expected[field], err_msg=field)
    if vocab_size == 10:  # the older keyword API builds the same config
        keywords = jax.jit(lambda k: sample_batch(k, data, weights, padding_strata=strata, context_length=T,
                                                  max_padding=P, num_outputs=R, exclude_targets=exclude))(key)
        for a, b in zip(keywords, typed):
            np.testing.assert_array_equal(a, b)


def test_sampling_config_from_config_is_hashable_and_survives_json():
    config = apply_overrides(load_config("small"), ['train.task_probabilities={"labels_to_spectrum": 0.3}',
                                                    "train.task_logebv_probability=0.25"])
    sc = SamplingConfig.from_config(config)
    assert sc == SamplingConfig(context_length=config.model.context_length, max_padding=config.train.max_padding,
                                num_outputs=config.train.outputs_per_star, task_probabilities=(("labels_to_spectrum", 0.3),),
                                task_logebv_probability=0.25)
    assert SamplingConfig.from_config(Config.from_dict(json.loads(config.to_json()))) == sc
    assert hash(sc) == hash(SamplingConfig(**{**sc.__dict__, "task_probabilities": [["labels_to_spectrum", 0.3]]}))
    assert SamplingConfig.from_config(load_config("paper")).templates(xp_sampled_vocabulary()) is None
    data, weights = _random_data(0, n=8, vocab=93)  # without templates the config's task fields are not used
    for a, b in zip(sample_batch(jax.random.key(0), data, weights, sc),
                    sample_batch(jax.random.key(0), data, weights, dataclasses.replace(sc, task_probabilities=()))):
        np.testing.assert_array_equal(a, b)
    for bad in ('{"labels_to_spectra": 0.3}', '{"half_spectrum": 0.7, "spectrum_to_labels": 0.4}'):
        with pytest.raises(ValueError, match="task_probabilities"):
            apply_overrides(config, [f"train.task_probabilities={bad}"])


# ---------------------------------------------------------------------------------------------- task templates
TASKS = (("labels_to_spectrum", 0.25), ("spectrum_to_labels", 0.25), ("half_spectrum", 0.2))
NAMES = ("labels_to_spectrum", "spectrum_to_labels", "half_spectrum_blue_to_red", "half_spectrum_red_to_blue",
         "random_subset")
PROBS = (0.25, 0.25, 0.1, 0.1, 0.3)


def _group_mask(vocab, *groups):
    return np.array([g in groups for g in vocab.groups])


def _wavelengths(names):
    return np.array([float(n[1:]) for n in names])


@pytest.mark.parametrize("grid", [None, list(np.arange(345.0, 1010.0, 15.0))])
def test_task_templates_are_built_from_the_vocabulary_groups(grid):
    vocab = xp_sampled_vocabulary(grid)  # default 8 nm grid, or a coarser 15 nm one: found by group, not count
    t = task_templates(vocab, TASKS, logebv_probability=0.4, colour_probability=0.2)
    assert t.names == NAMES
    np.testing.assert_allclose(t.probabilities, PROBS, rtol=1e-6)
    flux, colours, labels = (_group_mask(vocab, g) for g in ("spectrum", "colour", "label"))
    logebv = np.array([n == "logebv" for n in vocab.names])
    k = {n: i for i, n in enumerate(NAMES)}
    np.testing.assert_array_equal(t.context[k["labels_to_spectrum"]], labels & ~logebv)
    np.testing.assert_array_equal(t.optional[k["labels_to_spectrum"]], np.stack([logebv, colours]))
    np.testing.assert_allclose(t.optional_probability[k["labels_to_spectrum"]], [0.4, 0.2])
    np.testing.assert_array_equal(t.requests[k["labels_to_spectrum"]], flux)
    np.testing.assert_array_equal(t.context[k["spectrum_to_labels"]], flux | colours)
    np.testing.assert_array_equal(t.requests[k["spectrum_to_labels"]], labels)
    blue, red = np.asarray(t.context[k["half_spectrum_blue_to_red"]]), np.asarray(t.requests[k["half_spectrum_blue_to_red"]])
    assert not (blue & red).any() and np.array_equal(blue | red, flux) and abs(int(blue.sum()) - int(red.sum())) <= 1
    names = np.array(vocab.names)
    assert _wavelengths(names[blue]).max() < _wavelengths(names[red]).min()
    np.testing.assert_array_equal(t.context[k["half_spectrum_red_to_blue"]], red)
    np.testing.assert_array_equal(t.requests[k["half_spectrum_red_to_blue"]], blue)
    assert np.asarray(t.context[-1]).all() and np.asarray(t.requests[-1]).all()
    np.testing.assert_array_equal(t.random_padding, [False] * 4 + [True])
    assert not np.asarray(t.optional[1:]).any()


def test_task_templates_on_the_paper_schema_and_bad_input():
    vocab = paper_vocabulary()
    t = task_templates(vocab, {"half_spectrum": 0.5})
    assert t.names == ("half_spectrum_blue_to_red", "half_spectrum_red_to_blue", "random_subset")
    blue = [n for n, m in zip(vocab.names, np.asarray(t.context[0])) if m]
    assert blue == [f"bp{i}" for i in range(55)]  # BP is the blue half of the XP coefficients
    with pytest.raises(ValueError, match="template among"):
        task_templates(vocab, {"spectrum_to_label": 0.1})
    with pytest.raises(ValueError, match="at most 1"):
        task_templates(vocab, {"spectrum_to_labels": 0.6, "labels_to_spectrum": 0.6})
    no_labels = Vocabulary.unit(["f400", "f500", "bprp"], groups=["spectrum", "spectrum", "colour"])
    with pytest.raises(ValueError, match="labels_to_spectrum"):
        task_templates(no_labels, {"labels_to_spectrum": 0.1})


def _template_data(seed, n):
    """Stars of the xp_sampled vocabulary (85 flux > the 64-slot context) with random missingness, some
    missing all labels or all flux."""
    vocab = xp_sampled_vocabulary()
    rng = np.random.default_rng(seed)
    available = rng.random((n, vocab.size)) < rng.uniform(0.3, 1.0, (n, 1))
    available[: n // 10, _group_mask(vocab, "label")] = False
    available[n // 10: n // 5, _group_mask(vocab, "spectrum")] = False
    values = np.where(available, rng.normal(size=available.shape), 0.0).astype(np.float32)
    data = StarData(jnp.asarray(values), jnp.asarray(0.1 * np.abs(values)), jnp.asarray(available))
    return vocab, data, output_weight_vector(vocab, (("teff", 4.0), ("logg", 4.0)))


def test_template_contexts_and_requests():
    vocab, data, weights = _template_data(0, 1200)
    t = task_templates(vocab, TASKS, logebv_probability=0.5, colour_probability=0.5)
    config = SamplingConfig(context_length=T, max_padding=P, num_outputs=4, task_probabilities=TASKS)
    batch, tasks = jax.jit(lambda k: sample_batch(k, data, weights, config, t, return_tasks=True))(jax.random.key(1))
    available, w = np.asarray(data.available), np.asarray(weights) > 0
    tokens, requests, valid, tasks = (np.asarray(x) for x in (batch.tokens, batch.requests, batch.weights > 0, tasks))
    context = np.asarray(t.context) | np.asarray(t.optional).any(1)  # everything a template may show
    colours, logebv = _group_mask(vocab, "colour"), np.array([n == "logebv" for n in vocab.names])
    logebv_shown = []
    for i in range(len(tasks)):
        k = tasks[i]
        real = tokens[i] > 0
        ctx = np.zeros(vocab.size, bool)
        ctx[tokens[i][real] - 1] = True
        assert not np.any(real[1:] & ~real[:-1]) and ctx.sum() == real.sum()  # front-packed and distinct
        eligible = available[i] & w & np.asarray(t.requests[k])
        assert valid[i].sum() == min(4, eligible.sum())
        assert eligible[requests[i][valid[i]] - 1].all() and len(set(requests[i][valid[i]])) == valid[i].sum()
        if k == len(NAMES) - 1:  # random subset: the paper's sampler
            assert min(available[i].sum(), T - P + 1) <= real.sum() <= min(available[i].sum(), T)
            continue
        # A template row shows only the template's available tokens, the whole group up to T, no padding ...
        assert not (ctx & ~(available[i] & context[k])).any()
        base = available[i] & np.asarray(t.context[k])
        if NAMES[k] == "labels_to_spectrum":
            assert (ctx & base).sum() == base.sum()  # the labels (<= 4) always fit
            shown = ctx & colours
            assert not shown.any() or np.array_equal(shown, available[i] & colours)  # the colours go together
            if (available[i] & logebv).any():
                logebv_shown.append(bool((ctx & logebv).any()))
        else:
            assert real.sum() == min(base.sum(), T)
        # ... and its requests come from the complementary groups, never from the context.
        assert not ctx[requests[i][valid[i]] - 1].any()
    # every template occurred, and logebv joins the labels half the time (binomial, 4 sigma)
    assert set(tasks) == set(range(len(NAMES)))
    n = len(logebv_shown)
    assert n > 100 and abs(np.mean(logebv_shown) - 0.5) < 4 * np.sqrt(0.25 / n)


def test_template_frequencies_as_configured():
    """Each row's template is an independent categorical draw, so with every template feasible (complete
    stars) the count of template k is Binomial(N, p_k): 4 standard deviations (a false alarm ~6e-5 per
    template; the key is fixed, so the test is deterministic) is 0.027 for p = 0.25 at N = 4000."""
    vocab = xp_sampled_vocabulary()
    n = 4000
    data = StarData(jnp.zeros((n, vocab.size)), jnp.zeros((n, vocab.size)), jnp.ones((n, vocab.size), bool))
    t = task_templates(vocab, TASKS)
    config = SamplingConfig(context_length=T, max_padding=P, task_probabilities=TASKS)
    sample = jax.jit(lambda k: sample_batch(k, data, output_weight_vector(vocab), config, t, return_tasks=True))
    _, tasks = sample(jax.random.key(5))
    freq = np.bincount(np.asarray(tasks), minlength=len(NAMES)) / n
    p = np.asarray(PROBS)
    assert np.all(np.abs(freq - p) < 4 * np.sqrt(p * (1 - p) / n)), freq


def test_infeasible_template_falls_back_to_the_random_subset():
    """A template without an available context token or an eligible request falls back, per star, to the
    random subset, which is then exactly the paper sampler's row for the same key."""
    vocab = xp_sampled_vocabulary()
    flux, labels = _group_mask(vocab, "spectrum"), _group_mask(vocab, "label")
    t = task_templates(vocab, TASKS, logebv_probability=1.0)
    blue = np.asarray(t.context[2])
    rows = np.concatenate([np.tile(labels, (8, 1)), np.tile(flux, (8, 1)), np.tile(blue, (8, 1)),
                           np.ones((8, vocab.size), bool)])  # only labels, only flux, only blue flux, complete
    data = StarData(jnp.asarray(rows * 0.5, jnp.float32), jnp.zeros(rows.shape), jnp.asarray(rows))
    weights = output_weight_vector(vocab)
    config = SamplingConfig(context_length=T, max_padding=P, num_outputs=2, task_probabilities=TASKS)
    sample = jax.jit(lambda k, t: sample_batch(k, data, weights, config, t, return_tasks=True))
    plain = jax.jit(lambda k: sample_batch(k, data, weights, dataclasses.replace(config, task_probabilities=())))(
        jax.random.key(2))
    for k, feasible in [(0, [False, False, False, True]),  # labels_to_spectrum: no label context / no flux request
                        (1, [False, False, False, True]),  # spectrum_to_labels: no flux context / no label request
                        (2, [False, True, False, True]),  # blue -> red: no blue context / no red request
                        (3, [False, True, False, True])]:  # red -> blue: no red context (only blue available)
        always_k = dataclasses.replace(t, probabilities=jnp.asarray(np.arange(len(NAMES)) == k, jnp.float32))
        batch, tasks = sample(jax.random.key(2), always_k)
        fallback = np.repeat(~np.asarray(feasible), 8)
        tasks = np.asarray(tasks)
        np.testing.assert_array_equal(tasks, np.where(fallback, len(NAMES) - 1, k), err_msg=NAMES[k])
        for field in Batch._fields:
            np.testing.assert_array_equal(np.asarray(getattr(batch, field))[fallback],
                                          np.asarray(getattr(plain, field))[fallback])


def test_stratified_padding_bound_holds_for_template_rows():
    """The train step drops context slots using 'a row in stratum s has padding >= floor(P s / B)': template
    rows (no random padding) are cropped to T - floor(P s / B), random-subset rows keep the paper's padding."""
    vocab, data, weights = _template_data(1, 384)  # B = 384: P s / B is not always an integer
    t = task_templates(vocab, TASKS)
    strata = np.random.default_rng(3).permutation(384).astype(np.int32)
    config = SamplingConfig(context_length=T, max_padding=P, num_outputs=2, task_probabilities=TASKS)
    sample = jax.jit(lambda k, c, t: sample_batch(k, data, weights, c, t, jnp.asarray(strata), return_tasks=True),
                     static_argnums=1)
    batch, tasks = sample(jax.random.key(4), config, t)
    n_real, tasks = np.asarray((batch.tokens > 0).sum(1)), np.asarray(tasks)
    bound = T - (P * strata) // 384
    assert np.all(n_real <= bound)
    available = np.asarray(data.available)
    for k in (1, 2, 3):  # templates without optional groups: the whole available group, cropped to the bound
        rows = tasks == k
        group = (available[rows] & np.asarray(t.context[k])).sum(1)
        np.testing.assert_array_equal(n_real[rows], np.minimum(group, bound[rows]))
    rows = tasks == len(NAMES) - 1  # random subset: exactly the paper's stratified sampler on those rows
    plain, _ = sample(jax.random.key(4), dataclasses.replace(config, task_probabilities=()), None)
    np.testing.assert_array_equal(np.asarray(batch.tokens)[rows], np.asarray(plain.tokens)[rows])


def test_templates_deterministic_jit_equals_eager_one_trace():
    vocab, data, weights = _template_data(2, 64)
    config = SamplingConfig(context_length=T, max_padding=P, num_outputs=3, task_probabilities=TASKS)
    t = task_templates(vocab, TASKS)
    traces = []

    @jax.jit
    def jitted(key, data, templates):
        traces.append(1)  # a Python side effect: runs once per trace
        return sample_batch(key, data, weights, config, templates, return_tasks=True)

    other_t = task_templates(vocab, (("labels_to_spectrum", 0.1), ("spectrum_to_labels", 0.5), ("half_spectrum", 0.1)))
    for step in range(3):
        jitted(jax.random.key(step), data, t if step % 2 else other_t)  # templates are data: no retrace
    _, data2, _ = _template_data(3, 64)
    jitted(jax.random.key(0), data2, t)
    assert len(traces) == 1
    eager = sample_batch(jax.random.key(7), data, weights, config, t, return_tasks=True)
    jit_out, again = jitted(jax.random.key(7), data, t), jitted(jax.random.key(7), data, t)
    for a, b, c in zip(jax.tree.leaves(eager), jax.tree.leaves(again), jax.tree.leaves(jit_out)):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c)
    other = jitted(jax.random.key(8), data, t)
    assert not np.array_equal(eager[1], other[1]) and not np.array_equal(eager[0].tokens, other[0].tokens)
    assert len(traces) == 1


def test_sparse_spectrum_template_keeps_the_colours_and_a_random_number_of_flux_tokens():
    """sparse_spectrum_to_labels: the colours always (placed first), then flux tokens up to the paper's random
    padding, so a row shows min(n_available, T - p) real tokens with p ~ U{0..P-1}; requests only labels."""
    vocab = xp_sampled_vocabulary()
    tasks = (("sparse_spectrum_to_labels", 0.6), ("spectrum_to_labels", 0.2))
    t = task_templates(vocab, tasks)
    assert t.names == ("sparse_spectrum_to_labels", "spectrum_to_labels", "random_subset")
    flux, colours, labels = (_group_mask(vocab, g) for g in ("spectrum", "colour", "label"))
    np.testing.assert_array_equal(t.context[0], flux | colours)
    np.testing.assert_array_equal(t.priority[0], colours)
    assert not np.asarray(t.priority[1:]).any()
    np.testing.assert_array_equal(t.random_padding, [True, False, True])
    np.testing.assert_array_equal(t.requests[0], labels)

    n = 3000
    available = np.ones((n, vocab.size), bool)
    available[: n // 3, np.flatnonzero(flux)[::3]] = False  # a third of the stars miss a third of their flux
    data = StarData(jnp.zeros(available.shape), jnp.zeros(available.shape), jnp.asarray(available))
    weights = output_weight_vector(vocab)
    config = SamplingConfig(context_length=T, max_padding=P, num_outputs=2, task_probabilities=tasks)
    batch, drawn = jax.jit(lambda k: sample_batch(k, data, weights, config, t, return_tasks=True))(jax.random.key(8))
    tokens, drawn = np.asarray(batch.tokens), np.asarray(drawn)
    rows = np.flatnonzero(drawn == 0)
    assert abs(len(rows) / n - 0.6) < 4 * np.sqrt(0.24 / n)
    n_real = (tokens[rows] > 0).sum(1)
    shown = np.zeros((len(rows), vocab.size), bool)
    for j, i in enumerate(rows):
        shown[j, tokens[i][tokens[i] > 0] - 1] = True
    assert not (shown & ~(flux | colours)).any()  # only flux and colours ...
    assert shown[:, colours].all()  # ... with every colour, however short the context
    group = (available[rows] & (flux | colours)).sum(1)
    assert np.all(n_real <= np.minimum(group, T)) and np.all(n_real >= np.minimum(group, T - P + 1))
    # complete stars: T - p real tokens capped by the 88 available, p uniform over 0..P-1 -> uniform over 5..64
    complete = np.asarray([i >= n // 3 for i in rows])
    counts = np.bincount(n_real[complete] - (T - P + 1), minlength=P)
    expected = complete.sum() / P
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < P - 1 + 5 * np.sqrt(2 * (P - 1)), chi2  # ~5 sigma above the chi2 mean (59 dof)
    requested = np.asarray(batch.requests)[rows][np.asarray(batch.weights)[rows] > 0] - 1
    assert labels[requested].all()
