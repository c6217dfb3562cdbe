"""Locks between mechgrok processes that read and write the same run directory or store (``filelock``).

Every lock is an OS file lock (``flock``) on a hidden file beside its target, ``.NAME.lock`` (or
``.NAME.KIND.lock``) in the target's parent folder, so it survives the target being replaced and is released by
the kernel when its holder dies, even by ``SIGKILL``: a killed process never leaves a stale lock behind.

==============================  ===================================================================================
lock                            held by
==============================  ===================================================================================
``.RUN.train.lock``             ``train`` for the whole run: a second ``train`` of the same run fails at once
``.RUN.lock``                   ``train`` while it writes one checkpoint (metrics rows, weights, resume state, the
                                ``--zarr`` append); ``open_run`` of a run directory trained here (its
                                ``.RUN.train.lock`` exists) while it reads it, so an ``analyze`` of a run being
                                trained sees the checkpoints written so far, each whole
``.STORE.lock``                 appends to a Zarr trajectory store, and ``open_store``'s check of its commit record
``.analysis.zarr.lock``         ``analyze`` from reading the trajectory to writing ``analysis.zarr`` and the reports:
                                a second ``analyze`` with the same output fails at once
==============================  ===================================================================================

A target whose parent folder cannot be written (a read-only copy of released runs) is read without a lock:
nothing can be writing it. The lock files stay (removing them would race with a waiting process); they are
empty, and ``.gitignore`` ignores ``.*.lock``.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from filelock import FileLock, Timeout

from mechgrok.errors import MechgrokError, StoreError

__all__ = ["lock_file", "hold"]

#: Seconds to wait for a lock that is held only briefly (one checkpoint's write, one read of a run directory).
BRIEF_WAIT = 300.0


def lock_file(target: str | Path, kind: str = "") -> Path:
    """The lock file of ``target``: ``.NAME.lock`` (``.NAME.KIND.lock``) in its parent folder.

    Examples
    --------
    >>> lock_file("runs/quick").name, lock_file("runs/quick", "train").name
    ('.quick.lock', '.quick.train.lock')
    """
    target = Path(target).absolute()
    return target.parent / f".{target.name}{'.' + kind if kind else ''}.lock"


@contextmanager
def hold(
    target: str | Path,
    *,
    kind: str = "",
    timeout: float = BRIEF_WAIT,
    busy: str = "another mechgrok process is using it",
    error: type[MechgrokError] = StoreError,
) -> Iterator[None]:
    """Hold the lock of ``target`` for the ``with`` block (re-entrant within one process).

    Parameters
    ----------
    target : str or Path
        The run directory or store.
    kind : str
        Which lock of the target (see the module docstring): ``""`` or ``"train"``.
    timeout : float
        Seconds to wait for another holder; 0 fails at once.
    busy : str
        What the error says the other holder is doing.
    error : type
        The :class:`~mechgrok.errors.MechgrokError` subclass to raise.

    Raises
    ------
    MechgrokError
        ``error``, naming ``target`` and the lock file, if the lock is still held after ``timeout`` seconds.

    Examples
    --------
    >>> import tempfile
    >>> with hold(Path(tempfile.mkdtemp()) / "run"):
    ...     pass
    """
    if isinstance(target, str) and "://" in target:  # an object-store URL: no file locks there
        yield
        return
    target = Path(target).absolute()
    f = lock_file(target, kind)
    if not os.access(f.parent, os.W_OK):  # read-only location: nobody can be writing the target
        yield
        return
    lock = FileLock(str(f), is_singleton=True, timeout=timeout)
    locked = True
    try:
        lock.acquire(timeout=timeout)
    except Timeout:
        waited = f" after waiting {timeout:g} s" if timeout > 0 else ""
        raise error(f"{busy} (lock {f.name} is held{waited}); try again when it has finished", path=target) from None
    except OSError:  # the lock file cannot be created (permissions): as in a read-only location
        locked = False
    try:
        yield
    finally:
        if locked:
            lock.release()
