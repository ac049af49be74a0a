"""The built-in English prose corpus (`source: prose`): text that ships with every Python, no download.

Documents, in this order: each topic of the pydoc help text (`pydoc_data.topics`, the language
reference's prose that `help()` shows), by topic name; then every docstring of at least
`MIN_DOCSTRING` characters of a module, class or function of the standard library, in the
`stdlib` source's file order (`stages.corpus.stdlib_files`), each file's docstrings in the order
`ast.walk` meets them. It is prose about code, of a clearly different nature from the `stdlib`
source's code files; those files contain the same docstrings, so the two pools share some text.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from itertools import islice

from stages.corpus import stdlib_files

MIN_DOCSTRING = 200
_DOCUMENTED = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)


def prose_texts(limit: int | None = None) -> Iterator[str]:
    """The prose documents in order, the first `limit` of them (all when None)."""
    return islice(_documents(), limit)


def _documents() -> Iterator[str]:
    from pydoc_data.topics import topics

    for name in sorted(topics):
        yield topics[name]
    for path in stdlib_files():
        try:
            tree = ast.parse(path.read_bytes())
        except (SyntaxError, ValueError):  # the test suite's deliberately broken files
            continue
        for node in ast.walk(tree):
            if isinstance(node, _DOCUMENTED) and len(text := ast.get_docstring(node) or "") >= MIN_DOCSTRING:
                yield text


def read_prose(limit: int | None = None) -> Iterator[dict]:
    """`datasets.Dataset.from_generator` source: one `{"text": ...}` row per document."""
    for text in prose_texts(limit):
        yield {"text": text}
