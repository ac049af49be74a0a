"""Content-addressed artifact directories: a hash of what made them, and atomic writes.

An artifact lives at `<store>/<stage>/<name>-<hash>`. It is built in a temporary sibling
directory, a `SUCCESS` file is written last, and the directory is renamed into place, so a
reader sees either nothing or a finished artifact; a failure removes the temporary directory.
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

SUCCESS = "SUCCESS"
HASH_LENGTH = 16


def config_hash(value: Any) -> str:
    """A short, stable hex digest of a JSON-serialisable value (keys sorted)."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:HASH_LENGTH]


def artifact_dir(store: Path, stage: str, name: str, digest: str) -> Path:
    """Where the artifact of `stage` called `name` with hash `digest` lives in `store`."""
    return Path(store) / stage / f"{name}-{digest}"


def is_complete(path: Path) -> bool:
    """Whether the artifact at `path` was finished (its SUCCESS file exists)."""
    return (Path(path) / SUCCESS).is_file()


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
        (work / SUCCESS).write_text("")
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
