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
from safetensors import safe_open
from safetensors.torch import save_file

from mechgrok.config import Config
from mechgrok.errors import CheckpointError, RunDirError

__all__ = [
    "RUN_FORMAT",
    "METRIC_COLUMNS",
    "PUSH_LAST",
    "is_run_dir",
    "read_run_info",
    "checkpoint_path",
    "checkpoint_epoch",
    "list_checkpoints",
    "read_config",
    "read_split",
    "read_metrics",
    "read_checkpoint",
    "read_text",
    "write_atomic",
    "save_safetensors_atomic",
    "new_file_mode",
]

RUN_FORMAT = "mechgrok-run"
METRIC_COLUMNS = ("epoch", "train_loss", "test_loss", "train_acc", "test_acc")
#: The files of a run directory copied last to a URL (:class:`mechgrok.store.location.Mirror`), in this order: the
#: resume state after the checkpoint and the metrics rows it needs, the commit record ``run.json`` after all.
PUSH_LAST = ("state.safetensors", "run.json")
_CKPT_RE = re.compile(r"^epoch_(\d+)\.safetensors$")


def new_file_mode() -> int:
    """The permission bits a new file gets from ``open()`` under the process umask (0o644 under umask 022).

    :func:`tempfile.mkstemp` creates files 0600 whatever the umask; the atomic writers set this mode on their
    temporary file, so what they rename into place is as readable as any other file the user creates.

    Examples
    --------
    >>> import os
    >>> old = os.umask(0o022); mode = new_file_mode(); _ = os.umask(old)
    >>> oct(mode)
    '0o644'
    """
    try:  # Linux: read the umask without changing it (no window in which another thread sees umask 0)
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def write_atomic(path: Path, data: bytes | str) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename (atomic on POSIX)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = "w" if isinstance(data, str) else "wb"
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, new_file_mode())  # mkstemp makes 0600; the file gets what open() would give it
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
        os.chmod(tmp, new_file_mode())  # save_file keeps mkstemp's 0600
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
        return json.loads(f.read_bytes().decode("utf-8")).get("format") == RUN_FORMAT
    except (ValueError, OSError, AttributeError, RecursionError):  # JSON and UTF-8 errors are ValueErrors
        return False


def read_text(f: str | Path, *, what: str | None = None) -> str:
    """The UTF-8 text of one file of a run directory.

    Parameters
    ----------
    f : str or Path
        The file.
    what : str, optional
        How to name the file in errors (default: its name).

    Raises
    ------
    RunDirError
        If the file is missing, a folder, unreadable or not UTF-8 text; the message names the file.
    """
    f = Path(f)
    what = what or f.name
    try:
        data = f.read_bytes()
    except FileNotFoundError:
        raise RunDirError(f"no {what}", path=f.parent) from None
    except IsADirectoryError:
        raise RunDirError(f"{what} is a folder, not a file", path=f) from None
    except OSError as e:
        raise RunDirError(f"cannot read {what} ({e.strerror or e})", path=f) from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise RunDirError(f"{what} is not UTF-8 text (byte {e.start}: {data[e.start:e.start + 1]!r})", path=f) from None


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
    if not f.exists():
        raise RunDirError("no run.json: not a mechgrok run directory", path=run_dir)
    try:
        info = json.loads(read_text(f))
    except (json.JSONDecodeError, RecursionError) as e:
        raise RunDirError(f"unreadable run.json ({e})", path=f) from None
    if not isinstance(info, dict) or info.get("format") != RUN_FORMAT:
        raise RunDirError(f"run.json is not a {RUN_FORMAT} file", path=f)
    return info


def checkpoint_path(run_dir: str | Path, epoch: int) -> Path:
    """Path of the checkpoint file for ``epoch``."""
    return Path(run_dir) / "checkpoints" / f"epoch_{epoch:06d}.safetensors"


def checkpoint_epoch(path: str | Path) -> int | None:
    """The epoch in a checkpoint file's name (``epoch_000100.safetensors`` -> 100), or None for other names."""
    m = _CKPT_RE.match(Path(path).name)
    return int(m.group(1)) if m else None


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
    if not f.exists():
        raise RunDirError("no config.json: not a mechgrok run directory", path=run_dir)
    return Config.from_json(read_text(f), source=f)


