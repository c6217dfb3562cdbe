"""Where data lives: a local path or an fsspec URL (``s3://``, ``gs://``, ``file://``, ``memory://``, ...).

Every reader and writer of :mod:`mechgrok.store` and :mod:`mechgrok.sweep` passes its path through
:func:`normalise` first: a local path (or a ``file://`` URL) becomes a :class:`pathlib.Path`, any other URL stays a
string and is served by fsspec's own filesystems (``s3fs`` for ``s3://``, ``gcsfs`` for ``gs://``, the built-in
``memory://``) and, for Zarr, by zarr's own :class:`zarr.storage.FsspecStore` (:func:`zarr_store`). mechgrok keeps
no client code of its own.

Credentials and endpoints come from the environment only, as the client libraries read them (for S3:
``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``, ``AWS_PROFILE``, ``AWS_DEFAULT_REGION``
and ``AWS_ENDPOINT_URL`` for an S3-compatible server; for GCS: ``GOOGLE_APPLICATION_CREDENTIALS``); mechgrok never
writes them into a file (``docs/sweeps.md``, "Object storage").

Object stores have no rename, so the local "write aside, then rename" of :func:`mechgrok.store.zarr_io.write_aside`
becomes "write aside locally, then upload with the root ``zarr.json`` last" (:func:`upload`): a reader, which
recognises a store by its root ``zarr.json`` (:func:`mechgrok.store.zarr_io.is_store`), never sees a half-uploaded
store. Files other than stores are put with one request each (:func:`write_text`), which S3 and GCS make visible
whole or not at all.

Writers that need real local files (training's safetensors checkpoints and ``metrics.csv`` appends, matplotlib's
PNG files) work in a local folder that is copied to the URL: :class:`Mirror` keeps a local working copy of a
folder at a URL and pushes what changed (a run being trained, after each checkpoint, so an interrupted run can be
resumed from the URL); :func:`local_folder` writes a folder locally and uploads it on success (figure packs).
"""

from __future__ import annotations

import posixpath
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from mechgrok.errors import StoreError

__all__ = [
    "is_remote",
    "normalise",
    "join",
    "name_of",
    "filesystem",
    "exists",
    "read_text",
    "write_text",
    "remove",
    "zarr_store",
    "upload",
    "download",
    "local_copy",
    "is_dir",
    "strip_suffix",
    "parent_of",
    "Mirror",
    "local_folder",
]

def _protocol(path: Any) -> str | None:
    import fsspec.core

    if isinstance(path, Path):
        return None
    protocol, _ = fsspec.core.split_protocol(str(path))
    return protocol


def is_remote(path: str | Path) -> bool:
    """Whether ``path`` is a URL served by a filesystem other than the local one.

    Examples
    --------
    >>> is_remote("s3://bucket/sweep"), is_remote("memory://x"), is_remote("file:///tmp/x"), is_remote("runs/a")
    (True, True, False, False)
    """
    return _protocol(path) not in (None, "file", "local")


def normalise(path: str | Path) -> Path | str:
    """A local :class:`~pathlib.Path` for a local path or ``file://`` URL; the URL string itself otherwise.

    Examples
    --------
    >>> normalise("file:///tmp/run"), normalise("s3://bucket/run/"), normalise("runs/a")
    (PosixPath('/tmp/run'), 's3://bucket/run', PosixPath('runs/a'))
    """
    if is_remote(path):
        return str(path).rstrip("/")
    if _protocol(path) in ("file", "local"):
        import fsspec.core

        return Path(fsspec.core.url_to_fs(str(path))[1])
    return Path(path)


def join(base: str | Path, *parts: str) -> Path | str:
    """``base / part / ...`` for a local path or a URL.

    Examples
    --------
    >>> join("s3://bucket/sweep", "runs", "seed=0"), join("out", "runs")
    ('s3://bucket/sweep/runs/seed=0', PosixPath('out/runs'))
    """
    base = normalise(base)
    if isinstance(base, Path):
        return base.joinpath(*parts)
    return posixpath.join(base, *parts)


def name_of(path: str | Path) -> str:
    """The last component of a path or URL.

    Examples
    --------
    >>> name_of("s3://bucket/sweep/summary.zarr"), name_of("runs/a/")
    ('summary.zarr', 'a')
    """
    path = normalise(path)
    return path.name if isinstance(path, Path) else posixpath.basename(path)


def filesystem(path: str | Path) -> tuple[Any, str]:
    """The fsspec filesystem serving ``path`` and the path within it (``fsspec.core.url_to_fs``).

    Raises
    ------
    StoreError
        If no filesystem is installed for the URL's protocol (e.g. ``s3://`` without ``s3fs``).
    """
    import fsspec.core

    try:
        return fsspec.core.url_to_fs(str(path))
    except (ImportError, ValueError) as e:
        raise StoreError(f"no filesystem for this URL ({e})", path=str(path)) from None


def exists(path: str | Path) -> bool:
    """Whether a file or folder exists at ``path`` (local or remote)."""
    path = normalise(path)
    if isinstance(path, Path):
        return path.exists()
    fs, p = filesystem(path)
    return bool(fs.exists(p))


