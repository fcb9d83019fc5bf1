"""A PyTorch replica of the original ``StellarPerceptronTorchModel`` (Leung & Bovy 2023), written from
``shared/reference/original_spec.md`` §1-§2, with the original's module and state_dict key names.

It is the parity reference for the weight importer (``stellarfm_jax.convert``) and the side-by-side
reference for benchmarks; it is not part of the package and is only imported where torch is present.
Importable without pytest (``import tests.torch_reference`` or with ``tests/`` on ``sys.path``).

Shapes: N stars, L context slots, R requests, D = embedding_dim. Token 0 is padding.

Module tree (state_dict keys, 84 for the original's 2 encoder and 3 decoder blocks)::

    embedding_layer.{embeddings, bias}                                  (V+1, D)
    torch_encoder.encoder_transformer_block_{1,2}.{attention, dense_1, dense_2, layernorm_1, layernorm_2}
    torch_decoder.decoder_transformer_block_{1,2,3}.{...same...}
    torch_decoder.decoder_dense_{3,4,5,6}, decoder_out, decoder_logvar_out
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "NonLinearEmbedding",
    "TransformerBlock",
    "StellarPerceptronEncoder",
    "StellarPerceptronDecoder",
    "StellarPerceptronTorchModel",
    "randomize_parameters",
]


def _activation(name: str | None):
    """The original resolves activation names on ``torch.nn.functional``; None means ReLU."""
    return F.relu if name is None else getattr(F, name)


def _default_initialization(linear: nn.Linear) -> None:
    """The original's re-initialisation of dense layers: kaiming_uniform weight (a=0, fan_in),
    bias U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    nn.init.kaiming_uniform_(linear.weight)
    bound = 1.0 / math.sqrt(linear.in_features)
    nn.init.uniform_(linear.bias, -bound, bound)


class NonLinearEmbedding(nn.Module):
    """Input token (t, v) -> act(W[t] * v + B[t]); request token t -> W[t] (no bias, no activation)."""

    def __init__(self, input_dim: int, output_dim: int, activation: str | None = "gelu"):
        super().__init__()
        self.input_dim = input_dim  # V + 1 rows, row 0 = padding
        self.output_dim = output_dim
        self.activation = _activation(activation)
        self.embeddings = nn.Parameter(torch.empty(input_dim, output_dim))
        self.bias = nn.Parameter(torch.empty(input_dim, output_dim))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.xavier_uniform_(self.embeddings)
        nn.init.xavier_uniform_(self.bias)
        with torch.no_grad():
            self.embeddings[0].zero_()
            self.bias[0].zero_()

    def forward(self, input_tokens: torch.Tensor, inputs: torch.Tensor | None = None) -> torch.Tensor:
        """input_tokens (N, L) int; inputs (N, L, 1) float or None -> (N, L, D)."""
        rows = F.embedding(input_tokens, self.embeddings)
        if inputs is None:
            return rows
        return self.activation(rows * inputs + F.embedding(input_tokens, self.bias))


class TransformerBlock(nn.Module):
    """Post-LN block: x = LN1(q + Drop(MHA(q, k, v))); out = LN2(x + Drop(Dense2(act(Dense1(x)))))."""

    def __init__(
        self,
        embedding_dim: int,
        num_heads: int,
        dense_num: int,
        dropout_rate: float = 0.1,
        activation: str | None = "gelu",
        return_attention_scores: bool = False,
    ):
        super().__init__()
        self.return_attention_scores = return_attention_scores
        self.activation = _activation(activation)
        self.attention = nn.MultiheadAttention(
            embed_dim=embedding_dim, num_heads=num_heads, dropout=dropout_rate, batch_first=True, add_bias_kv=True
        )
        self.dense_1 = nn.Linear(embedding_dim, dense_num)
        self.dense_2 = nn.Linear(dense_num, embedding_dim)
        self.layernorm_1 = nn.LayerNorm(embedding_dim, eps=1e-5)
        self.layernorm_2 = nn.LayerNorm(embedding_dim, eps=1e-5)
        self.dropout_1 = nn.Dropout(dropout_rate)
        self.dropout_2 = nn.Dropout(dropout_rate)
        _default_initialization(self.dense_1)
        _default_initialization(self.dense_2)

    def forward(self, query, key, value, key_padding_mask):
        """query (N, L, D), key/value (N, S, D), key_padding_mask (N, S) bool, True = padding.

        Returns (out (N, L, D), head-averaged attention (N, L, S+1) or None)."""
        attended, scores = self.attention(
            query, key, value, key_padding_mask=key_padding_mask, need_weights=self.return_attention_scores
        )
        x = self.layernorm_1(query + self.dropout_1(attended))
        f = self.dense_2(self.activation(self.dense_1(x)))
        return self.layernorm_2(x + self.dropout_2(f)), scores


