"""Training end to end: it learns, resumes exactly, survives a corrupted checkpoint, runs in bf16,
and the CLI behaves (DESIGN §4; issue #2)."""

import dataclasses
import json
import shutil
import subprocess
import sys

import h5py
import jax
import numpy as np
import pytest

from stellarfm_jax.config import apply_overrides, load_config
from stellarfm_jax.data import read_dataset, write_dataset
from stellarfm_jax.nn import StellarPerceptron
from stellarfm_jax.saved_model import load_model
from stellarfm_jax.synthetic import make_synthetic_dataset
from stellarfm_jax.forward import ModelSpec
from stellarfm_jax.train import export_checkpoint, fit, label_metrics, predictor

QUIET = dict(log=lambda *a: None)


def tiny(*overrides):
    return apply_overrides(load_config("tiny"), list(overrides))


# The end-to-end checks below train the tiny config on 300 synthetic stars (240 train: 3 steps of 64 per epoch),
# so they share one compiled epoch program (the suite's persistent XLA cache; compilation is most of their time).
def small_data(seed: int = 1):
    return make_synthetic_dataset(300, seed=seed)


def test_it_learns_a_held_out_token_with_calibrated_errors(tiny_trained_without_m_h):
    """teff predicted from the other tokens by the tiny config trained 12 epochs on synthetic stars (the suite's
    shared fit, tests/conftest.py): scatter < 30% of its spread, robust z std in [0.7, 1.4]."""
    _, data, cfg, params = tiny_trained_without_m_h
    spec = ModelSpec(cfg.model, data.vocab.size)
    inputs = [n for n in data.vocab.names if n != "teff"][: cfg.model.context_length]
    m = label_metrics(predictor(params, spec, 256), data.vocab, data.test.values, data.test.errors, inputs, ["teff"])
    spread = np.nanstd(data.test.values[:, data.vocab.token_id("teff") - 1])
    print(f"teff scatter / spread = {m['teff_scatter'] / spread:.3f}, robust z std = {m['teff_z_std']:.3f}")
    assert m["teff_scatter"] < 0.3 * spread
    assert 0.7 <= m["teff_z_std"] <= 1.4


def _params_close(a, b, atol):
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=atol, rtol=0)


def test_resume_equals_uninterrupted_run_and_skips_a_corrupted_checkpoint(tmp_path):
    data = small_data()
    full = fit(tiny("train.epochs=4"), data, workdir=tmp_path / "full", **QUIET)
    # Stop after epoch 2, resume to 4.
    fit(tiny("train.epochs=2"), data, workdir=tmp_path / "resumed", **QUIET)
    resumed = fit(tiny("train.epochs=4"), data, workdir=tmp_path / "resumed", **QUIET)
    _params_close(full.params, resumed.params, atol=1e-6)
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3, 4]
    np.testing.assert_allclose([h["loss"] for h in resumed.history], [h["loss"] for h in full.history], rtol=1e-6)

    # A corrupted latest checkpoint: the previous one is used, with a message, and training catches up.
    work = tmp_path / "resumed"
    for f in (work / "checkpoints" / "4" / "state").rglob("*"):
        if f.is_file():
            f.write_bytes(b"garbage")
    messages = []
    recovered = fit(tiny("train.epochs=4"), data, workdir=work, log=messages.append)
    assert any("epoch 4" in m and "unreadable" in m for m in messages), messages
    assert any("resuming from the checkpoint after epoch 3" in m for m in messages), messages
    _params_close(full.params, recovered.params, atol=1e-6)


def test_resume_refuses_a_changed_config(tmp_path):
    data = small_data(2)
    fit(tiny("train.epochs=1"), data, workdir=tmp_path, **QUIET)
    with pytest.raises(ValueError, match="model.embedding_dim"):
        fit(tiny("train.epochs=2", "model.embedding_dim=32"), data, workdir=tmp_path, **QUIET)


