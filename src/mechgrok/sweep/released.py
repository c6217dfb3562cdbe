"""Released sweeps that hold loss curves only, ingested as sweeps: the training-fraction sweep
(``mod_addition_frac_train_sweep.pth``) and the width scan without weight decay (``no_wd_width_scan.pth``).

The file is read by the public loader of curve-only files (:func:`mechgrok.store.curves.load_loss_curves`), which
puts the swept quantity on a dim (``frac_train``, ``d_model``). Each run is cut to its own length, summarised like
a trained run without weights (:func:`mechgrok.sweep.summary.run_summary`: curves, final losses, the grokking
epoch and grokking delay) and the runs are combined over the swept field
(:func:`mechgrok.sweep.summary.combine_runs`), so the result has the layout of any sweep store and gets the same
phase diagram (grokking epoch and grokking delay against the swept field).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import xarray as xr

from mechgrok.errors import CheckpointError
from mechgrok.store.location import join, normalise, upload
from mechgrok.sweep.summary import combine_runs, run_summary

__all__ = ["SWEPT_DIMS", "released_sweep", "ingest_released_sweep"]

#: The swept dims a curve-only sweep file can have.
SWEPT_DIMS = ("frac_train", "d_model")


def released_sweep(path: str | Path, *, trusted: bool = False) -> xr.DataTree:
    """The sweep tree of a curve-only sweep file.

    Parameters
    ----------
    path : str or Path
        ``mod_addition_frac_train_sweep.pth``, ``no_wd_width_scan.pth`` or another file of their layouts.
    trusted : bool
        Allow a full unpickle (not needed by the released sweeps).

    Returns
    -------
    xarray.DataTree
        Root over the swept dim: ``loss_train``, ``loss_test`` (dim, epoch), ``grokking_epoch``,
        ``grokking_delay``, ``final_loss_train``, ``final_loss_test``; attrs ``swept_fields``, ``source_files``, the
        rules.

    Raises
    ------
    CheckpointError
        If the file holds no sweep (no ``frac_train`` or ``d_model`` dim).

    Examples
    --------
    >>> import os, tempfile, torch
    >>> f = os.path.join(tempfile.mkdtemp(), "sweep.pth")
    >>> torch.save([[0.5, 0.3], [[4.0, 0.01, 0.01], [4.0, 0.05, 0.01], [4.0, 1.0], [4.0, 0.09]]], f)
    >>> released_sweep(f)["grokking_epoch"].values.tolist()
    [1.0, 1.0]
    """
    from mechgrok.store.curves import load_loss_curves

    ds = load_loss_curves(path, trusted=trusted)
    dims = [d for d in SWEPT_DIMS if d in ds.dims]
    if not dims:
        raise CheckpointError(f"not a sweep: the curves have no {' or '.join(SWEPT_DIMS)} dim", path=path)
    dim = dims[0]
    summaries, coords = [], []
    for value in ds[dim].values:
        run = ds.sel({dim: value})
        n = int(run["run_length"]) if "run_length" in run else run.sizes["epoch"]
        run = run.isel(epoch=slice(0, n)).drop_vars(["run_length", dim], errors="ignore")
        summaries.append(run_summary(run))
        coords.append({dim: value.item() if isinstance(value, np.generic) else value})
    attrs = {k: ds.attrs[k] for k in ("source_files", "run", "curve_epochs", "pairing") if k in ds.attrs}
    return combine_runs(summaries, coords, fields=[dim], attrs={"sweep_name": Path(str(path)).stem, **attrs})


def ingest_released_sweep(path: str | Path, root: str | Path, *, trusted: bool = False, figures: bool = True) -> xr.DataTree:
    """Write a curve-only sweep file as a sweep folder: ``ROOT/summary.zarr`` and the figures ``ROOT/figures``.

    Parameters
    ----------
    path : str or Path
        The sweep file (:func:`released_sweep`).
    root : str or Path
        The sweep folder (local path or fsspec URL).
    trusted : bool
        Allow a full unpickle.
    figures : bool
        Also draw the phase diagram and the test-loss curves.

    Returns
    -------
    xarray.DataTree
        What was written.

    Raises
    ------
    CheckpointError
        If the file holds no sweep.
    StoreError
        If the folder cannot be written.
    """
    from mechgrok.figures.sweep import write_sweep_figures
    from mechgrok.store.analysis_store import write_analysis

    tree = released_sweep(path, trusted=trusted)
    root = normalise(root)
    if isinstance(root, Path):
        root.mkdir(parents=True, exist_ok=True)
    write_analysis(tree, join(root, "summary.zarr"))
    if figures:
        title = f"mechgrok sweep: {Path(str(path)).name}"
        if isinstance(root, Path):
            write_sweep_figures(tree, root / "figures", title=title)
        else:
            with tempfile.TemporaryDirectory(prefix="mechgrok-fig-") as tmp:
                write_sweep_figures(tree, Path(tmp), title=title)
                upload(Path(tmp), str(join(root, "figures")), last=("index.html",))
    return tree
