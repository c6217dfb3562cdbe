"""A rich progress bar for the library's long functions: what ``progress=True`` shows.

:func:`mechgrok.engine.run`, and through it :func:`mechgrok.analyze`, :func:`mechgrok.ablation_losses` and
:func:`mechgrok.progress_measures`, take ``progress``: a callable ``progress(stage, done, total)`` called after
each chunk of checkpoints (and each later stage of ``analyze``), or ``True`` for this bar, one line per stage on
stderr. ``mechgrok analyze`` and ``mechgrok figures`` show the same bars.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator

__all__ = ["rich_bar"]


@contextmanager
def rich_bar(*, transient: bool = False) -> Iterator[Callable[[str, int, int], None]]:
    """A ``progress(stage, done, total)`` callback drawing one rich bar per stage, for the ``with`` block.

    Parameters
    ----------
    transient : bool
        Remove the bars when the block ends (default: keep them).

    Yields
    ------
    callable
        ``progress(stage, done, total)``: sets the bar of ``stage`` (created at its first call) to done / total.

    Examples
    --------
    >>> with rich_bar(transient=True) as progress:
    ...     for done in range(1, 4):
    ...         progress("checkpoints", done, 3)
    """
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    columns = (TextColumn("[bold]{task.description:<24}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True), transient=transient) as bar:
        tasks: dict[str, int] = {}

        def progress(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task(stage, total=total)
            bar.update(tasks[stage], completed=done, total=total)

        yield progress
