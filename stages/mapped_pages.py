"""Releasing the pages of a memory-mapped corpus that a pass has read, so resident memory stays flat.

A `datasets` corpus is a memory-mapped Arrow file (`Dataset.cache_files`); every page a batch reads,
and the pages the kernel maps around each fault (fault-around, 64 KiB), stay resident in the process
until unmapped, so the resident size of a pass over the corpus would grow with the corpus.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import sys

MADV_DONTNEED = 4  # <sys/mman.h> on Linux


def corpus_files(dataset) -> set[str]:
    """The real paths of the Arrow files a `datasets.Dataset` is mapped from."""
    return {os.path.realpath(entry["filename"]) for entry in dataset.cache_files}


def release_mapped_pages(files: set[str]) -> None:
    """Drop this process's resident pages of its read-only mappings of `files` (MADV_DONTNEED).

    Only read-only mappings of those files are touched: their pages are clean, and a later read
    faults them back in. A no-op where libc's madvise or /proc/self/maps is missing.
    """
    madvise = _libc_madvise()
    if madvise is None or not files:
        return
    with open("/proc/self/maps") as maps:
        for line in maps:
            fields = line.split(maxsplit=5)
            if len(fields) == 6 and fields[5].strip() in files and "w" not in fields[1]:
                start, end = (int(value, 16) for value in fields[0].split("-"))
                madvise(ctypes.c_void_p(start), ctypes.c_size_t(end - start), MADV_DONTNEED)


@functools.lru_cache(maxsize=1)
def _libc_madvise():
    """libc's madvise on Linux (where /proc/self/maps lists the mappings), else None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True).madvise
    except (OSError, AttributeError):
        return None
