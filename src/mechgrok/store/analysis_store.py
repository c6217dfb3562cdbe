"""``analysis.zarr``: the analysis tree of :func:`mechgrok.pipeline.analyze` as a Zarr v3 store, one group per
analysis, written atomically."""

from __future__ import annotations

from pathlib import Path

import xarray as xr

from mechgrok.errors import StoreError
from mechgrok.store.assemble import json_safe
from mechgrok.store.zarr_io import write_aside

__all__ = ["write_analysis", "open_analysis"]



def _zarr_ready(ds: xr.Dataset) -> xr.Dataset:
    """Object-dtype strings (Zarr v3 spec), JSON-safe attrs, no stale encodings."""
    ds = ds.drop_encoding()
    for name, var in list(ds.variables.items()):
        if var.dtype.kind == "U" or var.dtype.kind == "T":
            ds[name] = var.astype(object)
    ds.attrs = json_safe(ds.attrs)
    for name in ds.variables:
        ds[name].attrs = json_safe(ds[name].attrs)
    return ds


def write_analysis(tree: xr.DataTree, path: str | Path, *, overwrite: bool = True) -> Path:
    """Write the analysis tree to a Zarr v3 store, one group per analysis.

    The store is written beside its final name and renamed into place, so an interrupted write leaves the
    previous store (or none), never a half-written one.

    Parameters
    ----------
    tree : xarray.DataTree
        Output of :func:`analyze`.
    path : str or Path
        Target, e.g. ``RUN_DIR/analysis.zarr``.
    overwrite : bool
        Replace an existing store (default).

    Returns
    -------
    Path

    Raises
    ------
    StoreError
        If the target exists and ``overwrite`` is false, or the write fails.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise StoreError("already exists", path=path)
    clean = xr.DataTree.from_dict({node.path: _zarr_ready(node.to_dataset(inherit=False)) for node in tree.subtree})
    return write_aside(path, lambda tmp: clean.to_zarr(tmp, mode="w", consolidated=False, zarr_format=3))


def open_analysis(path: str | Path) -> xr.DataTree:
    """Open an ``analysis.zarr`` written by :func:`write_analysis` (lazily).

    Raises
    ------
    StoreError
        If the path is not such a store.
    """
    path = Path(path)
    if not (path / "zarr.json").is_file():
        raise StoreError("not a Zarr store (no zarr.json)", path=path)
    try:
        return xr.open_datatree(path, engine="zarr", consolidated=False, chunks=None)
    except (OSError, ValueError, KeyError) as e:
        raise StoreError(f"cannot open the analysis store ({e})", path=path) from None


