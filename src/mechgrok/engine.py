"""The one loop over checkpoints that every analysis runs through.

A trajectory is an ``xarray.Dataset`` over ``checkpoint`` (whose coordinate holds the epochs). Every analysis that
needs the weights of each checkpoint is a :class:`Kernel`: a function of one checkpoint returning plain arrays,
plus the assembly of those arrays into an ``xarray.Dataset``. :func:`run` is the only loop over checkpoints in
mechgrok: it reads the weights ``chunk`` checkpoints at a time as float64 torch tensors on the chosen device and
hands each checkpoint to every kernel in turn, so work that several kernels share (the forward pass over the
inputs) is computed once per checkpoint (:meth:`Checkpoint.memo`), and work on the weights alone that costs more
per call than per checkpoint (many small operations) once per chunk, batched over its
checkpoints (:meth:`Checkpoint.batched`). Memory does not grow with the number of checkpoints: only
per-checkpoint results (small) are kept.

Selecting checkpoints is the caller's: ``ds.isel(checkpoint=...)`` by position or ``ds.sel(checkpoint=...)`` by
epoch (:func:`select_epochs` gives a :class:`~mechgrok.errors.AnalysisError` naming what exists instead of
xarray's ``KeyError``); every analysis takes the selection it is given.

Examples
--------
A kernel computing the squared norm of ``W_E`` at each checkpoint:

>>> import numpy as np, xarray as xr
>>> from mechgrok.engine import FunctionKernel, run
>>> ds = xr.Dataset({"W_E": (("checkpoint", "vocab", "d_model"), np.ones((3, 4, 2)))},
...                 coords={"checkpoint": [0, 10, 20]})
>>> k = FunctionKernel("norm", lambda ck: {"norm": float((ck.weights["W_E"] ** 2).sum())}, weights=("W_E",))
>>> run(ds, [k])["norm"]["norm"].values.tolist()
[8.0, 8.0, 8.0]
"""

from __future__ import annotations

import ctypes
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping, Protocol, Sequence

import numpy as np
import torch
import xarray as xr

from mechgrok.errors import AnalysisError, StoreError
from mechgrok.memory import resident_bytes
from mechgrok.models.transformer import WEIGHT_NAMES

__all__ = [
    "DEFAULT_CHUNK",
    "Checkpoint",
    "Chunk",
    "Kernel",
    "FunctionKernel",
    "run",
    "resolve_device",
    "select_epochs",
    "require_checkpoints",
    "checkpoint_weights",
    "trim_heap",
    "keep_heap",
    "TRIM_AFTER_GROWTH",
]

#: Checkpoints whose weights are read at once (about 1 MB each at the paper's widths). The work memory of a
#: checkpoint's forward pass is separate and reused, so this only trades read calls against memory.
DEFAULT_CHUNK = 16

Progress = Callable[[str, int, int], None]


