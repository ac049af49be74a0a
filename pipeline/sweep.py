"""A sweep as a graph of steps, and running it: tokenize once, train + evaluate every run, fit, report.

    [dedup ──needs──>] tokenize ──needs──> train (one node per run) ──uses──> fit ──needs──> report
                          └───────────────────────needs (its contamination)──────────────┘
                                                   └──────────uses──────────┘

Under `optimizer.schedule: wsd` the runs that differ only in D share a trunk (`pipeline.trunks`):
tokenize ──needs──> trunk ──needs──> train (a branch per run, kind `branch`), the rest as above.

The graph is declared here and walked by the generic `pipeline.runner`; every step runs under the
store's lease, so it happens at most once across every `dcsl sweep` process sharing the store, a
finished step is skipped and an interrupted run resumes from its latest checkpoint. Before any
step, the store is checked: one that can't be written fails at once, naming the OS error. The corpus
is tokenized first, so that the runs' unique budgets are checked against it before any training.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import ray

from pipeline.cluster import check_fits_cluster, node_capacities
from pipeline.config import SweepConfig
from pipeline.expand import expand
from pipeline.graph import Node
from pipeline.kinds.dedup import DedupKind
from pipeline.kinds.fit import FitKind, FitSpec
from pipeline.kinds.pool_report import PoolReportKind
from pipeline.kinds.report import ReportKind
from pipeline.kinds.tokenize import TokenizeKind
from pipeline.kinds.branch import BranchKind
from pipeline.kinds.train import TrainKind
from pipeline.kinds.trunk import TrunkKind
from pipeline.ray_session import ray_session
from pipeline.runner import Progress, Runner
from pipeline.store import State, Store
from pipeline.trunks import plan_trunks
from scaling.errors import InputError
from stages.pool_data import train_tokens
from stages.record import RunFailure, RunRecord


@dataclass
class SweepGraph:
    """The nodes of a sweep: its corpus, one node per run (by name), the fit, the report and its WSD trunks (by name)."""

    tokenize: Node
    runs: dict[str, Node]
    fit: Node
    report: Node
    trunks: dict[str, Node] = field(default_factory=dict)

    @property
    def nodes(self) -> list[Node]:
        """Every node; the runner walks them after what they read."""
        return [self.tokenize, *self.trunks.values(), *self.runs.values(), self.fit, self.report]


@dataclass
class SweepOutcome:
    """What a sweep produced: run states, the records of the runs that finished, the failures, the law."""

    states: dict[str, State]
    records: list[RunRecord] = field(default_factory=list)
    failed: list[RunFailure] = field(default_factory=list)
    law_path: Path | None = None
    report_path: Path | None = None
    fit_state: State | None = None
    fit_reason: str = ""


def tokenize_node(sweep: SweepConfig) -> Node:
    """The sweep's corpus, on its dedup node when `data.dedup` is set."""
    dedup = (Node(DedupKind(), sweep.data.name, sweep.data),) if sweep.data.dedup else ()
    return Node(TokenizeKind(), sweep.data.name, sweep.data, needs=dedup)


def sweep_graph(sweep: SweepConfig, corpus_train_tokens: int | dict[str, int] | None = None, *, skip_invalid: bool = False,
                skipped: list[str] | None = None, corpus: Node | None = None) -> SweepGraph:  # fmt: skip
    """The sweep's graph (no work done): its runs are `expand(sweep, corpus_train_tokens, ...)`."""
    corpus = corpus or tokenize_node(sweep)
    specs = expand(sweep, corpus_train_tokens, skip_invalid=skip_invalid, skipped=skipped)
    trunk_specs, branch_specs = plan_trunks(specs)
    trunks = {trunk.name: Node(TrunkKind(), trunk.name, trunk, needs=(corpus,)) for trunk in trunk_specs}
    runs = {spec.name: Node(TrainKind(), spec.name, spec, needs=(corpus,)) for spec in specs}
    runs.update({branch.run.name: Node(BranchKind(), branch.run.name, branch, needs=(trunks[branch.trunk], corpus)) for branch in branch_specs})
    fit = Node(FitKind(), sweep.name, FitSpec(sweep.name, sweep.fit_settings()), uses=tuple(runs.values()), static=False)
    if sweep.data.pools:  # several pools: a report of the runs themselves, with or without a fitted law
        report = Node(PoolReportKind(), sweep.name, sweep.name, uses=(fit, *runs.values()), static=False)
    else:
        report = Node(ReportKind(), sweep.name, sweep.name, needs=(fit, corpus), uses=tuple(runs.values()), static=False)
    return SweepGraph(corpus, runs, fit, report, trunks)


def run_sweep(sweep: SweepConfig, *, address: str | None = None, progress: Progress | None = None,
              skip_invalid: bool = False, wait_nodes: int = 0) -> SweepOutcome:  # fmt: skip
    """Run (or resume) the whole sweep and return its outcome; Ctrl-C cancels the running tasks cleanly."""
    root = Path(sweep.store).resolve()
    planned = expand(sweep, skip_invalid=skip_invalid)  # every check that needs no corpus, before any work
    with ray_session(address, wait_nodes):
        check_fits_cluster(planned, node_capacities(ray.nodes()), sweep.resources_field)
        check_store(root)
        runner = Runner(root, progress)
        corpus = tokenize_node(sweep)
        data = runner.run([corpus])[id(corpus)]
        corpus_tokens = train_tokens(Path(data.value)) if data.done else None
        graph = sweep_graph(sweep, corpus_tokens, skip_invalid=skip_invalid, corpus=corpus)
        outcomes = runner.run(graph.nodes)  # the corpus's outcome is known: it is not dispatched again
        return sweep_outcome(graph, outcomes)


def check_store(root: Path) -> None:
    """Fail with one line naming the store and the OS error unless this process can write there."""
    try:
        Store(root).check_writable()
    except OSError as error:
        raise InputError("store", f"{root} is not a folder this process can write to ({error})") from None


def sweep_outcome(graph: SweepGraph, outcomes: dict) -> SweepOutcome:
    """The sweep's result from its nodes' outcomes: run states and records, failures, the law and the report."""
    runs = [outcomes[id(node)] for node in graph.runs.values()]
    fit, report = outcomes[id(graph.fit)], outcomes[id(graph.report)]
    return SweepOutcome(
        states={run.name: run.state for run in runs},
        records=sorted((run.value for run in runs if run.done), key=lambda record: record.name),
        failed=[RunFailure(run.name, run.state.value, run.reason) for run in sorted(runs, key=lambda r: r.name) if not run.done],
        law_path=Path(fit.value) if fit.done else None,
        report_path=Path(report.value) if report.done else None,
        fit_state=fit.state if fit.step is not None else None,
        fit_reason=fit.reason or "",
    )
