import csv
import json

import numpy as np
import pytest

from conftest import C4_CSV
from pipeline.cli import main
from pool_runs import pool_runs
from scaling.laws import preset
from scaling.lawfile import read_law
from scaling.pool_laws import MultiPoolLaw, pool_law_from_params

C4 = preset("c4").params()
BASE_C4 = {k: C4[k] for k in ("E", "A", "B", "alpha", "beta")}
TRUTH = pool_law_from_params("multi-pool", ["hq", "web"], {**BASE_C4, "rn_star": 5.0, "q.web": 0.5,
                                                          "rd_star.hq": 15.0, "rd_star.web": 8.0})
QQT = pool_law_from_params("qqt", ["hq", "web"], {**BASE_C4, "u.web": 0.6, "tau.hq": 6.0, "tau.web": 2.0})


def run(capsys, *argv):
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def write_table(path, law, **kwargs):
    columns = pool_runs(law, **kwargs).to_columns()
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        writer.writerows(zip(*columns.values()))
    return path


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pools")
    runs = write_table(folder / "runs.csv", TRUTH, n=150, seed=11)
    law = folder / "law.json"
    assert main(["fit", str(runs), "--law", "multi-pool", "--base-preset", "c4", "--bootstrap", "10",
                 "--out", str(law)]) == 0
    return runs, law


def test_fit_multi_pool_writes_pools_parameters_and_intervals(fitted):
    _, path = fitted
    doc = json.loads(path.read_text())
    assert doc["law"] == "multi-pool" and doc["pools"] == ["hq", "web"] and doc["method"] == "repetition"
    assert doc["base_source"] == "preset:c4" and doc["fixed"] == ["E", "A", "B", "alpha", "beta", "q.hq"]
    assert doc["params"]["q.hq"] == 1.0 and doc["params"]["q.web"] == pytest.approx(0.5, rel=0.05)
    assert doc["params"]["rd_star.hq"] == pytest.approx(15.0, rel=0.3)
    assert set(doc["intervals"]["params"]) == {"rn_star", "q.web", "rd_star.hq", "rd_star.web"}
    lo, hi = doc["intervals"]["params"]["q.web"]
    assert lo <= doc["params"]["q.web"] <= hi
    assert doc["bootstrap"]["columns"] == ["rn_star", "log_q.web", "rd_star.hq", "rd_star.web"]
    assert doc["diagnostics"]["r2_log_loss"] > 0.99 and len(doc["diagnostics"]["residuals"]) == 150
    law, _ = read_law(path)
    assert isinstance(law, MultiPoolLaw) and law.pools == ("hq", "web")


def test_allocate_across_pools_json_and_table(capsys, fitted):
    _, path = fitted
    argv = ["allocate", "--law", str(path), "--flops", "1e18,1e21", "--unique-tokens", "web=1e11",
            "--unique-tokens", "hq=1e9"]
    code, stdout, _ = run(capsys, *argv, "--json")
    assert code == 0
    answer = json.loads(stdout)
    assert answer["reference_pool"] == "hq" and len(answer["allocations"]) == 2
    first, last = answer["allocations"]
    assert first["pools"]["hq"]["unique_tokens"] == 1e9 and first["pools"]["web"]["unique_tokens"] == 1e11
    assert first["flops"] == pytest.approx(6 * first["params"] * first["tokens"], rel=1e-12)
    assert last["pools"]["web"]["tokens"] > 0 and last["pools"]["hq"]["epochs"] > 1
    assert 1e16 < answer["pays_from_flops"]["web"] < 1e21
    spread = last["intervals"]  # the law holds 10 bootstrap samples
    assert spread["params"][0] <= spread["params"][1] and set(spread["pools"]) == {"hq", "web"}
    assert spread["pools"]["web"]["tokens"][0] <= spread["pools"]["web"]["tokens"][1]
    code, stdout, _ = run(capsys, *argv)
    assert code == 0 and "D web" in stdout and "pool web starts to pay" in stdout
    assert "95% bootstrap intervals of the optimum" in stdout


