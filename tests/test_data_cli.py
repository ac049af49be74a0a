"""`dcsl tokenize CONFIG.yaml`: summary, reuse, and one-line errors with exit status 2."""

import os
import tempfile

os.environ.setdefault("HF_HOME", tempfile.mkdtemp(prefix="dcsl-hf-"))  # before `datasets` is imported
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["HF_HUB_OFFLINE"] = "1"

import pipeline.cli.data_commands  # noqa: E402,F401  (registers the command)
from pipeline.cli import main  # noqa: E402

CONFIG = """\
store: {store}
sweep_section_read_by_other_commands: {{models: [1]}}
data:
  name: tiny
  corpus: {{source: stdlib, max_documents: 12}}
  tokenizer: {{vocab_size: {vocab}, training_characters: 50K}}
  validation_tokens: 2K
"""


def _config(tmp_path, vocab=400):
    path = tmp_path / "config.yaml"
    path.write_text(CONFIG.format(store=tmp_path / "store", vocab=vocab))
    return str(path)


def test_tokenize_writes_then_reuses(tmp_path, capsys):
    assert main(["tokenize", _config(tmp_path), "--num-proc", "2"]) == 0
    out = capsys.readouterr().out
    assert "wrote" in out and "documents 12 " in out and "tokens/s" in out and "validation 2,000 tokens" in out
    (artifact,) = (tmp_path / "store" / "tokenize").iterdir()
    assert artifact.name.startswith("tiny-") and (artifact / "SUCCESS").exists()
    assert main(["tokenize", _config(tmp_path)]) == 0
    assert f"reused {artifact}" in capsys.readouterr().out


def test_bad_config_is_one_line_and_status_2(tmp_path, capsys):
    assert main(["tokenize", _config(tmp_path, vocab=100)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        "error: data.tokenizer.vocab_size: 100 is too small; a byte-level BPE needs at least 257 "
        "(256 bytes and the end-of-document token)"
    )
    assert not (tmp_path / "store").exists()


def test_unknown_setting_and_missing_file(tmp_path, capsys):
    path = tmp_path / "typo.yaml"
    path.write_text("data:\n  corpus: {sourse: local}\n")
    assert main(["tokenize", str(path)]) == 2
    assert capsys.readouterr().err.startswith("error: data.corpus.sourse: unknown setting; allowed: source, path,")
    assert main(["tokenize", str(tmp_path / "nope.yaml")]) == 2
    assert "does not exist" in capsys.readouterr().err
