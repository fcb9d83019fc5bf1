"""stellarfm_jax: a JAX/Flax foundation model for stars (Leung & Bovy 2023)."""

__version__ = "0.1.0"


def resolve_model(spec):
    """The model ``spec`` names, loaded as a :class:`stellarfm_jax.inference.StellarModel`: a saved-model
    directory, a training workdir (its ``model/``), or the name of a model shipped with the package (``small``).
    What every command's ``--model`` accepts."""
    from .inference import StellarModel

    return StellarModel.load(spec)


def pretrained(name: str = "small"):
    """The model shipped inside the package (``stellarfm_jax/models/<name>/``, with its ``TRAINING.md``) as a
    :class:`stellarfm_jax.inference.StellarModel`."""
    from .errors import MissingFileError
    from .saved_model import SHIPPED_MODELS_DIR, shipped_model_names

    if name not in shipped_model_names():
        raise MissingFileError(f"no shipped model {name!r} in {SHIPPED_MODELS_DIR}; available: {shipped_model_names()}")
    return resolve_model(SHIPPED_MODELS_DIR / name)
