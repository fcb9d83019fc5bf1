"""stellarfm_jax: a JAX/Flax foundation model for stars (Leung & Bovy 2023)."""

__version__ = "0.1.0"