@dataclass
class Checkpoint:
    """One checkpoint as a kernel sees it.

    Attributes
    ----------
    epoch : int
        Its epoch (the ``checkpoint`` coordinate).
    index : int
        Its position in the trajectory given to :func:`run`.
    weights : dict of str to torch.Tensor
        float64 weights on ``device``, by TransformerLens name, each with a leading checkpoint dim of size 1
        (shapes (1, ...)), as the batched forward passes take them.
    device : torch.device
    needs : frozenset of str
        The union of the ``needs`` of every kernel of the run (e.g. ``{"mlp_post", "attn"}``), so that a shared
        forward pass computes, once, everything any kernel will ask of it.
    attrs : mapping
        ``attrs`` of the trajectory (``p`` and the like).
    chunk : Chunk or None
        The checkpoints read with this one (:meth:`batched`); this one is ``chunk.weights[...][position]``.
    position : int
        Its position in ``chunk``.
    """

    epoch: int
    index: int
    weights: dict[str, torch.Tensor]
    device: torch.device
    needs: frozenset[str]
    attrs: Mapping[str, Any]
    chunk: "Chunk | None" = None
    position: int = 0
    _memo: dict[str, Any] = field(default_factory=dict, repr=False)

    def memo(self, key: str, compute: Callable[[], Any]) -> Any:
        """``compute()`` the first time ``key`` is asked for at this checkpoint, the stored value after that."""
        if key not in self._memo:
            self._memo[key] = compute()
        return self._memo[key]

    def batched(self, key: Any, compute: Callable[[dict[str, torch.Tensor]], Any]) -> Any:
        """This checkpoint's part of ``compute(chunk weights)``, computed once per chunk.

        For work on the weights alone that is cheap per checkpoint but costly per call (many small operations):
        ``compute`` gets the weights of every checkpoint of the chunk, shapes (c, ...), and returns
        a tensor, array, tuple or dict of them with that leading c; this checkpoint's slice is returned. Only for
        computations whose per-checkpoint results do not depend on the batch (each checkpoint computed by the
        same operations, batched), so that results do not depend on ``chunk``.
        """
        if self.chunk is None:
            res = compute(self.weights)
            pos = 0
        else:
            res = self.chunk.memo(key, compute)
            pos = self.position
        if isinstance(res, dict):
            return {k: v[pos] for k, v in res.items()}
        if isinstance(res, tuple):
            return tuple(v[pos] for v in res)
        return res[pos]


@dataclass
class Chunk:
    """The checkpoints whose weights :func:`run` read at once, as :meth:`Checkpoint.batched` shares them.

    Attributes
    ----------
    weights : dict of str to torch.Tensor
        float64 weights of the chunk's checkpoints on the device, shapes (c, ...).
    """

    weights: dict[str, torch.Tensor]
    _memo: dict[Any, Any] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def memo(self, key: Any, compute: Callable[[dict[str, torch.Tensor]], Any]) -> Any:
        """``compute(weights)`` the first time ``key`` is asked for in this chunk (one thread computes it)."""
        with self._lock:
            if key not in self._memo:
                self._memo[key] = compute(self.weights)
            return self._memo[key]


class Kernel(Protocol):
    """What :func:`run` needs of an analysis.

    ``name`` keys the result; ``weights`` names the weights read (None: all of :data:`WEIGHT_NAMES` present);
    ``needs`` what it asks of shared computations; ``__call__`` maps one :class:`Checkpoint` to a dict of
    numpy arrays or scalars (the same keys and shapes at every checkpoint); ``assemble`` stacks them (leading
    ``checkpoint`` axis) into the analysis Dataset.
    """

    name: str
    weights: tuple[str, ...] | None
    needs: frozenset[str]

    def __call__(self, ck: Checkpoint) -> dict[str, Any]: ...

    def assemble(self, values: dict[str, np.ndarray], checkpoint: xr.DataArray) -> xr.Dataset: ...


@dataclass
class FunctionKernel:
    """A :class:`Kernel` from a function of one checkpoint; ``assemble`` puts each value over ``checkpoint`` (and
    ``dim_0``, ``dim_1``, ... for array values)."""

    name: str
    fn: Callable[[Checkpoint], dict[str, Any]]
    weights: tuple[str, ...] | None = None
    needs: frozenset[str] = frozenset()

    def __call__(self, ck: Checkpoint) -> dict[str, Any]:
        return self.fn(ck)

    def assemble(self, values: dict[str, np.ndarray], checkpoint: xr.DataArray) -> xr.Dataset:
        data = {k: (("checkpoint", *[f"dim_{i}" for i in range(v.ndim - 1)]), v) for k, v in values.items()}
        return xr.Dataset(data, coords={"checkpoint": checkpoint.values})


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """The device to compute on: CUDA when available and none is asked for, else CPU.

    Raises
    ------
    AnalysisError
        If the device named does not exist here (e.g. ``"cuda"`` on a machine without a GPU).
    """
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise AnalysisError(f"unknown device {device!r} ({e})") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise AnalysisError(f"device {device!r} asked for, but torch {torch.__version__} sees no CUDA device here")
    if dev.type not in ("cpu", "cuda"):
        raise AnalysisError(f"device {device!r}: mechgrok runs on 'cpu' or 'cuda'")
    return dev