def is_dir(path: str | Path) -> bool:
    """Whether ``path`` is a folder (local) or a prefix holding objects (remote)."""
    path = normalise(path)
    if isinstance(path, Path):
        return path.is_dir()
    fs, p = filesystem(path)
    return bool(fs.isdir(p))


def strip_suffix(path: str | Path) -> Path | str:
    """``path`` without the suffix of its last component (``Path.with_suffix("")``, for URLs too).

    Examples
    --------
    >>> strip_suffix("s3://bucket/runs/full_run_data.pth"), strip_suffix("runs/run.zarr")
    ('s3://bucket/runs/full_run_data', PosixPath('runs/run'))
    """
    path = normalise(path)
    if isinstance(path, Path):
        return path.with_suffix("")
    return posixpath.splitext(path)[0]


def parent_of(path: str | Path) -> Path | str:
    """The folder holding ``path`` (local or URL).

    Examples
    --------
    >>> parent_of("s3://bucket/runs/a/analysis.zarr"), parent_of("runs/a/analysis.zarr")
    ('s3://bucket/runs/a', PosixPath('runs/a'))
    """
    path = normalise(path)
    return path.parent if isinstance(path, Path) else posixpath.dirname(path)


def read_text(path: str | Path) -> str:
    """The text of a file (local or remote).

    Raises
    ------
    FileNotFoundError
        If there is no such file.
    """
    path = normalise(path)
    if isinstance(path, Path):
        return path.read_text()
    fs, p = filesystem(path)
    return fs.cat_file(p).decode()


def write_text(path: str | Path, text: str) -> None:
    """Write a text file whole: locally through a temporary file and a rename, remotely in one request.

    Raises
    ------
    StoreError
        If the write fails.
    """
    from mechgrok.rundir import write_atomic

    path = normalise(path)
    try:
        if isinstance(path, Path):
            write_atomic(path, text)
        else:
            fs, p = filesystem(path)
            fs.pipe_file(p, text.encode())
    except OSError as e:
        raise StoreError(f"cannot write ({e})", path=str(path)) from None


def remove(path: str | Path) -> None:
    """Delete a file or a folder tree (local or remote); nothing if it does not exist."""
    path = normalise(path)
    if isinstance(path, Path):
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
        return
    fs, p = filesystem(path)
    if fs.exists(p):
        fs.rm(p, recursive=True)


def zarr_store(path: str | Path, *, read_only: bool = True) -> Any:
    """What zarr and xarray open: the local path as a string, or a :class:`zarr.storage.FsspecStore` for a URL.

    Examples
    --------
    >>> zarr_store("runs/a/analysis.zarr")
    'runs/a/analysis.zarr'
    >>> type(zarr_store("memory://doc/a.zarr")).__name__
    'FsspecStore'
    """
    path = normalise(path)
    if isinstance(path, Path):
        return str(path)
    from zarr.storage import FsspecStore

    try:
        return FsspecStore.from_url(path, read_only=read_only)
    except (ImportError, ValueError) as e:
        raise StoreError(f"no filesystem for this URL ({e})", path=path) from None


def upload(local: str | Path, url: str, *, last: tuple[str, ...] = ("zarr.json",)) -> None:
    """Copy a local folder tree to ``url``, the top-level files named in ``last`` after everything else.

    With the default, a Zarr store becomes visible (its root ``zarr.json`` appears) only once all its chunks and
    group metadata are in place.

    Raises
    ------
    StoreError
        If the copy fails.
    """
    local = Path(local)
    fs, root = filesystem(url)
    files = sorted(f for f in local.rglob("*") if f.is_file())
    late = [local / name for name in last]
    try:
        for f in [f for f in files if f not in late] + [f for f in late if f.is_file()]:
            fs.put_file(str(f), posixpath.join(root, f.relative_to(local).as_posix()))
    except OSError as e:
        raise StoreError(f"upload failed ({e})", path=url) from None


def download(url: str, local: str | Path) -> Path:
    """Copy the folder tree (or file) at ``url`` to the local path ``local``; returns ``local``.

    Raises
    ------
    StoreError
        If nothing exists at ``url`` or the copy fails.
    """
    fs, root = filesystem(url)
    local = Path(local)
    try:
        if not fs.exists(root):
            raise StoreError("no such file or folder", path=url)
        if fs.isdir(root):
            for f in fs.find(root):
                target = local / posixpath.relpath(f, root)
                target.parent.mkdir(parents=True, exist_ok=True)
                fs.get_file(f, str(target))
        else:
            local.parent.mkdir(parents=True, exist_ok=True)
            fs.get_file(root, str(local))
    except OSError as e:
        raise StoreError(f"download failed ({e})", path=url) from None
    return local


@contextmanager
def local_copy(path: str | Path) -> Iterator[Path]:
    """A local path holding the content of ``path``: the path itself if local, a temporary download otherwise
    (removed on exit). For readers that need real files (safetensors, ``torch.load``)."""
    path = normalise(path)
    if isinstance(path, Path):
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="mechgrok-") as tmp:
        yield download(path, Path(tmp) / name_of(path))


