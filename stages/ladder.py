"""A size ladder: target parameter counts -> named model shapes with their own learning rates.

A sweep's `models:` may be a ladder instead of a list of hand-written sizes:

    models:
      ladder:
        sizes: 12K..200K        # the smallest and largest target, log-spaced; or a list: [12K, 50K, 200K]
        count: 5                # how many rungs a range has
        params: non_embedding   # what a target counts: non_embedding (Kaplan's N) or total (embedding included)
        lr: {peak: 8e-3, at: 12K, exponent: -0.3333}

Shapes. Each target goes through the size table of `stages.shapes` (`shape_for_params`): width a
multiple of 32 below 256 and of 64 above, heads of dimension 32 below 256 wide and 64 above (or,
with `head_dim: H`, width a multiple of H and heads of dimension H: below 100K parameters the
table's steps are coarse, 12K, 49K, 99K), aspect ratio width / layers in [32, 128] with ties to 64
(Kaplan et al. 2020: loss is flat over that range), the shape whose exact count is nearest the
target in log space. A `total` target counts the tied token embedding (vocab x width) too. Two
targets that give one shape, or a target with no shape within 1.5x, are refused.

Learning rate. rung i gets `lr = peak * (N_i / at) ** exponent`, N_i its exact count of the kind
`params` names, rounded to 3 significant digits. The default exponent -1/3 is OLMo's model ladder
(`lr = 0.0047 * (N / 108M) ** (-1/3)`, N non-embedding; allenai/OLMo scripts/ladder.py and
OLMo-core's ladder, after Porian et al. 2024, "Resolving Discrepancies in Compute-Optimal Scaling
of Language Models"); `peak` and `at` anchor it at a size whose rate was tuned (the built-in
study: 8e-3 at 12K, the rate its 12K model was tuned to).

Batch size. Without `batch:` every rung trains with the sweep's `train.batch_tokens`. With
`batch: {tokens: B, at: N0, exponent: e}` rung i gets `B * (N_i / N0) ** e` tokens a step, rounded to
a whole number of sequences (at least one). The default exponent 2/3 is OLMo's model ladder
(allenai/OLMo scripts/ladder.py: 160 sequences of 2,048 tokens at 108M parameters, times
(N / 108M)^(2/3)): larger models take larger batches, fewer steps for the same D.

Names: `n<count>`, the exact count to 3 significant digits (`n12.4K`, `n197K`), as a run name's model part.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal, NamedTuple

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from scaling.errors import InputError
from scaling.units import format_quantity, parse_quantity
from stages.fields import Count
from stages.shapes import MAX_HEAD_DIM, ModelShape, shape_for_params

OLMO_LR_EXPONENT = -1 / 3
OLMO_BATCH_EXPONENT = 2 / 3
MAX_MISS = 1.5  # a target whose nearest shape is further off than this factor is refused


def _sizes(value: Any) -> Any:
    """`12K..200K` -> the two ends; a list stays a list of counts."""
    if isinstance(value, str) and ".." in value:
        low, _, high = value.partition("..")
        return {"low": parse_quantity(low.strip(), "sizes"), "high": parse_quantity(high.strip(), "sizes")}
    if isinstance(value, list):
        return [parse_quantity(item, "sizes") for item in value]
    raise InputError("sizes", f"{value!r} is not allowed; give a range LOW..HIGH (e.g. 12K..200K) or a list of sizes")


class LearningRateRule(BaseModel):
    """The per-rung peak learning rate: `peak * (N / at) ** exponent`."""

    model_config = ConfigDict(extra="forbid")

    peak: float = Field(..., gt=0, le=1, description="the peak learning rate at the anchor size `at`")
    at: Count = Field(..., description="the anchor size (of the kind `params` names) where the rate is `peak`")
    exponent: float = Field(
        OLMO_LR_EXPONENT, ge=-2, le=0, description="how the rate scales with N; default -1/3 (OLMo's model ladder)"
    )

    def lr(self, params: int) -> float:
        """The rule's rate for a model of `params` parameters, to 3 significant digits."""
        return float(f"{self.peak * (params / self.at) ** self.exponent:.3g}")


class BatchRule(BaseModel):
    """The per-rung batch: `tokens * (N / at) ** exponent` tokens a step, in whole sequences."""

    model_config = ConfigDict(extra="forbid")

    tokens: Count = Field(..., description="tokens per optimizer step at the anchor size `at`")
    at: Count = Field(..., description="the anchor size (of the kind `params` names) where a step has `tokens` tokens")
    exponent: float = Field(
        OLMO_BATCH_EXPONENT, ge=0, le=2, description="how the batch grows with N; default 2/3 (OLMo's model ladder)"
    )

    def batch_tokens(self, params: int, seq_len: int) -> int:
        """The rule's tokens per step for a model of `params` parameters: a whole number (>= 1) of `seq_len` sequences."""
        return max(1, round(self.tokens * (params / self.at) ** self.exponent / seq_len)) * seq_len


