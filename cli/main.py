"""``mechgrok``: the command line.

Every library error (:class:`mechgrok.MechgrokError`) becomes one red line on stderr and exit code 2.
Heavy imports (torch, xarray) happen inside the commands so that ``mechgrok --help`` stays fast.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

app = typer.Typer(
    name="mechgrok",
    help="Mechanistic interpretability of grokking: train, ingest and analyse checkpoint trajectories.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    add_completion=False,
)
err = Console(stderr=True)
out = Console()


@app.callback()
def _root() -> None:
    """mechgrok: see each command's --help."""


def fail(message: str) -> None:
    """Print one red error line and exit 2."""
    err.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code=2)


def run_guarded(fn, *args, **kwargs):
    """Call ``fn``; a MechgrokError becomes a red line and exit code 2."""
    from mechgrok.errors import MechgrokError

    try:
        return fn(*args, **kwargs)
    except MechgrokError as e:
        fail(str(e))


from cli import train as _train  # noqa: E402,F401  (registers the command)
from cli import ingest as _ingest  # noqa: E402,F401  (registers the command)
from cli import analyze as _analyze  # noqa: E402,F401  (registers the command)
from cli import figures as _figures  # noqa: E402,F401  (registers the command)


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    sys.exit(main())
