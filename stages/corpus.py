"""Corpus sources, all read through HF `datasets` into one `text` column, one row per document.

* `stdlib`: the running Python's standard library sources, one document per `.py` file in
  sorted path order. Every Python install has it, so the main job needs no download.
* `prose`: English prose that ships with Python: the pydoc help topics and the standard library's
  longer docstrings (`stages.prose`), for a second built-in pool of another nature than code.
* `local`: a file or folder of plain text (one document per file, line or paragraph),
  JSON lines or Parquet; the text column is configurable.
* `hub`: a dataset name on the Hugging Face Hub, for machines that can reach it.

`piece_characters` cuts every document into pieces of whole lines, each the first lines whose
length reaches that many characters (the last piece of a document may be shorter), before anything
else sees the corpus: the split then draws its validation text from many documents instead of a
few whole ones. Unset, documents stay whole and the config dumps as it did before the option
existed, so artifact hashes do not move.
"""

from __future__ import annotations

import hashlib
import os
import platform
import sys
import sysconfig
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field, SerializerFunctionWrapHandler, model_serializer, model_validator

from scaling.errors import InputError
from stages.mapped_pages import corpus_files, release_mapped_pages

if TYPE_CHECKING:
    import datasets

_FORMATS = {".txt": "text", ".text": "text", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}
_COMPRESSION = {".gz", ".bz2", ".xz", ".zst"}
_NOT_STDLIB = {"site-packages", "dist-packages"}


class CorpusConfig(BaseModel):
    """Where the documents come from."""

    model_config = ConfigDict(extra="forbid")

    source: Literal["stdlib", "prose", "local", "hub"] = "stdlib"
    path: str | None = Field(None, description="local: a file or a folder of .txt/.jsonl/.json/.parquet files")
    format: Literal["auto", "text", "json", "parquet"] = "auto"
    text_unit: Literal["document", "line", "paragraph"] = Field(
        "document", description="plain text files only: one document per file, line or paragraph"
    )
    name: str | None = Field(None, description="hub: the dataset name, e.g. allenai/c4")
    subset: str | None = Field(None, description="hub: the dataset's configuration name")
    split: str = "train"
    revision: str | None = None
    text_field: str = "text"
    max_documents: int | None = Field(None, ge=1, description="keep only the first N documents in source order")
    piece_characters: int | None = Field(
        None, ge=100, description="cut each document into pieces of whole lines of at least this many characters "
        "(after max_documents); null: documents stay whole"
    )

    @model_serializer(mode="wrap")
    def _without_unset_pieces(self, handler: SerializerFunctionWrapHandler) -> dict:
        dumped = handler(self)
        if self.piece_characters is None:  # configs without the option keep their artifact hashes
            dumped.pop("piece_characters", None)
        return dumped

    @model_validator(mode="after")
    def _source_fields(self) -> CorpusConfig:
        if self.source == "local" and not self.path:
            raise InputError("path", "is required when source is 'local' (a file or folder of text, JSON lines or Parquet)")
        if self.source == "hub" and not self.name:
            raise InputError("name", "is required when source is 'hub' (a dataset name such as allenai/c4)")
        if self.source != "local" and self.path:
            raise InputError("path", f"{self.path!r} is only used when source is 'local' (source is {self.source!r})")
        if self.source != "hub" and self.name:
            raise InputError("name", f"{self.name!r} is only used when source is 'hub' (source is {self.source!r})")
        return self


def stdlib_files() -> list[Path]:
    """The running Python's standard-library `.py` files (no site-packages), sorted by path."""
    files = []
    for folder, subfolders, names in os.walk(sysconfig.get_paths()["stdlib"]):
        subfolders[:] = [name for name in subfolders if name not in _NOT_STDLIB]
        files.extend(Path(folder, name) for name in names if name.endswith(".py"))
    return sorted(files)


def _file_format(path: Path) -> str | None:
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in _COMPRESSION:
        suffixes.pop()
    return _FORMATS.get(suffixes[-1]) if suffixes else None


def local_files(config: CorpusConfig) -> tuple[str, list[Path]]:
    """The format and the sorted files of a local corpus; InputError if missing or ambiguous."""
    root = Path(config.path or "")
    if not root.exists():
        raise InputError("corpus.path", f"{config.path!r} does not exist")
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file() and _file_format(p))
    if not files:
        raise InputError("corpus.path", f"{config.path!r} holds no .txt, .jsonl, .json or .parquet files")
    if not any(p.stat().st_size for p in files):
        raise InputError("corpus", f"{config.path!r} is empty (no documents)")
    if config.format != "auto":
        return config.format, files
    formats = {_file_format(p) for p in files}
    if len(formats) != 1 or None in formats:
        raise InputError("corpus.format", f"'auto' cannot tell the format of {config.path!r} (found {sorted(map(str, formats))}); "
            f"set format to text, json or parquet"
        )
    return formats.pop(), files


