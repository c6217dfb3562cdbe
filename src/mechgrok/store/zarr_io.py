"""Zarr v3 trajectory stores: write aside then rename, open lazily, append strictly, repair interrupted appends.

Layout
    One Zarr v3 group holding the canonical Dataset (:mod:`mechgrok.store.schema`). Every variable with the
    ``checkpoint`` dim is chunked one checkpoint per chunk (full size along every other dim) and compressed
    with Blosc/zstd (byte shuffle); the ``epoch``-dim curves in chunks of :data:`CURVE_CHUNK` epochs; ``is_train``
    in one chunk. Metadata is not consolidated (``consolidated=False`` on write and read, ecosystem.md 3.2).

Writing a new store
    :func:`write_store` writes to a hidden sibling ``.NAME.tmp-XXXX`` and renames it into place, so a killed
    write leaves no store under the final name (running again cleans up the leftover and finishes the job).

Appending
    :func:`append_checkpoints` adds checkpoints along ``checkpoint``, :func:`append_curves` curve rows along
    ``epoch``. Both are strict (ecosystem.md 3.3): the piece must carry exactly the store's variables on that dim,
    with the same dtypes, dims and sizes, and epochs strictly greater than the store's last; anything else is a
    :class:`StoreError` before a byte is written. They write with ``mode="a-"`` (variables without the append
    dim are never touched) and no encoding.

Commit record
    ``attrs["mechgrok_committed"]`` holds the committed length of ``checkpoint`` and ``epoch``; it is updated
    (one atomic file write) only after an append has fully landed. An append killed half-way leaves arrays
    longer than the record: :func:`open_store` then refuses to open the store (a :class:`StoreError` that
    says so, rather than a half-written Dataset), and :func:`repair_store` -- which every append runs first --
    cuts the arrays back to the record, so re-running the writer finishes the job. ``open_store`` drops the
    record from the returned attrs.

Object storage
    Every path may be an fsspec URL (``s3://``, ``gs://``, ``memory://``; :mod:`mechgrok.store.location`): zarr
    reads and writes it through its own ``FsspecStore``, and a new store is written aside locally and uploaded
    with its root ``zarr.json`` last.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path
from typing import Any, Callable

import numpy as np
import xarray as xr

from mechgrok.errors import StoreError
from mechgrok.store.lock import hold
from mechgrok.store.location import exists, name_of, normalise, remove, upload, zarr_store

__all__ = [
    "COMMIT_ATTR",
    "CURVE_CHUNK",
    "compressor",
    "is_store",
    "write_store",
    "open_store",
    "repair_store",
    "append_checkpoints",
    "append_curves",
    "remove_store",
]

#: Root attribute holding the committed lengths of the ``checkpoint`` and ``epoch`` dims.
COMMIT_ATTR = "mechgrok_committed"
#: Chunk length of the ``epoch``-dim curves.
CURVE_CHUNK = 8192
_APPEND_DIMS = ("checkpoint", "epoch")


def compressor() -> Any:
    """The codec for weight chunks: ``zarr.codecs.BloscCodec(cname="zstd", clevel=3, shuffle="shuffle")``."""
    import zarr.codecs

    return zarr.codecs.BloscCodec(cname="zstd", clevel=3, shuffle="shuffle")


def is_store(path: str | Path) -> bool:
    """Whether ``path`` is a Zarr v3 store (a folder with a root ``zarr.json``)."""
    path = normalise(path)
    if isinstance(path, str):  # a URL (mechgrok.store.location)
        return exists(f"{path}/zarr.json")
    return (path / "zarr.json").is_file()


def _encoding(ds: xr.Dataset) -> dict[str, dict[str, Any]]:
    enc: dict[str, dict[str, Any]] = {}
    codec = compressor()
    for name, var in ds.variables.items():
        dims = var.dims
        if "checkpoint" in dims and name != "checkpoint":
            enc[str(name)] = {"chunks": tuple(1 if d == "checkpoint" else ds.sizes[d] for d in dims), "compressors": [codec]}
        elif name == "checkpoint":
            enc[str(name)] = {"chunks": (1024,)}
        elif "epoch" in dims:
            enc[str(name)] = {"chunks": tuple(CURVE_CHUNK if d == "epoch" else ds.sizes[d] for d in dims)}
    return enc


def _lengths(ds: xr.Dataset) -> dict[str, int]:
    return {d: int(ds.sizes.get(d, 0)) for d in _APPEND_DIMS}


def _owner_alive(leftover: Path) -> bool:
    """Whether the process that made a ``.NAME.tmp-PID-XXXX`` / ``.NAME.old-PID-XXXX`` folder still runs."""
    try:
        pid = int(leftover.name.rsplit("-", 2)[-2])
    except (ValueError, IndexError):
        return False  # an older name without the pid
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def _stale_temps(path: Path) -> list[Path]:
    """Temporary and swapped-out folders of writes whose process has died (never another live writer's)."""
    found = [*path.parent.glob(f".{path.name}.tmp-*"), *path.parent.glob(f".{path.name}.old-*")]
    return [p for p in found if p.is_dir() and not _owner_alive(p)]


def _recover_swap(path: Path) -> None:
    """Put the previous store back under ``path`` if a write died between moving it aside and moving the new
    one in (``path`` missing, its ``.NAME.old-PID-XXXX`` there, its owner dead)."""
    if path.exists():
        return
    old = [p for p in path.parent.glob(f".{path.name}.old-*") if p.is_dir() and not _owner_alive(p)]
    if old:
        os.replace(max(old, key=lambda p: p.stat().st_mtime), path)


def remove_store(path: str | Path) -> None:
    """Delete a store (only a folder with a root ``zarr.json``, or an empty folder; at a URL, only a store).

    Raises
    ------
    StoreError
        If ``path`` exists but is not a Zarr store.
    """
    path = normalise(path)
    if isinstance(path, str):  # a URL (mechgrok.store.location): no empty folders on object stores
        if exists(path) and not is_store(path):
            raise StoreError("refusing to delete: not a Zarr store", path=path)
        remove(path)
        return
    if not path.exists():
        return
    if not path.is_dir() or not (is_store(path) or not any(path.iterdir())):
        raise StoreError("refusing to delete: not a Zarr store", path=path)
    shutil.rmtree(path)


def write_store(ds: xr.Dataset, path: str | Path, *, overwrite: bool = False) -> Path:
    """Write a trajectory to a new Zarr v3 store, aside first, then renamed into place.

    Parameters
    ----------
    ds : xarray.Dataset
        The trajectory (canonical schema). Lazily opened Datasets are streamed chunk by chunk.
    path : str or Path
        The store to create (conventionally ``*.zarr``).
    overwrite : bool
        Replace an existing store (only a Zarr store or an empty folder is replaced).

    Returns
    -------
    Path
        ``path``.

    Raises
    ------
    StoreError
        If ``path`` exists (without ``overwrite``), is not a Zarr store (with ``overwrite``), or the write fails.
    """
    path = normalise(path)
    if exists(path):
        if not overwrite:
            raise StoreError("already exists; pass --overwrite (overwrite=True) to replace it", path=path)
        if not (is_store(path) or (isinstance(path, Path) and path.is_dir() and not any(path.iterdir()))):
            raise StoreError("--overwrite refused: the path exists and is not a Zarr store", path=path)
    if isinstance(path, Path) and not path.parent.is_dir():
        raise StoreError("the parent folder does not exist", path=path)
    out = ds.drop_encoding()
    # fixed-width strings have no Zarr v3 spec: label coordinates go as object (variable-length) strings
    out = out.assign_coords({n: out[n].astype(object) for n in out.coords if out[n].dtype.kind == "U"})
    out.attrs = {**{k: v for k, v in ds.attrs.items() if k != COMMIT_ATTR}, COMMIT_ATTR: _lengths(ds)}
    return write_aside(
        path, lambda tmp: out.to_zarr(tmp, mode="w-", encoding=_encoding(out), consolidated=False, zarr_format=3)
    )


def write_aside(path: str | Path, write: Callable[[Path], Any]) -> Path:
    """Run ``write(tmp)`` on a hidden sibling folder of ``path``, then rename it into place.

    An existing ``path`` is swapped out only once the new one is complete, so an interrupted write leaves the
    previous store (or none) under the final name, never a half-written one. Leftovers of a killed earlier
    write are removed first.

    Raises
    ------
    StoreError
        If the write fails with an OS, type or value error (the temporary folder is removed).
    """
    path = normalise(path)
    if isinstance(path, str):  # a URL: no rename on object stores (mechgrok.store.location)
        return _write_aside_remote(path, write)
    with hold(path, busy="another mechgrok process is writing this store"):
        _recover_swap(path)
        for stale in _stale_temps(path):  # left by a write that was killed
            shutil.rmtree(stale, ignore_errors=True)
        tag = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        tmp = path.parent / f".{path.name}.tmp-{tag}"
        try:
            write(tmp)
            if not (tmp / "zarr.json").is_file():
                raise StoreError("the store written aside is gone or incomplete (was it removed by another "
                                 "process?); nothing was replaced", path=path)
            if path.exists():
                trash = path.parent / f".{path.name}.old-{tag}"
                os.replace(path, trash)
                os.replace(tmp, path)
                shutil.rmtree(trash, ignore_errors=True)
            else:
                os.replace(tmp, path)
        except BaseException as e:
            shutil.rmtree(tmp, ignore_errors=True)
            if isinstance(e, (TypeError, ValueError, OSError)):
                raise StoreError(f"cannot write the store: {e}", path=path) from None
            raise
    return path


def _write_aside_remote(url: str, write: Callable[[Path], Any]) -> str:
    """:func:`write_aside` for a URL: write to a local temporary folder, then upload it with the root
    ``zarr.json`` last (:func:`mechgrok.store.location.upload`); an older store there is removed first."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="mechgrok-") as tmp:
        local = Path(tmp) / name_of(url)
        try:
            write(local)
        except (TypeError, ValueError, OSError) as e:
            raise StoreError(f"cannot write the store: {e}", path=url) from None
        remove(url)
        upload(local, url)
    return url


def _group(path: Path | str, mode: str) -> Any:
    import zarr

    if not is_store(path):
        raise StoreError("not a Zarr v3 store (no zarr.json)", path=path)
    try:
        return zarr.open_group(zarr_store(path, read_only=mode == "r"), mode=mode, zarr_format=3)
    except Exception as e:  # zarr raises several types on corrupt metadata
        raise StoreError(f"cannot open the Zarr store: {type(e).__name__}: {e}", path=path) from None


def _uncommitted(group: Any, path: Any) -> list[tuple[str, str, int, int]]:
    """``(array, dim, length, committed)`` of every array whose append dim disagrees with the commit record.

    Raises
    ------
    StoreError
        If an array's metadata cannot be read (zarr raises many types on a damaged ``zarr.json``).
    """
    try:
        return _uncommitted_arrays(group)
    except StoreError:
        raise
    except Exception as e:
        raise StoreError(f"cannot read the Zarr store's arrays: {type(e).__name__}: {str(e)[:160]}", path=path) from None


def _uncommitted_arrays(group: Any) -> list[tuple[str, str, int, int]]:
    committed = dict(group.attrs).get(COMMIT_ATTR)
    if not isinstance(committed, dict):
        return []
    bad = []
    for name, arr in group.arrays():
        dims = arr.metadata.dimension_names or ()
        for d in _APPEND_DIMS:
            if d in dims and d in committed:
                n = arr.shape[dims.index(d)]
                if n != committed[d]:
                    bad.append((name, d, n, int(committed[d])))
    return bad


def repair_store(path: str | Path) -> bool:
    """Cut arrays left longer by an interrupted append back to the committed lengths.

    Returns
    -------
    bool
        Whether anything was repaired.

    Raises
    ------
    StoreError
        If the store cannot be opened, or an array is *shorter* than its commit record (damaged store).
    """
    path = normalise(path)
    group = _group(path, "r+")
    bad = _uncommitted(group, path)
    for name, d, n, c in bad:
        if n < c:
            raise StoreError(f"array {name!r} has {n} entries along {d!r} but {c} are committed: damaged store", path=path)
    for name, d, n, c in bad:
        arr = group[name]
        dims = arr.metadata.dimension_names
        shape = list(arr.shape)
        shape[dims.index(d)] = c
        arr.resize(tuple(shape))
    return bool(bad)


def open_store(path: str | Path) -> xr.Dataset:
    """Open a trajectory store lazily (nothing but the index coordinates is read until used).

    Parameters
    ----------
    path : str or Path
        The store.

    Returns
    -------
    xarray.Dataset
        Backed by the store (``chunks=None``: lazy backend arrays, no dask). Selecting a checkpoint reads only
        that checkpoint's chunks.

    Raises
    ------
    StoreError
        If ``path`` is not a Zarr store, cannot be read, or holds an unfinished append (see the module
        docstring; :func:`repair_store` or re-running the writer fixes it).
    """
    path = normalise(path)
    with hold(path, busy="a mechgrok process is appending to this store"):  # no half-landed append seen
        group = _group(path, "r")
        bad = _uncommitted(group, path)
        if bad:
            name, d, n, c = bad[0]
            raise StoreError(
                f"an append was interrupted: {name!r} holds {n} entries along {d!r} but {c} are committed; re-run "
                "the writer or call mechgrok.store.repair_store(path)", path=path)
        try:
            ds = xr.open_zarr(zarr_store(path), chunks=None, consolidated=False, zarr_format=3)
        except Exception as e:
            raise StoreError(f"cannot open the Zarr store: {type(e).__name__}: {e}", path=path) from None
    ds.attrs.pop(COMMIT_ATTR, None)
    return ds


def _append(path: Path, piece: xr.Dataset, dim: str) -> None:
    repair_store(path)
    group = _group(path, "r+")
    raw_attrs = dict(group.attrs)
    store = open_store(path)
    if dim not in store.dims:
        raise StoreError(f"the store has no {dim!r} dim to append to", path=path)
    if dim not in piece.dims or piece.sizes[dim] == 0:
        raise StoreError(f"the piece has no entries along {dim!r}", path=path)
    want = {n for n, v in store.data_vars.items() if dim in v.dims}
    have = set(piece.data_vars)
    off_dim = sorted(n for n in have if dim not in piece[n].dims)
    if off_dim:
        raise StoreError(f"appended variables must all have the {dim!r} dim; these do not: {', '.join(off_dim)}", path=path)
    if have != want:
        missing, extra = sorted(want - have), sorted(have - want)
        raise StoreError(
            f"the appended {dim} variables differ from the store's (missing: {', '.join(missing) or '-'}; "
            f"extra: {', '.join(extra) or '-'})", path=path)
    for n in sorted(want):
        s, p = store[n], piece[n]
        if s.dtype != p.dtype:
            raise StoreError(f"{n} has dtype {p.dtype}, but the store holds {s.dtype}", path=path)
        if s.dims != p.dims:
            raise StoreError(f"{n} has dims {p.dims}, but the store has {s.dims}", path=path)
        for d in s.dims:
            if d != dim and s.sizes[d] != p.sizes[d]:
                raise StoreError(f"{n} has {d}={p.sizes[d]}, but the store has {d}={s.sizes[d]}", path=path)
    new = np.asarray(piece[dim].values)
    if not np.issubdtype(new.dtype, np.integer):
        raise StoreError(f"{dim} values must be integer epochs, got dtype {new.dtype}", path=path)
    if new.size > 1 and np.any(np.diff(new) <= 0):
        raise StoreError(f"{dim} values of the piece must be strictly increasing, got {new.tolist()[:10]}", path=path)
    last = int(store[dim].values[-1]) if store.sizes[dim] else None
    if last is not None and int(new[0]) <= last:
        raise StoreError(f"{dim} {int(new[0])} is not after the store's last {dim} {last} (appends must be strictly "
                         "increasing)", path=path)
    out = piece[sorted(want)].drop_encoding()
    out = out.drop_vars([c for c in out.coords if c != dim])
    out = out.assign_coords({dim: new.astype(store[dim].dtype)})
    out[dim].attrs = dict(store[dim].attrs)
    for n in want:
        out[n].attrs = dict(store[n].attrs)
    out.attrs = raw_attrs  # xarray rewrites the root attrs first: keep the old commit record until the data landed
    try:
        out.to_zarr(zarr_store(path, read_only=False), mode="a-", append_dim=dim, consolidated=False, zarr_format=3)
    except (TypeError, ValueError) as e:
        raise StoreError(f"append failed: {e}", path=path) from None
    committed = dict(raw_attrs.get(COMMIT_ATTR) or {})
    committed[dim] = int(store.sizes[dim]) + int(new.size)
    for d in _APPEND_DIMS:
        committed.setdefault(d, int(store.sizes.get(d, 0)))
    group.attrs.update({COMMIT_ATTR: committed})


def append_checkpoints(path: str | Path, piece: xr.Dataset) -> None:
    """Append checkpoints to a store, strictly.

    Parameters
    ----------
    path : str or Path
        The store.
    piece : xarray.Dataset
        Exactly the store's ``checkpoint``-dim variables (same dtypes, dims and other dim sizes) for new
        checkpoints, whose epochs (the ``checkpoint`` coordinate) are strictly increasing and after the store's
        last. Other coordinates are ignored; attrs are the store's.

    Raises
    ------
    StoreError
        If any of this does not hold (nothing is written then), or the store cannot be opened.
    """
    with hold(normalise(path), busy="another mechgrok process is appending to this store"):
        _append(normalise(path), piece, "checkpoint")


def append_curves(path: str | Path, piece: xr.Dataset) -> None:
    """Append curve rows (the ``epoch``-dim variables) to a store, strictly; see :func:`append_checkpoints`.

    Raises
    ------
    StoreError
        If the piece's variables, dtypes or epochs do not fit the store.
    """
    with hold(normalise(path), busy="another mechgrok process is appending to this store"):
        _append(normalise(path), piece, "epoch")