def read_split(run_dir: str | Path, *, p: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Train and test grid indices (``a * p + b``) from ``split.json``.

    Parameters
    ----------
    run_dir : str or Path
        The run directory.
    p : int, optional
        The run's modulus (from ``config.json``); the file's own ``p`` must equal it.

    Returns
    -------
    train, test : numpy.ndarray
        1-D int64 grid indices, each in ``0 .. p**2 - 1``, without repeats, disjoint.

    Raises
    ------
    RunDirError
        If the file is missing, not UTF-8 JSON, or its lists are not flat lists of distinct integers in range
        (nested lists, negative or too large indices, an index in both lists), or its ``p`` differs from ``p``.
    """
    f = Path(run_dir) / "split.json"
    if not f.exists():
        raise RunDirError("no split.json", path=run_dir)
    try:
        d = json.loads(read_text(f))
    except (json.JSONDecodeError, RecursionError) as e:
        raise RunDirError(f"malformed split file ({e})", path=f) from None
    if not isinstance(d, dict) or not isinstance(d.get("train"), list) or not isinstance(d.get("test"), list):
        raise RunDirError("malformed split file: expected an object with lists 'train' and 'test'", path=f)
    stored_p = d.get("p", p)
    if not isinstance(stored_p, int) or isinstance(stored_p, bool) or (p is not None and stored_p != p):
        raise RunDirError(f"split.json is for p={stored_p!r}, but the run's config says p={p}", path=f)
    n = None if stored_p is None else stored_p * stored_p
    out = []
    for name in ("train", "test"):
        values = d[name]
        bad = next((v for v in values if not isinstance(v, int) or isinstance(v, bool)), None)
        if bad is not None:
            raise RunDirError(f"split.json {name} holds {json.dumps(bad)[:40]}, not a flat list of integer grid "
                              "indices a*p+b", path=f)
        arr = np.asarray(values, dtype=np.int64)
        if arr.size and (arr.min() < 0 or (n is not None and arr.max() >= n)):
            wrong = int(arr.min()) if arr.min() < 0 else int(arr.max())
            raise RunDirError(f"split.json {name} holds index {wrong}, outside 0..{'p*p-1' if n is None else n - 1}",
                              path=f)
        if np.unique(arr).size != arr.size:
            raise RunDirError(f"split.json {name} holds an index twice", path=f)
        out.append(arr)
    if np.intersect1d(out[0], out[1]).size:
        raise RunDirError("split.json train and test share indices", path=f)
    return out[0], out[1]


def read_metrics(run_dir: str | Path) -> dict[str, np.ndarray]:
    """Per-epoch metrics from ``metrics.csv``: ``epoch`` (int64) and float64 losses (nats) and accuracies.

    Raises
    ------
    RunDirError
        If the file is missing or malformed.
    """
    f = Path(run_dir) / "metrics.csv"
    text = read_text(f)
    try:
        rows = list(csv.reader(io.StringIO(text)))
    except csv.Error as e:
        raise RunDirError(f"malformed metrics.csv ({e})", path=f) from None
    if not rows or tuple(rows[0]) != METRIC_COLUMNS:
        raise RunDirError(f"metrics.csv must start with the header {','.join(METRIC_COLUMNS)}", path=f)
    body = [r for r in rows[1:] if r]
    try:
        arr = np.array(body, dtype=np.float64).reshape(len(body), len(METRIC_COLUMNS))
    except ValueError as e:
        raise RunDirError(f"malformed metrics row ({str(e)[:120]})", path=f) from None
    out = {name: arr[:, i] for i, name in enumerate(METRIC_COLUMNS)}
    epochs = out["epoch"]
    if epochs.size and (not np.all(np.isfinite(epochs)) or np.any(epochs != np.round(epochs)) or epochs.min() < 0
                        or np.any(np.diff(epochs) <= 0)):
        raise RunDirError("metrics.csv epochs must be integers >= 0, strictly increasing", path=f)
    out["epoch"] = epochs.astype(np.int64)
    return out


def read_checkpoint(path: str | Path, *, epoch: int | None = None) -> dict[str, torch.Tensor]:
    """Tensors of one safetensors checkpoint, keyed by state-dict key.

    Parameters
    ----------
    path : str or Path
        The file.
    epoch : int, optional
        The epoch the file should hold (from its name); checked against the epoch the trainer stores in the
        file's metadata (``{"epoch": "..."}``), where there is one.

    Raises
    ------
    CheckpointError
        If the file is missing, truncated or not safetensors, or its stored epoch differs from ``epoch``.
    """
    try:
        with safe_open(str(path), framework="pt") as f:
            stored = (f.metadata() or {}).get("epoch")
            if epoch is not None and stored is not None and stored != str(epoch):
                raise CheckpointError(f"the file's metadata says epoch {stored[:20]} but its name says {epoch} "
                                      "(a checkpoint of another run or epoch, renamed?)", path=path)
            return {k: f.get_tensor(k) for k in f.keys()}
    except FileNotFoundError:
        raise CheckpointError("file not found", path=path) from None
    except IsADirectoryError:
        raise CheckpointError("is a folder, not a checkpoint file", path=path) from None
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"cannot read safetensors checkpoint ({str(e)[:160]})", path=path) from None
