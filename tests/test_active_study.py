"""`dcsl sweep --rounds`: an active study end to end on the CPU (a 5-run grid, then two rounds of fit -> suggest ->
train), killed with kill -9 in its first round's training and resumed; its records, its report, and its bad input."""

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest

import sweeps
from pipeline.cli import main
from stages.suggest import answer_at
from sweeps import DCSL, SWEEP

STUDY = {
    **SWEEP,
    "name": "tiny",
    "grid": [{"unique_tokens": "20K", "epochs": [1, 2]}, {"models": ["s"], "unique_tokens": "40K", "epochs": 1}],
    # three free parameters (A, B, R_D*): five runs pin them down loosely, so the rounds have a spread to shrink
    "fit": {"method": "joint", "fix": {"E": 1.0, "alpha": 0.35, "beta": 0.35, "rn_star": 5.0}, "bootstrap": 20},
}
GRID = 5
BUDGET = 1.5e10
FLAGS = ("--rounds", "2", "--round-budget", f"{BUDGET:g}", "--target-flops", "1e11", "--target-unique-tokens", "80K",
         "--max-epochs", "4")  # fmt: skip


def _suggestions(store: Path) -> list[dict]:
    """The record of every finished round, in order."""
    return sorted((json.loads(p.read_text()) for p in (store / "suggest").glob("*/suggestion.json")), key=lambda s: s["round"])