def test_init_from_a_trained_model_starts_from_its_parameters(tmp_path):
    """train.init_from: the run's initial parameters are the model's (bit for bit), so its first epoch already
    has a far lower loss than a random start's; another architecture or other prepared data is refused."""
    from stellarfm_jax.errors import BadConfigError
    from stellarfm_jax.train import setup_run

    data = small_data(3)
    base = fit(tiny("train.epochs=6"), data, workdir=tmp_path / "base", **QUIET)
    start = setup_run(tiny(f"train.init_from={tmp_path / 'base'}"), data)
    _params_close(start.state.params, base.params, atol=0)
    again = fit(tiny("train.epochs=1", f"train.init_from={tmp_path / 'base' / 'model'}"), data, **QUIET)
    fresh = base.history[0]["loss"]
    assert again.history[0]["loss"] < base.history[-1]["loss"] + 0.1 * abs(fresh - base.history[-1]["loss"])
    assert again.history[0]["loss"] < fresh - 0.5 * (fresh - base.history[-1]["loss"])
    with pytest.raises(BadConfigError, match="model.embedding_dim"):
        setup_run(tiny("model.embedding_dim=32", f"train.init_from={tmp_path / 'base'}"), data)
    with pytest.raises(BadConfigError, match="other prepared data"):
        setup_run(tiny(f"train.init_from={tmp_path / 'base'}"), small_data(4))
    with pytest.raises(Exception, match="no shipped model"):
        setup_run(tiny("train.init_from=no_such_model"), data)


def test_bfloat16_training_on_cpu():
    data = small_data()
    cfg = tiny("train.epochs=2", "model.compute_dtype=bfloat16")
    result = fit(cfg, data, **QUIET)
    assert all(np.isfinite(h["loss"]) and np.isfinite(h["val_loss"]) for h in result.history)
    assert all(x.dtype == np.float32 for x in jax.tree_util.tree_leaves(result.params))
    f32 = fit(tiny("train.epochs=2"), data, **QUIET)
    # Same seed, same batches: the two runs stay close (bf16 rounding only).
    assert abs(result.history[-1]["val_loss"] - f32.history[-1]["val_loss"]) < 0.1


def test_data_parallel_step_equals_single_device_step():
    """Run in a subprocess with 4 virtual CPU devices (the flag must be set before JAX starts)."""
    code = r"""
import jax, numpy as np
from stellarfm_jax.config import apply_overrides, load_config
from stellarfm_jax.synthetic import make_synthetic_dataset
from stellarfm_jax.train import run_epoch, setup_run
assert jax.device_count() == 4, jax.devices()
data = make_synthetic_dataset(300, seed=3)

def two_epochs(*overrides):  # the training epochs only (fit's evaluation and checkpoints are tested elsewhere)
    run = setup_run(apply_overrides(load_config("tiny"), list(overrides)), data)
    state = run.state
    for epoch in range(2):
        state, _ = run_epoch(run, state, epoch)
    assert run.num_devices == (4 if overrides else 1)
    return state.params

single, multi = two_epochs(), two_epochs("train.data_parallel=true")
diff = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b)))) for a, b in
           zip(jax.tree_util.tree_leaves(single), jax.tree_util.tree_leaves(multi)))
print("max param diff", diff)
assert diff < 1e-5, diff
"""
    environ = __import__("os").environ
    env = {**environ, "XLA_FLAGS": environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr


def _run_cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "stellarfm_jax.train", *args], capture_output=True, text=True,
                          timeout=600, cwd=cwd)


