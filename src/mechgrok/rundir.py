"""The mechgrok run directory: layout, atomic writes, and readers.

Layout (documented in ``docs/run-directory.md``)::

    RUN_DIR/
      run.json                      {"format": "mechgrok-run", "version": ..., "complete": bool,
                                     "environment": {torch, cpu_capability, threads, ...}, "resumes": [...]}
      config.json                   the Config (see mechgrok.config)
      split.json                    {"p", "seed", "frac_train", "train": [a*p+b, ...], "test": [...]}
      metrics.csv                   epoch,train_loss,test_loss,train_acc,test_acc  (one row per epoch, float64)
      checkpoints/epoch_000000.safetensors   weights after that many epochs, state-dict keys
      state.safetensors             resume state: weights + AdamW moments at the last checkpoint

Every file is written to a temporary name in the same folder and renamed into place, so a killed process
never leaves a half-written file under its final name.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import tempfile
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from mechgrok.config import Config
from mechgrok.errors import CheckpointError, RunDirError

__all__ = [
    "RUN_FORMAT",
    "METRIC_COLUMNS",
    "is_run_dir",
    "read_run_info",
    "checkpoint_path",
    "list_checkpoints",
    "read_config",
    "read_split",
    "read_metrics",
    "read_checkpoint",
    "write_atomic",
    "save_safetensors_atomic",
]

RUN_FORMAT = "mechgrok-run"
METRIC_COLUMNS = ("epoch", "train_loss", "test_loss", "train_acc", "test_acc")
_CKPT_RE = re.compile(r"^epoch_(\d+)\.safetensors$")


def write_atomic(path: Path, data: bytes | str) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename (atomic on POSIX)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = "w" if isinstance(data, str) else "wb"
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_safetensors_atomic(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """Save tensors as safetensors through a temporary file and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, tmp, metadata=metadata)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def is_run_dir(path: str | Path) -> bool:
    """Whether ``path`` is a folder with a mechgrok ``run.json``."""
    f = Path(path) / "run.json"
    if not f.is_file():
        return False
    try:
        return json.loads(f.read_text()).get("format") == RUN_FORMAT
    except (json.JSONDecodeError, OSError, AttributeError):
        return False


def read_run_info(run_dir: str | Path) -> dict:
    """The content of ``run.json``: ``format``, ``version``, ``complete`` and, for runs trained since the
    environment was recorded, ``environment`` (where the run started: torch version, CPU capability, threads, ...)
    and ``resumes`` (one entry per resume: ``epoch`` and the environment it continued in).

    Raises
    ------
    RunDirError
        If ``run.json`` is missing or not a mechgrok run file.
    """
    f = Path(run_dir) / "run.json"
    try:
        info = json.loads(f.read_text())
    except FileNotFoundError:
        raise RunDirError("no run.json: not a mechgrok run directory", path=run_dir) from None
    except (json.JSONDecodeError, OSError) as e:
        raise RunDirError(f"unreadable run.json ({e})", path=f) from None
    if not isinstance(info, dict) or info.get("format") != RUN_FORMAT:
        raise RunDirError(f"run.json is not a {RUN_FORMAT} file", path=f)
    return info


def checkpoint_path(run_dir: str | Path, epoch: int) -> Path:
    """Path of the checkpoint file for ``epoch``."""
    return Path(run_dir) / "checkpoints" / f"epoch_{epoch:06d}.safetensors"


def list_checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """``(epoch, path)`` of every checkpoint file, sorted by epoch."""
    d = Path(run_dir) / "checkpoints"
    if not d.is_dir():
        return []
    out = []
    for f in d.iterdir():
        m = _CKPT_RE.match(f.name)
        if m:
            out.append((int(m.group(1)), f))
    return sorted(out)


def read_config(run_dir: str | Path) -> Config:
    """The run's Config.

    Raises
    ------
    RunDirError
        If ``config.json`` is missing. ConfigError if it is invalid.
    """
    f = Path(run_dir) / "config.json"
    if not f.is_file():
        raise RunDirError("no config.json: not a mechgrok run directory", path=run_dir)
    return Config.from_json(f.read_text(), source=f)


def read_split(run_dir: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Train and test grid indices (``a * p + b``) from ``split.json``.

    Raises
    ------
    RunDirError
        If the file is missing or malformed.
    """
    f = Path(run_dir) / "split.json"
    try:
        d = json.loads(f.read_text())
        return np.asarray(d["train"], dtype=np.int64), np.asarray(d["test"], dtype=np.int64)
    except FileNotFoundError:
        raise RunDirError("no split.json", path=run_dir) from None
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise RunDirError(f"malformed split file ({e})", path=f) from None


def read_metrics(run_dir: str | Path) -> dict[str, np.ndarray]:
    """Per-epoch metrics from ``metrics.csv``: ``epoch`` (int64) and float64 losses (nats) and accuracies.

    Raises
    ------
    RunDirError
        If the file is missing or malformed.
    """
    f = Path(run_dir) / "metrics.csv"
    try:
        text = f.read_text()
    except FileNotFoundError:
        raise RunDirError("no metrics.csv", path=run_dir) from None
    rows = list(csv.reader(io.StringIO(text)))
    if not rows or tuple(rows[0]) != METRIC_COLUMNS:
        raise RunDirError(f"metrics.csv must start with the header {','.join(METRIC_COLUMNS)}", path=f)
    body = [r for r in rows[1:] if r]
    try:
        arr = np.array(body, dtype=np.float64).reshape(len(body), len(METRIC_COLUMNS))
    except ValueError as e:
        raise RunDirError(f"malformed metrics row ({e})", path=f) from None
    out = {name: arr[:, i] for i, name in enumerate(METRIC_COLUMNS)}
    out["epoch"] = out["epoch"].astype(np.int64)
    return out


def read_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of one safetensors checkpoint, keyed by state-dict key.

    Raises
    ------
    CheckpointError
        If the file is missing, truncated or not safetensors.
    """
    try:
        return load_file(str(path))
    except FileNotFoundError:
        raise CheckpointError("file not found", path=path) from None
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"cannot read safetensors checkpoint ({e})", path=path) from None
