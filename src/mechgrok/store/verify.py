"""mechgrok's own check of a Zarr store: every chunk readable, the schema's invariants hold.

:func:`~mechgrok.store.zarr_io.open_store` and :func:`~mechgrok.store.analysis_store.open_analysis` are lazy: a
damaged chunk shows only when it is read. :func:`verify_store` and :func:`verify_analysis` read everything once
(chunk by chunk along ``checkpoint``, so in bounded memory) and turn any failure into a
:class:`~mechgrok.errors.StoreError` naming the store and the variable. The crash tests of issue 16 use them to
show that a store left by a killed ``ingest`` or ``analyze`` is whole.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import xarray as xr

from mechgrok.errors import MechgrokError, StoreError

__all__ = ["verify_store", "verify_analysis"]

#: Checkpoints read at once while checking a trajectory store.
CHUNK = 64


def _read_all(ds: xr.Dataset, path: Path, where: str = "") -> None:
    for name, var in ds.variables.items():
        try:
            if "checkpoint" in var.dims and var.sizes["checkpoint"] > CHUNK:
                for start in range(0, var.sizes["checkpoint"], CHUNK):
                    var.isel(checkpoint=slice(start, start + CHUNK)).values
            else:
                var.values
        except MechgrokError:
            raise
        except Exception as e:  # zarr and numcodecs raise many types on damaged chunks
            raise StoreError(f"{where}{name}: cannot read its chunks ({type(e).__name__}: {str(e)[:120]})",
                             path=path) from None


def verify_store(path: str | Path) -> xr.Dataset:
    """Check a trajectory store written by mechgrok: it opens, every chunk reads, weights are finite and the
    ``checkpoint`` epochs strictly increase.

    Parameters
    ----------
    path : str or Path
        The store.

    Returns
    -------
    xarray.Dataset
        The store, opened lazily (:func:`~mechgrok.store.zarr_io.open_store`).

    Raises
    ------
    StoreError
        Naming the store and the variable, if any of this fails.

    Examples
    --------
    >>> import mechgrok, tempfile
    >>> from mechgrok.store import write_store
    >>> ds = mechgrok.open_run("fixtures/quick-run").isel(checkpoint=[0, -1])
    >>> verify_store(write_store(ds, tempfile.mkdtemp() + "/q.zarr")).sizes["checkpoint"]
    2
    """
    from mechgrok.store.zarr_io import open_store

    path = Path(path)
    ds = open_store(path)
    _read_all(ds, path)
    epochs = np.asarray(ds["checkpoint"].values)
    if epochs.size > 1 and np.any(np.diff(epochs) <= 0):
        raise StoreError("checkpoint epochs are not strictly increasing", path=path)
    for name, var in ds.data_vars.items():
        if name.startswith("W_") or name.startswith("b_"):
            for start in range(0, max(1, var.sizes.get("checkpoint", 1)), CHUNK):
                block = var.isel(checkpoint=slice(start, start + CHUNK)) if "checkpoint" in var.dims else var
                if not np.isfinite(block.values).all():
                    raise StoreError(f"{name} holds NaN or Inf values", path=path)
    return ds


def verify_analysis(path: str | Path) -> xr.DataTree:
    """Check an ``analysis.zarr``: it opens with :func:`~mechgrok.store.analysis_store.open_analysis` and every
    group's variables read.

    Raises
    ------
    StoreError
        Naming the store and the group, if it does not open or a chunk does not read.
    """
    from mechgrok.store.analysis_store import open_analysis

    path = Path(path)
    tree = open_analysis(path)
    for node in tree.subtree:
        _read_all(node.to_dataset(inherit=False), path, where=f"group {node.path}: ")
    return tree
