"""The one error type for bad user input (config values, table rows, flags, files)."""

from __future__ import annotations


class InputError(ValueError):
    """Bad input from the user: the `field` it concerns and the `problem` (the value and what is allowed).

    Its text is one line, `"<field>: <problem>"`. Code that knows more about where the field sits
    (a config section, a list position) re-homes it with `within(prefix)`; nothing parses the text.
    """

    def __init__(self, field: str, problem: str):
        self.field = field
        self.problem = problem
        super().__init__(f"{field}: {problem}" if field else problem)

    def within(self, prefix: str) -> InputError:
        """The same problem with its field placed under `prefix` (`models.0.train` + `lr`)."""
        field = ".".join(part for part in (prefix, self.field) if part)
        return InputError(field, self.problem)

    def __reduce__(self):  # pickled across processes (Ray tasks, multiprocessing) with both parts
        return InputError, (self.field, self.problem)
