"""Model shapes without torch: the model config, exact parameter counts, FLOPs per token, the size table.

The architecture these numbers describe is `stages.model.Transformer`; this module holds only its
arithmetic, so that configs, plans and the CLI can size models without loading torch.

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
  * with a `head_dim` (the size ladder's option, `stages.ladder`), width is instead a multiple of
    it and heads have that dimension.
"""

from __future__ import annotations

import math
from typing import Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Field, model_validator

from scaling.errors import InputError
from stages.fields import Count

ASPECT_RANGE = (32, 128)
ASPECT_TARGET = 64
MAX_LAYERS = 128
MAX_WIDTH = 16384
MAX_HEAD_DIM = 256


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
                raise InputError("params", "give either params (a target size) or layers, width and heads, not both")
        elif any(value is None for value in explicit):
            raise InputError("layers", "layers, width and heads are all required when params is not given")
        if self.width is not None and self.heads is not None:
            if self.width % self.heads:
                raise InputError("heads", f"{self.heads} does not divide width {self.width}")
            if self.positions == "rotary" and (self.width // self.heads) % 2:
                raise InputError("heads", f"{self.heads} gives an odd head dimension {self.width // self.heads}; rotary needs an even one")
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


def shape_for_params(target: int, mlp_ratio: int = 4, embedding_per_width: int = 0, head_dim: int | None = None,
                     field: str = "params") -> tuple[int, int, int]:
    """(layers, width, heads) whose non-embedding count is nearest `target` under the size-table rules.

    `embedding_per_width` counts the tied token embedding too (a target of total parameters: pass the
    vocabulary size). `head_dim` replaces the table's widths and heads by widths that are multiples
    of `head_dim`, with heads of that dimension (finer steps for tiny models); the aspect rule stays.
    A target below every shape the rules allow is refused under `field`.
    """
    best: tuple[tuple[float, float], tuple[int, int, int]] | None = None
    for layers in range(1, MAX_LAYERS + 1):
        quadratic = layers * (4 + 2 * mlp_ratio)  # the width solving quadratic w^2 + embedding_per_width w = target
        ideal = (math.sqrt(embedding_per_width**2 + 4 * quadratic * target) - embedding_per_width) / (2 * quadratic)
        for step in (32, 64) if head_dim is None else (head_dim,):
            for width in {max(step, math.floor(ideal / step) * step), max(step, math.ceil(ideal / step) * step)}:
                if head_dim is None and (step == 32) != (width < 256):
                    continue
                if not ASPECT_RANGE[0] <= width / layers <= ASPECT_RANGE[1]:
                    continue
                heads = width // (head_dim or _head_dim(width))
                count = ModelShape(layers, width, heads, 1, 1, mlp_ratio).params.non_embedding + embedding_per_width * width
                key = (abs(math.log(count / target)), abs(math.log(width / layers / ASPECT_TARGET)))
                if best is None or key < best[0]:
                    best = (key, (layers, width, heads))
    if best is None:  # every depth's nearest widths are narrower than the aspect rule allows
        step = head_dim or 32
        smallest = ModelShape(1, max(step, math.ceil(ASPECT_RANGE[0] / step) * step), 1, 1, 1, mlp_ratio).params.non_embedding
        raise InputError(field, f"{target:,} is below the smallest shape the size table allows ({smallest:,} "
                                   f"non-embedding parameters: one layer, width / layers >= {ASPECT_RANGE[0]})")
    return best[1]