class Rung(NamedTuple):
    """One size of a ladder: its name, target, resolved shape, learning rate and (with a batch rule) batch."""

    name: str
    target: int
    layers: int
    width: int
    heads: int
    params: int  # the count of the ladder's kind (non-embedding or total)
    lr: float
    batch_tokens: int | None = None  # None: the sweep's train.batch_tokens


class Ladder(BaseModel):
    """`models:` as a ladder of target sizes (see the module docstring for the rules)."""

    model_config = ConfigDict(extra="forbid")

    sizes: Annotated[dict[str, float] | list[float], BeforeValidator(_sizes)] = Field(
        ..., description="target sizes: a range LOW..HIGH spaced evenly in log (with `count`) or a list of sizes"
    )
    count: int | None = Field(None, ge=2, le=32, description="how many sizes a LOW..HIGH range has (2 to 32)")
    params: Literal["non_embedding", "total"] = Field(
        "non_embedding", description="what the targets count: non-embedding parameters, or all (tied embedding included)"
    )
    lr: LearningRateRule = Field(..., description="the per-size learning rate rule")
    batch: BatchRule | None = Field(
        None, description="the per-size batch rule (tokens per step); null: every size trains with train.batch_tokens"
    )
    mlp_ratio: int = Field(4, ge=1, le=16, description="MLP width / model width of every rung")
    head_dim: int | None = Field(
        None, ge=2, le=MAX_HEAD_DIM, multiple_of=2,
        description="attention head dimension; widths are then multiples of it (finer steps for tiny models); "
        "null: the size table's (32 below 256 wide, 64 above)",
    )

    @model_validator(mode="after")
    def _consistent(self) -> Ladder:
        if isinstance(self.sizes, dict):
            low, high = self.sizes["low"], self.sizes["high"]
            if not 0 < low < high:
                raise InputError("sizes", f"{format_quantity(low)}..{format_quantity(high)} is not allowed; LOW must be below HIGH")
            if self.count is None:
                raise InputError("count", "is required with a LOW..HIGH range of sizes (how many sizes, 2 to 32)")
        else:
            if self.count is not None:
                raise InputError("count", f"{self.count} is only used with a LOW..HIGH range; a list of sizes gives its own count")
            if len(self.sizes) < 1 or len(set(self.sizes)) != len(self.sizes) or min(self.sizes) <= 0:
                raise InputError("sizes", f"{self.sizes} is not allowed; give distinct positive sizes")
        return self

    def targets(self) -> list[int]:
        """The target sizes, smallest first: the list as given, or `count` sizes spaced evenly in log."""
        if isinstance(self.sizes, list):
            return sorted(round(size) for size in self.sizes)
        low, high = math.log(self.sizes["low"]), math.log(self.sizes["high"])
        steps = self.count - 1  # type: ignore[operator]
        return [round(math.exp(low + (high - low) * i / steps)) for i in range(self.count)]  # type: ignore[arg-type]

    def rungs(self, vocab_size: int, seq_len: int) -> list[Rung]:
        """Every size's shape, learning rate and batch (sequences of `seq_len`); InputError when two targets give one shape."""
        rungs: list[Rung] = []
        embedding = vocab_size if self.params == "total" else 0
        for target in self.targets():
            layers, width, heads = shape_for_params(target, self.mlp_ratio, embedding_per_width=embedding, head_dim=self.head_dim,
                                                   field="models.ladder.sizes")
            counts = ModelShape(layers, width, heads, vocab_size, 1, self.mlp_ratio).params
            params = counts.total if self.params == "total" else counts.non_embedding
            if abs(math.log(params / target)) > math.log(MAX_MISS):
                raise InputError("models.ladder.sizes", f"{format_quantity(target)} has no shape within {MAX_MISS:g}x; the nearest, "
                                 f"{layers} layer(s) of width {width}, has {params:,} {self.params} parameters"
                                 + ("" if self.head_dim else "; head_dim gives finer steps"))
            for other in rungs:
                if (other.layers, other.width) == (layers, width):
                    raise InputError("models.ladder.sizes", f"{format_quantity(other.target)} and {format_quantity(target)} both give "
                                     f"{layers} layer(s) of width {width}; widen the range or lower count")
            batch = None if self.batch is None else self.batch.batch_tokens(params, seq_len)
            rungs.append(Rung(f"n{format_quantity(params, 3)}", target, layers, width, heads, params, self.lr.lr(params), batch))
        return rungs

    def entries(self, rungs: list[Rung]) -> list[dict]:
        """`rungs` (from `rungs`) as `models:` entries (name, shape, mlp_ratio, `train.optimizer.lr` and, with a batch
        rule, `train.batch_tokens`), as if written by hand."""
        return [
            {"name": rung.name, "layers": rung.layers, "width": rung.width, "heads": rung.heads, "mlp_ratio": self.mlp_ratio,
             "train": {"optimizer": {"lr": rung.lr}, **({} if rung.batch_tokens is None else {"batch_tokens": rung.batch_tokens})}}
            for rung in rungs
        ]  # fmt: skip
