"""`scaling.suggest` and `dcsl suggest`: the chosen runs shrink the answer's spread more than the same FLOPs
spent otherwise (on real refits and by the linear update), the update's algebra, the command and its errors."""

import csv
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from conftest import REPO, TRUE_LAW
from pipeline.cli import main
from pipeline.config import load_sweep
from scaling.bootstrap import bootstrap
from scaling.errors import InputError
from scaling.fit import FitSpec, fit
from scaling.laws import preset
from scaling.runs import RunTable
from scaling.suggest import (
    Candidates, batch_variance, budget_ladder, candidate_draws, candidate_runs, choose_batch, noise_variance,
    size_ladder, suggest, target_draws,
)

SPEC = FitSpec(method="repetition", base=TRUE_LAW.base)
TARGET = (1e22, 25e9)  # C, U
NOISE = 0.01
DRAWS = 100


def observe(law, runs: np.ndarray, rng, noise: float = NOISE) -> RunTable:
    """A run table of `runs` (n, 3: N, D, U) with losses from `law` times log-normal noise."""
    loss = law.predict(runs[:, 0], runs[:, 1], runs[:, 2]) * np.exp(rng.normal(0.0, noise, len(runs)))
    return RunTable(runs[:, 0], runs[:, 1], runs[:, 2], loss, tuple(f"run{i}" for i in range(len(runs))))


def initial_runs() -> np.ndarray:
    """A small grid: 3 sizes x 2 unique budgets x epochs 1 and 4."""
    return np.array([(n, u * e, u) for n in (20e6, 40e6, 80e6) for u in (100e6, 400e6) for e in (1.0, 4.0)])


def extend(table: RunTable, runs: np.ndarray, rng) -> RunTable:
    """`table` with `runs` (n, 3) added, trained under the truth with noise from `rng`."""
    added = observe(TRUE_LAW, runs, rng)
    columns = (np.concatenate([getattr(table, key), getattr(added, key)])
               for key in ("params", "tokens", "unique_tokens", "loss"))
    return RunTable(*columns, names=table.names + added.names)


def rows(candidates: Candidates, batch) -> np.ndarray:
    return np.column_stack([candidates.params, candidates.tokens, candidates.unique_tokens])[list(batch)]


def within(flops: np.ndarray, order, spend: float) -> list[int]:
    """Candidates taken in `order` while their FLOPs add up to at most `spend`."""
    batch, total = [], 0.0
    for i in order:
        if total + flops[i] <= spend:
            batch.append(int(i))
            total += flops[i]
    return batch


@pytest.fixture(scope="module")
def start():
    """The initial table, its fit, bootstrap draws and the candidates for the target."""
    table = observe(TRUE_LAW, initial_runs(), np.random.default_rng(0))
    result = fit(table, SPEC)
    samples = bootstrap(table, result, DRAWS, seed=0)
    candidates = candidate_runs(size_ladder(table), budget_ladder(table, TARGET[1]), 16)
    return table, result, samples, candidates


@pytest.fixture(scope="module")
def batches(start):
    """The chosen batch and, for the same FLOPs, the cheapest runs and three random batches."""
    table, result, samples, candidates = start
    chosen = suggest(samples, result.law, table, candidates, *TARGET, budget=2e18, count=6)
    spend = candidates.flops[chosen.chosen].sum()
    rng = np.random.default_rng(1)
    return {"chosen": list(chosen.chosen), "cheapest": within(candidates.flops, np.argsort(candidates.flops), spend),
            **{f"random{k}": within(candidates.flops, rng.permutation(len(candidates.flops)), spend) for k in range(3)}}


def test_candidates_ladders_and_budget_errors(c4_runs):
    sizes = size_ladder(c4_runs)
    assert sizes[0] == pytest.approx(c4_runs.params.min(), rel=1e-2)
    assert sizes[-1] == pytest.approx(4 * 8.67e9, rel=1e-2)
    assert np.allclose(np.diff(np.log(sizes)), np.log(2) / 2, atol=0.02)  # sqrt(2) apart, 3 significant digits
    budgets = budget_ladder(c4_runs, 25e9)
    assert budgets[0] == 100e6 and budgets[-1] == 25e9 and np.all(np.diff(np.log(budgets)) <= np.log(2) + 1e-9)
    candidates = candidate_runs(sizes, budgets, 16)
    assert len(candidates.params) == len(sizes) * len(budgets) * 16
    assert set((candidates.tokens / candidates.unique_tokens).round(9)) == set(range(1, 17))
    assert candidates.unique_tokens.max() == 25e9
    with pytest.raises(InputError, match="unique_tokens: 5e\\+07 is below the smallest candidate budget"):
        budget_ladder(c4_runs, 50e6)
    with pytest.raises(InputError, match="budget: 1e\\+10 FLOPs is below the cheapest candidate run"):
        choose_batch(np.zeros((20, 1)), np.zeros((20, 2)), np.array([1e12, 2e12]), 1e10, 3, 1e-4)


