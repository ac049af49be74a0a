"""A study as a declared graph of steps: step kinds, nodes, and what a finished node yields.

A *step kind* (`StepKind`) is a small object that knows one kind of work: how a node of its kind is
keyed as a store `Step` (its resolved config and its inputs' hashes), what it asks of the cluster,
how it runs, and what a finished step yields to the steps that read it. A *node* is one use of a
kind: a spec (what the kind needs: a run's config, the corpus settings...) and its inputs.

Two kinds of edge:

* `needs`: the node runs only when each of these finished; if one did not, it is DEP_FAILED.
* `uses`:  the node waits for these and receives their outcomes, whatever they are (a fit over the
           runs that succeeded; a report that lists the runs that failed).

The runner (`pipeline.runner`) walks any such graph the same way: it claims, leases, retries,
marks DEP_FAILED, reports progress and explains, and knows no kind by name. A new kind of step is a
new `StepKind`, not an edit of the runner.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from pipeline.store import State, Step


@dataclass(frozen=True)
class Outcome:
    """How a node ended: its state, its step (None when it could not be keyed), what it yields, why not."""

    name: str
    stage: str
    state: State
    step: Step | None = None
    value: Any = None
    reason: str = ""

    @property
    def done(self) -> bool:
        """Whether the node's step finished."""
        return self.state is State.DONE


class StepKind(Protocol):
    """One kind of step. Instances are sent to Ray workers, so they hold only plain, picklable data."""

    stage: str
    """The store folder of the kind's steps, e.g. `train`."""
    counted: bool
    """Whether its nodes count in the progress shown to people (the runs of a study do)."""

    def key(self, spec: Any, inputs: Sequence[Outcome]) -> Step | None:
        """The node's step given its inputs' outcomes (`needs` first, then `uses`); None: nothing to do."""

    def resources(self, spec: Any) -> dict[str, float]:
        """Ray task options for running it: `num_cpus`, `num_gpus`."""

    def run(self, spec: Any, step: Step, out_dir: Path, inputs: Sequence[Outcome]) -> None:
        """Do the work, writing the output under `out_dir` (the store claims and marks the step around it)."""

    def result(self, spec: Any, out_dir: Path) -> Any:
        """What a finished step yields to the nodes that read it (a path, a run record)."""


@dataclass(eq=False)
class Node:
    """One step of a study: a kind, the spec it needs, and the nodes it reads."""

    kind: StepKind
    name: str
    spec: Any
    needs: tuple[Node, ...] = ()
    uses: tuple[Node, ...] = ()
    static: bool = field(default=True)
    """Whether the step can be keyed before its inputs finish (False for a fit over the runs that succeed)."""

    @property
    def inputs(self) -> tuple[Node, ...]:
        """Every node this one waits for: `needs`, then `uses`."""
        return self.needs + self.uses

    @property
    def label(self) -> str:
        """`<stage>/<name>`, for people."""
        return f"{self.kind.stage}/{self.name}"


def in_order(nodes: Sequence[Node]) -> Iterator[Node]:
    """The nodes and everything they read, each once, every node after its inputs."""
    seen: set[int] = set()

    def visit(node: Node) -> Iterator[Node]:
        if id(node) in seen:
            return
        seen.add(id(node))
        for source in node.inputs:
            yield from visit(source)
        yield node

    for node in nodes:
        yield from visit(node)


def planned_outcomes(node: Node, keys: dict[int, Step | None]) -> list[Outcome]:
    """The outcomes a node's inputs would have if all finished, for keying it before running (explain)."""
    return [Outcome(source.name, source.kind.stage, State.DONE, keys.get(id(source))) for source in node.inputs]
