import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import C4_CSV
from pipeline.cli import main
from scaling.lawfile import read_law
from stages.record import RunRecord


def run(capsys, *argv):
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


DCSL = str(Path(sys.executable).with_name("dcsl"))


def test_help_lists_every_subcommand_and_version():
    help_text = subprocess.run([DCSL, "--help"], capture_output=True, text=True, check=True).stdout
    for command in ("fit", "allocate", "predict", "epochs", "suggest"):
        assert f"│ {command} " in help_text
    version = subprocess.run([DCSL, "--version"], capture_output=True, text=True, check=True).stdout
    assert version.startswith("dcsl 0.")


def test_fit_json_is_exactly_law_json(capsys, tmp_path):
    out = tmp_path / "law.json"
    code, stdout, _ = run(capsys, "fit", str(C4_CSV), "--base-preset", "c4", "--bootstrap", "50", "--seed", "3",
                          "--out", str(out), "--json")
    assert code == 0
    assert stdout == out.read_text()
    doc = json.loads(stdout)
    assert doc["schema"] == "dcsl.law/1" and doc["law"] == "data-constrained" and doc["method"] == "repetition"
    assert doc["params"]["rd_star"] == pytest.approx(15.39, abs=0.3)
    assert doc["fixed"] == ["E", "A", "B", "alpha", "beta"] and doc["base_source"] == "preset:c4"
    assert doc["n_runs"] == 182 and len(doc["input"]["sha256"]) == 64
    assert doc["intervals"]["confidence"] == 0.95
    lo, hi = doc["intervals"]["params"]["rd_star"]
    assert lo <= doc["params"]["rd_star"] <= hi
    assert doc["bootstrap"]["resamples"] == 50 and len(doc["bootstrap"]["samples"]) == 50
    assert set(doc["diagnostics"]) >= {"huber", "r2_log_loss", "rmse_log_loss", "r2_loss", "rmse_loss",
                                       "residuals", "extrapolation"}
    assert doc["objective"]["huber"] == pytest.approx(doc["diagnostics"]["huber"], rel=1e-12)
    # the same fit gives the same bytes
    assert run(capsys, "fit", str(C4_CSV), "--base-preset", "c4", "--bootstrap", "50", "--seed", "3", "--json")[1] == stdout
    law, _ = read_law(out)
    assert law.rd_star == doc["params"]["rd_star"]


def test_fit_summary_and_base_from_previous_fit(capsys, tmp_path):
    base = tmp_path / "base.json"
    assert run(capsys, "fit", str(C4_CSV), "--law", "base", "--tie-exponents", "--out", str(base))[0] == 0
    base_doc = json.loads(base.read_text())
    assert base_doc["params"]["alpha"] == base_doc["params"]["beta"] and base_doc["tied"] == ["alpha", "beta"]
    law = tmp_path / "law.json"
    code, stdout, _ = run(capsys, "fit", str(C4_CSV), "--base", str(base), "--fix", "rn_star=5", "--out", str(law))
    assert code == 0
    assert "repetition" in stdout and "182 runs" in stdout and "rd_star" in stdout and "Huber objective" in stdout
    assert "extrapolation: fit on" in stdout
    assert re.search(r"rn_star\s.*5\s.*fixed", stdout)
    doc = json.loads(law.read_text())
    assert doc["params"]["rn_star"] == 5.0 and "rn_star" in doc["fixed"] and doc["base_source"] == str(base)
    assert all(doc["params"][name] == base_doc["params"][name] for name in ("E", "A", "B", "alpha", "beta"))


def test_a_parameter_on_its_bound_is_flagged_in_the_summary_and_the_law(capsys, tmp_path):
    law = tmp_path / "law.json"
    code, stdout, stderr = run(capsys, "fit", str(C4_CSV), "--base-preset", "c4", "--bound", "rd_star=0.5:3",
                               "--out", str(law))
    assert code == 0
    doc = json.loads(law.read_text())
    assert doc["params"]["rd_star"] == pytest.approx(3.0) and "rd_star" in doc["at_bounds"]
    assert re.search(r"rd_star\s.*on bound", stdout)
    assert f"warning: {', '.join(doc['at_bounds'])} ended on the search bound; widen it with --bound NAME=LOW:HIGH" in stderr


def test_extrapolate_above_sets_the_leave_out_threshold(capsys, tmp_path, c4_runs):
    code, stdout, _ = run(capsys, "fit", str(C4_CSV), "--base-preset", "c4", "--extrapolate-above", "1e20", "--json")
    check = json.loads(stdout)["diagnostics"]["extrapolation"]
    assert code == 0 and check["threshold_flops"] == 1e20
    flops = 6 * c4_runs.params * c4_runs.tokens
    assert (check["n_fit"], check["n_held_out"]) == (int((flops <= 1e20).sum()), int((flops > 1e20).sum()))


