"""stellarfm_jax: a JAX/Flax foundation model for stars (Leung & Bovy 2023)."""

__version__ = "0.1.0"


def pretrained(name: str = "small"):
    """The model shipped inside the package (``stellarfm_jax/models/<name>/``, with its ``TRAINING.md``) as a
    :class:`stellarfm_jax.inference.StellarModel`."""
    import pathlib

    from .inference import StellarModel

    path = pathlib.Path(__file__).resolve().parent / "models" / name
    if not (path / "model.json").is_file():
        available = sorted(p.name for p in path.parent.glob("*") if (p / "model.json").is_file())
        raise FileNotFoundError(f"no shipped model {name!r} in {path.parent}; available: {available}")
    return StellarModel.load(path)
