"""Write files so that readers see the old content or the new one, never half of it.

Every artifact file of dcsl is written through `write_atomic`: the content goes to a temporary
sibling, is flushed and fsynced, and the temporary file is renamed over the final name.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def write_atomic(path: str | Path, write: Callable[[BinaryIO], object]) -> Path:
    """Call `write(handle)` on a temporary sibling of `path` opened for binary writing, fsync it, rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write `text` (UTF-8) to `path` atomically."""
    return write_atomic(path, lambda handle: handle.write(text.encode("utf-8")))


def copy_file_atomic(source: str | Path, path: str | Path) -> Path:
    """Copy the file `source` to `path` atomically."""
    with open(source, "rb") as original:
        return write_atomic(path, lambda handle: shutil.copyfileobj(original, handle))
