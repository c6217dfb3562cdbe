"""Loader for the run directories of the sequence tasks (:mod:`mechgrok.sequence_train`).

A run directory whose ``config.json`` names a ``task`` of :data:`mechgrok.sequence_config.SEQUENCE_TASKS` is read
into the canonical trajectory Dataset (:mod:`mechgrok.store.schema`): weights over ``checkpoint`` (epochs) with a
``layer`` dim for the 2-layer induction model and no MLP variables for attention-only models; ``loss_train`` and
``loss_test`` over ``epoch``; for addition, ``loss_train_per_token`` and ``loss_test_per_token`` over
(``epoch``, ``answer_position``), answer position 0 being the carry-out token. ``attrs["task"]`` records the task
and ``attrs["config_json"]`` the whole configuration. Test columns are NaN between test evaluations.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import xarray as xr

from mechgrok.errors import CheckpointError, RunDirError
from mechgrok.models.causal_transformer import param_shapes, state_dict_keys
from mechgrok.rundir import list_checkpoints, read_checkpoint, read_text
from mechgrok.sequence_config import SEQUENCE_TASKS, SequenceConfig
from mechgrok.store.schema import build_dataset

__all__ = ["is_sequence_run", "read_sequence_config", "load_sequence_run"]


def is_sequence_run(path: str | Path) -> bool:
    """Whether a run directory's ``config.json`` names a sequence task."""
    f = Path(path) / "config.json"
    try:
        return json.loads(f.read_text()).get("task") in SEQUENCE_TASKS
    except (OSError, ValueError, AttributeError):
        return False


def read_sequence_config(path: str | Path) -> SequenceConfig:
    """The :class:`SequenceConfig` of a sequence-task run directory.

    Raises
    ------
    RunDirError
        If ``config.json`` is missing or not JSON. ConfigError if it is invalid.
    """
    f = Path(path) / "config.json"
    try:
        d = json.loads(f.read_text())
    except (OSError, ValueError) as e:
        raise RunDirError(f"cannot read config.json ({e})", path=path) from None
    return SequenceConfig.from_dict(d, source=f)


def _metrics(path: Path) -> dict[str, np.ndarray]:
    f = path / "metrics.csv"
    lines = [ln for ln in read_text(f).splitlines() if ln.strip()]  # RunDirError: missing, a folder, not UTF-8
    header = lines[0].split(",") if lines else []
    if header[:3] != ["epoch", "train_loss", "test_loss"]:
        raise RunDirError("metrics.csv must start with the columns epoch,train_loss,test_loss", path=f)
    try:
        rows = [[float(c) if c else np.nan for c in ln.split(",")] for ln in lines[1:]]
        arr = np.asarray(rows, dtype=np.float64).reshape(len(rows), len(header))
    except ValueError as e:
        raise RunDirError(f"malformed metrics row ({e})", path=f) from None
    return {h: arr[:, i] for i, h in enumerate(header)}


def load_sequence_run(path: str | Path) -> xr.Dataset:
    """Read a sequence-task run directory into the canonical Dataset (module docstring).

    Raises
    ------
    RunDirError
        If the config or metrics are missing or malformed.
    CheckpointError
        If there is no checkpoint, or one misses a key or has a wrong shape.
    """
    path = Path(path)
    cfg = read_sequence_config(path)
    sizes = cfg.sizes()
    ckpts = list_checkpoints(path)
    if not ckpts:
        raise CheckpointError("no checkpoints in checkpoints/", path=path)
    shapes, keys = param_shapes(sizes), state_dict_keys(sizes)
    weights: dict[str, list[np.ndarray]] = {n: [] for n in shapes}
    for _, f in ckpts:
        sd = read_checkpoint(f)
        for name, ks in keys.items():
            missing = [k for k in ks if k not in sd]
            if missing:
                raise CheckpointError(f"missing key {missing[0]!r}", path=f)
            arr = np.stack([sd[k].float().numpy() for k in ks]) if len(ks) > 1 else sd[ks[0]].float().numpy()
            if arr.shape != shapes[name]:
                raise CheckpointError(f"{ks[0]} has shape {arr.shape}, expected {shapes[name]}", path=f)
            weights[name].append(arr)
    m = _metrics(path)
    if m["epoch"].size and (not np.isfinite(m["epoch"]).all() or np.any(np.diff(m["epoch"]) <= 0) or m["epoch"].min() < 0
                            or np.any(m["epoch"] != np.round(m["epoch"]))):
        raise RunDirError("metrics.csv epochs must be integers >= 0, strictly increasing", path=path / "metrics.csv")
    epochs = m["epoch"].astype(np.int64)
    curves = {"loss_train": (epochs, m["train_loss"])}
    tested = ~np.isnan(m["test_loss"])
    if tested.any():
        curves["loss_test"] = (epochs[tested], m["test_loss"][tested])
    ds = build_dataset(
        {n: np.stack(v) for n, v in weights.items()}, [e for e, _ in ckpts], config=cfg.to_dict(),
        n_layers=sizes.n_layers, curves=curves, source_format="mechgrok-run", source_files=[str(path.resolve())],
        attrs={"task": cfg.task, "curve_epochs": (
            "index = epoch; an epoch is one optimiser step on a fresh batch" if not cfg.finite else
            "index = epoch (one pass over the training set)") + f"; test loss every {cfg.test_every} epochs"},
    )
    if "loss_test" in ds:
        ds["loss_test"].attrs["log_every"] = cfg.test_every
    if cfg.task == "digit_addition":
        k = cfg.n_digits + 1
        pos = np.arange(k)
        ds = ds.assign_coords(answer_position=("answer_position", pos))
        missing = [f"{split}_loss_pos{i}" for split in ("train", "test") for i in pos if f"{split}_loss_pos{i}" not in m]
        if missing:
            raise RunDirError(f"metrics.csv lacks the per-position columns {', '.join(missing[:3])}", path=path / "metrics.csv")
        for split in ("train", "test"):
            arr = np.stack([m[f"{split}_loss_pos{i}"] for i in pos], axis=1)
            full = np.full((ds.sizes["epoch"], k), np.nan)
            full[np.searchsorted(ds["epoch"].values, epochs)] = arr
            ds[f"loss_{split}_per_token"] = (("epoch", "answer_position"), full, {
                "units": "nats", "description": f"{split} loss at each answer position (0 = the carry-out token, "
                "then the sum digits from the most significant), batch mean, float64"})
    return ds
