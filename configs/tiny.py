"""Example: the built-in ``tiny`` config (a tiny model that trains in seconds on a CPU: tests, smoke runs).

Built-in configs live in the package (``stellarfm_jax/configs/tiny.py``, what ``--config tiny`` loads); this file
re-exports it so that ``--config configs/tiny.py`` works from a clone. configs/small.py shows how to write your own.
"""

from stellarfm_jax.configs.tiny import get_config  # noqa: F401
