"""Loss closed form, SGDR schedule against torch's CosineAnnealingWarmRestarts, AdamW against torch."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from stellarfm_jax.config import TrainConfig
from stellarfm_jax.losses import gaussian_nll
from stellarfm_jax.optim import make_optimizer, sgdr_learning_rate, sgdr_staircase


def test_loss_equals_closed_form():
    rng = np.random.default_rng(0)
    mean, logvar, y, err = (rng.normal(size=(8, 3)) for _ in range(4))
    w = (rng.random((8, 3)) < 0.7).astype(np.float64)
    total, count = 0.0, 0.0
    for i in range(8):
        for r in range(3):
            if w[i, r]:
                v = math.exp(logvar[i, r]) + err[i, r] ** 2
                total += 0.5 * ((y[i, r] - mean[i, r]) ** 2 / v + math.log(v))
                count += 1
    got = gaussian_nll(*(jnp.asarray(a, jnp.float32) for a in (mean, logvar, y, err, w)))
    np.testing.assert_allclose(float(got), total / count, rtol=1e-6)
    # All requests invalid: zero loss, no NaN.
    assert float(gaussian_nll(*(jnp.asarray(a, jnp.float32) for a in (mean, logvar, y, err, 0 * w)))) == 0.0


def _torch_closed_form(epoch, base=1e-4, eta_min=1e-10, t0=512):
    return eta_min + (base - eta_min) * (1 + math.cos(math.pi * (epoch % t0) / t0)) / 2


def test_schedule_matches_torch_closed_form_over_three_cycles():
    epochs = np.arange(0, 3 * 512 + 7)
    ours = np.asarray(jax.vmap(lambda e: sgdr_learning_rate(e, 1e-4, 1e-10, 512))(jnp.asarray(epochs)), np.float64)
    expected = np.array([_torch_closed_form(e) for e in epochs])
    np.testing.assert_allclose(ours, expected, rtol=1e-6)
    # The staircase holds an epoch's value for all of its steps.
    sched = sgdr_staircase(1e-4, 1e-10, 512, steps_per_epoch=348)
    assert float(sched(348 * 3)) == float(sched(348 * 3 + 347)) == pytest.approx(_torch_closed_form(3), rel=1e-6)


def test_schedule_matches_torch_scheduler():
    torch = pytest.importorskip("torch")
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([p], lr=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(opt, T_0=8, T_mult=1, eta_min=1e-10)
    lrs = []
    for _ in range(3 * 8 + 3):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    ours = [float(sgdr_learning_rate(e, 1e-4, 1e-10, 8)) for e in range(len(lrs))]
    np.testing.assert_allclose(ours, lrs, rtol=1e-6)


def test_adamw_matches_torch_defaults():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    w0 = rng.normal(size=(5, 4)).astype(np.float32)
    grads = [rng.normal(size=(5, 4)).astype(np.float32) for _ in range(5)]
    tw = torch.nn.Parameter(torch.tensor(w0))
    topt = torch.optim.AdamW([tw], lr=1e-3)  # torch defaults: betas (0.9, 0.999), eps 1e-8, weight_decay 0.01
    cfg = TrainConfig(learning_rate=1e-3, min_learning_rate=1e-3)  # constant lr for the comparison
    opt = make_optimizer(cfg, steps_per_epoch=10)
    w = jnp.asarray(w0)
    state = opt.init(w)
    for g in grads:
        topt.zero_grad()
        tw.grad = torch.tensor(g)
        topt.step()
        updates, state = opt.update(jnp.asarray(g), state, w)
        w = optax.apply_updates(w, updates)
    np.testing.assert_allclose(np.asarray(w), tw.detach().numpy(), rtol=1e-6, atol=1e-7)
    assert cfg.weight_decay == topt.defaults["weight_decay"] == 0.01
