"""A decoder-only transformer in plain PyTorch, its exact parameter counts and FLOPs per token.

Shape: token embedding (+ learned positions, or rotary on queries and keys), `layers` pre-norm
blocks (LayerNorm -> causal self-attention via `scaled_dot_product_attention` -> residual,
LayerNorm -> MLP with GELU and hidden width `mlp_ratio * width` -> residual), a final LayerNorm and
the output layer (optionally tied to the token embedding). Linear layers and norms have no bias.

Parameter counts (exact, `ModelShape.params`):
  per block      4 w^2 (q, k, v, out) + 2 m w^2 (MLP) + 2 w (norm scales)
  non-embedding  layers * per block + w (final norm)
  embedding      V w (tokens) + T w (learned positions only) + V w (output layer, unless tied)
  total          non-embedding + embedding
Non-embedding excludes every vocabulary- and position-sized matrix (Kaplan et al. 2020).

FLOPs per token of one training step (`ModelShape.flops_per_token`):
  six_n  = 6 N, N the non-embedding count (Kaplan's C = 6 N D)
  full   = 6 N + 6 w V (output layer) + 12 layers T w (attention scores and values: 2 matmuls of
           2 T w multiply-adds per layer forward, times 3 for forward and backward; causal masking
           not subtracted, as in PaLM's MFU definition)

Size table (`shape_for_params`): a target non-embedding count picks the depth and width
whose exact count is nearest in log space, under these rules, written once here:
  * width is a multiple of 64 (of 32 below 256); heads have dimension 64 (32 below 256 wide);
  * aspect ratio width / layers stays within [32, 128] (Kaplan et al.: loss is flat there),
    ties going to the ratio nearest 64; depth from 1 to 128.
"""

from __future__ import annotations

import math
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

from stages.fields import Count

ASPECT_RANGE = (32, 128)
ASPECT_TARGET = 64
MAX_LAYERS = 128
MAX_WIDTH = 16384


class ParamCounts(NamedTuple):
    """Exact parameter counts of one shape."""

    total: int
    non_embedding: int
    embedding: int


class FlopsPerToken(NamedTuple):
    """Training FLOPs per token: 6N (non-embedding) and the count with attention and output layer."""

    six_n: int
    full: int


class ModelShape(NamedTuple):
    """Everything that fixes the architecture and its size."""

    layers: int
    width: int
    heads: int
    vocab_size: int
    seq_len: int
    mlp_ratio: int = 4
    positions: str = "rotary"
    tie_embeddings: bool = True

    @property
    def params(self) -> ParamCounts:
        """Exact parameter counts (see the module docstring for the formula)."""
        w, v = self.width, self.vocab_size
        block = 4 * w * w + 2 * self.mlp_ratio * w * w + 2 * w
        non_embedding = self.layers * block + w
        embedding = v * w + (self.seq_len * w if self.positions == "learned" else 0) + (0 if self.tie_embeddings else v * w)
        return ParamCounts(non_embedding + embedding, non_embedding, embedding)

    @property
    def flops_per_token(self) -> FlopsPerToken:
        """Training FLOPs per token (see the module docstring)."""
        n = self.params.non_embedding
        full = 6 * n + 6 * self.width * self.vocab_size + 12 * self.layers * self.seq_len * self.width
        return FlopsPerToken(6 * n, full)


class ModelConfig(BaseModel):
    """The model section of a run: an explicit shape, or a target non-embedding parameter count."""

    model_config = ConfigDict(extra="forbid")

    params: Count | None = Field(None, description="target non-embedding parameters; the size table picks the shape")
    layers: int | None = Field(None, ge=1, le=MAX_LAYERS)
    width: int | None = Field(None, ge=1, le=MAX_WIDTH)
    heads: int | None = Field(None, ge=1)
    mlp_ratio: int = Field(4, ge=1, le=16)
    positions: Literal["rotary", "learned"] = "rotary"
    tie_embeddings: bool = True

    @model_validator(mode="after")
    def _shape_or_params(self) -> ModelConfig:
        explicit = (self.layers, self.width, self.heads)
        if self.params is not None:
            if any(value is not None for value in explicit):
                raise ValueError("params: give either params (a target size) or layers, width and heads, not both")
        elif any(value is None for value in explicit):
            raise ValueError("layers: layers, width and heads are all required when params is not given")
        if self.width is not None and self.heads is not None:
            if self.width % self.heads:
                raise ValueError(f"heads: {self.heads} does not divide width {self.width}")
            if self.positions == "rotary" and (self.width // self.heads) % 2:
                raise ValueError(f"heads: {self.heads} gives an odd head dimension {self.width // self.heads}; rotary needs an even one")
        return self

    def shape(self, vocab_size: int, seq_len: int) -> ModelShape:
        """The resolved shape for a vocabulary and sequence length."""
        if self.params is not None:
            layers, width, heads = shape_for_params(self.params, self.mlp_ratio)
        else:
            layers, width, heads = self.layers, self.width, self.heads
        return ModelShape(layers, width, heads, vocab_size, seq_len, self.mlp_ratio, self.positions, self.tie_embeddings)


def _head_dim(width: int) -> int:
    return 64 if width >= 256 else 32


def shape_for_params(target: int, mlp_ratio: int = 4) -> tuple[int, int, int]:
    """(layers, width, heads) whose non-embedding count is nearest `target` under the size-table rules."""
    best: tuple[tuple[float, float], tuple[int, int, int]] | None = None
    for layers in range(1, MAX_LAYERS + 1):
        ideal = math.sqrt(target / (layers * (4 + 2 * mlp_ratio)))
        for step in (32, 64):
            for width in {max(step, math.floor(ideal / step) * step), max(step, math.ceil(ideal / step) * step)}:
                if (step == 32) != (width < 256) or not ASPECT_RANGE[0] <= width / layers <= ASPECT_RANGE[1]:
                    continue
                count = ModelShape(layers, width, width // _head_dim(width), 1, 1, mlp_ratio).params.non_embedding
                key = (abs(math.log(count / target)), abs(math.log(width / layers / ASPECT_TARGET)))
                if best is None or key < best[0]:
                    best = (key, (layers, width, width // _head_dim(width)))
    assert best is not None  # layers=1, width=32 always qualifies
    return best[1]


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
