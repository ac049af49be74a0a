"""A decoder-only transformer in plain PyTorch, and its per-token loss.

Shape: token embedding (+ learned positions, or rotary on queries and keys), `layers` pre-norm
blocks (LayerNorm -> causal self-attention via `scaled_dot_product_attention` -> residual,
LayerNorm -> MLP with GELU and hidden width `mlp_ratio * width` -> residual), a final LayerNorm and
the output layer (optionally tied to the token embedding). Linear layers and norms have no bias.
Its exact parameter counts, FLOPs per token and the size table are in `stages.shapes` (no torch).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from stages.shapes import ModelShape


class _Rotary(nn.Module):
    """Rotary position embedding (rotate-half form) for a head dimension and maximum length."""

    def __init__(self, head_dim: int, seq_len: int, base: float = 10000.0):
        super().__init__()
        inverse = 1.0 / base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
        angles = torch.outer(torch.arange(seq_len, dtype=torch.float32), inverse)
        self.register_buffer("cos", torch.cat([angles.cos()] * 2, dim=-1), persistent=False)
        self.register_buffer("sin", torch.cat([angles.sin()] * 2, dim=-1), persistent=False)

    def forward(self, qk: torch.Tensor) -> torch.Tensor:
        """Rotate queries and keys together: `qk` is (batch, length, 2, heads, head_dim)."""
        length = qk.shape[1]
        cos, sin = self.cos[:length, None, None], self.sin[:length, None, None]
        first, second = qk.chunk(2, dim=-1)
        rotated = torch.cat([-second, first], dim=-1)
        return (qk * cos + rotated * sin).to(qk.dtype)


class _Block(nn.Module):
    def __init__(self, shape: ModelShape, rotary: _Rotary | None):
        super().__init__()
        w = shape.width
        self.heads = shape.heads
        self.norm1 = nn.LayerNorm(w, bias=False)
        self.qkv = nn.Linear(w, 3 * w, bias=False)
        self.out = nn.Linear(w, w, bias=False)
        self.norm2 = nn.LayerNorm(w, bias=False)
        self.up = nn.Linear(w, shape.mlp_ratio * w, bias=False)
        self.down = nn.Linear(shape.mlp_ratio * w, w, bias=False)
        self.rotary = rotary

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, width = x.shape
        qkv = self.qkv(self.norm1(x)).view(batch, length, 3, self.heads, width // self.heads)
        if self.rotary is None:
            q, k, v = qkv.permute(2, 0, 3, 1, 4)
        else:  # one pass over queries and keys side by side, before the heads move forward
            q, k = self.rotary(qkv[:, :, :2]).permute(2, 0, 3, 1, 4)
            v = qkv[:, :, 2].transpose(1, 2)
        attended = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.out(attended.transpose(1, 2).reshape(batch, length, width))
        return x + self.down(F.gelu(self.up(self.norm2(x))))


class Transformer(nn.Module):
    """The decoder-only language model; `forward(tokens)` returns logits (batch, length, vocab)."""

    def __init__(self, shape: ModelShape):
        super().__init__()
        self.shape = shape
        self.embed = nn.Embedding(shape.vocab_size, shape.width)
        self.positions = nn.Embedding(shape.seq_len, shape.width) if shape.positions == "learned" else None
        rotary = _Rotary(shape.width // shape.heads, shape.seq_len) if shape.positions == "rotary" else None
        self.blocks = nn.ModuleList(_Block(shape, rotary) for _ in range(shape.layers))
        self.norm = nn.LayerNorm(shape.width, bias=False)
        self.head = nn.Linear(shape.width, shape.vocab_size, bias=False)
        if shape.tie_embeddings:
            self.head.weight = self.embed.weight
        self._initialise()

    def _initialise(self) -> None:
        """GPT-2 initialisation: N(0, 0.02), residual outputs scaled by 1/sqrt(2 layers), unit norms."""
        for name, param in self.named_parameters():
            if param.dim() == 1:
                nn.init.ones_(param)
            elif name.endswith(("out.weight", "down.weight")):
                nn.init.normal_(param, std=0.02 / math.sqrt(2 * self.shape.layers))
            else:
                nn.init.normal_(param, std=0.02)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens)
        if self.positions is not None:
            x = x + self.positions.weight[: tokens.shape[1]]
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x))


def token_losses(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-token cross-entropy in fp32, shape of `targets`."""
    return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), reduction="none").view_as(targets)
