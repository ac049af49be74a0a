"""The tokenize kind: one corpus -> one token store (`stages.tokenize`); yields the artifact's path."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pipeline.graph import Outcome
from pipeline.store import Step
from stages.tokenize import TokenizeConfig, tokenize, tokenize_hash


def tokenize_step(data: TokenizeConfig) -> Step:
    """The step of a corpus; its hash is the artifact's own (`stages.tokenize.tokenize_key`)."""
    return Step("tokenize", data.name, data.model_dump(mode="json", exclude={"num_proc"}), digest=tokenize_hash(data))


@dataclass(frozen=True)
class TokenizeKind:
    """Tokenize a corpus; the spec is its `TokenizeConfig`."""

    stage: str = "tokenize"
    counted: bool = False

    def key(self, spec: TokenizeConfig, inputs: Sequence[Outcome]) -> Step:
        """The corpus's step."""
        return tokenize_step(spec)

    def resources(self, spec: TokenizeConfig) -> dict[str, float]:
        """As many CPUs as tokenizing processes, up to this machine's."""
        return {"num_cpus": min(spec.num_proc, os.cpu_count() or 1)}

    def run(self, spec: TokenizeConfig, step: Step, out_dir: Path, inputs: Sequence[Outcome]) -> None:
        """Tokenize into the store that holds `out_dir`."""
        tokenize(spec, out_dir.parents[1])

    def result(self, spec: TokenizeConfig, out_dir: Path) -> str:
        """The artifact directory."""
        return str(out_dir)
