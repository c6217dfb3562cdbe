"""A run directory's checkpoints as lazy arrays: a trajectory larger than memory, read a chunk at a time.

:func:`mechgrok.store.own.load_run_dir` reads a run eagerly while its weights are small (below
:data:`EAGER_LIMIT` bytes). Above that, every checkpoint file is checked from its safetensors header only
(keys, shapes, dtypes and the stored epoch, without reading the weights), and each weight variable is backed by a
:class:`CheckpointStack`: selecting checkpoints (``ds.isel(checkpoint=slice(i, i + chunk))``, as
:func:`mechgrok.engine.run` does) reads only those files. NaN and Inf are then checked as each checkpoint is read,
and a bad value raises the same :class:`~mechgrok.errors.CheckpointError` naming the file, at read time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import xarray as xr
from safetensors import SafetensorError, safe_open
from xarray.backends import BackendArray
from xarray.core import indexing

from mechgrok.errors import CheckpointError

__all__ = ["EAGER_LIMIT", "check_header", "CheckpointStack", "lazy_variable"]

#: Runs whose stacked weights exceed this many bytes are read lazily (float32).
EAGER_LIMIT = 256 * 2**20

_FLOAT_DTYPES = {"F16": "float16", "BF16": "bfloat16", "F32": "float32", "F64": "float64"}


def check_header(f: Path, epoch: int, shapes: dict[str, tuple[int, ...]], keys: dict[str, str]) -> None:
    """Check one checkpoint from its safetensors header: the stored epoch, every key, shape and float dtype.

    Parameters
    ----------
    f : Path
        The file.
    epoch : int
        The epoch its name gives.
    shapes, keys : dict
        Expected shape and state-dict key of every weight, by TransformerLens name.

    Raises
    ------
    CheckpointError
        Naming the file and the problem.
    """
    try:
        with safe_open(str(f), framework="np") as h:
            stored = (h.metadata() or {}).get("epoch")
            if stored is not None and stored != str(epoch):
                raise CheckpointError(f"the file's metadata says epoch {stored[:20]} but its name says {epoch} "
                                      "(a checkpoint of another run or epoch, renamed?)", path=f)
            present = set(h.keys())
            for name, key in keys.items():
                if key not in present:
                    raise CheckpointError(f"missing key {key!r}", path=f)
                sl = h.get_slice(key)
                dtype, shape = sl.get_dtype(), tuple(sl.get_shape())
                if dtype not in _FLOAT_DTYPES:
                    raise CheckpointError(f"{key} has dtype {dtype}, expected a float tensor", path=f)
                if shape != shapes[name]:
                    raise CheckpointError(f"{key} has shape {shape}, expected {shapes[name]} for the run's config",
                                          path=f)
    except CheckpointError:
        raise
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"cannot read safetensors checkpoint ({str(e)[:160]})", path=f) from None


class CheckpointStack(BackendArray):
    """One weight over every checkpoint of a run, read from the files on indexing (float32).

    Parameters
    ----------
    files : sequence of Path
        The checkpoint files, in checkpoint order.
    key : str
        The weight's state-dict key.
    shape : tuple of int
        Its shape in one checkpoint.
    """

    def __init__(self, files: Sequence[Path], key: str, shape: tuple[int, ...]):
        self.files = list(files)
        self.key = key
        self.shape = (len(self.files), *shape)
        self.dtype = np.dtype(np.float32)

    def __getitem__(self, key: indexing.ExplicitIndexer) -> np.ndarray:
        return indexing.explicit_indexing_adapter(key, self.shape, indexing.IndexingSupport.OUTER, self._read)

    def _read(self, key: tuple) -> np.ndarray:
        """Outer indexing: an int, a slice or a 1-D integer array per axis (the first one picks files)."""
        which = np.arange(self.shape[0])[key[0]]
        rest = tuple(key[1:])
        out = [_outer(self._one(self.files[i]), rest) for i in np.atleast_1d(which)]
        stacked = np.stack(out) if out else np.zeros((0, *_outer(np.zeros(self.shape[1:]), rest).shape), np.float32)
        return stacked[0] if np.ndim(which) == 0 else stacked

    def _one(self, f: Path) -> np.ndarray:
        try:
            with safe_open(str(f), framework="pt") as h:
                arr = h.get_tensor(self.key).float().numpy()
        except (SafetensorError, OSError, ValueError, RuntimeError) as e:
            raise CheckpointError(f"cannot read safetensors checkpoint ({str(e)[:160]})", path=f) from None
        if arr.shape != self.shape[1:]:
            raise CheckpointError(f"{self.key} has shape {arr.shape}, expected {self.shape[1:]} (the file changed "
                                  "since the run was opened?)", path=f)
        if not np.isfinite(arr).all():
            raise CheckpointError(f"{self.key} holds NaN or Inf values", path=f)
        return arr


def _outer(arr: np.ndarray, key: tuple) -> np.ndarray:
    for axis in reversed(range(len(key))):  # from the last axis, so that an int removing an axis shifts nothing
        k = key[axis]
        arr = np.take(arr, k, axis=axis) if isinstance(k, (np.ndarray, list)) or np.ndim(k) == 0 and not \
            isinstance(k, slice) else arr[(slice(None),) * axis + (k,)]
    return arr


def lazy_variable(var: xr.Variable, files: Sequence[Path], key: str) -> xr.Variable:
    """``var`` (dims ``checkpoint``, ...) backed by a :class:`CheckpointStack` of ``files`` instead of its data."""
    stack = CheckpointStack(files, key, tuple(var.shape[1:]))
    return xr.Variable(var.dims, indexing.LazilyIndexedArray(stack), var.attrs, var.encoding)
