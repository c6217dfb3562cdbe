"""Append checkpoints to a Zarr trajectory store as training goes.

:class:`TrajectoryWriter` is the trainer's ``on_checkpoint`` callback::

    writer = TrajectoryWriter("run.zarr", run_dir="run")
    train(cfg, "run", on_checkpoint=writer)

The first checkpoint creates the store (written aside, then renamed: :func:`~mechgrok.store.zarr_io.write_store`)
with the run's config, split (``is_train``) and curves so far; every later one is a strict append
(:func:`~mechgrok.store.zarr_io.append_checkpoints`).

Curves
    The trainer writes every epoch's losses and accuracies to ``metrics.csv`` before it calls
    ``on_checkpoint``. At each checkpoint the writer appends the rows it has not stored yet along the ``epoch``
    dim (:func:`~mechgrok.store.zarr_io.append_curves`), so the store's curves always run up to its last
    checkpoint. A writer without ``run_dir`` takes curves from ``append(..., curves=...)`` instead.

Resume and re-runs
    A checkpoint whose epoch is already the store's last is skipped if its weights are identical (the
    trainer re-emits the checkpoint it resumes from) and refused otherwise. Checkpoints of the run directory
    that the store misses (say the process died between saving a checkpoint and appending it, or ``--zarr``
    was added on resume) are appended first, from their files; a store created mid-run starts with all of the
    run's earlier checkpoints. So re-running finishes the job, and a store
    written alongside a run equals ``open_run(run_dir)`` once training ends.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
import xarray as xr

from mechgrok.errors import StoreError
from mechgrok.rundir import list_checkpoints
from mechgrok.store.location import exists, normalise
from mechgrok.store.own import run_checkpoint_weights, run_metadata
from mechgrok.store.schema import WEIGHT_DIMS, build_dataset
from mechgrok.store.zarr_io import (
    append_checkpoints,
    append_curves,
    is_store,
    open_store,
    remove_store,
    repair_store,
    write_store,
)

__all__ = ["TrajectoryWriter"]


class TrajectoryWriter:
    """Append checkpoints to a Zarr trajectory store; usable as ``train(..., on_checkpoint=writer)``.

    Parameters
    ----------
    store : str or Path
        The Zarr store (created at the first checkpoint if absent): a local path or an fsspec URL
        (:mod:`mechgrok.store.location`).
    run_dir : str or Path, optional
        The run directory being trained: config, split and curves are read from it.
    overwrite : bool
        Replace an existing store at the first checkpoint (e.g. with ``mechgrok train --overwrite``).
    config : mapping, optional
        Without ``run_dir``: the config to store (``attrs["config_json"]``). Required then.
    p : int, optional
        Without ``run_dir``: the modulus.
    is_train : numpy.ndarray, optional
        Without ``run_dir``: (p, p) bool split membership.
    n_layers : int
        Without ``run_dir``: number of layers (block weights then have a leading layer axis).
    source_format : str
        Without ``run_dir``: ``attrs["source_format"]``.

    Raises
    ------
    StoreError
        If ``store`` exists and is not a Zarr store, or neither ``run_dir`` nor ``config`` is given.
    """

    def __init__(
        self,
        store: str | Path,
        *,
        run_dir: str | Path | None = None,
        overwrite: bool = False,
        config: Mapping[str, Any] | None = None,
        p: int | None = None,
        is_train: np.ndarray | None = None,
        n_layers: int = 1,
        source_format: str = "mechgrok-writer",
    ) -> None:
        self.store = normalise(store)
        self.run_dir = None if run_dir is None else Path(run_dir)
        self.overwrite = overwrite
        self.config = None if config is None else dict(config)
        self.p = p
        self.is_train = is_train
        self.n_layers = n_layers
        self.source_format = source_format
        self._started = False
        if self.run_dir is None and self.config is None:
            raise StoreError("TrajectoryWriter needs run_dir= or config=", path=self.store)
        empty_folder = isinstance(self.store, Path) and self.store.is_dir() and not any(self.store.iterdir())
        if exists(self.store) and not (is_store(self.store) or empty_folder):
            raise StoreError("exists and is not a Zarr store", path=self.store)

    # -- the trainer's callback ------------------------------------------------------------------------------
    def __call__(self, epoch: int, weights: Mapping[str, Any]) -> None:
        """``on_checkpoint(epoch, weights by TransformerLens name)``: append one checkpoint (and the curves)."""
        self.append(epoch, weights)

    # -- helpers -----------------------------------------------------------------------------------------------
    def _meta(self, upto: int | None) -> dict[str, Any]:
        if self.run_dir is not None:
            meta = run_metadata(self.run_dir, upto=upto)
            meta.pop("cfg")
            return meta
        return {
            "config": self.config, "curves": {}, "is_train": self.is_train, "source_format": self.source_format,
            "source_files": [], "p": self.p, "attrs": {}, "var_attrs": {}, "n_layers": self.n_layers,
        }

    def _weights(self, epoch: int, weights: Mapping[str, Any]) -> dict[str, np.ndarray]:
        if self.run_dir is not None:
            from mechgrok.rundir import checkpoint_path, read_config

            cfg = read_config(self.run_dir)
            return run_checkpoint_weights(checkpoint_path(self.run_dir, epoch), cfg, dict(weights))
        out = {}
        for name, t in weights.items():
            if name not in WEIGHT_DIMS:
                raise StoreError(f"unknown weight name {name!r}", path=self.store)
            arr = t.detach().to("cpu", torch.float32).numpy() if isinstance(t, torch.Tensor) else np.asarray(t, np.float32)
            if not np.isfinite(arr).all():
                raise StoreError(f"epoch {epoch}: {name} holds NaN or Inf values", path=self.store)
            out[name] = arr
        return out

    def _dataset(self, epoch: int, weights: dict[str, np.ndarray], meta: dict[str, Any]) -> xr.Dataset:
        return build_dataset({n: a[None] for n, a in weights.items()}, [int(epoch)], **meta)

    def _first_dataset(self, epoch: int, weights: dict[str, np.ndarray], meta: dict[str, Any]) -> xr.Dataset:
        """The new store's content: this checkpoint, preceded by the run directory's earlier ones (if any)."""
        if self.run_dir is None:
            return self._dataset(epoch, weights, meta)
        from mechgrok.rundir import read_config

        cfg = read_config(self.run_dir)
        earlier = [(e, run_checkpoint_weights(f, cfg)) for e, f in list_checkpoints(self.run_dir) if e < epoch]
        stacked = {n: np.stack([w[n] for _, w in earlier] + [a]) for n, a in weights.items()}
        return build_dataset(stacked, [e for e, _ in earlier] + [epoch], **meta)

    # -- the public append -------------------------------------------------------------------------------------
    def append(self, epoch: int, weights: Mapping[str, Any], *, curves: Mapping[str, tuple[Any, Any]] | None = None) -> None:
        """Append one checkpoint (creating the store at the first one), then the curve rows up to ``epoch``.

        Parameters
        ----------
        epoch : int
            The checkpoint's epoch; must be after the store's last (or equal to it with identical weights,
            which is skipped).
        weights : mapping of str to tensor or array
            By TransformerLens name, in TransformerLens orientation.
        curves : mapping of str to (epochs, values), optional
            Without ``run_dir``: curve rows to add (only epochs after the store's last curve epoch are added).

        Raises
        ------
        StoreError
            If the store belongs to another run (different config), the epoch is not after the store's
            last, the weights do not fit the store, or contain NaN/Inf.
        CheckpointError, RunDirError
            If the run directory's files are bad.
        """
        epoch = int(epoch)
        if not self._started:
            self._started = True
            if self.overwrite:
                remove_store(self.store)
        meta = self._meta(epoch)
        if self.run_dir is None and curves:
            meta["curves"] = {k: (np.asarray(e, np.int64), np.asarray(v, np.float64)) for k, (e, v) in curves.items()}
        arrays = self._weights(epoch, weights)
        if not is_store(self.store):
            remove_store(self.store)  # at most an empty folder
            write_store(self._first_dataset(epoch, arrays, meta), self.store)
            return
        repair_store(self.store)  # an append interrupted earlier: back to the committed part
        stored = open_store(self.store)
        mine = json.loads(json.dumps(dict(meta["config"]), sort_keys=True, default=str))
        if json.loads(stored.attrs.get("config_json", "null")) != mine:
            raise StoreError("the store holds a different run (its config differs); use a new store or overwrite", path=self.store)
        last = int(stored["checkpoint"].values[-1])
        if epoch < last:
            raise StoreError(f"checkpoint epoch {epoch} is before the store's last checkpoint {last}", path=self.store)
        if epoch == last:
            same = all(np.array_equal(stored[n].isel(checkpoint=-1).values, a) for n, a in arrays.items())
            if not same:
                raise StoreError(f"the store already holds epoch {epoch} with different weights", path=self.store)
        else:
            if self.run_dir is not None:  # checkpoints the store missed (interrupted run, --zarr added late)
                from mechgrok.rundir import read_config

                cfg = read_config(self.run_dir)
                for e, f in list_checkpoints(self.run_dir):
                    if last < e < epoch:
                        self._append_checkpoint(e, run_checkpoint_weights(f, cfg), meta)
            self._append_checkpoint(epoch, arrays, meta)
        self._append_curves(meta, stored)

    def _append_checkpoint(self, epoch: int, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        ds = self._dataset(epoch, arrays, {**meta, "curves": {}, "is_train": None})
        append_checkpoints(self.store, ds)

    def _append_curves(self, meta: dict[str, Any], stored: xr.Dataset) -> None:
        """Append the curve rows after the store's last curve epoch (``stored``: the store as opened before
        this checkpoint's append, whose ``epoch`` dim is unchanged by it)."""
        curves = meta.get("curves") or {}
        if not curves:
            return
        if "epoch" not in stored.dims:
            raise StoreError("the store has no curves (no 'epoch' dim) to append to", path=self.store)
        last = int(stored["epoch"].values[-1]) if stored.sizes["epoch"] else -1
        names = [n for n, v in stored.data_vars.items() if "epoch" in v.dims]
        missing = [n for n in names if n not in curves]
        if missing:
            raise StoreError(f"curve rows lack {', '.join(missing)}", path=self.store)
        rows = {n: (np.asarray(curves[n][0], np.int64), np.asarray(curves[n][1], np.float64)) for n in names}
        epochs = np.unique(np.concatenate([e for e, _ in rows.values()]))
        epochs = epochs[epochs > last]
        if epochs.size == 0:
            return
        data = {}
        for n, (e, v) in rows.items():
            full = np.full(epochs.shape, np.nan)
            keep = e > last
            full[np.searchsorted(epochs, e[keep])] = v[keep]
            data[n] = ("epoch", full)
        append_curves(self.store, xr.Dataset(data, coords={"epoch": epochs}))
