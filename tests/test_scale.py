"""Performance and scale (issue #8): length-bucketed training is the same objective, the CLI trains on
4 (virtual CPU) devices, and the GPU check script runs end to end in its dry-run mode."""

import json
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from stellarfm_jax.config import load_config
from stellarfm_jax.data import write_dataset
from stellarfm_jax.nn import StellarPerceptron, init_params
from stellarfm_jax.sampling import StarData, sample_batch
from stellarfm_jax.steps import length_buckets, make_train_step, nll_loss, padding_strata
from stellarfm_jax.synthetic import make_synthetic_dataset
from stellarfm_jax.train_state import TrainState

REPO = pathlib.Path(__file__).resolve().parents[1]
T, P = 16, 12


def _stars(n, vocab=30, seed=0):
    rng = np.random.default_rng(seed)
    available = rng.random((n, vocab)) < rng.uniform(0.3, 1.0, (n, 1))
    values = np.where(available, rng.normal(size=(n, vocab)), 0.0).astype(np.float32)
    errors = np.where(available, 0.05, 0.0).astype(np.float32)
    return StarData(jnp.asarray(values), jnp.asarray(errors), jnp.asarray(available))


@pytest.mark.parametrize("batch,buckets,shards", [(64, 4, 1), (60, 3, 4), (48, 5, 2)])
def test_stratified_padding_respects_each_bucket_bound(batch, buckets, shards):
    """Every real token of a bucket's rows lies within that bucket's slots, and strata are a permutation."""
    strata = np.asarray(padding_strata(batch, shards))
    assert sorted(strata) == list(range(batch))
    kw = dict(context_length=T, max_padding=P, num_outputs=1)
    for seed in range(5):
        data = _stars(batch, seed=seed)
        data = data._replace(available=data.available.at[:, :T].set(True))  # every star can fill the context
        out = sample_batch(jax.random.key(seed), data, jnp.ones(30), padding_strata=jnp.asarray(strata), **kw)
        n_real = np.asarray(out.tokens > 0).sum(1).reshape(shards, -1)
        for start, stop, slots in length_buckets(batch, T, P, buckets, shards):
            assert n_real[:, start:stop].max() <= slots


def test_stratified_padding_keeps_the_uniform_marginal():
    """Over many batches each row's padding is U{0..P-1} (chi-square over rows pooled per stratum group)."""
    batch, n_batches = 32, 400
    data = _stars(batch)
    data = data._replace(available=jnp.ones_like(data.available))
    strata = padding_strata(batch)
    sample = jax.jit(lambda k: sample_batch(k, data, jnp.ones(30), padding_strata=strata, context_length=T,
                                            max_padding=P, num_outputs=1).tokens)
    keys = jax.random.split(jax.random.key(3), n_batches)
    padding = T - np.stack([np.asarray(sample(k) > 0).sum(1) for k in keys])  # [n_batches, B]
    counts = np.bincount(padding.ravel(), minlength=P)
    assert counts.size == P
    expected = padding.size / P
    chi2 = np.sum((counts - expected) ** 2 / expected)
    assert chi2 < 40.0, counts  # 11 dof: p ~ 4e-5 at 40


# Buckets and micro-batches together in the default run; each alone in the slow one.
@pytest.mark.parametrize("num_buckets,micro", [pytest.param(4, 0, marks=pytest.mark.slow),
                                               pytest.param(1, 8, marks=pytest.mark.slow), (4, 4)])
def test_length_buckets_and_micro_batches_give_the_same_step(num_buckets, micro):
    """Same stratified batch, dropout off: one SGD step with length buckets and/or a micro-batched
    gradient equals the whole-batch, full-context step."""
    cfg = load_config("tiny").model
    model = StellarPerceptron(cfg, 30)
    params = init_params(model, jax.random.key(0))
    optimizer = optax.sgd(0.1)
    batch_size = 48
    kw = dict(context_length=cfg.context_length, max_padding=P, num_outputs=2)
    data = _stars(batch_size, seed=1)
    batch = sample_batch(jax.random.key(1), data, jnp.ones(30), padding_strata=padding_strata(batch_size), **kw)
    results = []
    buckets = length_buckets(batch_size, cfg.context_length, P, num_buckets) if num_buckets > 1 else ()
    for bk, mb in (((), 0), (buckets, micro)):
        loss_fn = nll_loss(lambda p, v, t, r, k: model.apply({"params": p}, v, t, r))
        step = jax.jit(make_train_step(loss_fn, optimizer, buckets=bk, micro_batch_size=mb))
        state = TrainState.create(jax.tree.map(jnp.copy, params), optimizer)
        results.append(step(state, batch, jax.random.key(2)))
    (full, m_full), (bucketed, m_bucketed) = results
    for key in ("loss", "mse", "count"):
        np.testing.assert_allclose(float(m_bucketed[key]), float(m_full[key]), rtol=1e-5)
    for a, b in zip(jax.tree_util.tree_leaves(full.params), jax.tree_util.tree_leaves(bucketed.params)):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=1e-6, rtol=0)


