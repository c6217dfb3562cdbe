"""Loader for mechgrok's own run directory (see :mod:`mechgrok.rundir`).

The checkpoints are safetensors files with TransformerLens keys and orientation, so nothing is transposed.
The split is stored (``split.json``), as are the per-epoch curves (``metrics.csv``).
"""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr

from mechgrok.config import Config
from mechgrok.tasks.modular_arithmetic import train_mask
from mechgrok.errors import CheckpointError, ConfigError, RunDirError
from mechgrok.models.transformer import PARAM_KEYS, param_shapes
from mechgrok.rundir import checkpoint_epoch, list_checkpoints, read_checkpoint, read_config, read_metrics, read_split
from mechgrok.store.checkpoint_stack import EAGER_LIMIT, check_header, lazy_variable
from mechgrok.store.lock import hold, lock_file
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
    if weights is None:
        named = checkpoint_epoch(f)
        sd = read_checkpoint(f, epoch=named)
    else:
        sd = {PARAM_KEYS[n]: t for n, t in weights.items() if n in PARAM_KEYS}
    out: dict[str, np.ndarray] = {}
    for name, key in PARAM_KEYS.items():
        if key not in sd:
            raise CheckpointError(f"missing key {key!r}", path=f)
        t = sd[key]
        if isinstance(t, torch.Tensor) and not t.is_floating_point():
            raise CheckpointError(f"{key} has dtype {t.dtype}, expected a float tensor", path=f)
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
    train, _ = read_split(path, p=cfg.p)
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
    # a run being trained: wait for the checkpoint being written, then read the ones written so far (a run
    # that mechgrok never trained here has no train lock file, and reading it leaves no lock file behind)
    trained_here = lock_file(path, "train").exists()
    with hold(path, error=RunDirError, busy="a mechgrok train is writing a checkpoint of this run") if trained_here \
            else nullcontext():
        meta = run_metadata(path)
        cfg = meta.pop("cfg")
        ckpts = list_checkpoints(path)
        if not ckpts:
            raise RunDirError("no checkpoints found in checkpoints/", path=path)
        shapes = param_shapes(cfg)
        if len(ckpts) * sum(4 * int(np.prod(s)) for s in shapes.values()) > EAGER_LIMIT:
            # larger than memory, perhaps: headers checked now, weights read when selected (checkpoint_stack)
            for e, f in ckpts:
                check_header(f, e, shapes, PARAM_KEYS)
            placeholder = {n: np.broadcast_to(np.zeros((1, *s), np.float32), (len(ckpts), *s)) for n, s in shapes.items()}
            ds = build_dataset(placeholder, [e for e, _ in ckpts], **meta)
            files = [f for _, f in ckpts]
            return ds.assign({n: lazy_variable(ds[n].variable, files, PARAM_KEYS[n]) for n in shapes})
        stacks: dict[str, list[np.ndarray]] = {name: [] for name in PARAM_KEYS}
        for _, f in ckpts:
            for name, arr in run_checkpoint_weights(f, cfg).items():
                stacks[name].append(arr)
    weights = {name: np.stack(v) for name, v in stacks.items()}
    return build_dataset(weights, [e for e, _ in ckpts], **meta)