def test_the_update_is_the_linear_gaussian_one():
    """Square-root updates on the draws equal Sigma' = Sigma - Sigma j j^T Sigma / (j^T Sigma j + s^2) on their
    covariance, run after run."""
    rng = np.random.default_rng(0)
    theta = rng.normal(size=(500, 3)) @ rng.normal(size=(3, 3))
    jacobian, gradients = rng.normal(size=(6, 3)), rng.normal(size=(2, 3))
    noise, batch = 0.3, [4, 1, 4]  # a run and its replicate
    sigma = np.cov(theta.T)
    for j in batch:
        row = jacobian[j]
        sigma = sigma - np.outer(sigma @ row, row @ sigma) / (row @ sigma @ row + noise)
    expected = np.einsum("qi,ij,qj->q", gradients, sigma, gradients)
    got = batch_variance(theta @ gradients.T, theta @ jacobian.T, batch, noise)
    np.testing.assert_allclose(got, expected, rtol=1e-10)
    variance = [batch_variance(theta @ gradients.T, theta @ jacobian.T, [4] * copies, noise) for copies in range(3)]
    assert np.all(variance[1] - variance[2] < variance[0] - variance[1])  # a replicate teaches less than the first copy


def test_chosen_batch_shrinks_the_linearised_spread_most(start, batches):
    """By the update itself: less variance of log N* and log L* than the cheapest or random runs of the same FLOPs."""
    table, result, samples, candidates = start
    targets, predictions = target_draws(samples, *TARGET), candidate_draws(samples, candidates)
    noise = noise_variance(result.law, table, samples)
    now = batch_variance(targets, predictions, [], noise)
    spread = {name: (batch_variance(targets, predictions, batch, noise) / now).sum() for name, batch in batches.items()}
    assert spread["chosen"] < 0.5 * min(spread[name] for name in batches if name != "chosen"), spread


def test_chosen_batch_shrinks_the_refitted_spread_most(start, batches):
    """On real fits: the runs trained (noisy losses from the truth), refitted and bootstrapped again, three times."""
    table, _, samples, candidates = start
    now = target_draws(samples, *TARGET).var(axis=0)
    spread = {}
    for name, batch in batches.items():
        values = []
        for repeat in range(3):
            both = extend(table, rows(candidates, batch), np.random.default_rng([repeat, 7]))
            draws = bootstrap(both, fit(both, SPEC), DRAWS, seed=repeat)
            values.append((target_draws(draws, *TARGET).var(axis=0) / now).sum())
        spread[name] = float(np.mean(values))
    assert spread["chosen"] < 0.85 * min(spread[name] for name in batches if name != "chosen"), spread


def test_runs_already_present_earn_little(start):
    """A candidate replicated in the runs already gains far less than it did before the replicates."""
    table, result, samples, candidates = start
    targets, predictions = target_draws(samples, *TARGET), candidate_draws(samples, candidates)
    noise = noise_variance(result.law, table, samples)
    best = int(choose_batch(targets, predictions, candidates.flops, 1e30, 1, noise).chosen[0])
    before = 1 - batch_variance(targets, predictions, [best], noise) / batch_variance(targets, predictions, [], noise)
    more = extend(table, rows(candidates, [best] * 8), np.random.default_rng(3))
    result = fit(more, SPEC)
    draws = bootstrap(more, result, DRAWS, seed=0)
    targets, predictions = target_draws(draws, *TARGET), candidate_draws(draws, candidates)
    noise = noise_variance(result.law, more, draws)
    after = 1 - batch_variance(targets, predictions, [best], noise) / batch_variance(targets, predictions, [], noise)
    assert np.all(after < 0.3 * before), (before, after)