def select_epochs(ds: xr.Dataset, epochs: Sequence[int]) -> xr.Dataset:
    """``ds.sel(checkpoint=epochs)`` with an :class:`~mechgrok.errors.AnalysisError` naming the epochs that exist.

    Parameters
    ----------
    ds : xarray.Dataset
        A trajectory over ``checkpoint`` (coordinate: epochs).
    epochs : sequence of int
        Epochs to keep, in the order given.

    Raises
    ------
    AnalysisError
        If an epoch has no checkpoint or none is given.

    Examples
    --------
    >>> import xarray as xr
    >>> ds = xr.Dataset(coords={"checkpoint": [0, 100, 200]})
    >>> select_epochs(ds, [200, 0])["checkpoint"].values.tolist()
    [200, 0]
    """
    wanted = [int(e) for e in np.atleast_1d(np.asarray(epochs, dtype=object))]
    if not wanted:
        raise AnalysisError("no epochs selected")
    have = ds["checkpoint"].values
    missing = sorted(set(wanted) - set(have.tolist()))
    if missing:
        span = f"{len(have)} checkpoints, epochs {int(have[0])}..{int(have[-1])}" if len(have) else "no checkpoints"
        raise AnalysisError(f"no checkpoints at epochs {missing[:5]} (the trajectory has {span})")
    return ds.sel(checkpoint=wanted)


def require_checkpoints(ds: xr.Dataset) -> int:
    """The number of checkpoints of ``ds``.

    Raises
    ------
    AnalysisError
        If it has no ``checkpoint`` dim or the selection is empty.
    """
    n = ds.sizes.get("checkpoint")
    if n is None:
        raise AnalysisError(f"expected a trajectory over 'checkpoint', got dims {tuple(ds.sizes)}")
    if n == 0:
        raise AnalysisError("no checkpoints selected (the selection along 'checkpoint' is empty)")
    return int(n)


def checkpoint_weights(
    ds: xr.Dataset,
    *,
    names: Sequence[str] | None = None,
    dtype: torch.dtype = torch.float64,
    device: str | torch.device = "cpu",
) -> dict[str, torch.Tensor]:
    """The weights of every checkpoint in ``ds`` as torch tensors with a leading checkpoint dim.

    Parameters
    ----------
    ds : xarray.Dataset
        Canonical trajectory (or a ``checkpoint`` slice of one); lazy variables are read here.
    names : sequence of str, optional
        The weights to read (default: all of :data:`~mechgrok.models.transformer.WEIGHT_NAMES`).
    dtype : torch.dtype
        float64 (default) or float32.
    device : str or torch.device
        Where the tensors go.

    Returns
    -------
    dict of str to torch.Tensor
        By TransformerLens name, shapes (checkpoint, ...) as in :func:`mechgrok.models.transformer.param_shapes`.

    Raises
    ------
    AnalysisError
        If a weight is missing.
    StoreError
        If a lazily opened store cannot be read here (a damaged or missing chunk), naming the store.
    """
    names = list(WEIGHT_NAMES if names is None else names)
    missing = [n for n in names if n not in ds]
    if missing:
        raise AnalysisError(f"the trajectory lacks weights {missing}")
    out = {}
    for n in names:
        try:  # lazy variables are read from their store here: a damaged chunk surfaces now, not at open
            values = np.ascontiguousarray(ds[n].values)
        except (OSError, ValueError, TypeError, KeyError, RuntimeError) as exc:
            source = ds[n].encoding.get("source") or ds.attrs.get("source_files")
            raise StoreError(f"cannot read {n} at checkpoints {ds['checkpoint'].values.tolist()[:8]}: "
                             f"{type(exc).__name__}: {exc}", path=source) from exc
        out[n] = torch.from_numpy(values).to(device=device, dtype=dtype)
    return out


