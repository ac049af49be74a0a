"""Running an active study (`pipeline.study`): the sweep's grid, then R rounds of fit -> suggest -> train, then the report.

A round's runs are known only once the round before was fitted, so the graph grows between rounds;
each call of the one runner walks what is new:

    grid:     tokenize ──needs──> train (the grid's runs)
    round k:  train (every run so far) ──uses──> fit ──needs──> suggest k ──(its chosen runs)──> train (new nodes)
    end:      train (every run) ──uses──> fit ──needs──> report <──needs── tokenize, suggest 1..R

The chosen runs are ordinary train nodes (`pipeline.kinds.train`), keyed and hashed like the grid's,
so everything is in the store: a killed study, run again, finds each finished fit, suggestion and
run there and goes on from where it stopped. A round whose fit did not finish, or that chooses no
run (none shrinks the spread), ends the rounds; the report covers what was done.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import ray

from pipeline.cluster import check_fits_cluster, node_capacities
from pipeline.config import SweepConfig
from pipeline.expand import RunSpec, expand
from pipeline.graph import Node
from pipeline.kinds.fit import FitKind, FitSpec
from pipeline.kinds.report import ReportKind
from pipeline.kinds.suggest import SuggestKind, SuggestSpec
from pipeline.kinds.train import TrainKind
from pipeline.ray_session import ray_session
from pipeline.runner import Progress, Runner
from pipeline.study import ActiveStudy, check_study, target_unique_tokens
from pipeline.sweep import SweepGraph, SweepOutcome, check_store, sweep_outcome, sweep_graph, tokenize_node
from stages.data import TokenData
from stages.suggest import Candidate


@dataclass
class StudyGraph:
    """The nodes of an active study so far: the sweep's graph (whose runs grow each round) and each round's
    fit and suggest node. It holds every node it made: the runner knows nodes by `id`, so none may be freed."""

    sweep: SweepGraph
    fits: list[Node] = field(default_factory=list)
    rounds: list[Node] = field(default_factory=list)

    def fit(self, sweep: SweepConfig) -> Node:
        """A new fit node over the runs so far."""
        runs = tuple(self.sweep.runs.values())
        self.fits.append(Node(FitKind(), sweep.name, FitSpec(sweep.name, sweep.fit), uses=runs, static=False))
        return self.fits[-1]


@dataclass
class StudyOutcome(SweepOutcome):
    """A sweep's outcome, with the record of each round that finished (`suggestion.json`) and why the rounds
    ended before their number ("" when all ran)."""

    rounds: list[dict] = field(default_factory=list)
    ended: str = ""


def run_active_study(sweep: SweepConfig, study: ActiveStudy, *, address: str | None = None,
                     progress: Progress | None = None, skip_invalid: bool = False,
                     wait_nodes: int = 0) -> StudyOutcome:  # fmt: skip
    """Run (or resume) the grid, the rounds and the report; the outcome covers every run of the study."""
    root = Path(sweep.store).resolve()
    planned = expand(sweep, skip_invalid=skip_invalid)
    planned_candidates = check_study(sweep, study, None)  # every check that needs no corpus, before any work
    with ray_session(address, wait_nodes):
        check_fits_cluster(planned + planned_candidates, node_capacities(ray.nodes()), sweep.resources_field)
        check_store(root)
        runner = Runner(root, progress)
        corpus = tokenize_node(sweep)
        data = runner.run([corpus])[id(corpus)]
        corpus_tokens = TokenData(Path(data.value)).train_tokens if data.done else None
        graph = StudyGraph(sweep_graph(sweep, corpus_tokens, skip_invalid=skip_invalid, corpus=corpus))
        if corpus_tokens is None:  # no corpus: every run is DEP_FAILED, as in a plain sweep
            return StudyOutcome(**vars(sweep_outcome(graph.sweep, runner.run(graph.sweep.nodes))), ended="no corpus")
        candidates = check_study(sweep, study, corpus_tokens)
        unique = target_unique_tokens(study, corpus_tokens)
        done, ended = _run_rounds(runner, sweep, study, graph, candidates, unique, progress)
        fit = graph.fit(sweep)
        graph.sweep.fit = fit
        graph.sweep.report = Node(ReportKind(rounds=len(done)), sweep.name, sweep.name, needs=(fit, corpus, *done),
                                  uses=tuple(graph.sweep.runs.values()), static=False)  # fmt: skip
        outcomes = runner.run(graph.sweep.nodes)
        return StudyOutcome(**vars(sweep_outcome(graph.sweep, outcomes)), rounds=[outcomes[id(node)].value for node in done],
                            ended=ended)  # fmt: skip


def _run_rounds(runner: Runner, sweep: SweepConfig, study: ActiveStudy, graph: StudyGraph, candidates: list[RunSpec],
                unique_tokens: float, progress: Progress | None) -> tuple[list[Node], str]:  # fmt: skip
    """Run the rounds, adding each round's chosen runs to the graph's runs; the suggest nodes that finished, in
    order, and why the rounds ended early ("" when all ran).

    A round is offered the candidates the study does not have yet that its budget affords; with none,
    the rounds end.
    """
    by_name = {spec.name: spec for spec in candidates}
    runs = graph.sweep.runs
    done: list[Node] = []
    for number in range(1, study.rounds + 1):
        offered = tuple(_candidate(spec, sweep.fit.params) for spec in candidates
                        if spec.name not in runs and spec.flops <= study.round_budget)  # fmt: skip
        if not offered:
            return done, f"round {number}: no candidate run the study lacks fits the round budget"
        if progress is not None:
            progress({"status": f"round {number} of {study.rounds}: training the runs so far, fitting, choosing runs"})
        spec = SuggestSpec(f"{sweep.name}-round{number}", number, study.target_flops, unique_tokens,
                           study.round_budget, study.round_runs, offered)  # fmt: skip
        graph.rounds.append(Node(SuggestKind(), spec.name, spec, needs=(graph.fit(sweep),), uses=tuple(runs.values()),
                                 static=False))  # fmt: skip
        outcome = runner.run([graph.rounds[-1]])[id(graph.rounds[-1])]
        if not outcome.done:
            return done, f"round {number}: the {outcome.stage} is {outcome.state.value} ({outcome.reason})"
        done.append(graph.rounds[-1])
        chosen = [run["name"] for run in outcome.value["runs"]]
        if not chosen:
            return done, f"round {number}: no candidate run shrinks the spread at the target"
        runs.update({name: Node(TrainKind(), name, by_name[name], needs=(graph.sweep.tokenize,)) for name in chosen})
    return done, ""


def _candidate(spec: RunSpec, params_kind: str) -> Candidate:
    """A run as a round's candidate, with N as the sweep's fit counts it."""
    params = spec.params if params_kind == "total" else spec.params_non_embedding
    return Candidate(spec.name, spec.model, float(params), float(spec.tokens), float(spec.unique_tokens), spec.flops)
