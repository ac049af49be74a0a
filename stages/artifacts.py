"""Content-addressed artifact directories: the one hash that names them, the one mark that finishes them.

An artifact lives at `<store>/<stage>/<name>-<hash>`. `step_hash` is the only function that
computes such a hash: the pipeline's steps (`pipeline.step.Step.hash`) and the stages that name
their own output (`stages.train.run_digest`, `stages.tokenize`) all hash their payload with it.
An artifact is finished when its `SUCCESS` file exists, and `mark_success` is the only writer of
that file, whoever finishes the artifact: `atomic_directory`, the train launcher or the store.

`SUCCESS` records what was written: JSON `{"format": 1, "files": {path: fingerprint}}` for every
regular file under the directory (paths relative to it, `/`-separated; `SUCCESS` itself and
symbolic links left out). A fingerprint is the file's size in bytes (`bytes`) and, for a file of
at most `WHOLE_FILE_LIMIT` (64 MiB), the SHA-256 of all of it (`sha256`); a larger file (a token
store's `tokens.bin`, a big checkpoint) gets the SHA-256 of its first MiB followed by its last MiB
(`edges_sha256`) instead. Reading a finished artifact checks it against that record (`damage`), so
the check must stay cheap: at most 64 MiB read per small file and 2 MiB per large one. It finds a
file deleted, truncated or extended (any file), and changed bytes anywhere in a small file or in
the first or last MiB of a large one; a change inside a large file that keeps its size is not seen.
Files added after `SUCCESS` are not checked. An empty `SUCCESS` (written before these records)
records nothing and counts as whole.

`is_complete` is true for a finished and whole artifact only. The store reads a finished artifact
that `damage` finds wrong as DAMAGED and runs its step again (`set_aside` first, so that it reads as
unfinished): an atomic artifact is rebuilt, a train run resumes from its last checkpoint.

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
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from scaling.atomic import write_text_atomic

SUCCESS = "SUCCESS"
DAMAGED = "SUCCESS.damaged"
"""Where `set_aside` moves the `SUCCESS` of a damaged artifact, inside it (what it recorded, for people)."""
HASH_LENGTH = 16
SUCCESS_FORMAT = 1
WHOLE_FILE_LIMIT = 64 << 20
"""Files up to this size (64 MiB) are hashed whole in `SUCCESS`; larger ones by their first and last `EDGE` bytes."""
EDGE = 1 << 20


def step_hash(payload: Any) -> str:
    """A short (16 hex digits), stable digest of a JSON-serialisable payload, keys sorted: an artifact's hash."""
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:HASH_LENGTH]


def artifact_dir(store: Path, stage: str, name: str, digest: str) -> Path:
    """Where the artifact of `stage` called `name` with hash `digest` lives in `store`."""
    return Path(store) / stage / f"{name}-{digest}"


def is_complete(path: Path) -> bool:
    """Whether the artifact at `path` is finished (its `SUCCESS` exists) and whole (`damage` finds nothing wrong)."""
    return damage(path) is None


def damage(directory: Path) -> str | None:
    """What is wrong with the artifact at `directory`, in a few words, or None when it is finished and whole.

    `run.json is missing`, `run.json is not as written` (its size or checksum is not what `SUCCESS`
    recorded), `SUCCESS is unreadable (...)`; `not finished (no SUCCESS)` for an unfinished one.
    """
    try:
        text = (Path(directory) / SUCCESS).read_text(encoding="utf-8")
        recorded = json.loads(text)["files"] if text.strip() else {}
        if not isinstance(recorded, Mapping):
            raise TypeError("files is not a mapping")
    except FileNotFoundError:
        return f"not finished (no {SUCCESS})"
    except (OSError, ValueError, LookupError, TypeError) as error:
        return f"{SUCCESS} is unreadable ({type(error).__name__})"
    return mismatch(Path(directory), recorded)


def mark_success(directory: Path) -> None:
    """Mark the artifact at `directory` finished: its `SUCCESS`, every file's fingerprint, written atomically and fsynced."""
    record = {"format": SUCCESS_FORMAT, "files": fingerprints(Path(directory), leave_out=SUCCESS)}
    write_text_atomic(Path(directory) / SUCCESS, json.dumps(record, indent=1, sort_keys=True) + "\n")


def set_aside(directory: Path) -> None:
    """Move a damaged artifact's `SUCCESS` to `SUCCESS.damaged`: it then reads as unfinished and is built again."""
    os.replace(Path(directory) / SUCCESS, Path(directory) / DAMAGED)


def fingerprint(path: Path, whole_limit: int | None = WHOLE_FILE_LIMIT) -> dict[str, Any]:
    """A file's size (`bytes`) and SHA-256: of all of it (`sha256`) up to `whole_limit` bytes (None: any size),
    else of its first and last `EDGE` bytes (`edges_sha256`)."""
    size = path.stat().st_size
    if whole_limit is None or size <= whole_limit:
        return {"bytes": size, "sha256": file_sha256(path)}
    return {"bytes": size, "edges_sha256": _edges_sha256(path, size)}


def fingerprints(directory: Path, *, leave_out: str, whole_limit: int | None = WHOLE_FILE_LIMIT) -> dict[str, dict]:
    """The `fingerprint` of every regular file under `directory` but its top-level `leave_out`, by relative path."""
    found = {}
    for folder, subfolders, names in os.walk(directory):
        subfolders.sort()
        for name in sorted(names):
            path = Path(folder) / name
            relative = path.relative_to(directory).as_posix()
            if relative != leave_out and not path.is_symlink():
                found[relative] = fingerprint(path, whole_limit)
    return found


def mismatch(directory: Path, recorded: Mapping[str, Any]) -> str | None:
    """The first recorded file under `directory` that is missing or whose size or checksum differs from its
    recorded fingerprint (`<path> is missing`, `<path> is not as written`, `<path> cannot be read (...)`); None
    when every one matches."""
    for name, expected in sorted(recorded.items()):
        path = directory / name
        if not path.is_file():
            return f"{name} is missing"
        try:
            if not _matches(path, expected):
                return f"{name} is not as written"
        except OSError as error:
            return f"{name} cannot be read ({error.strerror or type(error).__name__})"
    return None


def _matches(path: Path, expected: Any) -> bool:
    """Whether the file has the recorded fingerprint, computed the way it was recorded (whole or by its edges)."""
    if not isinstance(expected, Mapping) or path.stat().st_size != expected.get("bytes"):
        return False
    if "sha256" in expected:
        return file_sha256(path) == expected["sha256"]
    return _edges_sha256(path, expected["bytes"]) == expected.get("edges_sha256")


def _edges_sha256(path: Path, size: int) -> str:
    """The SHA-256 of a file's first `EDGE` bytes followed by its last `EDGE` bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        digest.update(handle.read(EDGE))
        handle.seek(max(0, size - EDGE))
        digest.update(handle.read(EDGE))
    return digest.hexdigest()


@contextmanager
def atomic_directory(final: Path) -> Iterator[Path]:
    """Yield a fresh temporary sibling of `final`; on success mark it done and rename it to `final`.

    On any exception the temporary directory is removed and `final` is left untouched. If another
    process finished `final` first, its copy is kept and ours is discarded; a `final` that is not
    finished and whole (debris of an interrupted older layout, a damaged artifact) is replaced.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-", dir=final.parent))
    try:
        yield work
        mark_success(work)
        if final.exists() and not is_complete(final):
            shutil.rmtree(final)
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
