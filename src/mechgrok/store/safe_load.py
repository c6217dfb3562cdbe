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

import io
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


class _TolerantUnpickler(pickle._Unpickler):  # Python's: the C unpickler can grow without bound on damaged input
    def find_class(self, module: str, name: str) -> Any:
        try:
            return super().find_class(module, name)
        except (ImportError, AttributeError):
            return type(name, (MissingClass,), {"__mechgrok_missing__": f"{module}.{name}", "__module__": __name__})


def _tolerant_pickle_module() -> types.ModuleType:
    mod = types.ModuleType("mechgrok_tolerant_pickle")
    mod.Unpickler = _TolerantUnpickler  # type: ignore[attr-defined]
    mod.load = lambda f, **kw: _TolerantUnpickler(f, **kw).load()  # type: ignore[attr-defined]  # legacy headers
    mod.UnpicklingError = pickle.UnpicklingError  # type: ignore[attr-defined]
    return mod


def _is_zip(path: Path) -> bool:
    """``zipfile.is_zipfile``, which raises ``BadZipFile`` on some damaged end records instead of saying no."""
    try:
        return zipfile.is_zipfile(path)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError):
        return False


class _Inert:
    """What every class or function named in a pickle becomes in :func:`_pickles_well_formed`: it accepts any
    arguments and state and does nothing, so the pickle's structure is checked without running its code."""

    def __new__(cls, *args: Any, **kwargs: Any) -> _Inert:
        return object.__new__(cls if isinstance(cls, type) else _Inert)  # NEWOBJ on a stand-in instance too

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        pass

    def __call__(self, *args: Any, **kwargs: Any) -> _Inert:
        return _Inert()

    def __setitem__(self, key: Any, value: Any) -> None:
        pass

    def append(self, value: Any) -> None:
        pass

    def extend(self, values: Any) -> None:
        pass


class _InertUnpickler(pickle._Unpickler):  # the Python unpickler: the C one can loop forever on damaged input
    def find_class(self, module: str, name: str) -> Any:
        return type(name, (_Inert,), {})

    def persistent_load(self, pid: Any) -> Any:
        return _Inert()


_TORCH_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


def _pickles_well_formed(path: Path) -> bool:
    """Whether the file's pickle stream(s) unpickle completely with every named class and function replaced by
    an inert stand-in (nothing of the file's is executed).

    Used to tell a file that is merely refused by the restricted unpickler (well formed) from a truncated or
    corrupt one, for which PyTorch raises the same ``UnpicklingError``.
    """
    try:
        if _is_zip(path):
            with zipfile.ZipFile(path) as zf:
                names = [n for n in zf.namelist() if n.endswith("data.pkl")]
                if not names:
                    return False
                _InertUnpickler(io.BytesIO(zf.read(names[0]))).load()
            return True
        with io.BytesIO(path.read_bytes()) as f:  # in memory: a damaged length never makes a read allocate it
            first = _InertUnpickler(f).load()
            if first != _TORCH_LEGACY_MAGIC:
                return True  # a raw pickle
            # torch's legacy format: magic, protocol, sys info, the object, the storage keys, then raw data
            for _ in range(4):
                _InertUnpickler(f).load()
            return True
    except Exception:
        return False


def _pickle_streams(path: Path) -> list[bytes]:
    """The pickle bytes of a torch file: ``data.pkl`` of a zip file, or the whole file (legacy and raw pickles)."""
    if _is_zip(path):
        with zipfile.ZipFile(path) as zf:
            return [zf.read(n) for n in zf.namelist() if n.endswith("data.pkl")]
    return [path.read_bytes()]


def _named_globals(stream: bytes) -> list[str]:
    """``module.name`` of every class or function a pickle stream names (``GLOBAL`` and ``STACK_GLOBAL`` with
    the two strings pushed before it), read with :mod:`pickletools` without executing anything."""
    out: list[str] = []
    strings: list[str] = []
    f = io.BytesIO(stream)
    while f.tell() < len(stream):
        try:
            for op, arg, _ in pickletools.genops(f):
                if op.name == "GLOBAL" or op.name == "INST":
                    out.append(str(arg).replace(" ", ".", 1))
                elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                    out.append(f"{strings[-2]}.{strings[-1]}")
                elif isinstance(arg, str) and "UNICODE" in op.name or op.name in ("STRING", "SHORT_BINSTRING", "BINSTRING"):
                    strings.append(str(arg))
        except Exception:
            break  # the rest is tensor data (legacy format) or damage: enough has been read
    return out


