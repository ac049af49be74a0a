"""The data pools of a multi-pool study: each its own corpus and its own validation split (`data.pools`).

A pool is named (a letter, then letters, digits or '_': the name becomes part of run names and of
run-table columns such as `tokens.<pool>`), reads its own corpus (`stdlib`, `prose`, `local`,
`hub`) and keeps its own clean validation split (near-duplicate clusters on one side, as a one-pool
corpus does). The first pool is the reference of the multi-pool law (quality 1).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from stages.corpus import CorpusConfig
from stages.fields import Count
from stages.near_duplicates import MinHashConfig
from stages.split import SplitConfig

POOL_NAME = r"^[A-Za-z][A-Za-z0-9_]*$"
POOL_NAME_LENGTH = 24
PER_POOL_FIELDS = ("corpus", "validation_tokens", "minhash", "split", "dedup")
"""The `data:` settings a multi-pool corpus sets per pool (or not at all: dedup), never at the top."""


class PoolConfig(BaseModel):
    """One pool of a multi-pool corpus: its name, its documents and its validation split."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(..., pattern=POOL_NAME, max_length=POOL_NAME_LENGTH, description="the pool's name in run names and table columns")
    corpus: CorpusConfig = Field(..., description="where the pool's documents come from")
    validation_tokens: Count = Field(100_000, description="tokens of the pool's fixed validation split")
    minhash: MinHashConfig = Field(default_factory=MinHashConfig, description="how the pool's near-duplicates are found")
    split: SplitConfig = Field(default_factory=SplitConfig, description="near-duplicate clusters kept whole on one side of the pool's split")


def pool_names(pools: list[PoolConfig]) -> list[str]:
    """The pools' names, in order (the first is the reference)."""
    return [pool.name for pool in pools]
