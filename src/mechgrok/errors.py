"""Errors raised by mechgrok.

Every error mechgrok raises on bad input is a :class:`MechgrokError`. The message is one line that names the
file (where there is one) and the problem; the command line prints it in red and exits with code 2.
"""

from __future__ import annotations

from pathlib import Path

__all__ = [
    "MechgrokError",
    "ConfigError",
    "RunDirError",
    "CheckpointError",
    "UnsafeCheckpointError",
    "StoreError",
    "AnalysisError",
]


class MechgrokError(Exception):
    """Base class of every error mechgrok raises on bad input.

    Parameters
    ----------
    message : str
        One-line reason.
    path : str or Path, optional
        The file or folder the problem is in; it is prefixed to the message.
    """

    def __init__(self, message: str, *, path: str | Path | None = None):
        # a URL stays a string (Path would fold "s3://" into "s3:/")
        self.path = None if path is None else path if isinstance(path, str) and "://" in path else Path(path)
        self.reason = message = _one_line(message)
        super().__init__(f"{self.path}: {message}" if self.path is not None else message)


def _one_line(message: str, limit: int = 600) -> str:
    """The message on one line (a value's multi-line repr, such as a tensor's, folded), at most ``limit`` long."""
    text = str(message)
    if "\n" in text or "\r" in text:
        text = " ".join(part.strip() for part in text.splitlines() if part.strip())
    return text if len(text) <= limit else text[: limit - 3] + "..."


class ConfigError(MechgrokError):
    """An invalid run configuration (p, training fraction, preset, operation, ...)."""


class RunDirError(MechgrokError):
    """A run directory that is missing, incomplete, or exists where it should not."""


class CheckpointError(MechgrokError):
    """A checkpoint file that cannot be read or has the wrong content (keys, shapes, values)."""


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint that needs a full unpickle, refused unless the user says the file is trusted."""


class StoreError(MechgrokError):
    """A Zarr store that cannot be written or appended to as asked."""


class AnalysisError(MechgrokError):
    """An analysis asked of data it cannot apply to (an even p, a missing variable, ...)."""
