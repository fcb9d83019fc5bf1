"""The built-in run configs, shipped inside the package: ``load_config("tiny" | "small" | "medium" | "paper")``.

Each module defines ``get_config() -> stellarfm_jax.config.Config``. To make your own, copy one of the examples in
the repository's top-level ``configs/`` folder (or one of these files) and pass its path: ``--config my_run.py``.
"""

BUILTIN = ("tiny", "small", "medium", "paper")