def test_qqt_fits_on_the_same_kind_of_table(capsys, tmp_path):
    runs = write_table(tmp_path / "runs.csv", QQT, n=120, seed=5, max_epochs=20.0)
    code, stdout, _ = run(capsys, "fit", str(runs), "--law", "qqt", "--base-preset", "c4", "--json")
    assert code == 0
    doc = json.loads(stdout)
    assert doc["law"] == "qqt" and doc["params"]["u.web"] == pytest.approx(0.6, rel=0.05)
    assert doc["params"]["tau.hq"] == pytest.approx(6.0, rel=0.3)


BAD = [
    (["--unique-tokens", "hq=1e9", "--unique-tokens", "wiki=1e9"], "--unique-tokens: pool 'wiki' is not in the law; its pools are hq, web"),
    (["--unique-tokens", "hq=1e9", "--unique-tokens", "hq=2e9"], "--unique-tokens: pool 'hq' is given twice"),
    (["--unique-tokens", "hq=-1e9", "--unique-tokens", "web=1e9"], "--unique-tokens hq: '-1e9' must be a positive finite number"),
    (["--unique-tokens", "hq=1e9"], "--unique-tokens: no budget for pool 'web'"),
    (["--unique-tokens", "1e9"], "--unique-tokens: '1e9' must look like NAME=VALUE"),
]


@pytest.mark.parametrize("extra, message", BAD, ids=[str(i) for i in range(len(BAD))])
def test_bad_pool_budgets_are_one_line_exit_2(capsys, fitted, extra, message):
    _, path = fitted
    code, stdout, stderr = run(capsys, "allocate", "--law", str(path), "--flops", "1e20", *extra)
    assert code == 2 and stdout == "" and stderr.count("\n") == 1 and message in stderr


def test_bad_pool_fits_and_queries_are_one_line_exit_2_nothing_written(capsys, fitted, tmp_path):
    runs, law = fitted
    out = tmp_path / "law.json"
    cases = [
        (["fit", str(runs), "--law", "multi-pool", "--out", str(out)], "give a base law to hold fixed"),
        (["fit", str(runs), "--law", "multi-pool", "--joint", "--base-preset", "c4", "--out", str(out)], "(one of them)"),
        (["fit", str(runs), "--law", "qqt", "--joint", "--fix", "E=1", "--out", str(out)], "apply to one-pool laws only"),
        (["fit", str(C4_CSV), "--law", "multi-pool", "--base-preset", "c4", "--out", str(out)], "has no per-pool columns"),
        (["predict", "--law", str(law), "--params", "1B", "--tokens", "10B"], "is a multi-pool law over pools hq, web"),
        (["allocate", "--law", str(law), "--target-loss", "2.5", "--unique-tokens", "hq=1e9"], "--target-loss: applies to one-pool laws"),
        (["allocate", "--preset", "c4", "--flops", "1e20", "--unique-tokens", "hq=1e9"], "POOL=U is for a multi-pool law.json"),
    ]
    for argv, message in cases:
        code, _, stderr = run(capsys, *argv)
        assert code == 2 and stderr.count("\n") == 1 and message in stderr, (argv, stderr)
    assert not out.exists()


def test_broken_pool_law_file_is_one_line(capsys, fitted, tmp_path):
    _, law = fitted
    doc = json.loads(law.read_text())
    doc["params"]["q.web"] = -1.0
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps(doc))
    code, _, stderr = run(capsys, "allocate", "--law", str(broken), "--flops", "1e20", "--unique-tokens", "hq=1e9",
                          "--unique-tokens", "web=1e9")
    assert code == 2 and "law file:" in stderr and "q.web = -1.0 must be a positive number" in stderr
    assert np.isfinite(json.loads(law.read_text())["params"]["q.web"])