def _run(cmd, env_extra, timeout):
    env = dict(os.environ, **env_extra)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow  # the data-parallel step is checked in the default run (test_train.py); this is its CLI path
def test_cli_trains_tiny_config_on_four_devices(tmp_path):
    data = tmp_path / "synthetic.h5"
    write_dataset(data, make_synthetic_dataset(800, seed=3))
    work = tmp_path / "work"
    proc = _run([sys.executable, "-m", "stellarfm_jax.train", "--config", "tiny", "--workdir", str(work),
                 "--data", str(data), "--no-progress", "--set", "train.data_parallel=true", "--set", "train.epochs=2",
                 "--set", "train.length_buckets=2", "--set", "train.micro_batch_size=8"],
                {"XLA_FLAGS": os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4",
                 "JAX_PLATFORMS": "cpu"}, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "4 device(s)" in proc.stdout + proc.stderr
    records = [json.loads(line) for line in (work / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]
    assert all(np.isfinite(r["loss"]) and np.isfinite(r["val_loss"]) for r in records)
    assert (work / "model" / "params.npz").exists()


@pytest.mark.slow  # ~1.5-2.5 min on 2 cores (the benchmark script's every stage, then a training run)
def test_gpu_session_dry_run_checks_trains_packs_and_unpacks(tmp_path):
    """scripts/gpu_session.py --dry-run: benchmarks/gpu_check.sh --dry-run writes its JSON, a tiny model trains
    on the given data file, the workdir comes back as parts that unpack into a workdir we can export from.
    Run it before a device session: ``python -m pytest -m slow tests/test_scale.py``."""
    data = tmp_path / "synthetic.h5"
    write_dataset(data, make_synthetic_dataset(600, seed=4))
    out = tmp_path / "out"
    proc = _run([sys.executable, "scripts/gpu_session.py", "run", "--data", str(data), "--out", str(out), "--dry-run"],
                {"JAX_PLATFORMS": "cpu"}, timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    report = json.loads((out / "gpu_check.json").read_text())
    assert report["dry_run"] is True
    rows = {(r["dtype"]): r for r in report["train"]}
    assert set(rows) == {"float32", "bfloat16"}
    for r in rows.values():
        assert r["stars_per_s"] > 0 and r["compile_s"] > 0 and r["model_flops_per_star"] > 0
    assert report["inference"]["stars_per_s"] > 0 and report["inference"]["stars"] > 0
    assert "peak_memory_bytes" in report

    session = json.loads((out / "session.json").read_text())
    assert session["check_rc"] == 0 and session["train_rc"] == 0 and session["epochs_planned"] == 2
    returned = sorted(p.name for p in out.iterdir())
    assert len(returned) <= 8 and all(p.stat().st_size <= 16 * 2**20 for p in out.iterdir())  # the device tool's limits

    sys.path.insert(0, str(REPO / "scripts"))
    from gpu_session import plan_epochs, unpack

    work = unpack(out, tmp_path / "work")
    assert [json.loads(x)["epoch"] for x in (work / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    assert (work / "command.txt").read_text().startswith("python -m stellarfm_jax.train --config tiny")
    from stellarfm_jax.inference import StellarModel
    from stellarfm_jax.train import export_checkpoint

    model = StellarModel.load(export_checkpoint(work, tmp_path / "model", log=lambda *_: None))
    assert model.metadata["epochs_trained"] == 2
    with pytest.raises(FileExistsError):
        unpack(out, work)
    # The epoch plan follows the measured bf16 speed, within bounds, and falls back without a measurement.
    check = {"train": [{"dtype": "bfloat16", "stars_per_s": 100_000.0}, {"dtype": "float32", "stars_per_s": 1.0}]}
    assert plan_epochs(check, n_train=32_000, seconds=200) == int(0.5 * 200 * 100_000 / 32_000)
    assert plan_epochs(check, n_train=32_000, seconds=1) == 20
    assert plan_epochs(None, n_train=32_000, seconds=200, fallback=77) == 77


def test_gpu_session_fails_when_a_stage_times_out(monkeypatch, tmp_path, capsys):
    """A stage that hit its time limit (rc 124) or failed fails the whole session with a message naming it."""
    sys.path.insert(0, str(REPO / "scripts"))
    import gpu_session

    assert gpu_session.failed_stages({"check_rc": 0, "train_rc": 0}) == []
    assert gpu_session.failed_stages({"check_rc": 124, "train_rc": 0}) == ["check stage timed out"]
    assert gpu_session.failed_stages({"check_rc": 0, "train_rc": 2}) == ["train stage exited with status 2"]
    data = tmp_path / "d.h5"
    data.write_bytes(b"")
    monkeypatch.setattr(gpu_session, "run", lambda *a, **k: {"check_rc": 124, "train_rc": 0})
    assert gpu_session.main(["run", "--data", str(data), "--out", str(tmp_path / "out"), "--dry-run"]) == 1
    assert "check stage timed out" in capsys.readouterr().err
