"""The suggest stage: one round of an active study, from the fit of the runs so far to the runs to train next.

`suggest_round` reads the law (`law.json` with its bootstrap samples) and the runs it was fitted to,
scores the study's candidate runs with `scaling.suggest` at the target (C, U) and writes
`suggestion.json`, the round's record and its reason: the round, its budget, the runs and FLOPs
so far, the answer now with its 95% intervals, the chosen runs (name, model, N, D, U, epochs,
FLOPs, gain), the intervals expected once they are trained and the FLOPs they use.

`round_rows` and `rounds_markdown` make the study report's table of the answer per round: the grid,
then each round, with the runs and FLOPs so far and the answer's intervals after it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import NamedTuple

import numpy as np

from scaling.allocate import allocation_records
from scaling.atomic import write_text_atomic
from scaling.errors import InputError
from scaling.lawfile import bootstrap_samples, read_law
from scaling.suggest import Candidates, suggestion_record
from scaling.units import format_quantity
from stages.fit import run_table
from stages.record import RunRecord

SUGGESTION = "suggestion.json"
ROUNDS = "rounds.json"


class Candidate(NamedTuple):
    """A run a round may choose: its name (a run of the sweep's), model, N as the fit counts it, D, U and FLOPs (6ND)."""

    name: str
    model: str
    params: float
    tokens: float
    unique_tokens: float
    flops: float


def suggest_round(law_path: Path, records: list[RunRecord], candidates: list[Candidate], target: tuple[float, float],
                  budget: float, count: int, round_number: int, out_dir: Path) -> dict:  # fmt: skip
    """Choose the round's runs among `candidates` (at most `count`, within `budget` FLOPs) and write the record."""
    law, document = read_law(law_path)
    samples = bootstrap_samples(document)
    if samples is None:
        raise InputError("fit.bootstrap", f"{law_path} has no bootstrap samples; a round needs them")
    table = run_table(records, document.get("params_kind", "non_embedding"))
    pool = Candidates(np.array([c.params for c in candidates], dtype=float), np.array([c.tokens for c in candidates], dtype=float),
                      np.array([min(c.unique_tokens, c.tokens) for c in candidates], dtype=float))  # as the fit sees U
    choice, record = suggestion_record(samples, law, table, pool, *target, budget, count,
                                       costs=np.array([c.flops for c in candidates], dtype=float))  # fmt: skip
    for run, index in zip(record["runs"], choice.chosen):
        chosen = candidates[index]
        run.update(name=chosen.name, model=chosen.model, unique_tokens=chosen.unique_tokens,
                   epochs=chosen.tokens / chosen.unique_tokens)  # fmt: skip
    record = {"round": round_number, "budget": budget, "runs_before": len(records),
              "flops_before": float(sum(r.flops for r in records)), **record}  # fmt: skip
    write_text_atomic(Path(out_dir) / SUGGESTION, json.dumps(record, indent=2) + "\n")
    return record


def answer_at(law_path: Path, flops: float, unique_tokens: float) -> dict:
    """The law's answer at (C, U): params, tokens, epochs, loss and (with bootstrap samples) their intervals."""
    law, document = read_law(law_path)
    return allocation_records(law.full_params(), np.array([flops]), unique_tokens, bootstrap_samples(document))[0]


def round_rows(suggestions: list[dict], final: dict, runs: int, flops: float) -> list[dict]:
    """The study per step: the grid (round 0) and each round, with the runs and FLOPs so far, what the round
    added, and the answer at the target after it (`final` after the last round, whose runs and FLOPs are given)."""
    after = [s["now"] for s in suggestions[1:]] + [final]
    so_far = [(s["runs_before"], s["flops_before"]) for s in suggestions[1:]] + [(runs, flops)]
    first = suggestions[0]
    rows = [{"round": 0, "runs": first["runs_before"], "flops": first["flops_before"], "added": [], "added_flops": 0.0,
             "budget": None, "answer": first["now"], "expected_intervals": None}]  # fmt: skip
    for suggestion, answer, (count, spent) in zip(suggestions, after, so_far):
        rows.append({"round": suggestion["round"], "runs": count, "flops": spent,
                     "added": [run["name"] for run in suggestion["runs"]], "added_flops": suggestion["budget_used"],
                     "budget": suggestion["budget"], "answer": answer,
                     "expected_intervals": suggestion["expected_intervals"]})  # fmt: skip
    return rows


def _interval(key: str, bounds) -> str:
    low, high = bounds
    if key in ("params", "tokens"):
        return f"{format_quantity(low, 3)}–{format_quantity(high, 3)}"
    return f"{low:.3g}–{high:.3g}" if key == "epochs" else f"{low:.4f}–{high:.4f}"


def rounds_markdown(rows: list[dict], target: dict) -> str:
    """The report's section on an active study: the answer at the target per round, and the runs each round added."""
    lines = ["", f"## Active study: the answer at C = {target['flops']:.3g} FLOPs, U = {format_quantity(target['unique_tokens'])}",
             "", "95% bootstrap intervals of the optimum after each step (round 0: the grid). Width: ln(high / low) of N* "
             "(the same for D*); expected: the interval of N* the round's suggestion expected. All numbers in "
             f"[{ROUNDS}]({ROUNDS}).", "",
             "| round | runs | FLOPs so far | added FLOPs (budget) | N* | N* interval | width | expected N* | D* interval "
             "| epochs* interval | loss | loss interval |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    for row in rows:
        answer, intervals = row["answer"], row["answer"]["intervals"]
        added = f"{row['added_flops']:.3g} ({row['budget']:.3g})" if row["budget"] else ""
        expected = _interval("params", row["expected_intervals"]["params"]) if row["expected_intervals"] else ""
        width = math.log(intervals["params"][1] / intervals["params"][0])
        lines.append(f"| {row['round']} | {row['runs']} | {row['flops']:.3g} | {added} | {format_quantity(answer['params'], 3)} | "
                     f"{_interval('params', intervals['params'])} | {width:.3f} | {expected} | "
                     f"{_interval('tokens', intervals['tokens'])} | {_interval('epochs', intervals['epochs'])} | "
                     f"{answer['loss']:.4f} | {_interval('loss', intervals['loss'])} |")  # fmt: skip
    lines += ["", "Runs each round added: " + "; ".join(f"round {row['round']}: {', '.join(row['added']) or 'none'}"
                                                        for row in rows[1:]) + ".", ""]  # fmt: skip
    return "\n".join(lines)
