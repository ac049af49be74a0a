"""The one runner: walk a declared graph of steps (`pipeline.graph`) as Ray tasks, whatever their kinds.

For each node, once every input has an outcome:

* a needed input that did not finish makes the node DEP_FAILED (recorded in the store, naming it);
* a finished step (its `SUCCESS`) is read in the driver, never sent to Ray;
* anything else becomes one Ray task that runs the kind's work under the store's lease
  (`Store.run`): at most once across every process sharing the store, a live lease waited for, a
  stale one taken over, an exception recorded as FAILED with its traceback.

Ray retries a task whose worker died (`RETRIES` times); after that the step is recorded FAILED
("worker died ...; out of memory?") and the rest goes on. A task that raises (the store could not
be written: a full disk, a read-only filesystem) is FAILED with its error the same way; where the
store can't take the marker either, the outcome still carries the cause. Ctrl-C asks the running
tasks to stop (`pipeline.stop_request`: their steps end INTERRUPTED as the store marks them), waits
(up to `STOP_WAIT` seconds) for them to end, marks INTERRUPTED any of their steps whose lease a
process that is gone still holds, and propagates. Progress counts the nodes of kinds marked
`counted` (the runs of a study), only those of this graph.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from contextlib import suppress
from pathlib import Path
from typing import Any

import ray

from pipeline.graph import Node, Outcome, StepKind, in_order, planned_outcomes
from pipeline.stop_request import StopRequest
from pipeline.store import Decision, State, Step, Store

RETRIES = 2
STOP_WAIT = 30.0  # seconds an interrupted sweep waits for its stopped tasks to record how they ended
INJECT_ENV = "DCSL_INJECT_FAILURE"  # comma-separated node names whose work raises instead of running (tests, drills)

Progress = Callable[[dict], None]
"""progress(counts): counts has done, failed, running, pending, total and eta_seconds over the counted
nodes; before the first counted node starts, {"status": what runs}. The counts are never negative and
add up to total; eta_seconds is positive, or None until a step finished here (steps found done say
nothing about the pace) and once none are left."""


@ray.remote(max_retries=RETRIES)
def _execute(root: str, kind: StepKind, spec: Any, step: Step, inputs: list[Outcome], inject: bool,
             stop: StopRequest) -> tuple[State, Any]:  # fmt: skip
    """Run one node's work under its step's lease until done or stopped; its state, and its value when it finished."""
    store = Store(root)
    out_dir = store.step_dir(step)

    def work() -> None:
        if inject:
            raise RuntimeError(f"injected failure ({INJECT_ENV})")
        kind.run(spec, step, out_dir, inputs)

    try:
        if stop.made:
            raise KeyboardInterrupt("the sweep asked its steps to stop")
        with stop.watched():
            state = store.run(step, work)
    except KeyboardInterrupt:  # the step, if claimed here, is INTERRUPTED and its lease released
        return State.INTERRUPTED, None
    return state, kind.result(spec, out_dir) if state is State.DONE else None


def injected_names() -> frozenset[str]:
    """The node names `DCSL_INJECT_FAILURE` asks to fail."""
    return frozenset(filter(None, os.environ.get(INJECT_ENV, "").split(",")))


class Runner:
    """Walks one graph on the connected Ray cluster against the store at `root`."""

    def __init__(self, root: Path, progress: Progress | None = None):
        self.store = Store(root)
        self.progress = progress
        self.inject = injected_names()
        self.outcomes: dict[int, Outcome] = {}
        self.running: dict[ray.ObjectRef, tuple[Node, Step]] = {}
        self.stop = StopRequest.new(self.store.root)
        self._counted: list[Node] = []
        self._finished_here = 0
        self._started = time.perf_counter()

    def run(self, nodes: Sequence[Node]) -> dict[int, Outcome]:
        """Run every node (and what it reads) that has no outcome yet; all outcomes so far, keyed by `id(node)`."""
        waiting = [node for node in in_order(nodes) if id(node) not in self.outcomes]
        self._counted = [node for node in waiting if node.kind.counted]
        self._started = time.perf_counter()
        try:
            while waiting or self.running:
                for node in [n for n in waiting if all(id(s) in self.outcomes for s in n.inputs)]:
                    waiting.remove(node)
                    self._dispatch(node)
                if self.running:
                    ready, _ = ray.wait(list(self.running), num_returns=1, timeout=1.0)
                    for ref in ready:
                        self._collect(ref)
                self._report()
        except KeyboardInterrupt:
            self._stop_running()
            raise
        return self.outcomes

    def _stop_running(self) -> None:
        """Ask the running tasks to stop, wait (up to `STOP_WAIT` s) for them to end, and mark INTERRUPTED
        each of their steps whose lease is still held by a process that is gone."""
        refs = list(self.running)
        if not refs:
            return
        with suppress(OSError):  # a store that can't be written: the tasks go with the cluster
            self.stop.make()
        with suppress(ray.exceptions.RayError):  # Ray failing now must not hide the interrupt; the markers still get written
            ray.wait(refs, num_returns=len(refs), timeout=STOP_WAIT)
        for _, step in self.running.values():
            with suppress(OSError):  # a store that can't be written: the lease, gone stale, says the same
                self.store.interrupt_abandoned(step, "the sweep was interrupted")

    def _dispatch(self, node: Node) -> None:
        inputs = [self.outcomes[id(source)] for source in node.inputs]
        step = node.kind.key(node.spec, inputs)
        unfinished = [outcome for outcome in inputs[: len(node.needs)] if not outcome.done]
        if step is None:
            reason = f"input {unfinished[0].stage}/{unfinished[0].name} is {unfinished[0].state.value}" if unfinished else "nothing to do"
            self._set(node, State.NEW, None, reason=reason)
        elif unfinished:
            failed = unfinished[0]
            reason = f"{failed.stage} is {failed.state.value}"
            unrecorded = _unrecorded(self.store.mark_dep_failed, step, failed.step or failed.name, reason)
            self._set(node, State.DEP_FAILED, step, reason=f"input {failed.stage}/{failed.name}: {reason}{unrecorded}")
        elif self.store.is_done(step):
            self._set(node, State.DONE, step, node.kind.result(node.spec, self.store.step_dir(step)), counted_here=False)
        else:
            options = {**node.kind.resources(node.spec), "name": f"{node.kind.stage}:{node.name}"}
            ref = _execute.options(**options).remote(str(self.store.root), node.kind, node.spec, step, inputs,
                                                     node.name in self.inject, self.stop)  # fmt: skip
            self.running[ref] = (node, step)

    def _collect(self, ref: ray.ObjectRef) -> None:
        node, step = self.running.pop(ref)
        try:
            state, value = ray.get(ref)
        except ray.exceptions.TaskCancelledError:
            raise KeyboardInterrupt("cancelled") from None
        except ray.exceptions.RayError as error:
            message = _crash_message(error)
            unrecorded = _unrecorded(self.store.mark_failed, step, type(error).__name__, message)
            self._set(node, State.FAILED, step, reason=message + unrecorded)
            return
        self._set(node, state, step, value, reason=self.reason(step) if state is not State.DONE else "")

    def _set(self, node: Node, state: State, step: Step | None, value: Any = None, *, reason: str = "",
             counted_here: bool = True) -> None:  # fmt: skip
        self.outcomes[id(node)] = Outcome(node.name, node.kind.stage, state, step, value, reason)
        if node.kind.counted and counted_here:
            self._finished_here += 1

    def reason(self, step: Step) -> str:
        """Why a step did not finish: its failure (type: message) or its state."""
        failure = self.store.failure(step)
        if failure:
            return f"{failure.get('error_type', 'error')}: {failure.get('message', '')}".strip()
        return self.store.state(step).value.lower()

    def _report(self) -> None:
        if self.progress is None:
            return
        counted = {id(node) for node in self._counted}
        dispatched = [node for node, _ in self.running.values() if id(node) in counted]
        ended = [self.outcomes[key] for key in counted if key in self.outcomes]
        if not dispatched and not ended:
            stages = sorted({node.kind.stage for node, _ in self.running.values()})
            if stages:
                self.progress({"status": " and ".join(stages) + " running"})
            return
        done = sum(outcome.done for outcome in ended)
        running = sum(self.store.state(step) is State.RUNNING for node, step in self.running.values() if id(node) in counted)
        total = len(counted)
        elapsed = time.perf_counter() - self._started
        rate = self._finished_here / elapsed if self._finished_here else 0.0
        left = total - len(ended)
        self.progress({
            "done": done, "failed": len(ended) - done, "running": running, "pending": max(0, left - running),
            "total": total, "eta_seconds": left / rate if rate and left else None,
        })  # fmt: skip


def _unrecorded(mark: Callable[..., None], *args: Any) -> str:
    """Write a marker into the store: "" when written, else why not (the outcome keeps the cause; the sweep goes on)."""
    try:
        mark(*args)
    except OSError as error:
        return f" (not recorded in the store: {error})"
    return ""


def _crash_message(error: Exception) -> str:
    """One line for a task that Ray could not finish: a dead worker (after its retries) or a task error."""
    if isinstance(error, ray.exceptions.RayTaskError):
        cause = error.cause if error.cause is not None else error
        return f"{type(cause).__name__}: {str(cause).strip().splitlines()[-1] if str(cause).strip() else ''}"
    return f"its worker died {RETRIES + 1} times (out of memory?): {str(error).strip().splitlines()[0] if str(error).strip() else ''}"


def explain(nodes: Sequence[Node], store: Store) -> list[tuple[Node, Decision | None]]:
    """For every node that can be keyed before running: whether it will run and why; None for the others.

    A node keyed by what its inputs yield (`static=False`: a fit over the runs that finished) can be
    keyed when every node it `uses` is done already (the fit of a finished study).
    """
    ordered = list(in_order(nodes))
    keys: dict[int, Step | None] = {}
    decided: dict[int, Decision | None] = {}
    for node in ordered:
        step = node.kind.key(node.spec, planned_outcomes(node, keys)) if _keyable(node, decided) else None
        keys[id(node)] = step
        decided[id(node)] = store.explain(step) if step is not None else None
    return [(node, decided[id(node)]) for node in ordered]


def _keyable(node: Node, decided: dict[int, Decision | None]) -> bool:
    """Whether the node's step is known before running: it is static, or every node it uses is done."""
    used = [decided[id(source)] for source in node.uses]
    return node.static or all(decision is not None and decision.state is State.DONE for decision in used)
