"""The clean split in the pipeline: the dedup step before tokenize, hashes and `--explain`, and the
contamination figure in `dcsl tokenize`, `dcsl status` and the report; bad settings in one line."""

import json
import os
import tempfile

os.environ.setdefault("HF_HOME", tempfile.mkdtemp(prefix="dcsl-hf-"))  # before `datasets` is imported
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["HF_HUB_OFFLINE"] = "1"

from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

import pipeline.cli.data_commands  # noqa: E402,F401  (registers the command)
from pipeline.cli import main  # noqa: E402
from pipeline.config import load_sweep  # noqa: E402
from pipeline.graph import Outcome  # noqa: E402
from pipeline.kinds.dedup import dedup_step  # noqa: E402
from pipeline.kinds.tokenize import TokenizeKind, tokenize_step  # noqa: E402
from pipeline.store import State, Store  # noqa: E402
from pipeline.sweep import sweep_graph  # noqa: E402
from scaling.units import format_quantity  # noqa: E402
from stages.artifacts import mark_success  # noqa: E402
from stages.contamination import shares_at  # noqa: E402
from stages.record import RunRecord  # noqa: E402
from stages.report import contamination_markdown  # noqa: E402
from stages.tokenize import TokenizeConfig, tokenize_hash  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DATA = {"corpus": {"source": "stdlib", "max_documents": 20}, "tokenizer": {"vocab_size": 300}}


def test_split_and_dedup_settings_change_the_hash_and_explain_names_them(tmp_path):
    store = Store(tmp_path)
    base = TokenizeConfig.model_validate(DATA)
    store.run(tokenize_step(base), lambda: None)
    wider = TokenizeConfig.model_validate({**DATA, "split": {"near_duplicates": 0.3}})
    assert tokenize_hash(wider) != tokenize_hash(base)
    assert store.explain(tokenize_step(wider)).reason == "config changed: split.near_duplicates 0.2 -> 0.3"

    deduped = TokenizeConfig.model_validate({**DATA, "dedup": {}})
    step = tokenize_step(deduped, dedup_step(deduped))
    assert step.hash == tokenize_hash(deduped) != tokenize_hash(base)
    assert store.explain(step).reason == (
        "config changed: dedup.exact (unset) -> true, dedup.near_duplicates (unset) -> 0.8; "
        f"input changed: (none) -> {dedup_step(deduped).id}"
    )
    store.run(step, lambda: None)
    stricter = TokenizeConfig.model_validate({**DATA, "dedup": {"near_duplicates": 0.9}})
    changed = tokenize_step(stricter, dedup_step(stricter))
    assert dedup_step(stricter).hash != dedup_step(deduped).hash
    assert store.explain(changed).reason == (
        f"config changed: dedup.near_duplicates 0.8 -> 0.9; input changed: {dedup_step(deduped).id} -> {dedup_step(stricter).id}"
    )
    # the dedup step is keyed by the corpus and the dedup settings only: a new tokenizer reuses it
    retokenized = TokenizeConfig.model_validate({**DATA, "tokenizer": {"vocab_size": 400}, "dedup": {}})
    assert dedup_step(retokenized).hash == dedup_step(deduped).hash and tokenize_hash(retokenized) != step.hash


def test_the_sweep_graph_deduplicates_before_tokenizing_and_reports_on_the_corpus():
    built_in = load_sweep(REPO / "configs" / "tiny.yaml")  # deduplicates: the plain sweep is it without dedup
    sweep = built_in.model_copy(update={"data": TokenizeConfig.model_validate({**built_in.data.model_dump(), "dedup": None})})
    assert sweep_graph(built_in, 3_000_000).tokenize.needs[0].kind.stage == "dedup"
    plain = sweep_graph(sweep, 3_000_000)
    assert plain.tokenize.needs == () and plain.report.needs == (plain.fit, plain.tokenize)
    data = TokenizeConfig.model_validate({**sweep.data.model_dump(), "dedup": {"exact": True}})
    deduped = sweep.model_copy(update={"data": data})
    graph = sweep_graph(deduped, 3_000_000)
    (dedup,) = graph.tokenize.needs
    assert dedup.kind.stage == "dedup" and dedup.spec is deduped.data
    outcome = Outcome(dedup.name, "dedup", State.DONE, dedup_step(deduped.data), "/store/dedup/x")
    assert TokenizeKind().key(deduped.data, [outcome]).inputs == (dedup_step(deduped.data).id,)