def _local_files(local: Path) -> dict[str, tuple[int, int, int]]:
    """Relative POSIX name -> (size, mtime_ns, inode) of every file under ``local``; hidden files and folders
    (locks, temporary files of writes in progress) are left out."""
    out = {}
    for f in local.rglob("*"):
        rel = f.relative_to(local)
        if any(part.startswith(".") for part in rel.parts) or not f.is_file():
            continue
        st = f.stat()
        out[rel.as_posix()] = (st.st_size, st.st_mtime_ns, st.st_ino)
    return out


def _push_order(names: list[str], last: tuple[str, ...]) -> list[str]:
    """Upload order: ordinary files, then the ``zarr.json`` files deepest first (a store's root metadata after
    everything in it), then the names in ``last``, in their order."""
    late = [n for n in last if n in names]
    rest = [n for n in names if n not in late]
    meta = sorted((n for n in rest if posixpath.basename(n) == "zarr.json"), key=lambda n: (-n.count("/"), n))
    return sorted(n for n in rest if posixpath.basename(n) != "zarr.json") + meta + late


class Mirror:
    """A local working copy of a folder at a URL, pushed back file by file as it changes.

    :meth:`pull` downloads what the URL holds; :meth:`push` deletes at the URL what was deleted locally and
    uploads what is new or changed since the last pull or push (by size, modification time and inode), ordinary
    files first, each Zarr store's root ``zarr.json`` after its content and the files named in ``last`` at the
    end. A process killed between two pushes leaves the URL as it was after the earlier push (plus some of the
    next one's files, in that order): for a run being trained, a run directory that resumes from its last pushed
    checkpoint. Hidden files (``.NAME.lock``, temporary files of a write in progress) are never pushed.

    Parameters
    ----------
    url : str
        The folder at the URL.
    local : Path
        The local working copy (created by :meth:`pull`, or by the writer).

    Examples
    --------
    >>> import tempfile
    >>> m = Mirror("memory://doc-mirror/run", Path(tempfile.mkdtemp()) / "run")
    >>> m.pull()
    False
    >>> m.local.mkdir(); _ = (m.local / "a.txt").write_text("one")
    >>> m.push(); read_text("memory://doc-mirror/run/a.txt")
    'one'
    >>> (m.local / "a.txt").unlink(); m.push(); exists("memory://doc-mirror/run/a.txt")
    False
    """

    def __init__(self, url: str, local: str | Path) -> None:
        self.url = str(normalise(url))
        self.local = Path(local)
        self._pushed: dict[str, tuple[int, int, int]] = {}
        self._remote: set[str] = set()

    def pull(self) -> bool:
        """Download the folder at the URL into the local copy; False (nothing done) if the URL holds nothing.

        Raises
        ------
        StoreError
            If the download fails.
        """
        fs, root = filesystem(self.url)
        if not (fs.exists(root) and fs.isdir(root)):
            return False
        download(self.url, self.local)
        self._remote = {posixpath.relpath(f, root) for f in fs.find(root)}
        self._pushed = _local_files(self.local)
        return True

    def push(self, *, last: tuple[str, ...] = ()) -> None:
        """Make the URL hold what the local copy holds (see the class docstring).

        Parameters
        ----------
        last : tuple of str
            Relative names uploaded after everything else, in this order (a commit record such as ``run.json``).

        Raises
        ------
        StoreError
            If an upload or delete fails.
        """
        fs, root = filesystem(self.url)
        now = _local_files(self.local) if self.local.is_dir() else {}
        gone = sorted(n for n in self._remote if n not in now)
        changed = [n for n in now if self._pushed.get(n) != now[n]]
        try:
            if gone:
                fs.rm([posixpath.join(root, n) for n in gone])
            for n in _push_order(changed, last):
                fs.put_file(str(self.local / n), posixpath.join(root, n))
        except OSError as e:
            raise StoreError(f"cannot copy the local working copy to the URL ({e})", path=self.url) from None
        self._remote = (self._remote - set(gone)) | set(changed)
        self._pushed = now


@contextmanager
def local_folder(path: str | Path, *, last: tuple[str, ...] = ("index.html",)) -> Iterator[Path]:
    """A local folder whose content ends up at ``path``: the folder itself if local (created), a temporary one
    uploaded to the URL when the ``with`` block ends without an error otherwise (``last`` uploaded last).

    For writers that need real files (matplotlib's PNG and SVG, GIF animations, HTML pages); the upload adds to
    and replaces files at the URL, it removes none.

    Raises
    ------
    StoreError
        If the folder cannot be created or the upload fails.
    """
    path = normalise(path)
    if isinstance(path, Path):
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StoreError(f"cannot create the folder ({e.strerror or e})", path=path) from None
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="mechgrok-out-") as tmp:
        local = Path(tmp) / name_of(path)
        local.mkdir()
        yield local
        upload(local, path, last=last)
