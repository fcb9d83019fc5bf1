"""Shared test set-up: a persistent XLA compilation cache, so that the many small fits and
subprocesses of the suite compile each distinct program once."""

import os
import pathlib

# Most of the suite's time is XLA compiling many small programs on the CPU. Three compiler options make that ~1.6x
# faster (suite 16:49 -> 10:21 on 2 idle cores, 2026-12-01) and the tests' programs (small models, few steps) run
# about as fast: no LLVM optimisation passes, the classic loop emitters instead of the newer fusion emitters
# (slower to compile), and one code-generation thread per program (the suite already runs one worker per core).
# The tests compare runs under the same flags, and the parity and accuracy checks have float32 tolerances.
# Set STELLARFM_TEST_XLA_OPTIMIZE=1 to test the programs users run (XLA's defaults).
TEST_XLA_FLAGS = ("--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false "
                  "--xla_cpu_parallel_codegen_split_count=1")
if os.environ.get("STELLARFM_TEST_XLA_OPTIMIZE") != "1" and "xla_backend_optimization_level" not in os.environ.get(
        "XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + TEST_XLA_FLAGS).strip()

import jax  # noqa: E402  (after XLA_FLAGS: the CPU backend reads them when it starts)

CACHE = pathlib.Path(os.environ.get("STELLARFM_TEST_JAX_CACHE", pathlib.Path(__file__).resolve().parent.parent
                                    / ".pytest_cache" / "jax_compilation_cache"))
CACHE.mkdir(parents=True, exist_ok=True)
os.environ["JAX_COMPILATION_CACHE_DIR"] = str(CACHE)  # for the CLI subprocesses
os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
jax.config.update("jax_compilation_cache_dir", str(CACHE))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


# ------------------------------------------------------------------ one trained tiny model for the whole suite
import fcntl  # noqa: E402

import pytest  # noqa: E402

WITHHELD = "m_h"


@pytest.fixture(scope="session")
def tiny_trained_without_m_h(tmp_path_factory):
    """(full synthetic data set, the same without m_h, config, params): the tiny config trained 12 epochs on
    4,000 synthetic stars with m_h withheld (~50 s on a CPU). Trained once per suite run and shared by the xdist
    workers through a locked directory: the held-out-token check of training and the adapter tests (which teach
    it m_h) both use it."""
    from stellarfm_jax.config import apply_overrides, load_config
    from stellarfm_jax.saved_model import load_model, save_model
    from stellarfm_jax.synthetic import make_synthetic_dataset
    from stellarfm_jax.train import fit

    full = make_synthetic_dataset(4000, seed=11)
    held_out = full.without_tokens([WITHHELD])
    config = apply_overrides(load_config("tiny"), ["train.epochs=12"])
    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):  # each worker has its own basetemp under one common parent
        shared = shared.parent
    saved = shared / "tiny_without_m_h"
    with open(shared / "tiny_without_m_h.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one worker trains, the others wait for its saved model
        if not saved.exists():
            result = fit(config, held_out, log=lambda *a: None)
            save_model(saved, result.params, config.model, held_out.vocab, {"config": config.to_dict()})
    params, model_config, vocab, _ = load_model(saved)
    assert model_config == config.model and vocab.names == held_out.vocab.names
    return full, held_out, config, params
