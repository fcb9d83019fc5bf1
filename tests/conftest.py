"""Shared test set-up: a persistent XLA compilation cache, so that the many small fits and
subprocesses of the suite compile each distinct program once."""

import os
import pathlib

import jax

CACHE = pathlib.Path(os.environ.get("STELLARFM_TEST_JAX_CACHE", pathlib.Path(__file__).resolve().parent.parent
                                    / ".pytest_cache" / "jax_compilation_cache"))
CACHE.mkdir(parents=True, exist_ok=True)
os.environ["JAX_COMPILATION_CACHE_DIR"] = str(CACHE)  # for the CLI subprocesses
os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
jax.config.update("jax_compilation_cache_dir", str(CACHE))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
