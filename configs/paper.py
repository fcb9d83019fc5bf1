"""Example: the built-in ``paper`` config (the paper's exact settings, bfloat16 compute for a GPU).

Built-in configs live in the package (``stellarfm_jax/configs/paper.py``, what ``--config paper`` loads); this file
re-exports it so that ``--config configs/paper.py`` works from a clone. configs/small.py shows how to write your own.
"""

from stellarfm_jax.configs.paper import get_config  # noqa: F401
