"""TinyTransformer: the package's small transformer classifier (rows of an image as tokens).

Its blocks use ``SelfAttention`` (separate q/k/v/out projections, explicit per-head layout) and a
``linear1``-GELU-``linear2`` FFN, so ``attach_slimming`` / ``prune_transformer`` can remove heads
and FFN neurons physically.
"""

from __future__ import annotations

import torch
from torch import nn

from sparseticket.methods.transformer import SelfAttention


class EncoderBlock(nn.Module):
    """Pre-norm encoder block: x + attention(LN(x)), then x + FFN(LN(x)) with a GELU FFN."""

    def __init__(self, dim: int, heads: int, ffn: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.self_attn = SelfAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.linear1 = nn.Linear(dim, ffn)
        self.activation = nn.GELU()
        self.linear2 = nn.Linear(ffn, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.norm1(x))[0]
        return x + self.linear2(self.activation(self.linear1(self.norm2(x))))


class TinyTransformer(nn.Module):
    """A small transformer classifier: the flat input splits into ``tokens`` tokens (8x8 digits: 8 rows of 8 pixels).

    Linear token embedding + learned positional embedding, ``layers`` pre-norm blocks, final
    LayerNorm, mean pooling over tokens, linear classifier.
    """

    def __init__(self, input_dim: int, classes: int, *, dim: int = 64, heads: int = 4, ffn: int = 128,
                 layers: int = 2, tokens: int = 8) -> None:
        super().__init__()
        if tokens < 1 or input_dim % tokens:
            raise ValueError(f"input_dim {input_dim} does not split into {tokens} tokens")
        self.tokens = tokens
        self.embed = nn.Linear(input_dim // tokens, dim)
        self.position = nn.Parameter(torch.randn(1, tokens, dim) * 0.02)
        self.blocks = nn.Sequential(*(EncoderBlock(dim, heads, ffn) for _ in range(layers)))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x.reshape(x.shape[0], self.tokens, -1)) + self.position
        return self.head(self.norm(self.blocks(x)).mean(dim=1))