def test_fit_reads_the_finished_runs_of_a_store(capsys, tmp_path, c4_runs):
    for i, (n, d, u, loss) in enumerate(zip(c4_runs.params, c4_runs.tokens, c4_runs.unique_tokens, c4_runs.loss)):
        record = RunRecord(name=f"run{i:03d}", params=int(n), params_non_embedding=int(n), tokens=int(d),
                           unique_tokens=int(u), epochs=d / u, val_loss=float(loss), flops=6 * n * d)
        folder = tmp_path / "train" / f"{record.name}-0123456789abcdef"
        folder.mkdir(parents=True)
        (folder / "run.json").write_text(record.to_json())
        if i:  # the first run never finished: no SUCCESS beside its record
            (folder / "SUCCESS").write_text("")
    code, stdout, _ = run(capsys, "fit", str(tmp_path), "--base-preset", "c4", "--json")
    from_store = json.loads(stdout)
    assert code == 0 and from_store["n_runs"] == len(c4_runs) - 1 and from_store["input"]["source"] == "run records"
    assert from_store["input"]["sha256"] == c4_runs.subset(np.arange(len(c4_runs)) > 0).sha256()


def test_allocate_json_and_table(capsys, tmp_path):
    code, stdout, _ = run(capsys, "allocate", "--flops", "1e22", "--unique-tokens", "25B", "--preset", "c4", "--json")
    assert code == 0
    answer = json.loads(stdout)
    assert {"params", "tokens", "epochs", "loss", "base_law"} <= set(answer)
    assert answer["tokens"] == pytest.approx(237e9, rel=0.01) and answer["epochs"] == pytest.approx(9.49, abs=0.02)
    assert answer["base_law"]["params"] == pytest.approx(9.218e9, rel=1e-3)
    code, stdout, _ = run(capsys, "allocate", "--flops", "1e21", "--flops", "1.5e22", "--unique-tokens", "25e9", "--json")
    rows = json.loads(stdout)
    assert code == 0 and [r["flops"] for r in rows] == [1e21, 1.5e22]
    assert run(capsys, "allocate", "--flops", "1e21,1.5e22", "--unique-tokens", "25e9", "--json")[1] == stdout
    code, stdout, _ = run(capsys, "allocate", "--flops", "1e21", "--flops", "1e22", "--unique-tokens", "25B")
    assert code == 0 and "1e+21" in stdout and "1e+22" in stdout and "7.026B" in stdout


def test_allocate_with_bootstrap_law_shows_intervals(capsys, tmp_path):
    law = tmp_path / "law.json"
    assert run(capsys, "fit", str(C4_CSV), "--base-preset", "c4", "--bootstrap", "40", "--out", str(law))[0] == 0
    code, stdout, _ = run(capsys, "allocate", "--law", str(law), "--flops", "1e22", "--unique-tokens", "25B", "--json")
    answer = json.loads(stdout)
    assert code == 0
    for key in ("params", "tokens", "epochs", "loss"):
        lo, hi = answer["intervals"][key]
        assert lo < answer[key] < hi and hi / lo > 1.0001, key  # a real spread around the point estimate


def test_target_loss_predict_and_epochs(capsys):
    code, stdout, _ = run(capsys, "allocate", "--target-loss", "2.3", "--unique-tokens", "25B", "--json")
    answer = json.loads(stdout)
    assert code == 0 and answer["flops"] == pytest.approx(2.195e21, rel=1e-3)
    code, stdout, _ = run(capsys, "allocate", "--target-loss", "2.0", "--unique-tokens", "25B")
    assert "out of reach" in stdout
    code, stdout, _ = run(capsys, "predict", "--params", "6.34e9", "--tokens", "242B", "--unique-tokens", "25B", "--json")
    assert json.loads(stdout)["loss"] == pytest.approx(2.2256440889984477, abs=1e-12)
    code, stdout, _ = run(capsys, "epochs", "--params", "7B", "--unique-tokens", "25B", "--json")
    assert json.loads(stdout)["epochs"] == pytest.approx(57.84, abs=0.01)


