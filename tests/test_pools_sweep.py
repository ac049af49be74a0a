"""Several data pools end to end: bad pool specs refused before any work, a one-pool sweep unchanged, and a
tiny two-pool `dcsl sweep` on CPU whose records hold the exact per-pool numbers."""

import copy
import csv
import io
import json
import subprocess

import pytest
import yaml

import pipeline.cli.plan_commands  # noqa: F401  (registers the command)
import sweeps
from pipeline.cli import main
from pipeline.config import SweepConfig
from pipeline.expand import expand
from scaling.errors import InputError
from stages.record import RunRecord
from stages.run_config import RunConfig
from stages.tokenize import TokenizeConfig

POOLS = {
    "name": "two-pools",
    "data": {
        "name": "two-pools",
        "tokenizer": {"vocab_size": 300, "training_characters": "120K"},
        "eval": "code",
        "pools": [
            {"name": "prose", "corpus": {"source": "prose", "max_documents": 40}, "validation_tokens": "2K"},
            {"name": "code", "corpus": {"source": "stdlib", "max_documents": 30}, "validation_tokens": "2K"},
        ],
    },
    "models": [{"name": "s", "layers": 1, "width": 16, "heads": 1}],
    "grid": [{"tokens": "8K", "pools": {"prose": ["1K", "2K"], "code": "8K"},
              "mix": [{"code": 1}, {"prose": 0.25, "code": 0.75}, {"prose": 0.5, "code": 0.5}]}],
    "train": {"seq_len": 32, "batch_tokens": 256, "device": "cpu", "log_every": 10},
    "fit": {"base": "c4"},  # the base law held at a preset: 4 free parameters of the multi-pool law for 6 runs
    "wandb": {"mode": "disabled"},
}


def _changed(path: str, value) -> dict:
    document = copy.deepcopy(POOLS)
    *parents, last = [int(part) if part.isdigit() else part for part in path.split(".")]
    node = document
    for part in parents:
        node = node[part]
    node[last] = value
    return document