def _corrupt_global(name: str) -> str | None:
    """Why a named global cannot exist (a damaged file), or None if it may (a real class needing trust).

    Nothing is imported: a name is judged against the modules already imported (``torch``, ``collections``,
    ...); a module that is not installed at all (``transformer_lens`` without TransformerLens) may be real.
    """
    import importlib.util
    import sys

    module, _, attr = name.rpartition(".")
    parts = name.split(".")
    if not module or not all(p.isidentifier() for p in parts):
        return f"{name!r} is not a Python name"
    top = parts[0]
    if top not in sys.modules:
        near = [m for m in sys.modules if "." not in m and len(m) == len(top) and sum(a != b for a, b in zip(m, top)) == 1]
        if near:
            try:
                installed = importlib.util.find_spec(top) is not None
            except (ImportError, ValueError):
                installed = False
            if not installed:
                return f"{name!r} names no installed module; one byte off {near[0]!r}"
    # the longest imported prefix module, then the attribute path below it
    for cut in range(len(parts) - 1, 0, -1):
        mod = sys.modules.get(".".join(parts[:cut]))
        if mod is None:
            continue
        obj: Any = mod
        for i, part in enumerate(parts[cut:], start=cut):
            if hasattr(obj, part):
                obj = getattr(obj, part)
                continue
            sub = ".".join(parts[: i + 1])
            if i < len(parts) - 1 and isinstance(obj, types.ModuleType):
                try:
                    if importlib.util.find_spec(sub) is not None:
                        return None  # an existing submodule not imported yet: may be real
                except (ImportError, ValueError):
                    pass
            return f"{'.'.join(parts[:i])} has no {part!r}"
        return None
    return None


def _damage(path: Path) -> str | None:
    """Why a well-formed pickle that the restricted unpickler refused is damaged rather than unsafe: a named
    class or function that does not exist (a flipped byte in ``_rebuild_tensor_v2``, say). None if none."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pickletools decodes damaged string escapes with warnings
            found = [name for stream in _pickle_streams(path) for name in _named_globals(stream)]
        for name in found:
            why = _corrupt_global(name)
            if why:
                return why
    except Exception:
        return None
    return None


def _unsafe_globals(path: Path) -> list[str]:
    try:
        if _is_zip(path):
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
    is_zip = _is_zip(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's pickle-protocol notes on refused files
            if trusted:
                damage = _damage(path)  # a class name a byte off a real one would become a MissingClass
                if damage is None and not _pickles_well_formed(path):
                    damage = "its pickle stream is truncated or damaged"
                if damage:
                    raise CheckpointError(f"cannot read checkpoint: the file is corrupt ({damage})", path=path)
                return torch.load(path, map_location="cpu", weights_only=False, pickle_module=_tolerant_pickle_module())
            return torch.load(path, map_location="cpu", weights_only=True, mmap=is_zip)
    except pickle.UnpicklingError as e:
        refused = "Weights only load failed" in str(e)
        if refused and not trusted:
            # the restricted unpickler refuses both a file that names a class it does not allow (unsafe, needs
            # trust) and a damaged one (a flipped opcode, a class name one byte off): only the first is "unsafe"
            damage = _damage(path)
            if damage is None and any(m in str(e) for m in _STRUCTURAL_REFUSALS):
                damage = f"the restricted unpickler found: {_refusal_reason(e)}"
            if damage is None and _pickles_well_formed(path):
                found = _unsafe_globals(path)
                what = f" (it references {', '.join(found[:4])})" if found else ""
                raise UnsafeCheckpointError(
                    f"refused: the file needs a full unpickle, which can run arbitrary code{what}; {TRUST_HINT}",
                    path=path) from None
            damage = damage or "its pickle stream is truncated or damaged"
            raise CheckpointError(f"cannot read checkpoint: the file is corrupt ({damage})", path=path) from None
        if refused:
            raise CheckpointError("cannot read checkpoint: its pickle stream is truncated or corrupt", path=path) from None
        raise CheckpointError(f"cannot read checkpoint (truncated or corrupt?): {_first_line(e)}", path=path) from None
    except CheckpointError:
        raise
    except MemoryError:
        size = path.stat().st_size
        raise CheckpointError(f"cannot read checkpoint: loading it asked for more memory than is available, far more "
                              f"than its {size:,} bytes suggest; its size fields are probably damaged", path=path) from None
    except Exception as e:  # torch raises RuntimeError, OSError, EOFError, KeyError, ... on bad files
        raise CheckpointError(
            f"cannot read checkpoint (truncated or not a torch.save file?): {type(e).__name__}: {_first_line(e)}", path=path
        ) from None


#: Refusals of torch's restricted unpickler that come from a damaged structure (a flipped opcode or memo index),
#: not from a class it does not allow: in an intact file, every class or function is named before it is used.
_STRUCTURAL_REFUSALS = ("persistent_load", "persistent id", "Can only ", "Trying to call reduce", "String is too long")


def _refusal_reason(e: BaseException) -> str:
    """The restricted unpickler's own reason (the line after ``WeightsUnpickler error:``), shortened."""
    text = str(e)
    k = text.find("WeightsUnpickler error:")
    reason = text[k + len("WeightsUnpickler error:"):].strip().splitlines()[0] if k >= 0 else _first_line(e)
    return reason[:120].rstrip(". ") or "an unexpected structure"


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0][:200] if text else ""
