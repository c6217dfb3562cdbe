"""``mechgrok``: the command line, assembled.

This module only imports the command modules (each registers its command on the shared app of :mod:`mechgrok_cli.app`,
in the order ``mechgrok --help`` lists them) and exposes :func:`main`, the console-script entry point
(``mechgrok_cli.main:main`` in pyproject.toml). No other cli module imports it.

Every library error (:class:`mechgrok.MechgrokError`) becomes one red line on stderr and exit code 2. Heavy
imports (torch, xarray) happen inside the commands so that ``mechgrok --help`` stays fast.
"""

from __future__ import annotations

import sys

from mechgrok_cli.app import app

# each import registers its command; this order is the order of `mechgrok --help` (keep it unsorted)
from mechgrok_cli import train as _train  # noqa: E402,F401,I001
from mechgrok_cli import ingest as _ingest  # noqa: E402,F401
from mechgrok_cli import analyze as _analyze  # noqa: E402,F401
from mechgrok_cli import figures as _figures  # noqa: E402,F401
from mechgrok_cli import sweep as _sweep  # noqa: E402,F401

__all__ = ["app", "main"]


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    sys.exit(main())
