"""Which format a checkpoint source is in, from its files, keys and shapes.

=====================  ===============================================================================
format                 recognised by
=====================  ===============================================================================
``mechgrok-run``       a folder with a mechgrok ``run.json``
``zarr``               a folder with a root ``zarr.json`` (a trajectory store; opened lazily)
``paper-epochs``       a folder with ``{epoch}.pth`` files (the released ``transformers.py``)
``paper-full-run``     a file whose dict has ``state_dicts`` (``full_run_data.pth``)
``tl-demo``            a file whose dict has ``checkpoints`` (TransformerLens' grokking demo)
``paper-model``        a file with one state dict (bare or under ``model``) in the original layout
``pizza-model``        ``model_<runid>.pt`` with ``config_<runid>.json`` beside it (Zhong et al. 2023's
                       saved models, :mod:`mechgrok.store.pizza`; recognised by the two names)
``tl-model``           a file with one state dict (bare, under ``model``, or ``.safetensors``) in
                       TransformerLens' layout
=====================  ===============================================================================

The layout of a single state dict is decided by :func:`mechgrok.store.layouts.detect_layout` (``W_O`` is
2-D in the original layout, 3-D in TransformerLens'). ``format=`` (``--format``) overrides the detection.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from mechgrok.errors import CheckpointError, ConfigError
from mechgrok.rundir import is_run_dir, read_run_info
from mechgrok.store.layouts import detect_layout, is_state_dict
from mechgrok.store.paper import EPOCH_FILE_RE

__all__ = ["FORMATS", "FOLDER_FORMATS", "FILE_FORMATS", "check_format", "detect_folder_format", "detect_object_format"]

#: Formats of folders.
FOLDER_FORMATS: tuple[str, ...] = ("mechgrok-run", "zarr", "paper-epochs")
#: Formats of single files.
FILE_FORMATS: tuple[str, ...] = ("paper-full-run", "paper-model", "tl-demo", "tl-model", "pizza-model")
#: Every format ``open_run`` reads.
FORMATS: tuple[str, ...] = FOLDER_FORMATS + FILE_FORMATS


def check_format(format: str | None, path: Path) -> None:
    """Check a ``format=`` override against the known formats and the kind of path (file or folder).

    Raises
    ------
    ConfigError
        For an unknown format, or a folder format for a file (or the reverse).
    """
    if format is None:
        return
    if format not in FORMATS:
        raise ConfigError(f"unknown format {format!r}; known: {', '.join(FORMATS)}")
    if path.is_dir() and format not in FOLDER_FORMATS:
        raise ConfigError(f"format {format!r} is a file format, but this is a folder", path=path)
    if path.is_file() and format not in FILE_FORMATS:
        raise ConfigError(f"format {format!r} is a folder format, but this is a file", path=path)


def detect_folder_format(path: Path) -> str:
    """The format of a folder.

    Raises
    ------
    CheckpointError
        If the folder is none of :data:`FOLDER_FORMATS` (for instance, empty).
    """
    if is_run_dir(path):
        return "mechgrok-run"
    if (path / "zarr.json").is_file():
        return "zarr"
    if any(EPOCH_FILE_RE.match(f.name) for f in path.iterdir()):
        return "paper-epochs"
    if not any(path.iterdir()):
        raise CheckpointError("empty folder: no checkpoints", path=path)
    if (path / "run.json").exists():
        read_run_info(path)  # says what is wrong with it (not UTF-8, not JSON, not mechgrok's)
    raise CheckpointError(
        "no checkpoints found: not a mechgrok run directory (run.json), a Zarr store (zarr.json) or a folder of "
        "{epoch}.pth files", path=path)


def detect_object_format(obj: Any, path: Path) -> str:
    """The format of an unpickled checkpoint file's content.

    Raises
    ------
    CheckpointError
        If the content holds no model weights in a known layout.
    """
    if isinstance(obj, Mapping):
        if "state_dicts" in obj:
            return "paper-full-run"
        if "checkpoints" in obj:
            return "tl-demo"
        sd = obj if is_state_dict(obj) else obj.get("model")
        if is_state_dict(sd):
            return "paper-model" if detect_layout(sd, path=path) == "original" else "tl-model"
        shown = ", ".join(sorted(map(str, obj))[:8])
        raise CheckpointError(f"no model weights found (keys: {shown}); not a known checkpoint layout", path=path)
    raise CheckpointError(f"no model weights found: the file holds a {type(obj).__name__}", path=path)
