"""The shared core of the command line: the typer app, the two consoles and the error handling.

Every command module (``mechgrok_cli.train``, ``mechgrok_cli.ingest``, ``mechgrok_cli.analyze``, ``mechgrok_cli.figures``) imports its ``app`` from
here and registers itself on it; ``mechgrok_cli.main`` imports the command modules and exposes :func:`mechgrok_cli.main.main`.
This module imports no command module, so there is no import cycle, and a command never calls another command:
commands call the library.

Every library error (:class:`mechgrok.MechgrokError`) becomes one red line on stderr and exit code 2 (through
:func:`run_guarded`). Heavy imports (torch, xarray) happen inside the commands so that ``mechgrok --help`` stays
fast.
"""

from __future__ import annotations

from typing import Callable, NoReturn, TypeVar

import typer
from rich.console import Console

__all__ = ["app", "out", "err", "fail", "run_guarded"]

T = TypeVar("T")

app = typer.Typer(
    name="mechgrok",
    help="Mechanistic interpretability of grokking: train, ingest and analyse checkpoint trajectories.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    add_completion=False,
)
err = Console(stderr=True)
out = Console()


def _version(value: bool) -> None:
    if value:
        from mechgrok import __version__

        out.print(f"mechgrok {__version__}", highlight=False)
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
) -> None:
    """mechgrok: see each command's --help."""


def fail(message: str) -> NoReturn:
    """Print one red error line and exit 2."""
    err.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code=2)


def run_guarded(fn: Callable[..., T], *args, **kwargs) -> T:
    """Call ``fn``; a MechgrokError becomes a red line and exit code 2."""
    from mechgrok.errors import MechgrokError

    try:
        return fn(*args, **kwargs)
    except MechgrokError as e:
        fail(str(e))