def _plan(tmp_path, capsys, document: dict, store=None) -> tuple[int, str, str]:
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump({**document, "store": str(store or tmp_path / "store")}))
    code = main(["plan", str(path)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


BLOCK = POOLS["grid"][0]
BAD = [
    ("grid.0.pools", {"prose": "1K", "code": "8K", "web": "1K"}, "grid.0.pools: 'web' is not a pool; pools: prose, code"),
    ("train.optimizer", {"schedule": "wsd"}, "train.optimizer.schedule: wsd shares a trunk between runs that differ only in D, "
     "but a multi-pool run's batches depend on every pool's D_i; use cosine with data.pools"),
    ("fit.law", "data-constrained", "fit.law: 'data-constrained' fits one corpus; a multi-pool sweep is fitted with multi-pool or qqt"),
    ("grid.0.mix", [{"prose": 0.5, "web": 0.5}], "grid.0.mix.0: 'web' is not a pool; pools: prose, code"),
    ("grid.0.mix", [{"prose": 0.5, "code": 0.4}], "grid.0.mix: entry 0, {'code': 0.4, 'prose': 0.5}, adds up to 0.9; the weights must add up to 1"),
    ("grid.0.pools", {"prose": "1K"}, "grid.0.pools: gives no unique_tokens for pool 'code'; give every pool its budgets"),
    ("grid", [{"unique_tokens": "1K", "epochs": 1}], "grid.0.pools: is required: data.pools makes a multi-pool sweep, whose blocks give "
     "pools (U_i per pool), mix and tokens or flops"),
    ("grid", [{**BLOCK, "epochs": 2}], "grid.0.epochs: is for one corpus; a pool block gives pools (U_i per pool), mix and tokens or flops"),
    ("data.pools.1.name", "prose", "data.pools.1.name: 'prose' is used by pools.0 too; pool names must be unique"),
    ("data.eval", "web", "data.eval: 'web' is not a pool; pools: prose, code"),
    ("data.corpus", {"source": "stdlib"}, "data.corpus: is set per pool (data.pools.<i>) when data.pools is given"),
    ("data.pools.0.name", "pro-se", "data.pools.0.name: 'pro-se' is not allowed: String should match pattern '^[A-Za-z][A-Za-z0-9_]*$'"),
]


@pytest.mark.parametrize("path, value, message", BAD, ids=[f"{i:02d}-{case[0]}" for i, case in enumerate(BAD)])
def test_bad_pool_specs_are_refused_with_one_line(tmp_path, capsys, path, value, message):
    code, out, err = _plan(tmp_path, capsys, _changed(path, value))
    assert (code, out, err) == (2, "", f"error: {message}\n")
    assert not (tmp_path / "store").exists()  # nothing was done


def test_an_active_study_is_refused_for_a_multi_pool_sweep(tmp_path, capsys):
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump({**POOLS, "store": str(tmp_path / "store")}))
    code = main(["plan", str(path), "--rounds", "2", "--round-budget", "1e12", "--target-flops", "1e15"])
    assert (code, capsys.readouterr().err) == (2, "error: --rounds: an active study runs on one corpus; a multi-pool sweep "
                                                  "(data.pools) has none yet\n")


def test_a_pool_block_needs_a_multi_pool_corpus(tmp_path, capsys):
    document = _changed("data", {"name": "one", "corpus": {"source": "stdlib", "max_documents": 5}})
    code, _, err = _plan(tmp_path, capsys, document)
    assert (code, err) == (2, "error: grid.0.pools: needs data.pools (a multi-pool corpus); one corpus gives unique_tokens\n")


def test_a_budget_larger_than_its_pools_training_region_is_impossible():
    sweep = SweepConfig.model_validate(POOLS)
    with pytest.raises(InputError) as caught:
        expand(sweep, {"prose": 999, "code": 50_000}, vocab_size=300)
    assert str(caught.value) == "grid point s-D8K-prose.U1K.w0-code.U8K.w1: pools.prose: unique_tokens 1000 exceeds pool prose's 999 training tokens"


def test_the_mix_splits_d_into_whole_sequences_that_add_up():
    runs = expand(SweepConfig.model_validate(_changed("grid.0.mix", [{"prose": 1 / 3, "code": 2 / 3}])), vocab_size=300)
    run = runs[0]  # prose U = 1K
    budgets = run.config.pools.budgets
    assert run.tokens == 7_936  # 31 steps of 256 tokens: 248 sequences of 32
    assert [(b.name, b.unique_tokens, b.tokens) for b in budgets] == [("prose", 1_000, 83 * 32), ("code", 8_000, 165 * 32)]
    assert run.unique_tokens == 9_000 and run.config.pools.eval == "code"


def test_a_one_pool_config_hashes_and_records_as_before():
    data = TokenizeConfig.model_validate({"corpus": {"source": "stdlib"}})
    assert set(data.hashed()) == {"name", "corpus", "tokenizer", "validation_tokens", "seed", "minhash", "split", "dedup"}
    run = RunConfig.model_validate({"model": {"layers": 1, "width": 16, "heads": 1}, "seq_len": 8, "tokens": 64, "unique_tokens": 64,
                                    "batch_tokens": 32})  # fmt: skip
    assert "pools" not in run.hashed()
    record = RunRecord(name="r", params=1, params_non_embedding=1, tokens=64, unique_tokens=64, epochs=1.0, val_loss=1.0, flops=1)
    assert not {"pools", "eval_pool"} & set(json.loads(record.to_json()))


@pytest.fixture(scope="module")
def pool_sweep(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pools")
    store = folder / "store"
    done = sweeps.run(sweeps.write(folder, store, POOLS))
    return store, done


def test_a_two_pool_sweep_records_exact_per_pool_numbers(pool_sweep):
    store, done = pool_sweep
    assert done.returncode == 0, done.stdout + done.stderr
    assert "6 of 6 runs succeeded" in done.stdout and "law: " in done.stdout
    records = {r.name: r for r in (RunRecord.model_validate_json(p.read_text()) for p in store.glob("train/*/run.json"))}
    mixed = records["s-D8K-prose.U1K.w0.25-code.U8K.w0.75-s0"]
    assert (mixed.tokens, mixed.unique_tokens, mixed.eval_pool) == (7_936, 9_000, "code")
    assert [(p.name, p.tokens, p.unique_tokens, p.epochs) for p in mixed.pools] == [
        ("prose", 62 * 32, 1_000, 62 * 32 / 1_000), ("code", 186 * 32, 8_000, 186 * 32 / 8_000)]
    assert mixed.val_loss == mixed.pools[1].val_loss and all(p.val_tokens == 62 * 32 for p in mixed.pools)
    alone = records["s-D8K-prose.U1K.w0-code.U8K.w1-s0"]
    assert [(p.tokens, p.epochs) for p in alone.pools] == [(0, 0.0), (7_936, 0.992)]
    assert alone.pools[0].val_loss > mixed.pools[0].val_loss  # a model that saw prose scores prose better


def test_dcsl_runs_writes_per_pool_columns_and_the_report_shows_the_pools(pool_sweep):
    store, _ = pool_sweep
    listed = subprocess.run([sweeps.DCSL, "runs", str(store)], capture_output=True, text=True, env=sweeps.env())
    rows = list(csv.DictReader(io.StringIO(listed.stdout)))
    assert listed.returncode == 0 and len(rows) == 6
    mixed = next(row for row in rows if "prose.U1K.w0.25" in row["name"])
    assert {key: mixed[key] for key in ("tokens.prose", "unique_tokens.prose", "tokens.code", "unique_tokens.code")} == {
        "tokens.prose": "1984", "unique_tokens.prose": "1000", "tokens.code": "5952", "unique_tokens.code": "8000"}
    (report,) = store.glob("report/*/report.md")
    text = report.read_text()
    assert "| N | D | U prose | epochs prose | U code | epochs code |" in text
    assert all((report.parent / name).stat().st_size > 1_000 for name in ("loss_vs_epochs.png", "loss_vs_share.png", "pools.csv"))
    law = json.loads((report.parent / "law.json").read_text())
    assert (law["law"], law["method"], law["pools"], law["n_runs"]) == ("multi-pool", "repetition", ["prose", "code"], 6)
    # the pool law's own checks, stated in the report; every run here has one compute (one model, one D), so
    # there is nothing to hold out above the 75th percentile
    assert law["diagnostics"]["extrapolation"] == {"skipped": "extrapolation threshold: 1.48562e+08 FLOPs leaves no runs on one "
                                                              "side (runs span 1.48562e+08 to 1.48562e+08)"}
    assert f"Leave-out check skipped: {law['diagnostics']['extrapolation']['skipped']}." in text
    assert f"Parameters on a bound of the fit's search box: {', '.join(law['at_bounds']) or 'none'}." in text
    assert "## Allocation across pools" in text and "With 2K unique tokens of prose, 8K unique tokens of code" in text
    allocation = list(csv.DictReader(io.StringIO((report.parent / "allocation.csv").read_text())))
    for row in allocation:  # the optimum spends the compute: C = 6 N sum D_i
        assert float(row["tokens.prose"]) + float(row["tokens.code"]) == pytest.approx(float(row["tokens"]), rel=1e-9)
        assert 6 * float(row["params"]) * float(row["tokens"]) == pytest.approx(float(row["flops"]), rel=1e-6)
    status = subprocess.run([sweeps.DCSL, "status", str(store)], capture_output=True, text=True, env=sweeps.env()).stdout
    assert [line.split(":")[0].rsplit(" ", 1)[1] for line in status.splitlines() if " pool " in line and "contamination" in line] == [
        "prose", "code"]  # each pool's contamination, at the budgets the runs drew from it
    assert "within the first U training tokens: 1K " in status and "8K " in status


def test_plan_checks_each_pools_budget_against_the_tokenized_pools(pool_sweep, tmp_path, capsys):
    store, _ = pool_sweep
    manifest = json.loads(next(store.glob("tokenize/*/manifest.json")).read_text())
    prose = next(pool["train_tokens"] for pool in manifest["pools"] if pool["name"] == "prose")
    code, _, err = _plan(tmp_path, capsys, _changed("grid.0.pools", {"prose": prose + 1, "code": "8K"}), store=store)
    assert code == 2 and err.startswith("error: grid point s-D8K-prose.U") and f"exceeds pool prose's {prose} training tokens" in err


def test_dcsl_tokenize_summarises_each_pool_of_the_artifact(pool_sweep, tmp_path):
    store, _ = pool_sweep
    config = sweeps.write(tmp_path, store, POOLS)
    shown = subprocess.run([sweeps.DCSL, "tokenize", str(config), "--store", str(store)], capture_output=True, text=True, env=sweeps.env())
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert lines[0].startswith("reused ") and "/tokenize/two-pools-" in lines[0]
    assert [line.split(":")[0] for line in lines if line.startswith("pool ")] == ["pool prose", "pool code"]
    assert sum(line.startswith("validation 2,000 tokens") for line in lines) == 2
