"""Loader for mechgrok's own run directory (see :mod:`mechgrok.rundir`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import xarray as xr

from mechgrok.data import train_mask
from mechgrok.errors import CheckpointError, RunDirError
from mechgrok.model import PARAM_KEYS, param_shapes
from mechgrok.rundir import list_checkpoints, read_checkpoint, read_config, read_metrics, read_split
from mechgrok.store.schema import CURVE_NAMES, build_dataset

__all__ = ["load_run_dir"]


def load_run_dir(path: str | Path) -> xr.Dataset:
    """Load a mechgrok run directory into the canonical Dataset (eagerly, in memory).

    Raises
    ------
    RunDirError
        If the folder has no checkpoints or misses its config, split or metrics.
    CheckpointError
        If a checkpoint is unreadable, misses a key, has a wrong shape or non-finite values.
    """
    path = Path(path)
    cfg = read_config(path)
    ckpts = list_checkpoints(path)
    if not ckpts:
        raise RunDirError("no checkpoints found in checkpoints/", path=path)
    shapes = param_shapes(cfg)
    stacks: dict[str, list[np.ndarray]] = {name: [] for name in PARAM_KEYS}
    for _, f in ckpts:
        sd = read_checkpoint(f)
        for name, key in PARAM_KEYS.items():
            if key not in sd:
                raise CheckpointError(f"missing key {key!r}", path=f)
            arr = sd[key].numpy()
            if arr.shape != shapes[name]:
                raise CheckpointError(f"{key} has shape {arr.shape}, expected {shapes[name]} for the run's config", path=f)
            if not np.isfinite(arr).all():
                raise CheckpointError(f"{key} holds NaN or Inf values", path=f)
            stacks[name].append(arr)
    weights = {name: np.stack(v) for name, v in stacks.items()}
    metrics = read_metrics(path)
    curves = {name: (metrics["epoch"], metrics[name]) for name in CURVE_NAMES}
    train, _ = read_split(path)
    return build_dataset(
        weights,
        [e for e, _ in ckpts],
        config=cfg.to_dict(),
        curves=curves,
        is_train=train_mask(cfg.p, train),
        source_format="mechgrok-run",
        source_files=[str(path.resolve())],
        p=cfg.p,
    )
