"""Example: the built-in ``medium`` config (a wider model for a lent GPU).

Built-in configs live in the package (``stellarfm_jax/configs/medium.py``, what ``--config medium`` loads); this file
re-exports it so that ``--config configs/medium.py`` works from a clone. configs/small.py shows how to write your own.
"""

from stellarfm_jax.configs.medium import get_config  # noqa: F401
