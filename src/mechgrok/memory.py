"""Memory available to this process, and a clear error when one checkpoint's work cannot fit.

:func:`mechgrok.engine.run` reads the trajectory a chunk of checkpoints at a time and reuses the work memory of
one checkpoint's grid pass from one checkpoint to the next, so a long trajectory analyses in bounded memory
(``docs/reliability.md``). What cannot be chunked is one checkpoint: :func:`require_memory` refuses, with an
:class:`~mechgrok.errors.AnalysisError` saying how much is needed and how much there is, instead of letting the
kernel kill the process when it runs out.
"""

from __future__ import annotations

import os
import resource
from pathlib import Path

from mechgrok.errors import AnalysisError

__all__ = ["available_bytes", "resident_bytes", "grid_pass_bytes", "require_memory"]


def _meminfo_available() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _cgroup_available() -> int | None:
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit == "max":
            return None
        return int(limit) - int(Path("/sys/fs/cgroup/memory.current").read_text().strip())
    except (OSError, ValueError):
        return None


def _statm_bytes(field: int) -> int | None:
    """Field ``field`` of ``/proc/self/statm`` (0: address space, 1: resident) in bytes; None where unreadable."""
    try:
        return int(Path("/proc/self/statm").read_text().split()[field]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def _rlimit_available() -> int | None:
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft == resource.RLIM_INFINITY:
        return None
    vm = _statm_bytes(0)
    return None if vm is None else soft - vm


def resident_bytes() -> int | None:
    """This process's resident memory now (bytes, ``/proc/self/statm``); None where the OS does not say.

    Examples
    --------
    >>> n = resident_bytes()
    >>> n is None or n > 0
    True
    """
    return _statm_bytes(1)


def available_bytes() -> int | None:
    """Bytes this process can still allocate: the least of the system's available memory (``MemAvailable``), the
    cgroup's limit less its use, and ``RLIMIT_AS`` less the address space in use. None where none is known.

    Examples
    --------
    >>> n = available_bytes()
    >>> n is None or n > 0
    True
    """
    found = [n for n in (_meminfo_available(), _cgroup_available(), _rlimit_available()) if n is not None]
    return min(found) if found else None


def grid_pass_bytes(p: int, d_model: int, d_mlp: int, d_vocab_out: int, n_heads: int = 4) -> int:
    """Work memory of one checkpoint's float64 grid pass (bytes), as :mod:`mechgrok.analyses.modular.grid` uses it.

    The p x p grid's residual stream (3 positions), attention patterns, the MLP activations and the logits, in
    float64, with one more logit-sized buffer for the ablations: 8 p^2 (3 d_model + 9 n_heads + 2 d_mlp +
    3 d_vocab_out) bytes; 174 MiB at the paper's sizes (p = 113, d_model 128, d_mlp 512, 4 heads).

    Examples
    --------
    >>> round(grid_pass_bytes(113, 128, 512, 114) / 2**20)
    174
    """
    return 8 * p * p * (3 * d_model + 9 * n_heads + 2 * d_mlp + 3 * d_vocab_out)


def require_memory(nbytes: int, *, what: str) -> None:
    """Refuse work that cannot fit in memory.

    Parameters
    ----------
    nbytes : int
        Bytes the work needs at once.
    what : str
        What needs them, for the message.

    Raises
    ------
    AnalysisError
        If fewer than ``nbytes`` are available (:func:`available_bytes`); the message says both figures.

    Examples
    --------
    >>> require_memory(1, what="a byte")
    """
    have = available_bytes()
    if have is not None and nbytes > have:
        raise AnalysisError(f"{what} needs about {nbytes / 2**30:.2f} GiB of memory at once, but only "
                            f"{max(have, 0) / 2**30:.2f} GiB are available; it cannot be split further (run it on a "
                            "machine or device with more memory, or close other programs)")
