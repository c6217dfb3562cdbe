"""``analysis.zarr``: the analysis tree of :func:`mechgrok.pipeline.analyze` as a Zarr v3 store, one group per
analysis, written atomically.

The store carries consolidated metadata (inline in the root ``zarr.json``, Zarr v3), so plain xarray opens the
whole tree in one read and without a warning: ``xr.open_datatree("RUN/analysis.zarr", engine="zarr")``; one
group with ``xr.open_dataset("RUN/analysis.zarr", group="ablation", engine="zarr")``. The root holds no variable
(``xr.open_zarr`` of the root alone is empty); its attrs ``analyses`` and ``open_with`` list the groups and say
how to open them. Every variable and coordinate carries ``units`` and ``description`` (shared coordinates from
:mod:`mechgrok.descriptions`).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import xarray as xr

from mechgrok.descriptions import describe
from mechgrok.errors import StoreError
from mechgrok.store.assemble import json_safe
from mechgrok.store.location import exists, normalise, zarr_store
from mechgrok.store.zarr_io import is_store, write_aside

__all__ = ["write_analysis", "open_analysis", "PAPER"]

#: The paper that ``paper_section`` attrs ("paper 5.1") refer to.
PAPER = ("Nanda, Chan, Lieberum, Smith & Steinhardt (2023), Progress measures for grokking via mechanistic "
         "interpretability, ICLR 2023, arXiv 2301.05217")



def _zarr_ready(ds: xr.Dataset) -> xr.Dataset:
    """Object-dtype strings (Zarr v3 spec), JSON-safe attrs, no stale encodings."""
    ds = describe(ds.drop_encoding())
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
    path = normalise(path)  # a local path or an fsspec URL (mechgrok.store.location)
    if exists(path) and not overwrite:
        raise StoreError("already exists", path=path)
    clean = xr.DataTree.from_dict({node.path: _zarr_ready(node.to_dataset(inherit=False)) for node in tree.subtree})
    groups = [node.path.lstrip("/") for node in clean.subtree if node.path != "/"]
    clean.attrs = {**clean.attrs, "analyses": groups, "paper": PAPER,
                   "open_with": 'xarray.open_datatree(path, engine="zarr") (every group); '
                                'xarray.open_dataset(path, group=NAME, engine="zarr") (one)'}

    def write(tmp: Path) -> None:
        with warnings.catch_warnings():  # Zarr v3 stores consolidated metadata inline, outside the v3 spec
            warnings.filterwarnings("ignore", message="Consolidated metadata is currently not part")
            clean.to_zarr(tmp, mode="w", consolidated=True, zarr_format=3)

    return write_aside(path, write)


def open_analysis(path: str | Path) -> xr.DataTree:
    """Open an ``analysis.zarr`` written by :func:`write_analysis` (lazily).

    Raises
    ------
    StoreError
        If the path is not such a store.
    """
    path = normalise(path)
    if not is_store(path):
        raise StoreError("not a Zarr store (no zarr.json)", path=path)
    try:
        return xr.open_datatree(zarr_store(path), engine="zarr", consolidated=False, chunks=None)
    except (OSError, ValueError, KeyError) as e:
        raise StoreError(f"cannot open the analysis store ({e})", path=path) from None


