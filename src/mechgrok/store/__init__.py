"""Trajectory store: any checkpoint trajectory into one labelled xarray Dataset (see :mod:`.schema`)."""

from __future__ import annotations

from pathlib import Path

import xarray as xr

from mechgrok.store.own import load_run_dir
from mechgrok.store.schema import build_dataset

__all__ = ["open_run", "build_dataset"]


def open_run(path: str | Path) -> xr.Dataset:
    """Load a checkpoint trajectory into the canonical Dataset.

    Parameters
    ----------
    path : str or Path
        A mechgrok run directory.

    Returns
    -------
    xarray.Dataset
        The canonical trajectory (schema in :mod:`mechgrok.store.schema` and ``docs/store.md``).
    """
    return load_run_dir(path)
