"""Loader for mechgrok's own run directory (see :mod:`mechgrok.rundir`).

The checkpoints are safetensors files with TransformerLens keys and orientation, so nothing is transposed.
The split is stored (``split.json``), as are the per-epoch curves (``metrics.csv``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr

from mechgrok.config import Config
from mechgrok.tasks.modular_arithmetic import train_mask
from mechgrok.errors import CheckpointError, ConfigError, RunDirError
from mechgrok.models.transformer import PARAM_KEYS, param_shapes
from mechgrok.rundir import list_checkpoints, read_checkpoint, read_config, read_metrics, read_split
from mechgrok.store.schema import CURVE_NAMES, METRIC_OF_CURVE, build_dataset

__all__ = ["RUN_SOURCE_FORMAT", "load_run_dir", "run_metadata", "run_checkpoint_weights"]

#: ``attrs["source_format"]`` of trajectories read from (or written alongside) a run directory.
RUN_SOURCE_FORMAT = "mechgrok-run"


def run_checkpoint_weights(f: Path, cfg: Config, weights: dict[str, Any] | None = None) -> dict[str, np.ndarray]:
    """Validated float32 weights of one checkpoint, by TransformerLens name.

    Parameters
    ----------
    f : Path
        The checkpoint file (for reading, and for error messages).
    cfg : Config
        The run's config (expected shapes).
    weights : dict, optional
        Tensors by TransformerLens name to validate instead of reading ``f`` (the trainer's callback).

    Raises
    ------
    CheckpointError
        If the file is unreadable, misses a key, has a wrong shape or non-finite values.
    """
    shapes = param_shapes(cfg)
    sd = read_checkpoint(f) if weights is None else {PARAM_KEYS[n]: t for n, t in weights.items() if n in PARAM_KEYS}
    out: dict[str, np.ndarray] = {}
    for name, key in PARAM_KEYS.items():
        if key not in sd:
            raise CheckpointError(f"missing key {key!r}", path=f)
        t = sd[key]
        arr = (t.detach().to("cpu", torch.float32).numpy() if isinstance(t, torch.Tensor) else np.asarray(t, np.float32))
        if arr.shape != shapes[name]:
            raise CheckpointError(f"{key} has shape {arr.shape}, expected {shapes[name]} for the run's config", path=f)
        if not np.isfinite(arr).all():
            raise CheckpointError(f"{key} holds NaN or Inf values", path=f)
        out[name] = arr
    return out


def run_metadata(path: str | Path, *, upto: int | None = None) -> dict[str, Any]:
    """Everything of a run directory except the weights, as keyword arguments for
    :func:`~mechgrok.store.schema.build_dataset`.

    Parameters
    ----------
    path : str or Path
        The run directory.
    upto : int, optional
        Keep only the curve rows of epochs <= ``upto`` (the trainer's writer, mid-run).

    Returns
    -------
    dict
        ``config``, ``curves``, ``is_train``, ``source_format``, ``source_files``, ``p``, ``attrs``,
        ``var_attrs``, plus ``cfg`` (the :class:`~mechgrok.config.Config`), which is not a build_dataset argument.

    Raises
    ------
    RunDirError, ConfigError
        If the config, split or metrics are missing or malformed.
    """
    path = Path(path)
    cfg = read_config(path)
    metrics = read_metrics(path)
    keep = slice(None) if upto is None else metrics["epoch"] <= upto
    # metrics.csv columns train_loss, test_loss, train_acc, test_acc are the curves loss_train, loss_test, ...
    curves = {name: (metrics["epoch"][keep], metrics[METRIC_OF_CURVE[name]][keep]) for name in CURVE_NAMES}
    if curves["loss_train"][0].size == 0:
        curves = {}
    train, _ = read_split(path)
    return {
        "cfg": cfg,
        "config": cfg.to_dict(),
        "curves": curves,
        "is_train": train_mask(cfg.p, train),
        "source_format": RUN_SOURCE_FORMAT,
        "source_files": [str(path.resolve())],
        "p": cfg.p,
        "attrs": {"source_layout": "transformerlens", "split": "stored", "split_rule": "stored: split.json",
                  "curve_epochs": "metrics.csv: one row per epoch"},
        "var_attrs": {name: {"source_key": key} for name, key in PARAM_KEYS.items()},
    }


def load_run_dir(path: str | Path, *, seed: int | None = None, frac_train: float | None = None) -> xr.Dataset:
    """Load a mechgrok run directory into the canonical Dataset (eagerly, in memory).

    Parameters
    ----------
    path : str or Path
        The run directory.
    seed, frac_train : None
        Must be None: a run directory stores its split.

    Raises
    ------
    RunDirError
        If the folder has no checkpoints or misses its config, split or metrics.
    CheckpointError
        If a checkpoint is unreadable, misses a key, has a wrong shape or non-finite values.
    ConfigError
        If ``seed`` or ``frac_train`` is given.
    """
    path = Path(path)
    if seed is not None or frac_train is not None:
        raise ConfigError("seed/frac_train cannot be set: a mechgrok run directory stores its split (split.json)", path=path)
    meta = run_metadata(path)
    cfg = meta.pop("cfg")
    ckpts = list_checkpoints(path)
    if not ckpts:
        raise RunDirError("no checkpoints found in checkpoints/", path=path)
    stacks: dict[str, list[np.ndarray]] = {name: [] for name in PARAM_KEYS}
    for _, f in ckpts:
        for name, arr in run_checkpoint_weights(f, cfg).items():
            stacks[name].append(arr)
    weights = {name: np.stack(v) for name, v in stacks.items()}
    return build_dataset(weights, [e for e, _ in ckpts], **meta)
