"""Example: the built-in ``small`` config (the CPU default, the README's main command; the shipped model was trained with it).

The built-in configs live in the package (``stellarfm_jax/configs/small.py``, used by ``--config small``); this file
re-exports one so that ``--config configs/small.py`` works from a clone. To make your own config, copy this file and
change what you need, for example::

    import dataclasses
    from stellarfm_jax.config import load_config

    def get_config():
        base = load_config("small")
        return dataclasses.replace(base, name="my_run", train=dataclasses.replace(base.train, epochs=10))

then ``python -m stellarfm_jax.train --config my_run.py --workdir runs/my_run``.
"""

from stellarfm_jax.configs.small import get_config  # noqa: F401