def _no_cluster_config(tmp_path: Path) -> str:
    """A `dcsl tokenize` file over 60 stdlib files, clusters off: its validation split overlaps the training region."""
    path = tmp_path / "data.yaml"
    path.write_text(f"store: {tmp_path / 'store'}\ndata:\n  name: overlap\n  corpus: {{source: stdlib, max_documents: 60}}\n"
                    "  tokenizer: {vocab_size: 300, training_characters: 100K}\n  validation_tokens: 20K\n  seed: 2\n"
                    "  split: {near_duplicates: null}\n")  # fmt: skip
    return str(path)


def test_tokenize_and_status_print_the_contamination_exact_at_the_runs_budgets(tmp_path, capsys):
    assert main(["tokenize", _no_cluster_config(tmp_path)]) == 0
    out = capsys.readouterr().out
    (artifact,) = (tmp_path / "store" / "tokenize").iterdir()
    manifest = json.loads((artifact / "manifest.json").read_text())
    measured = manifest["contamination"]
    assert measured["found"] > 0  # the case under test: some validation windows occur in training
    assert "split: documents alone (no near-duplicate clusters)" in out
    assert f"validation contamination (64-token windows found in training): overall {measured['overall']:.2%}; " in out
    for budget in (60_000, manifest["train"]["tokens"]):
        record = RunRecord(name=f"m-U{budget}-e1-s0", params=1000, params_non_embedding=800, tokens=budget, unique_tokens=budget,
                           epochs=1.0, val_loss=4.0, flops=6.0 * 800 * budget, data_hash=manifest["hash"])  # fmt: skip
        folder = tmp_path / "store" / "train" / f"{record.name}-{budget:016x}"
        folder.mkdir(parents=True)
        (folder / "run.json").write_text(record.to_json())
        mark_success(folder)
    assert main(["status", str(tmp_path / "store")]) == 0
    (line,) = [line for line in capsys.readouterr().out.splitlines() if line.startswith(f"tokenize/{artifact.name}:")]
    shares = shares_at(artifact, [60_000, manifest["train"]["tokens"]])
    assert shares[manifest["train"]["tokens"]] == measured["overall"]
    largest = format_quantity(manifest["train"]["tokens"])
    assert line.endswith(f"within the first U training tokens: 60K {shares[60_000]:.2%}, {largest} {measured['overall']:.2%}")


def test_the_report_lists_the_contamination_at_each_budget():
    text = contamination_markdown({1_600_000: 0.0123, 100_000: 0.0})
    assert "## Validation contamination" in text and "64-token windows" in text
    assert text.splitlines()[-2:] == ["| 100K | 0.00% |", "| 1.6M | 1.23% |"]
    assert contamination_markdown({}) == ""


@pytest.mark.parametrize("section, line", [
    ("split: {near_duplicates: 1.5}", "error: data.split.near_duplicates: 1.5 is not allowed: Input should be less than or equal to 1"),
    ("dedup: {exact: false, near_duplicates: null}",
     "error: data.dedup: exact: false with near_duplicates: null removes nothing; set one, or leave dedup out"),
    ("minhash: {ngram: 0}", "error: data.minhash.ngram: 0 is not allowed: Input should be greater than or equal to 1"),
])  # fmt: skip
def test_bad_split_and_dedup_settings_are_one_line_and_status_2(tmp_path, capsys, section, line):
    path = tmp_path / "bad.yaml"
    path.write_text(f"store: {tmp_path / 'store'}\ndata:\n  corpus: {{source: stdlib}}\n  {section}\n")
    assert main(["tokenize", str(path)]) == 2
    assert capsys.readouterr().err.splitlines() == [line]
    assert not (tmp_path / "store").exists()
