"""Flax Linen modules (the only subpackage that imports Flax)."""

from .model import BiasKVAttention, NonLinearEmbedding, StellarPerceptron, TransformerBlock, count_params, init_params
from .search_heads import AttentionPooling, SearchHead

__all__ = ["AttentionPooling", "BiasKVAttention", "NonLinearEmbedding", "SearchHead", "StellarPerceptron",
           "TransformerBlock", "count_params", "init_params"]