def _report(store: Path) -> Path:
    (report,) = (store / "report").glob("*/report.md")
    return report.parent


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> dict:
    """The study killed (kill -9) while its first round's runs train, then resumed to its end."""
    folder = tmp_path_factory.mktemp("study")
    store = folder / "store"
    config = sweeps.write(folder, store, STUDY)
    killed = subprocess.Popen([DCSL, "sweep", str(config), *FLAGS], env=sweeps.env(), start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    (first,) = sweeps.wait_for(lambda: _suggestions(store) or None, killed)
    chosen = [run["name"] for run in first["runs"]]
    sweeps.wait_for(lambda: [p for name in chosen for p in (store / "train" / ".steps").glob(f"{name}-*/leases/lease.*")], killed)
    os.killpg(killed.pid, signal.SIGKILL)
    killed.wait()
    before = {"runs": sweeps.successes(store), "suggest": _successes(store, "suggest"), "fit": _successes(store, "fit")}
    resumed = sweeps.run(config, *FLAGS)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    return {"store": store, "config": config, "before": before, "stdout": resumed.stdout}


def _successes(store: Path, stage: str) -> dict[str, int]:
    return {p.parent.name: p.stat().st_mtime_ns for p in (store / stage).glob("*/SUCCESS")}


def test_each_round_trains_the_runs_it_chose_within_its_budget(study):
    store = study["store"]
    records = {record["name"]: record for record in sweeps.records(store).values()}
    rounds = _suggestions(store)
    assert [r["round"] for r in rounds] == [1, 2]
    added = [[run["name"] for run in r["runs"]] for r in rounds]
    assert all(added) and not set(added[0]) & set(added[1])
    assert len(records) == GRID + len(added[0]) + len(added[1])  # the grid, then what each round chose, nothing else
    assert [r["runs_before"] for r in rounds] == [GRID, GRID + len(added[0])]
    grid = [name for name in records if name not in added[0] + added[1]]
    assert rounds[0]["flops_before"] == pytest.approx(sum(records[name]["flops"] for name in grid), rel=1e-12)
    for suggestion in rounds:
        assert suggestion["budget"] == BUDGET and suggestion["target"] == {"flops": 1e11, "unique_tokens": 80e3}
        assert 0 < suggestion["budget_used"] <= BUDGET
        assert suggestion["budget_used"] == pytest.approx(sum(run["flops"] for run in suggestion["runs"]), rel=1e-12)
        for run in suggestion["runs"]:  # an ordinary run of the sweep: its record has the numbers the round chose with
            record = records[run["name"]]
            assert record["flops"] == pytest.approx(run["flops"], rel=1e-12) and record["tokens"] == run["tokens"]
            assert record["unique_tokens"] == run["unique_tokens"] and run["epochs"] == pytest.approx(record["epochs"])
            assert run["gain"] > 0
        assert sum(run["gain"] for run in suggestion["runs"]) < 1
        # the reason: the intervals now, and the narrower ones expected once the chosen runs are trained
        now, expected = suggestion["now"]["intervals"], suggestion["expected_intervals"]
        for key in ("params", "loss"):
            assert now[key][0] <= expected[key][0] <= suggestion["now"][key] <= expected[key][1] <= now[key][1]
            assert expected[key][1] / expected[key][0] < now[key][1] / now[key][0]
    assert f"round 1: {len(added[0])} runs, {rounds[0]['budget_used']:.3g} of 1.5e+10 FLOPs: {', '.join(added[0])}" in study["stdout"]


def test_the_report_shows_the_answer_per_round(study):
    store, folder = study["store"], _report(study["store"])
    rounds = _suggestions(store)
    table = json.loads((folder / "rounds.json").read_text())["rounds"]
    assert [row["round"] for row in table] == [0, 1, 2]
    records = sweeps.records(store).values()
    assert [row["runs"] for row in table] == [GRID, rounds[1]["runs_before"], len(records)]
    assert table[2]["flops"] == pytest.approx(sum(record["flops"] for record in records), rel=1e-12)
    # the grid's and round 1's answers are those the next round started from; the last, the final law's
    assert table[0]["answer"] == rounds[0]["now"] and table[1]["answer"] == rounds[1]["now"]
    assert table[2]["answer"] == answer_at(folder / "law.json", 1e11, 80e3)
    assert [row["added"] for row in table[1:]] == [[run["name"] for run in r["runs"]] for r in rounds]
    widths = [row["answer"]["intervals"]["params"][1] / row["answer"]["intervals"]["params"][0] for row in table]
    assert widths[2] < widths[0]  # two rounds narrowed the interval of N* at the target
    text = (folder / "report.md").read_text()
    assert "## Active study: the answer at C = 1e+11 FLOPs, U = 80K" in text
    for row in table:
        low, high = row["answer"]["intervals"]["loss"]
        assert f"| {row['round']} | {row['runs']} | {row['flops']:.3g} |" in text
        assert f"| {row['answer']['loss']:.4f} | {low:.4f}–{high:.4f} |" in text


def test_a_killed_study_resumes_without_redoing_finished_steps(study):
    store, before = study["store"], study["before"]
    assert before["suggest"] and before["runs"]
    assert {name: _successes(store, "suggest")[name] for name in before["suggest"]} == before["suggest"]
    assert {name: _successes(store, "fit")[name] for name in before["fit"]} == before["fit"]
    assert {name: sweeps.successes(store)[name] for name in before["runs"]} == before["runs"]
    attempts = json.loads(next((store / "suggest" / ".steps").glob("tiny-round1-*/step.json")).read_text())["attempt"]
    assert attempts == 1  # the round's choice was found in the store, not made again
    explained = subprocess.run([DCSL, "sweep", str(study["config"]), "--explain", *FLAGS], capture_output=True,
                               text=True, env=sweeps.env())  # fmt: skip
    assert explained.returncode == 0 and f"0 of {GRID + 1} steps will run" in explained.stdout  # tokenize + the grid
    for suggestion in _suggestions(store):  # and the rounds it finished, with what each chose
        (folder,) = (store / "suggest").glob(f"tiny-round{suggestion['round']}-*")
        chosen = ", ".join(run["name"] for run in suggestion["runs"])
        assert (f"round {suggestion['round']} in the store: done (suggest/{folder.name}), chose {len(suggestion['runs'])} "
                f"run(s): {chosen}") in explained.stdout


def _files(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*")) if folder.exists() else []


@pytest.mark.parametrize(("flags", "message"), [
    (("--rounds", "2", "--round-budget", "1e10"), "error: --target-flops: missing; --rounds 2 needs --round-budget B and --target-flops C"),
    (("--target-flops", "1e11"), "error: --target-flops: is a setting of an active study; give --rounds R too"),
    (("--rounds", "0", "--round-budget", "1e10", "--target-flops", "1e11"), "error: --rounds: 0 must be at least 1"),
    (("--rounds", "1", "--round-budget", "2e9", "--target-flops", "1e11"),
     "error: --round-budget: 2e+09 FLOPs is below the cheapest candidate run that the grid does not train "
     "(s-U20K-e3-s0: 4.49e+09 FLOPs)"),
])  # fmt: skip
def test_bad_study_flags_are_one_line_and_nothing_is_written(capsys, tmp_path, flags, message):
    config = sweeps.write(tmp_path, tmp_path / "store", STUDY)
    for command in ("sweep", "plan"):
        assert main([command, str(config), *flags]) == 2
        assert capsys.readouterr().err.strip().splitlines()[-1] == message
    assert not (tmp_path / "store").exists()


def test_an_active_study_needs_bootstrap_draws(capsys, tmp_path):
    config = sweeps.write(tmp_path, tmp_path / "store", {**STUDY, "fit": {**STUDY["fit"], "bootstrap": 0}})
    assert main(["sweep", str(config), *FLAGS]) == 2
    assert capsys.readouterr().err.strip() == ("error: fit.bootstrap: 0 resamples; an active study (--rounds) needs at "
                                               "least 10, the draws whose spread the rounds shrink")  # fmt: skip
    assert not (tmp_path / "store").exists()


def test_a_target_beyond_the_corpus_is_refused_once_it_is_known(capsys, study):
    store = study["store"]
    files = _files(store)
    flags = [*FLAGS[:-4], "--target-unique-tokens", "1e9", "--max-epochs", "4"]
    for command in ("sweep", "plan"):
        assert main([command, str(study["config"]), *flags]) == 2
        error = capsys.readouterr().err.strip()
        assert error.startswith("error: --target-unique-tokens: 1e+09 exceeds the corpus's ") and "\n" not in error
        assert "training tokens; the rounds train runs at up to U, so U <= " in error
    assert _files(store) == files


def test_plan_says_what_the_rounds_will_do(capsys, tmp_path):
    config = sweeps.write(tmp_path, tmp_path / "store", STUDY)
    assert main(["plan", str(config), *FLAGS]) == 0
    out = capsys.readouterr().out
    assert f"sweep tiny: {GRID} runs" in out
    # 2 models x U 20K, 40K, 80K x epochs 1..4
    assert ("then 2 round(s) of at most 8 runs within 1.5e+10 FLOPs (6ND) each, at most 3e+10 FLOPs more, chosen among "
            "24 candidate runs (the sweep's models x U 20K..80K x epochs 1..4) to sharpen the answer at C = 1e+11 "
            "FLOPs, U = 80K") in " ".join(out.split())