def corpus_identity(config: CorpusConfig) -> dict:
    """What identifies the input data, for the artifact hash: file sizes and times, or the Python version."""
    if config.source == "hub":
        return {"hub": config.name, "subset": config.subset, "split": config.split, "revision": config.revision}
    if config.source in ("stdlib", "prose"):
        files = stdlib_files()
        identity = {"python": sys.version, "implementation": platform.python_implementation()}
        if config.source == "prose":
            identity["source"] = "prose"
    else:
        files = local_files(config)[1]
        identity = {"path": str(Path(config.path or "").resolve())}
    listing = hashlib.sha256()
    for path in files:
        stat = path.stat()
        listing.update(f"{path.name}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return {**identity, "files": len(files), "bytes": sum(p.stat().st_size for p in files), "listing": listing.hexdigest()}


def _read_sources(paths: list[str]):
    for path in paths:
        yield {"text": Path(path).read_bytes().decode("utf-8", errors="replace")}


def load_corpus(config: CorpusConfig, cache_dir: Path) -> datasets.Dataset:
    """Load the documents as a `datasets.Dataset` with one `text` column, in source order.

    Local and built-in corpora are prepared under `cache_dir`; Hub corpora use the HF cache.
    """
    import datasets

    if config.source == "stdlib":
        paths = [str(p) for p in stdlib_files()[: config.max_documents]]
        features = datasets.Features({"text": datasets.Value("string")})
        dataset = datasets.Dataset.from_generator(
            _read_sources, gen_kwargs={"paths": paths}, features=features, cache_dir=str(cache_dir)
        )
        return _text_column(dataset, "text", config)
    if config.source == "prose":
        from stages.prose import read_prose

        features = datasets.Features({"text": datasets.Value("string")})
        dataset = datasets.Dataset.from_generator(
            read_prose, gen_kwargs={"limit": config.max_documents}, features=features, cache_dir=str(cache_dir)
        )
        return _text_column(dataset, "text", config)
    if config.source == "local":
        fmt, files = local_files(config)
        options = {"sample_by": config.text_unit} if fmt == "text" else {}
        try:
            dataset = datasets.load_dataset(
                fmt, data_files=[str(p) for p in files], split="train", cache_dir=str(cache_dir), **options
            )
        except (ValueError, datasets.exceptions.DatasetGenerationError) as err:
            raise InputError("corpus.path", f"cannot read {config.path!r} as {fmt}: {_root_cause(err)}") from err
        return _text_column(dataset, "text" if fmt == "text" else config.text_field, config)
    dataset = datasets.load_dataset(config.name, config.subset, split=config.split, revision=config.revision)
    return _text_column(dataset, config.text_field, config)


def read_texts(dataset: datasets.Dataset, indices: Sequence[int] | None = None, block: int = 256) -> Iterator[str]:
    """The texts of the documents at `indices` (default: every one, in source order; a missing text as ''),
    read `block` documents at a time; the corpus pages a block touched are released after it, so the
    pass's memory does not grow with the corpus."""
    files = corpus_files(dataset)
    count = len(dataset) if indices is None else len(indices)
    for start in range(0, count, block):
        rows = slice(start, start + block) if indices is None else [int(i) for i in indices[start : start + block]]
        try:
            yield from (text or "" for text in dataset[rows]["text"])
        finally:  # also when the reader stops early
            release_mapped_pages(files)


def _root_cause(err: BaseException) -> str:
    while err.__cause__ is not None:
        err = err.__cause__
    return str(err).splitlines()[0] if str(err) else type(err).__name__


def _text_column(dataset: datasets.Dataset, field: str, config: CorpusConfig) -> datasets.Dataset:
    if field not in dataset.column_names:
        raise InputError("corpus.text_field", f"{config.text_field!r} is not a column of the corpus; its columns are {dataset.column_names}"
        )
    dtype = getattr(dataset.features[field], "dtype", None)
    if dtype not in ("string", "large_string"):
        raise InputError("corpus.text_field", f"column {field!r} holds {dataset.features[field]}, not text")
    dataset = dataset.select_columns([field])
    if field != "text":
        dataset = dataset.rename_column(field, "text")
    if config.max_documents is not None and len(dataset) > config.max_documents:
        dataset = dataset.select(range(config.max_documents))
    if len(dataset) == 0:
        raise InputError("corpus", f"{_describe(config)} holds no documents")
    if config.piece_characters is not None:
        size = config.piece_characters
        dataset = dataset.map(lambda batch: {"text": [p for t in batch["text"] for p in pieces(t or "", size)]}, batched=True)
    return dataset


def pieces(text: str, characters: int) -> list[str]:
    """`text` cut at line ends into pieces of at least `characters` characters (the last may be shorter; none empty)."""
    cut, current, length = [], [], 0
    for line in text.splitlines(keepends=True):
        current.append(line)
        length += len(line)
        if length >= characters:
            cut.append("".join(current))
            current, length = [], 0
    if current:
        cut.append("".join(current))
    return cut


def _describe(config: CorpusConfig) -> str:
    return {"stdlib": "the Python standard library", "prose": "the built-in prose", "local": repr(config.path), "hub": repr(config.name)}[config.source]