def test_cli_smoke_and_bad_overrides(tmp_path):
    data_file = write_dataset(tmp_path / "synthetic.h5", small_data(4))
    work = tmp_path / "run"
    out = _run_cli("--config", "tiny", "--workdir", str(work), "--data", str(data_file), "--set", "train.epochs=3",
                   "--no-progress")
    assert out.returncode == 0, out.stderr
    assert sorted(int(p.name) for p in (work / "checkpoints").iterdir() if p.name.isdigit()) == [1, 2, 3]
    records = [json.loads(line) for line in (work / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2, 3] and all("val_loss" in r for r in records)
    assert (work / "loss_curve.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((work / "config.json").read_text())["train"]["epochs"] == 3
    params, mcfg, vocab, meta = load_model(work / "model")
    assert mcfg == load_config("tiny").model and vocab.names[0] == "s0" and meta["epochs_trained"] == 3
    train_values = read_dataset(data_file).train.values
    np.testing.assert_allclose(meta["token_range"]["max"], np.nanmax(train_values, axis=0), rtol=1e-6)
    exported, *_ = load_model(export_checkpoint(work, tmp_path / "exported", epoch=3, log=lambda *a: None))
    _params_close(exported, params, atol=0)

    bad_key = _run_cli("--config", "tiny", "--workdir", str(tmp_path / "x"), "--data", str(data_file),
                       "--set", "train.epochz=3")
    assert bad_key.returncode != 0 and "train.epochz" in bad_key.stderr
    bad_value = _run_cli("--config", "tiny", "--workdir", str(tmp_path / "y"), "--data", str(data_file),
                         "--set", "train.epochs=three")
    assert bad_value.returncode != 0 and "train.epochs" in bad_value.stderr
    assert not (tmp_path / "x" / "checkpoints").exists() and not (tmp_path / "y" / "checkpoints").exists()


def test_bad_data_is_refused_before_training(tmp_path):
    good = write_dataset(tmp_path / "good.h5", make_synthetic_dataset(400, seed=5))

    def variant(name, edit):
        path = tmp_path / name
        shutil.copy(good, path)
        with h5py.File(path, "r+") as f:
            edit(f)
        return path

    def wrong_shape(f):
        del f["train/values"]
        f["train/values"] = np.zeros((320, 7), np.float32)

    def unknown_name(f):  # a file claiming the xp_sampled schema with a token that schema does not have
        vocab = json.loads(f.attrs["vocabulary"])
        names = __import__("stellarfm_jax.schemas", fromlist=["x"]).xp_sampled_names()
        vocab["names"] = names[: len(vocab["names"]) - 1] + ["not_a_token"]
        vocab["outputs"] = vocab["names"]
        vocab["schema"] = "xp_sampled"
        f.attrs["vocabulary"] = json.dumps(vocab)
        f.attrs["token_names"] = vocab["names"]
        f.attrs["schema"] = "xp_sampled"

    def all_nan(f):
        values = f["train/values"][...]
        values[:, 3] = np.nan
        del f["train/values"]
        f["train/values"] = values

    for name, edit, expected in [("shape.h5", wrong_shape, "expected"), ("names.h5", unknown_name, "not_a_token"),
                                 ("nan.h5", all_nan, "s3")]:
        out = _run_cli("--config", "tiny", "--workdir", str(tmp_path / name), "--data", str(variant(name, edit)))
        assert out.returncode == 2, (name, out.stderr)
        assert expected in out.stderr, (name, out.stderr)
        assert not (tmp_path / name / "checkpoints").exists()

    # The library checks too (for data built in memory).
    data = make_synthetic_dataset(400, seed=6)
    values = data.train.values.copy()
    values[:, 2] = np.nan
    broken = dataclasses.replace(data, train=dataclasses.replace(data.train, values=values))
    with pytest.raises(ValueError, match="s2"):
        fit(tiny(), broken, **QUIET)


def test_epoch_function_compiles_once_across_epochs():
    """Epoch number, first step and state are traced arguments: no retrace from one call to the next."""
    from stellarfm_jax.train import run_epoch, setup_run

    run = setup_run(tiny(), small_data(7), steps_limit=2)
    assert run.steps_per_epoch == 3 and run.steps_per_call == 1
    state = run.state
    for epoch in range(3):
        state, _ = run_epoch(run, state, epoch)
    assert int(state.step) == 9
    assert run.train_chunk._cache_size() == 1


def test_a_second_fit_reuses_the_programs_and_starts_afresh():
    """Fitting the same configuration on the same data set again in one process (a resume, a notebook) reuses the
    traced programs (also when only host-loop settings such as the epoch count differ), and starts from the
    config's own initial state: the same parameters bit for bit, not a continuation of the first fit."""
    from stellarfm_jax.train import _training_programs, setup_run

    data = small_data(8)
    first = fit(tiny("train.epochs=2"), data, **QUIET)
    hits = _training_programs.cache_info().hits
    second = fit(tiny("train.epochs=2", "train.eval_every_epochs=2"), data, **QUIET)
    assert _training_programs.cache_info().hits == hits + 1
    _params_close(first.params, second.params, atol=0)
    assert setup_run(tiny("train.epochs=7"), data).train_chunk is setup_run(tiny(), data).train_chunk
    assert setup_run(tiny("train.learning_rate=0.002"), data).train_chunk is not setup_run(tiny(), data).train_chunk


def test_epoch_in_several_calls_equals_one_call():
    """Splitting an epoch over device calls (so Ctrl-C is noticed within seconds) runs the same batches."""
    from stellarfm_jax.train import run_epoch, setup_run

    data = small_data(7)
    one = setup_run(tiny(), data, steps_limit=100)  # 240 train stars: 3 steps of 64 per epoch
    many = setup_run(tiny(), data, steps_limit=1)
    assert one.steps_per_call == one.steps_per_epoch == 3 and many.steps_per_call == 1
    a, ma = run_epoch(one, one.state, 0)
    b, mb = run_epoch(many, many.state, 0)
    assert int(a.step) == int(b.step) == 3
    _params_close(a.params, b.params, atol=1e-6)
    np.testing.assert_allclose(ma["loss"], mb["loss"], rtol=1e-5)



def test_ctrl_c_stops_within_a_call_checkpoints_the_last_epoch_and_resumes(tmp_path):
    """SIGINT during training: fit returns within one device call with interrupted=True, the last finished
    epoch is checkpointed (whatever checkpoint_every_epochs says), and the same run resumes from it."""
    import os
    import signal
    import threading
    import time

    from stellarfm_jax.checkpoint import Checkpointer

    work = tmp_path / "work"
    synthetic = small_data()
    cfg = tiny("train.epochs=500", "train.checkpoint_every_epochs=1000", "train.eval_every_epochs=1000")
    metrics = work / "metrics.jsonl"

    def interrupt_after_two_epochs():
        while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 2):
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=interrupt_after_two_epochs, daemon=True).start()
    messages = []
    t0 = time.perf_counter()
    result = fit(cfg, synthetic, workdir=work, log=messages.append)
    assert result.interrupted and 2 <= len(result.history) < 500
    done = result.history[-1]["epoch"]
    assert Checkpointer(work / "checkpoints", keep=3).steps()[-1] == done
    assert any("interrupted" in m and "resume" in m for m in messages), messages
    assert not (work / "model").exists()
    print(f"stopped after epoch {done} in {time.perf_counter() - t0:.1f} s")
    # The same run, now to two more epochs, resumes from the checkpoint and finishes.
    resumed = fit(apply_overrides(cfg, [f"train.epochs={done + 2}"]), synthetic, workdir=work, log=messages.append)
    assert not resumed.interrupted and [h["epoch"] for h in resumed.history] == list(range(1, done + 3))
    assert (work / "model").exists()


def test_a_second_run_on_a_held_workdir_is_refused(tmp_path):
    """Two trainings on one workdir: the second is refused naming the first (before any training)."""
    import subprocess
    import sys

    from stellarfm_jax.cli import WorkdirLockedError

    work = tmp_path / "work"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom stellarfm_jax.formats import workdir_lock\n"
                               "with workdir_lock(sys.argv[1]):\n    print('held', flush=True)\n    time.sleep(60)\n",
                               str(work)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(WorkdirLockedError, match=f"pid {holder.pid}"):
            fit(tiny(), small_data(), workdir=work, **QUIET)
    finally:
        holder.kill()
        holder.wait()
