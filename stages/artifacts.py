"""Content-addressed artifact directories: the one hash that names them, the one mark that finishes them.

An artifact lives at `<store>/<stage>/<name>-<hash>`. `step_hash` is the only function that
computes such a hash: the pipeline's steps (`pipeline.step.Step.hash`) and the stages that name
their own output (`stages.train.run_digest`, `stages.tokenize`) all hash their payload with it.
An artifact is finished when its `SUCCESS` file exists, and `mark_success` is the only writer of
that file, whoever finishes the artifact: `atomic_directory`, the train launcher or the store.

`atomic_directory` builds an artifact in a temporary sibling directory, marks it finished last,
and renames it into place, so a reader sees either nothing or a finished artifact; a failure
removes the temporary directory.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from scaling.atomic import write_text_atomic

SUCCESS = "SUCCESS"
HASH_LENGTH = 16


def step_hash(payload: Any) -> str:
    """A short (16 hex digits), stable digest of a JSON-serialisable payload, keys sorted: an artifact's hash."""
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:HASH_LENGTH]


def artifact_dir(store: Path, stage: str, name: str, digest: str) -> Path:
    """Where the artifact of `stage` called `name` with hash `digest` lives in `store`."""
    return Path(store) / stage / f"{name}-{digest}"


def is_complete(path: Path) -> bool:
    """Whether the artifact at `path` was finished (its SUCCESS file exists)."""
    return (Path(path) / SUCCESS).is_file()


def mark_success(directory: Path) -> None:
    """Mark the artifact at `directory` finished: its empty `SUCCESS` file, written atomically and fsynced."""
    write_text_atomic(Path(directory) / SUCCESS, "")


@contextmanager
def atomic_directory(final: Path) -> Iterator[Path]:
    """Yield a fresh temporary sibling of `final`; on success mark it done and rename it to `final`.

    On any exception the temporary directory is removed and `final` is left untouched. If another
    process finished `final` first, its copy is kept and ours is discarded.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-", dir=final.parent))
    try:
        yield work
        mark_success(work)
        if final.exists() and not is_complete(final):
            shutil.rmtree(final)  # debris of an interrupted older layout; never a finished artifact
        try:
            os.rename(work, final)
        except OSError:
            if not is_complete(final):
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)


def file_sha256(path: Path, chunk_bytes: int = 1 << 22) -> str:
    """The hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk_bytes):
            digest.update(block)
    return digest.hexdigest()
