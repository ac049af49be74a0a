"""Step identity: what one unit of work is, how it is hashed, and what the store says about it.

A *step* is one unit of work of a sweep: `Step(stage, name, config, inputs)`. Its hash covers the
fully resolved config and the ids of its inputs (each input id ends with that input's hash), so
changing a hyperparameter, or anything upstream, gives a new hash and a new directory; the code
version is recorded in `step.json`, never hashed. The hash is `stages.artifacts.step_hash` of
`{"config": config, "inputs": [input ids]}`, the function the stages name their own outputs with.

The store answers questions about steps with the other types here: a `State`, a `StepInfo` (one
step found in the store) and a `Decision` (whether a sweep runs the step, and why).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from functools import cached_property
from pathlib import Path
from typing import Any, NamedTuple

from stages.artifacts import step_hash

NAME = r"[A-Za-z0-9][A-Za-z0-9._-]*"
"""A stage or step name: letters, digits, '.', '_', '-', not starting with a punctuation mark."""
HASH = r"[0-9a-f]{8,64}"
"""A step hash: 8 to 64 lowercase hex digits."""

_DIRNAME = re.compile(rf"(?P<name>{NAME})-(?P<hash>{HASH})")


class State(str, Enum):
    """Where a step stands, read from the filesystem alone (`pipeline.store` says in which order)."""

    NEW = "new"
    DONE = "done"
    DAMAGED = "damaged"
    """Finished, but a file is missing or not as its `SUCCESS` records it (`stages.artifacts.damage`): it runs again."""
    FAILED = "failed"
    DEP_FAILED = "dep_failed"
    INTERRUPTED = "interrupted"
    RUNNING = "running"


@dataclass(frozen=True)
class Step:
    """One unit of work: `<stage>/<name>-<hash>`, the hash over `config` and `inputs`.

    `config` is the step's fully resolved config (JSON-serialisable; a pydantic model should be
    passed as `model.model_dump(mode="json")`). `inputs` are the steps it reads, as `Step`s or as
    ids (`"tokenize/corpus-<hash>"`; a bare hash works too, but then `explain` can only name an
    input by its position). `digest`, when given, replaces the computed hash: for stages that
    already name their output with a hash of their own (`stages.train.run_digest`), so the store
    and the stage agree on the directory. It must then cover the inputs itself.
    """

    stage: str
    name: str
    config: Mapping[str, Any]
    inputs: Sequence[Step | str] = ()
    digest: str | None = None

    def __post_init__(self) -> None:
        for label, value in (("stage", self.stage), ("name", self.name)):
            if not re.fullmatch(NAME, value):
                raise ValueError(f"step {label}: {value!r} is not a valid name (letters, digits, '.', '_', '-')")
        if self.digest is not None and not re.fullmatch(HASH, self.digest):
            raise ValueError(f"step digest: {self.digest!r} is not 8 to 64 lowercase hex digits")
        object.__setattr__(self, "config", json.loads(json.dumps(dict(self.config), sort_keys=True, default=str)))
        object.__setattr__(self, "inputs", tuple(i.id if isinstance(i, Step) else str(i) for i in self.inputs))

    @cached_property
    def hash(self) -> str:
        """The step's content hash (16 hex digits unless `digest` was given)."""
        return self.digest or step_hash({"config": self.config, "inputs": list(self.inputs)})

    def __hash__(self) -> int:
        return hash(self.id)

    @property
    def id(self) -> str:
        """`<stage>/<name>-<hash>`: the step's path relative to the store; what dependants list as an input."""
        return f"{self.stage}/{self.name}-{self.hash}"


def split_dirname(dirname: str) -> tuple[str, str] | None:
    """`(name, hash)` of a step's directory name `<name>-<hash>`, or None for any other name."""
    match = _DIRNAME.fullmatch(dirname)
    return (match["name"], match["hash"]) if match else None


class StepInfo(NamedTuple):
    """One step found in the store, for `dcsl status`."""

    stage: str
    name: str
    hash: str
    state: State
    path: Path
    detail: str
    """The failure message, the holder of a running step, the failed input, what is damaged; empty otherwise."""
    record: dict | None
    """The step's `step.json` when it was started through the store."""


@dataclass(frozen=True)
class Decision:
    """Whether a sweep will run a step, and why (`dcsl sweep --explain`)."""

    run: bool
    reason: str
    state: State
    changed: dict[str, tuple[Any, Any]] = field(default_factory=dict)
    """For a new step: dotted config field (or `inputs.<stage>/<name>`) -> (previous value, new value); None where unset."""
