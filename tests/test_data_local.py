"""`local` corpora other than JSON lines: a .txt file (one document per paragraph), a folder of .txt
files (one document per file) and a .parquet file with a `text_field`, tokenized for real.

Each test writes a small corpus, tokenizes it (a byte-level BPE trained on it) and checks the number
of documents and that a document's tokens decode back to exactly its source text.
"""

import os
import tempfile

os.environ.setdefault("HF_HOME", tempfile.mkdtemp(prefix="dcsl-hf-"))  # before `datasets` is imported
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["HF_HUB_OFFLINE"] = "1"

from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import pytest  # noqa: E402

from stages.data import TokenData  # noqa: E402
from stages.tokenize import TokenizeConfig, tokenize  # noqa: E402

SETTINGS = {"tokenizer": {"vocab_size": 512, "training_characters": "6K"}, "validation_tokens": 400, "seed": 5}
WORDS = "the of a data token epoch scaling law model repeat unique budget loss compute naïve café — über 数据".split()


def _texts(count: int, seed: int) -> list[str]:
    """`count` distinct texts of three lines each (no blank line inside), words drawn with `seed`."""
    rng = np.random.default_rng(seed)
    return [f"text {i}: " + "\n".join(" ".join(rng.choice(WORDS, size=10)) for _ in range(3)) for i in range(count)]


def _one_text_file(folder: Path) -> tuple[dict, list[str], int]:
    """One .txt file of 60 paragraphs, one document each."""
    paragraphs = _texts(60, seed=1)
    (folder / "corpus.txt").write_text("\n\n".join(paragraphs), encoding="utf-8")
    return {"path": str(folder / "corpus.txt"), "text_unit": "paragraph"}, paragraphs, 1


def _folder_of_text_files(folder: Path) -> tuple[dict, list[str], int]:
    """40 .txt files (blank lines inside: a file is one document), some in a subfolder, beside a file that is not a corpus."""
    texts = [first + "\n\n" + second + "\n" for first, second in zip(_texts(40, seed=2), _texts(40, seed=3))]
    paths = [folder / ("part" if i % 3 == 0 else "") / f"doc-{i:02d}.txt" for i in range(40)]
    for path, text in zip(paths, texts):
        path.parent.mkdir(exist_ok=True)
        path.write_text(text, encoding="utf-8")
    (folder / "README.md").write_text("not a document\n")
    order = sorted(range(40), key=lambda i: paths[i])  # documents come in sorted path order
    return {"path": str(folder)}, [texts[i] for i in order], 40


def _parquet_file(folder: Path) -> tuple[dict, list[str], int]:
    """A .parquet file of 50 rows whose text is in column `body`, beside other columns."""
    bodies = _texts(50, seed=4)
    table = pa.table({"id": list(range(50)), "body": bodies, "title": [f"title {i}" for i in range(50)]})
    pq.write_table(table, folder / "corpus.parquet")
    return {"path": str(folder / "corpus.parquet"), "text_field": "body"}, bodies, 1


@pytest.mark.parametrize("write", [_one_text_file, _folder_of_text_files, _parquet_file], ids=["txt-file", "txt-folder", "parquet"])
def test_local_corpus_tokenizes_to_its_documents(write, tmp_path):
    folder = tmp_path / "corpus"
    folder.mkdir()
    corpus, texts, files = write(folder)
    config = TokenizeConfig.model_validate({"corpus": {"source": "local", **corpus}, **SETTINGS})
    data = TokenData(tokenize(config, tmp_path / "store"))
    manifest = data.manifest
    assert manifest["documents"] == len(texts) == len(data.doc_offsets) - 1 and manifest["source"]["files"] == files
    assert sorted(data.documents.tolist()) == list(range(len(texts)))
    assert 0 < manifest["validation"]["documents"] < len(texts) and manifest["tokenizer"]["trained"]
    # the first document (validation), the first training document and the last, each decoded from the token stream
    for stored in (0, manifest["validation"]["documents"], len(texts) - 1):
        ids = np.asarray(data.tokens[data.doc_offsets[stored] : data.doc_offsets[stored + 1]])
        assert ids[-1] == data.eod_id and np.count_nonzero(ids == data.eod_id) == 1
        assert data.tokenizer.decode(ids[:-1].tolist(), skip_special_tokens=False) == texts[data.documents[stored]]
