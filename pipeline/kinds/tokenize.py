"""The tokenize kind: one corpus -> one token store (`stages.tokenize`); yields the artifact's path.

With `data.dedup` set, the node needs the corpus's dedup node (`pipeline.kinds.dedup`) and reads the
documents it kept; the dedup step is then the tokenize step's input, so `--explain` names it when it
changes.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pipeline.graph import Outcome
from pipeline.store import Step
from stages.tokenize import TokenizeConfig, tokenize, tokenize_hash


def tokenize_step(data: TokenizeConfig, dedup: Step | None = None) -> Step:
    """The step of a corpus (on its dedup step, if any); its hash is the artifact's own (`stages.tokenize.tokenize_key`)."""
    config = data.hashed()
    return Step("tokenize", data.name, config, [dedup] if dedup else [], digest=tokenize_hash(data))


@dataclass(frozen=True)
class TokenizeKind:
    """Tokenize a corpus; the spec is its `TokenizeConfig`, the one input (if any) the dedup outcome."""

    stage: str = "tokenize"
    counted: bool = False

    def key(self, spec: TokenizeConfig, inputs: Sequence[Outcome]) -> Step:
        """The corpus's step."""
        return tokenize_step(spec, inputs[0].step if inputs else None)

    def resources(self, spec: TokenizeConfig) -> dict[str, float]:
        """As many CPUs as tokenizing processes, up to this machine's."""
        return {"num_cpus": min(spec.num_proc, os.cpu_count() or 1)}

    def run(self, spec: TokenizeConfig, step: Step, out_dir: Path, inputs: Sequence[Outcome]) -> None:
        """Tokenize into the store that holds `out_dir`, reading the dedup artifact when there is one."""
        tokenize(spec, out_dir.parents[1], deduplicated=Path(inputs[0].value) if inputs else None)

    def result(self, spec: TokenizeConfig, out_dir: Path) -> str:
        """The artifact directory."""
        return str(out_dir)
