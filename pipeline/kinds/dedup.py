"""The dedup kind: one corpus -> the documents kept after exact and near-duplicate removal (`stages.dedup`).

A sweep has a dedup node only when its `data.dedup` is set; the tokenize node then needs it and reads
the kept list. Its step is keyed by the corpus and the dedup and MinHash settings, so a change of
tokenizer or split re-tokenizes without deduplicating again.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pipeline.graph import Outcome
from pipeline.store import Step
from stages.dedup import dedup, dedup_hash
from stages.tokenize import TokenizeConfig


def dedup_step(data: TokenizeConfig) -> Step:
    """The dedup step of a corpus; its hash is the artifact's own (`stages.dedup.dedup_key`)."""
    config = data.model_dump(mode="json", include={"corpus", "minhash", "dedup"})
    return Step("dedup", data.name, config, digest=dedup_hash(data))


@dataclass(frozen=True)
class DedupKind:
    """Deduplicate a corpus; the spec is the sweep's `TokenizeConfig` (with `dedup` set)."""

    stage: str = "dedup"
    counted: bool = False

    def key(self, spec: TokenizeConfig, inputs: Sequence[Outcome]) -> Step:
        """The corpus's dedup step."""
        return dedup_step(spec)

    def resources(self, spec: TokenizeConfig) -> dict[str, float]:
        """One CPU."""
        return {"num_cpus": 1}

    def run(self, spec: TokenizeConfig, step: Step, out_dir: Path, inputs: Sequence[Outcome]) -> None:
        """Deduplicate into the store that holds `out_dir`."""
        dedup(spec, out_dir.parents[1])

    def result(self, spec: TokenizeConfig, out_dir: Path) -> str:
        """The artifact directory."""
        return str(out_dir)