# --- the command --------------------------------------------------------------------------------------------

def run(capsys, *argv):
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory):
    """Runs at the scale of configs/tiny.yaml (12K..100K parameters, U 100K..400K), losses from the C4 law."""
    runs = np.array([(n, u * e, u) for n in (12e3, 25e3, 50e3, 100e3) for u in (100e3, 400e3) for e in (1.0, 4.0)])
    table = observe(preset("c4"), runs, np.random.default_rng(0))
    path = tmp_path_factory.mktemp("runs") / "runs.csv"
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["params", "tokens", "unique_tokens", "loss"])
        writer.writerows(zip(table.params, table.tokens, table.unique_tokens, table.loss))
    return path


TINY_TARGET = ["--flops", "1e15", "--unique-tokens", "400K"]


def test_suggest_json_answers_within_the_budget(capsys, tiny_runs):
    code, stdout, _ = run(capsys, "suggest", str(tiny_runs), *TINY_TARGET, "--budget", "2e12", "--base-preset", "c4",
                          "--bootstrap", "60", "--count", "5", "--max-epochs", "8", "--json")
    assert code == 0
    answer = json.loads(stdout)
    assert answer["target"] == {"flops": 1e15, "unique_tokens": 400e3}
    assert 1 <= len(answer["runs"]) <= 5 and answer["budget_used"] <= 2e12
    assert answer["budget_used"] == pytest.approx(sum(r["flops"] for r in answer["runs"]))
    for r in answer["runs"]:
        assert r["flops"] == pytest.approx(6 * r["params"] * r["tokens"])
        assert r["tokens"] == r["epochs"] * r["unique_tokens"]
        assert r["unique_tokens"] <= 400e3 and r["epochs"] in range(1, 9) and r["gain"] > 0
    assert sum(r["gain"] for r in answer["runs"]) < 1
    now, after = answer["now"], answer["expected_intervals"]
    for key in ("params", "tokens", "epochs", "loss"):
        lo, hi = now["intervals"][key]
        assert lo <= after[key][0] <= now[key] <= after[key][1] <= hi, key  # narrower, around the estimate


def test_suggest_table_sizes_and_a_law_file(capsys, tmp_path, tiny_runs):
    law = tmp_path / "law.json"
    assert run(capsys, "fit", str(tiny_runs), "--base-preset", "c4", "--bootstrap", "60", "--out", str(law))[0] == 0
    code, stdout, _ = run(capsys, "suggest", str(tiny_runs), *TINY_TARGET, "--budget", "1e12", "--law", str(law),
                          "--sizes", "20K,70K", "--json")
    assert code == 0 and {r["params"] for r in json.loads(stdout)["runs"]} <= {20e3, 70e3}
    parquet = tmp_path / "runs.parquet"
    with tiny_runs.open() as handle:
        columns = {key: [float(v) for v in values] for key, *values in zip(*csv.reader(handle))}
    pq.write_table(pa.table(columns), parquet)
    code, from_parquet, _ = run(capsys, "suggest", str(parquet), *TINY_TARGET, "--budget", "1e12", "--law", str(law),
                                "--sizes", "20K,70K", "--json")
    assert code == 0 and from_parquet == stdout  # the same runs, read as `dcsl fit` reads them
    code, stdout, _ = run(capsys, "suggest", str(tiny_runs), *TINY_TARGET, "--budget", "1e12", "--law", str(law))
    assert code == 0 and "Next runs for C = 1e+15 FLOPs, U = 400K" in stdout
    assert all(label in stdout for label in ("gain", "estimate", "now", "after"))


def _suggest_out(capsys, tmp_path, tiny_runs, base) -> tuple[dict, dict, str]:
    """`dcsl suggest --sweep BASE --out next.yaml`: the written sweep, the base, and what was printed."""
    out = tmp_path / "next.yaml"
    code, stdout, _ = run(capsys, "suggest", str(tiny_runs), *TINY_TARGET, "--budget", "2e12", "--base-preset", "c4",
                          "--bootstrap", "60", "--count", "5", "--sweep", str(base), "--out", str(out))
    assert code == 0 and f"wrote {out}" in stdout
    sweep, written = yaml.safe_load(out.read_text()), yaml.safe_load(base.read_text())
    assert {key: sweep[key] for key in written if key not in ("models", "grid")} == {
        key: value for key, value in written.items() if key not in ("models", "grid")}
    code, planned, _ = run(capsys, "plan", str(out), "--store", str(tmp_path / "store"), "--csv")
    suggested = sum(len(block["epochs"]) for block in sweep["grid"])
    assert code == 0 and 1 <= len(list(csv.DictReader(planned.splitlines()))) == suggested <= 5
    return sweep, written, stdout


