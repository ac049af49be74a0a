"""The `dcsl` command line: one module per command group, all registered on one Typer app.

Every command turns `InputError` (and missing files) into one line on stderr and exit status 2.
"""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from scaling import dcsl_version
from scaling.errors import InputError

if TYPE_CHECKING:
    from stages.record import RunRecord

app = typer.Typer(
    name="dcsl",
    help="Data-constrained scaling-law studies: fit the law, allocate compute under a unique-data budget.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _show_version(value: bool) -> None:
    if value:
        typer.echo(f"dcsl {dcsl_version()}")
        raise typer.Exit()


@app.callback()
def _root(
    show_version: bool = typer.Option(False, "--version", callback=_show_version, is_eager=True, help="Print the version and exit."),
) -> None:
    """Data-constrained scaling-law studies of language models."""


def fail(field: str, problem: str) -> None:
    """Stop a command on bad input about `field`: `main` prints "field: problem" and exits with status 2."""
    raise InputError(field, problem)


def store_runs(store: Path) -> list[RunRecord]:
    """The records of a store's finished, whole runs; a warning line on stderr names each damaged run left out."""
    from stages.record import finished_records

    found = finished_records(store)
    for step_id, problem in found.damaged:
        typer.echo(f"warning: left out damaged run {step_id}: {problem}", err=True)
    return found.records


def _register_commands() -> None:
    """Import every `pipeline/cli/*_commands.py`; each adds its commands to `app` and keeps heavy imports inside them."""
    for module in pkgutil.iter_modules(__path__):
        if module.name.endswith("_commands"):
            importlib.import_module(f"{__name__}.{module.name}")


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `dcsl` console script: bad input of any kind is one line and exit status 2."""
    _register_commands()
    try:
        result = app(args=argv, standalone_mode=False)
    except InputError as err:
        typer.echo(f"error: {err}", err=True)
        return 2
    except typer.Exit as done:
        return done.exit_code
    except typer.Abort:
        typer.echo("aborted", err=True)
        return 130
    except Exception as err:
        # Usage errors (unknown option, missing argument, bad type) from click or typer's copy of it.
        if getattr(err, "exit_code", None) != 2 or not hasattr(err, "format_message"):
            raise
        ctx = getattr(err, "ctx", None)
        where = f"{ctx.command_path}: " if ctx is not None else ""
        typer.echo(f"error: {where}{err.format_message()}", err=True)
        return 2
    return result if isinstance(result, int) else 0
