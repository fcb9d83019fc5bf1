"""Flax Linen modules (the only subpackage that imports Flax)."""

from .model import BiasKVAttention, NonLinearEmbedding, StellarPerceptron, TransformerBlock, count_params, init_params

__all__ = ["BiasKVAttention", "NonLinearEmbedding", "StellarPerceptron", "TransformerBlock", "count_params", "init_params"]
