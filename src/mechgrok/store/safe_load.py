"""Safe loading of checkpoint files: ``torch.load(weights_only=True, map_location="cpu")`` unless trusted.

A pickle can run arbitrary code while it is unpickled. By default mechgrok loads ``.pth``/``.pt`` files with
PyTorch's restricted unpickler (``weights_only=True``), which only rebuilds tensors and plain Python containers,
numbers and strings; every file the paper's code wrote (paper.md section 5, except the numpy-array file) loads
this way. A file that needs a full unpickle (a numpy array, a pickled config class such as TransformerLens'
``HookedTransformerConfig``, or a crafted payload) is refused with :class:`UnsafeCheckpointError`, whose
message names the opt-in: ``trusted=True`` in Python, ``--trust-checkpoint`` on the command line.

With ``trusted=True`` the file is fully unpickled; classes whose module is not installed (for example
``transformer_lens.HookedTransformerConfig`` without TransformerLens) are rebuilt as :class:`MissingClass`
stand-ins that keep their pickled state, so their fields can still be read.

Safetensors files (what mechgrok writes) are loaded with ``safetensors`` and never need trust.
"""

from __future__ import annotations

import pickle
import pickletools
import types
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch

from mechgrok.errors import CheckpointError, UnsafeCheckpointError

__all__ = ["TRUST_HINT", "MissingClass", "load_checkpoint_file"]

#: How the user opts in to a full unpickle, quoted in every refusal.
TRUST_HINT = "pass --trust-checkpoint (trusted=True in Python) only if you trust the file"


class MissingClass:
    """Stand-in for a pickled class whose module is not installed (trusted loads only).

    Attributes
    ----------
    __mechgrok_missing__ : str
        ``"module.qualname"`` of the class the pickle named.
    args, kwargs : tuple, dict
        Constructor arguments recorded by the pickle, if any.
    state : object
        Pickled state that was not a dict (a dict state becomes the instance ``__dict__``).
    """

    __mechgrok_missing__ = "?"

    def __new__(cls, *args: Any, **kwargs: Any) -> MissingClass:  # both NEWOBJ and a plain call land here
        obj = super().__new__(cls)
        obj.__dict__["args"] = args
        obj.__dict__["kwargs"] = kwargs
        return obj

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 2 and (state[0] is None or isinstance(state[0], dict)):
            state = {**(state[0] or {}), **(state[1] or {})}  # (dict state, slot state)
        if isinstance(state, dict):
            self.__dict__.update(state)
        else:
            self.__dict__["state"] = state

    def fields(self) -> dict[str, Any]:
        """The pickled attributes (without the recorded constructor arguments when they are empty)."""
        return {k: v for k, v in self.__dict__.items() if not (k in ("args", "kwargs") and not v)}

    def __repr__(self) -> str:
        return f"<missing class {self.__mechgrok_missing__}>"


class _TolerantUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        try:
            return super().find_class(module, name)
        except (ImportError, AttributeError):
            return type(name, (MissingClass,), {"__mechgrok_missing__": f"{module}.{name}", "__module__": __name__})


def _tolerant_pickle_module() -> types.ModuleType:
    mod = types.ModuleType("mechgrok_tolerant_pickle")
    mod.Unpickler = _TolerantUnpickler  # type: ignore[attr-defined]
    mod.load = pickle.load  # type: ignore[attr-defined]  # torch's legacy headers only
    mod.UnpicklingError = pickle.UnpicklingError  # type: ignore[attr-defined]
    return mod


def _pickles_well_formed(path: Path) -> bool:
    """Whether the file's pickle stream(s) parse completely (without executing anything).

    Used to tell a file that is merely refused by the restricted unpickler (well formed) from a truncated or
    corrupt one, for which PyTorch raises the same ``UnpicklingError``.
    """
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as zf:
                names = [n for n in zf.namelist() if n.endswith("data.pkl")]
                if not names:
                    return False
                for _ in pickletools.genops(zf.read(names[0])):
                    pass
            return True
        with open(path, "rb") as f:
            size = path.stat().st_size
            # a raw pickle, or torch's legacy format: 5 pickles (magic, protocol, sys info, object, keys) + data
            for _ in range(5):
                for _ in pickletools.genops(f):
                    pass
                if f.tell() >= size:
                    return True
            return True
    except Exception:
        return False


def _unsafe_globals(path: Path) -> list[str]:
    try:
        if zipfile.is_zipfile(path):
            return list(torch.serialization.get_unsafe_globals_in_checkpoint(str(path)))
    except Exception:
        pass
    return []


def load_checkpoint_file(path: str | Path, *, trusted: bool = False) -> Any:
    """Load one ``torch.save`` file (or a ``.safetensors`` file) onto the CPU, safely by default.

    Parameters
    ----------
    path : str or Path
        The file.
    trusted : bool
        Allow a full unpickle (``weights_only=False``) for files the restricted unpickler refuses. Only for
        files from a trusted source: unpickling can run arbitrary code.

    Returns
    -------
    object
        What was saved (typically a dict); tensors are on the CPU. A ``.safetensors`` file gives a dict of
        tensors.

    Raises
    ------
    CheckpointError
        If the file is missing, empty, truncated or not a checkpoint.
    UnsafeCheckpointError
        If the file needs a full unpickle and ``trusted`` is False; the message names the opt-in.

    Notes
    -----
    Zip-format files are memory-mapped (``mmap=True``) so a large trajectory is not read twice into memory.
    The original grokking files were saved on ``cuda:0``; ``map_location="cpu"`` makes them load anywhere
    (paper.md section 7, pitfall 14).
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError("file not found", path=path)
    if not path.is_file():
        raise CheckpointError("not a file", path=path)
    if path.stat().st_size == 0:
        raise CheckpointError("empty file", path=path)
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointError(f"cannot read safetensors file (truncated or corrupt?): {e}", path=path) from None
    is_zip = zipfile.is_zipfile(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's pickle-protocol notes on refused files
            if trusted:
                return torch.load(path, map_location="cpu", weights_only=False, pickle_module=_tolerant_pickle_module())
            return torch.load(path, map_location="cpu", weights_only=True, mmap=is_zip)
    except pickle.UnpicklingError as e:
        if not trusted and "Weights only load failed" in str(e) and _pickles_well_formed(path):
            found = _unsafe_globals(path)
            what = f" (it references {', '.join(found[:4])})" if found else ""
            raise UnsafeCheckpointError(
                f"refused: the file needs a full unpickle, which can run arbitrary code{what}; {TRUST_HINT}", path=path
            ) from None
        if "Weights only load failed" in str(e):
            raise CheckpointError("cannot read checkpoint: its pickle stream is truncated or corrupt", path=path) from None
        raise CheckpointError(f"cannot read checkpoint (truncated or corrupt?): {_first_line(e)}", path=path) from None
    except MemoryError:
        raise
    except Exception as e:  # torch raises RuntimeError, OSError, EOFError, KeyError, ... on bad files
        raise CheckpointError(
            f"cannot read checkpoint (truncated or not a torch.save file?): {type(e).__name__}: {_first_line(e)}", path=path
        ) from None


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0][:200] if text else ""