BAD_INPUTS = [
    (["allocate", "--flops", "lots", "--unique-tokens", "25B"], "--flops: 'lots' is not a quantity"),
    (["allocate", "--flops", "1e22", "--unique-tokens", "-5"], "--unique-tokens: '-5' must be a positive finite number"),
    (["allocate", "--unique-tokens", "25B"], "--flops: give at least one compute budget"),
    (["allocate", "--flops", "1e22", "--unique-tokens", "25B", "--preset", "gpt"], "'gpt' is not a preset"),
    (["allocate", "--flops", "1e22", "--unique-tokens", "25B", "--law", "missing.json"], "law file: 'missing.json' does not exist"),
    (["allocate", "--flops", "1e22", "--unique-tokens", "25B", "--law", "x.json", "--preset", "c4"], "give one of them"),
    (["fit", "missing.csv"], "runs file: 'missing.csv' does not exist"),
    (["fit", str(C4_CSV), "--fix", "rd_star"], "--fix: 'rd_star' must look like NAME=VALUE"),
    (["fit", str(C4_CSV), "--fix", "gamma=1"], "'gamma' is not a law parameter"),
    (["fit", str(C4_CSV), "--bound", "rd_star=1"], "--bound: 'rd_star=1' must look like NAME=LOW:HIGH"),
    (["fit", str(C4_CSV), "--base-preset", "c4", "--joint"], "--joint: fits all seven parameters"),
    (["fit", str(C4_CSV), "--law", "cubic"], "law: 'cubic' is not a law"),
    (["fit", str(C4_CSV), "--bootstrap", "-3"], "Invalid value for '--bootstrap'"),
    (["fit", str(C4_CSV), "--frobnicate"], "No such option: --frobnicate"),
    (["predict", "--params", "1B", "--tokens", "10B", "--unique-tokens", "20B"], "--unique-tokens: 2e+10 exceeds --tokens"),
    (["epochs", "--params", "1B", "--unique-tokens", "1B", "--tolerance", "0"], "tolerance: 0.0 must be > 0"),
]


@pytest.mark.parametrize("argv, message", BAD_INPUTS, ids=[" ".join(a[:2]) + f"#{i}" for i, (a, _) in enumerate(BAD_INPUTS)])
def test_bad_input_is_one_line_exit_2_nothing_written(capsys, tmp_path, argv, message):
    out = tmp_path / "law.json"
    code, stdout, stderr = run(capsys, *argv, *(["--out", str(out)] if argv[0] == "fit" else []))
    assert code == 2
    assert stderr.count("\n") == 1 and stderr.startswith("error: ") and message in stderr
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_bad_law_files(capsys, tmp_path):
    cases = {"notjson.json": "{", "other.json": json.dumps({"schema": "x"}),
             "badparam.json": json.dumps({"schema": "dcsl.law/1", "law": "base",
                                          "params": {"E": 1, "A": 1, "B": -1, "alpha": 0.3, "beta": 0.3}})}
    messages = {"notjson.json": "is not valid JSON", "other.json": "is not a dcsl law",
                "badparam.json": "params.B = -1 must be a positive number"}
    for name, text in cases.items():
        (tmp_path / name).write_text(text)
        code, _, stderr = run(capsys, "predict", "--params", "1B", "--tokens", "1B", "--law", str(tmp_path / name))
        assert code == 2 and messages[name] in stderr


def test_console_script_exit_status():
    result = subprocess.run([DCSL, "allocate", "--flops", "x", "--unique-tokens", "1B"],
                            capture_output=True, text=True)
    assert result.returncode == 2 and result.stderr.startswith("error: --flops")


def test_an_answer_far_outside_the_fitted_runs_is_flagged(capsys):
    code, stdout, stderr = run(capsys, "allocate", "--flops", "1", "--unique-tokens", "25B", "--json")
    assert code == 0
    record = json.loads(stdout)
    assert record["params"] < 1 and len(record["warnings"]) == 2
    assert record["warnings"][0].startswith("N = 0.167 is 4.26e+07x below the smallest N the law was fitted on (7.1e+06)")
    assert stderr.count("warning: ") == 2 and "(preset c4)" in stderr
    code, stdout, stderr = run(capsys, "predict", "--params", "7B", "--tokens", "237B", "--unique-tokens", "25B", "--json")
    assert code == 0 and "warnings" not in json.loads(stdout) and stderr == ""  # inside the C4 runs' range


def test_a_fitted_law_records_its_runs_range_and_predict_uses_it(capsys, tmp_path):
    law = tmp_path / "law.json"
    assert run(capsys, "fit", str(C4_CSV), "--base-preset", "c4", "--out", str(law))[0] == 0
    document = json.loads(law.read_text())
    assert document["fitted_range"] == {"params": [7098752.0, 8.67e9], "tokens": [1e8, 9e11]}
    code, stdout, _ = run(capsys, "predict", "--law", str(law), "--params", "100B", "--tokens", "1T", "--json")
    assert code == 0 and json.loads(stdout)["warnings"] == [
        f"N = 1e+11 is {1e11 / 8.67e9:.3g}x above the largest N the law was fitted on (8.67e+09): an extrapolation"]


def test_fit_on_a_binary_file_is_one_line(capsys, tmp_path):
    path = tmp_path / "runs.csv"
    path.write_bytes(bytes(range(256)) * 4)
    code, _, stderr = run(capsys, "fit", str(path))
    assert code == 2
    assert stderr.splitlines() == [f"error: runs file: {str(path)!r} is not UTF-8 text (byte offset 128); is it a CSV file?"]