def test_out_keeps_the_base_ladders_rules(capsys, tmp_path, tiny_runs):
    sweep, base, stdout = _suggest_out(capsys, tmp_path, tiny_runs, REPO / "configs" / "tiny.yaml")
    assert "size ladder" in stdout and "written once" in stdout  # 12K and 16.5K are one shape under head_dim 16
    ladder, rule = sweep["models"]["ladder"], base["models"]["ladder"]
    assert {key: value for key, value in ladder.items() if key != "sizes"} == {
        key: value for key, value in rule.items() if key not in ("sizes", "count")}
    config = load_sweep(tmp_path / "next.yaml")
    rungs = config.ladder()[1]
    assert [rung.target for rung in rungs] == sorted(ladder["sizes"]) and len(config.models) == len(rungs)
    for rung, model in zip(rungs, config.models):  # each size trains at the base rule's rate
        assert model.name == rung.name and model.train["optimizer"]["lr"] == float(f"{8e-3 * (rung.params / 12e3) ** (-1 / 3):.3g}")


def test_out_shapes_hand_written_models_by_the_size_table(capsys, tmp_path, tiny_runs):
    sweep, _, stdout = _suggest_out(capsys, tmp_path, tiny_runs, REPO / "configs" / "tiny_ci.yaml")
    assert "size table" in stdout and all(set(model) == {"name", "params"} for model in sweep["models"])


BAD = [
    (["--budget", "1e3"], "budget: 1000 FLOPs is below the cheapest candidate run"),
    (["--unique-tokens", "50K"], "unique_tokens: 50000 is below the smallest candidate budget"),
    (["--budget", "lots"], "--budget: 'lots' is not a quantity"),
    (["--bootstrap", "5"], "--bootstrap: 5 resamples are too few for a spread; use at least 10"),
    (["--law", "missing.json"], "law file: 'missing.json' does not exist"),
    (["--out", "next.yaml"], "--out and --sweep: go together"),
    (["--sweep", "missing.yaml", "--out", "next.yaml"], "missing.yaml"),
    (["--base-preset", "gpt"], "'gpt' is not a preset"),
    (["--sizes", "1M,x"], "--sizes: 'x' is not a quantity"),
]


@pytest.mark.parametrize("extra, message", BAD, ids=[f"{a[0]}#{i}" for i, (a, _) in enumerate(BAD)])
def test_bad_input_is_one_line_exit_2_nothing_written(capsys, tmp_path, monkeypatch, tiny_runs, extra, message):
    monkeypatch.chdir(tmp_path)
    options = {"--flops": "1e15", "--unique-tokens": "400K", "--budget": "1e12", "--bootstrap": "20"}
    flags = [flag for flag in extra[::2] if flag in options]
    argv = [item for flag, value in options.items() if flag not in flags for item in (flag, value)]
    code, _, stderr = run(capsys, "suggest", str(tiny_runs), *argv, *extra)
    assert code == 2 and stderr.count("\n") == 1 and stderr.startswith("error: ") and message in stderr, stderr
    assert list(tmp_path.iterdir()) == []


def test_no_runs_and_a_law_without_draws(capsys, tmp_path, tiny_runs):
    empty = tmp_path / "empty.csv"
    empty.write_text("params,tokens,unique_tokens,loss\n")
    code, _, stderr = run(capsys, "suggest", str(empty), *TINY_TARGET, "--budget", "1e12")
    assert code == 2 and "no runs" in stderr
    law = tmp_path / "law.json"
    assert run(capsys, "fit", str(tiny_runs), "--base-preset", "c4", "--out", str(law))[0] == 0
    code, _, stderr = run(capsys, "suggest", str(tiny_runs), *TINY_TARGET, "--budget", "1e12", "--law", str(law))
    assert code == 2 and stderr == f"error: --law: {law} has no bootstrap samples; fit it with --bootstrap N\n"