_LIBC: Any = None
#: glibc's ``mallopt`` parameters (malloc.h): M_TRIM_THRESHOLD, M_MMAP_THRESHOLD.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
#: Growth of the resident memory since the last trim (or the start of a run) after which :func:`run` trims the
#: heap (:func:`trim_heap`) at the end of a chunk.
TRIM_AFTER_GROWTH = 512 * 2**20


def _libc() -> Any:
    global _LIBC
    if _LIBC is None:
        try:
            _LIBC = ctypes.CDLL("libc.so.6")
            _LIBC.malloc_trim, _LIBC.mallopt  # glibc only
        except (OSError, AttributeError):
            _LIBC = False
    return _LIBC


def trim_heap() -> None:
    """Hand freed heap memory back to the OS (glibc ``malloc_trim``; a no-op elsewhere).

    :func:`run` calls it after a chunk once the resident memory has grown by :data:`TRIM_AFTER_GROWTH` since the
    last trim: a long run allocates many temporaries below glibc's mmap threshold, which stay in the heap after
    they are freed, and over hundreds of chunks the fragmented heap could grow. Measured on a 401-checkpoint
    p = 113 trajectory held in memory (chunk 8, before the work buffers were reused): peak RSS 3.1 GB without
    trimming, 1.85 GB with a trim after every chunk.
    """
    libc = _libc()
    if libc:
        libc.malloc_trim(0)


def keep_heap() -> None:
    """Let glibc serve allocations up to 32 MB from its heap and keep freed memory for the next ones (a no-op
    elsewhere); process-wide, set by :func:`run`.

    By default glibc maps a large block afresh each time (the mmap threshold adapts upwards only after such a
    block is freed) and hands the top of its heap back soon after, so each checkpoint's temporaries of a few MB
    were fresh pages that the kernel zeroed and faulted in one by one: about 3,700 page faults per checkpoint at
    p = 113 and 4.6 s of system time in a 401-checkpoint ``analyze``, against about 500 and 2.5 s with this
    setting and trimming by growth (:func:`trim_heap`), which bounds how far the heap grows between trims
    (:data:`TRIM_AFTER_GROWTH`).
    """
    libc = _libc()
    if libc:
        libc.mallopt(_M_MMAP_THRESHOLD, 32 * 2**20)
        libc.mallopt(_M_TRIM_THRESHOLD, 2 * TRIM_AFTER_GROWTH)