class StellarPerceptronEncoder(nn.Module):
    """Self-attention blocks; block k has heads // 2**k and dense // 2**k; the last returns attention."""

    def __init__(self, embedding_dim, num_heads, dense_num, dropout_rate=0.1, activation="gelu", num_blocks=2):
        super().__init__()
        self.num_blocks = num_blocks
        for k in range(num_blocks):
            block = TransformerBlock(
                embedding_dim, num_heads // 2**k, dense_num // 2**k, dropout_rate, activation,
                return_attention_scores=k == num_blocks - 1,
            )
            self.add_module(f"encoder_transformer_block_{k + 1}", block)
        self.last_attention_scores = None

    def forward(self, embedded, key_padding_mask):
        """embedded (N, L, D), key_padding_mask (N, L) bool -> perception (N, L, D)."""
        x = embedded
        for k in range(self.num_blocks):
            x, scores = getattr(self, f"encoder_transformer_block_{k + 1}")(x, x, x, key_padding_mask)
        self.last_attention_scores = scores
        return x


class StellarPerceptronDecoder(nn.Module):
    """Cross-attention blocks (query = request vectors, key = value = perception) + the MLP head
    D -> G -> G/2 -> G/4 -> G/8 with one shared dropout, then mean and log-variance heads."""

    def __init__(self, embedding_dim, num_heads, dense_num, dropout_rate=0.1, activation="gelu", num_blocks=3):
        super().__init__()
        self.num_blocks = num_blocks
        self.activation = _activation(activation)
        for k in range(num_blocks):
            block = TransformerBlock(
                embedding_dim, num_heads // 2**k, dense_num // 2**k, dropout_rate, activation,
                return_attention_scores=k == num_blocks - 1,
            )
            self.add_module(f"decoder_transformer_block_{k + 1}", block)
        widths = [embedding_dim] + [dense_num // 2**k for k in range(4)]
        for k in range(4):
            self.add_module(f"decoder_dense_{k + 3}", nn.Linear(widths[k], widths[k + 1]))
        self.decoder_out = nn.Linear(widths[-1], 1)
        self.decoder_logvar_out = nn.Linear(widths[-1], 1)
        self.decoder_dropout_1 = nn.Dropout(dropout_rate)
        for k in range(4):
            _default_initialization(getattr(self, f"decoder_dense_{k + 3}"))
        _default_initialization(self.decoder_out)
        _default_initialization(self.decoder_logvar_out)
        self.last_attention_scores = None

    def forward(self, unit_vectors, perception, key_padding_mask):
        """unit_vectors (N, R, D), perception (N, L, D), key_padding_mask (N, L) -> (mean, logvar) (N, R, 1)."""
        x = unit_vectors
        for k in range(self.num_blocks):
            x, scores = getattr(self, f"decoder_transformer_block_{k + 1}")(x, perception, perception, key_padding_mask)
        self.last_attention_scores = scores
        for k in range(4):
            x = self.decoder_dropout_1(self.activation(getattr(self, f"decoder_dense_{k + 3}")(x)))
        return self.decoder_out(x), self.decoder_logvar_out(x)


class StellarPerceptronTorchModel(nn.Module):
    """The whole network. Arguments follow the original's ``nn_config`` names; ``vocab_size`` is V
    (the embedding has V + 1 rows). Block counts other than 2/3 are an extension for tests."""

    def __init__(
        self,
        vocab_size: int = 118,
        embedding_dim: int = 128,
        embedding_activation: str | None = "gelu",
        encoder_head_num: int = 16,
        encoder_dense_num: int = 1024,
        encoder_dropout_rate: float = 0.1,
        encoder_activation: str | None = "gelu",
        decoder_head_num: int = 16,
        decoder_dense_num: int = 3096,
        decoder_dropout_rate: float = 0.1,
        decoder_activation: str | None = "gelu",
        encoder_blocks: int = 2,
        decoder_blocks: int = 3,
    ):
        super().__init__()
        self.embedding_layer = NonLinearEmbedding(vocab_size + 1, embedding_dim, embedding_activation)
        self.torch_encoder = StellarPerceptronEncoder(
            embedding_dim, encoder_head_num, encoder_dense_num, encoder_dropout_rate, encoder_activation, encoder_blocks
        )
        self.torch_decoder = StellarPerceptronDecoder(
            embedding_dim, decoder_head_num, decoder_dense_num, decoder_dropout_rate, decoder_activation, decoder_blocks
        )

    @classmethod
    def from_model_config(cls, model_config, vocab_size: int) -> "StellarPerceptronTorchModel":
        """Build from a ``stellarfm_jax.config.ModelConfig`` (duck-typed; no stellarfm_jax import needed)."""
        c = model_config
        return cls(
            vocab_size=vocab_size,
            embedding_dim=c.embedding_dim,
            encoder_head_num=c.encoder_heads,
            encoder_dense_num=c.encoder_dense,
            encoder_dropout_rate=c.dropout,
            decoder_head_num=c.decoder_heads,
            decoder_dense_num=c.decoder_dense,
            decoder_dropout_rate=c.dropout,
            encoder_blocks=c.encoder_blocks,
            decoder_blocks=c.decoder_blocks,
        )

    def perceive(self, input_tensor, input_token_tensor):
        """input_tensor (N, L, 1) standardised, input_token_tensor (N, L) -> perception (N, L, D)."""
        padding_mask = input_token_tensor == 0
        embedded = self.embedding_layer(input_token_tensor, input_tensor)
        return self.torch_encoder(embedded, padding_mask)

    def forward(self, input_tensor, input_token_tensor, output_token_tensor):
        """input_tensor (N, L, 1), input_token_tensor (N, L) int, output_token_tensor (N, R) int
        -> (mean (N, R, 1), logvar (N, R, 1)) in standardised units."""
        padding_mask = input_token_tensor == 0
        perception = self.perceive(input_tensor, input_token_tensor)
        unit_vectors = self.embedding_layer(output_token_tensor)
        return self.torch_decoder(unit_vectors, perception, padding_mask)


def randomize_parameters(model: nn.Module, seed: int = 0, scale: float = 0.3) -> nn.Module:
    """Perturb every tensor of ``model`` in place (a deterministic function of ``seed``), so that biases,
    LayerNorm affines, bias_k/bias_v and the padding rows are all non-trivial. Parity tests use this
    so every entry of the import table is exercised; weights keep their init scale plus noise."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            noise = torch.randn(tensor.shape, generator=generator, dtype=tensor.dtype)
            if name.endswith("layernorm_1.weight") or name.endswith("layernorm_2.weight"):
                tensor.copy_(1.0 + scale * noise)
            elif tensor.ndim >= 2 and not name.startswith("embedding_layer") and "bias_" not in name:
                tensor.add_(noise * (scale * tensor.std().clamp_min(1e-3)))
            else:
                tensor.add_(scale * noise)
    return model
