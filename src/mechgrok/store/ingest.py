"""``ingest``: any checkpoint trajectory into a Zarr v3 store (``mechgrok ingest SRC --out STORE.zarr``)."""

from __future__ import annotations

from pathlib import Path

from mechgrok.errors import StoreError
from mechgrok.store.location import normalise
from mechgrok.store.zarr_io import is_store, write_store

__all__ = ["ingest"]


def ingest(
    src: str | Path,
    out: str | Path,
    *,
    format: str | None = None,
    trusted: bool = False,
    seed: int | None = None,
    frac_train: float | None = None,
    overwrite: bool = False,
) -> Path:
    """Load a trajectory from any supported source and write it to a new Zarr store.

    The whole source is read and validated before anything is written, and the store is written aside and
    renamed into place, so bad input or an interrupted run leaves no store behind (running again finishes
    the job).

    Parameters
    ----------
    src : str or Path
        A run directory, a ``.pth``/``.pt``/``.safetensors`` file, a folder of ``{epoch}.pth`` files, or a Zarr
        store (see :func:`mechgrok.store.open_run`).
    out : str or Path
        The store to create (conventionally ``*.zarr``); ``src`` and ``out`` may be fsspec URLs
        (``s3://...``, :mod:`mechgrok.store.location`).
    format, trusted, seed, frac_train
        As for :func:`mechgrok.store.open_run`.
    overwrite : bool
        Replace an existing store at ``out``.

    Returns
    -------
    Path
        ``out``.

    Raises
    ------
    StoreError
        If ``out`` exists (without ``overwrite``), is ``src`` itself, or cannot be written.
    MechgrokError
        Any error of :func:`mechgrok.store.open_run` on bad input.
    """
    from mechgrok.store import open_run

    src, out = normalise(src), normalise(out)  # either may be an fsspec URL (mechgrok.store.location)
    if isinstance(out, Path) and out.exists() and not overwrite:
        raise StoreError("already exists; pass --overwrite (overwrite=True) to replace it", path=out)
    if isinstance(out, Path) and out.exists() and not (is_store(out) or (out.is_dir() and not any(out.iterdir()))):
        raise StoreError("--overwrite refused: the path exists and is not a Zarr store", path=out)
    if src == out or (isinstance(src, Path) and isinstance(out, Path) and src.exists() and out.exists()
                      and src.resolve() == out.resolve()):
        raise StoreError("the output is the source itself", path=out)
    ds = open_run(src, format=format, trusted=trusted, seed=seed, frac_train=frac_train)
    if "checkpoint" not in ds.dims:  # a loss-curve-only file (mechgrok.store.curves)
        raise StoreError("holds loss curves only, no checkpoints: nothing to ingest as a trajectory (mechgrok "
                         "analyze reads the file directly; mechgrok.load_loss_curves loads it)", path=src)
    return write_store(ds, out, overwrite=overwrite)