def run(
    ds: xr.Dataset,
    kernels: Sequence[Kernel],
    *,
    chunk: int = DEFAULT_CHUNK,
    device: str | torch.device | None = "cpu",
    workers: int = 1,
    progress: Progress | bool | None = None,
    stage: str = "checkpoints",
) -> dict[str, xr.Dataset]:
    """Run every kernel on every checkpoint of ``ds``: the one loop over checkpoints.

    Parameters
    ----------
    ds : xarray.Dataset
        A trajectory over ``checkpoint`` (already selected by the caller) with the weights the kernels read.
    kernels : sequence of Kernel
        Each is called once per checkpoint, in order, on the same :class:`Checkpoint`.
    chunk : int
        Checkpoints whose weights are read (and moved to ``device``) at once.
    device : str or torch.device or None
        ``"cpu"`` (default), ``"cuda"``, or None for CUDA when available. Weights are float64 on it.
    workers : int
        Checkpoints computed at the same time, each on one thread (torch's intra-op threads set to 1 meanwhile,
        restored after). The default, 1, lets torch use its own threads. The results do not depend on
        ``chunk``; with one thread per checkpoint, a reduction that torch splits over threads can round
        differently in the last bit (seen in the gradient symmetricity's autograd pass).
    progress : callable or bool, optional
        ``progress(stage, done, total)`` after each chunk; True for a rich bar on stderr
        (:func:`mechgrok.progress_bar.rich_bar`).
    stage : str
        The stage name passed to ``progress``.

    Returns
    -------
    dict of str to xarray.Dataset
        ``kernel.name -> kernel.assemble(values, ds["checkpoint"])``.

    Raises
    ------
    AnalysisError
        If no checkpoint is selected, a kernel's weight is missing, or the device is unavailable.
    """
    if progress is True:
        from mechgrok.progress_bar import rich_bar

        with rich_bar() as bar:
            return run(ds, kernels, chunk=chunk, device=device, workers=workers, progress=bar, stage=stage)
    n = require_checkpoints(ds)
    dev = resolve_device(device)
    names = [nm for nm in WEIGHT_NAMES if nm in ds]
    wanted = set()
    for k in kernels:
        wanted |= set(names if k.weights is None else k.weights)
    missing = sorted(wanted - set(ds.data_vars))
    if missing:
        raise AnalysisError(f"the trajectory lacks weights {missing}")
    needs = frozenset().union(*(k.needs for k in kernels)) if kernels else frozenset()
    epochs = ds["checkpoint"].values
    values: dict[str, dict[str, np.ndarray]] = {k.name: {} for k in kernels}
    report = progress or (lambda stage, done, total: None)

    def one(w: dict[str, torch.Tensor], i: int, chunk_: Chunk, j: int) -> list[dict[str, Any]]:
        ck = Checkpoint(epoch=int(epochs[i]), index=i, weights=w, device=dev, needs=needs, attrs=ds.attrs,
                        chunk=chunk_, position=j)
        with torch.no_grad():
            return [k(ck) for k in kernels]

    keep_heap()
    base = resident_bytes()
    with _workers(workers) as pmap:
        for start in range(0, n, max(1, int(chunk))):
            sub = ds[sorted(wanted)].isel(checkpoint=slice(start, start + max(1, int(chunk))))
            w = checkpoint_weights(sub, names=sorted(wanted), dtype=torch.float64, device=dev)
            c = sub.sizes["checkpoint"]
            shared = Chunk(weights=w)
            jobs = [({nm: v[j : j + 1] for nm, v in w.items()}, start + j, shared, j) for j in range(c)]
            for (_, i, _, _), res in zip(jobs, pmap(one, jobs)):
                for k, r in zip(kernels, res):
                    _put(values[k.name], r, i, n)
            del w, jobs, shared
            now = resident_bytes()
            if now is not None and base is not None and now > base + TRIM_AFTER_GROWTH:
                trim_heap()
                base = resident_bytes()
            report(stage, start + c, n)
    return {k.name: k.assemble(values.pop(k.name), ds["checkpoint"]) for k in kernels}


def _put(stacked: dict[str, np.ndarray], result: dict[str, Any], i: int, n: int) -> None:
    """Write one checkpoint's kernel result into the (checkpoint, ...) arrays of ``stacked``, allocated at the
    first checkpoint (so a trajectory's per-checkpoint arrays are held once, never as a list and its stack); an
    array is widened to a later value's dtype where that needs it (an int at one checkpoint, a float at the next)."""
    for key, value in result.items():
        a = np.asarray(value)
        buf = stacked.get(key)
        if buf is None:
            buf = stacked[key] = np.zeros((n, *a.shape), dtype=a.dtype)
        elif buf.shape[1:] != a.shape:
            raise AnalysisError(f"kernel value {key!r} changes shape between checkpoints: {buf.shape[1:]} then {a.shape}")
        elif not np.can_cast(a.dtype, buf.dtype, casting="safe"):
            buf = stacked[key] = buf.astype(np.result_type(buf.dtype, a.dtype))
        buf[i] = a


@contextmanager
def _workers(n: int) -> Iterator[Callable[[Callable[..., Any], list[tuple]], list[Any]]]:
    """``pmap(fn, [args, ...]) -> [fn(*args), ...]`` on ``n`` threads with single-threaded torch operations."""
    if int(n) <= 1:
        yield lambda fn, jobs: [fn(*a) for a in jobs]
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with ThreadPoolExecutor(max_workers=int(n)) as pool:
            yield lambda fn, jobs: list(pool.map(lambda a: fn(*a), jobs))
    finally:
        torch.set_num_threads(before)
