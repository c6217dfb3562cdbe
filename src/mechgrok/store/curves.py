"""Loss-curve-only files: runs whose file holds curves but no model, as a Dataset of curves.

The authors released several runs as loss curves only (``../shared/data/nanda-saved-runs/README.md``):

=======================================  ==========================================  ==============================
content                                  example                                     Dataset
=======================================  ==========================================  ==============================
dict ``train_losses`` / ``test_losses``  ``5_digit_addition_finite.pth``,            ``loss_train``, ``loss_test``
                                         ``skip_trigram_finite.pth``                 (epoch)
list of floats                           ``skip_trigram_infinite.pth``,              ``loss_train`` (epoch)
                                         ``5_digit_addition_infinite_train.pth``
numpy array (steps, n + 1), trusted      ``5_digit_addition_infinite_per_token.pth`` ``loss_train_per_token``
                                                                                     (epoch, answer_position) and
                                                                                     ``loss_train`` (their mean)
list ``[frac_trains, losses]``           ``mod_addition_frac_train_sweep.pth``       ``loss_train``, ``loss_test``
                                                                                     (frac_train, epoch)
dict ``losses`` / ``d_models``           ``no_wd_width_scan.pth``                    ``loss_train``, ``loss_test``
                                                                                     (d_model, epoch)
=======================================  ==========================================  ==============================

Rules
-----
- The ``epoch`` coordinate is the list index (an epoch for finite data, an optimiser step for the infinite-data
  runs, which draw one fresh batch per step; ``attrs["epoch_unit"]`` says which where the file tells). Lists of
  different lengths in one dict are placed by :func:`mechgrok.store.assemble.loss_curves` (inferred stride).
- Sweeps: ``losses[2 i]`` is the train curve and ``losses[2 i + 1]`` the test curve of the i-th value of the swept
  quantity (the README's pairing; for the width scan it is inferred). Runs of different lengths are padded with
  NaN; ``run_length`` (epochs) holds each run's own length.
- The per-token array is a pickled numpy array: it loads only with ``trusted=True`` (``--trust-checkpoint``).
- ``attrs["task"]`` is ``"curves"``; ``attrs["run"]`` names the run where the file name says it (``skip_trigram``,
  ``digit_addition``, ``modular_arithmetic``), and the per-token array is 5-digit addition's (n + 1 answer
  positions, carry-out first).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import xarray as xr

from mechgrok import __version__
from mechgrok.errors import CheckpointError
from mechgrok.store.assemble import curve_log_every, loss_curves
from mechgrok.store.safe_load import load_checkpoint_file

__all__ = ["is_curve_only", "curves_dataset", "load_loss_curves"]

_RUN_OF_PREFIX = (("skip_trigram", "skip_trigram"), ("5_digit_addition", "digit_addition"),
                  ("mod_addition", "modular_arithmetic"), ("no_wd_width_scan", "modular_arithmetic"),
                  ("induction_head", "repeated_subsequences"))


def _numbers(x: Any) -> bool:
    """A non-empty list of Python floats (the authors' loss lists; a list of ints is not taken for losses)."""
    return isinstance(x, (list, tuple)) and len(x) > 0 and all(isinstance(v, float) for v in x[:16])


def is_curve_only(obj: Any) -> bool:
    """Whether an unpickled file holds loss curves and no model (one of the layouts in the module docstring).

    Examples
    --------
    >>> is_curve_only([0.5, 0.25]), is_curve_only({"train_losses": [1.0], "test_losses": [2.0]}), is_curve_only([1, 2])
    (True, True, False)
    >>> is_curve_only({"model": {}, "train_losses": [1.0]})
    False
    """
    if isinstance(obj, np.ndarray):
        return obj.ndim in (1, 2) and obj.size > 0 and np.issubdtype(obj.dtype, np.floating)
    if _numbers(obj):
        return True
    if isinstance(obj, (list, tuple)) and len(obj) == 2 and _numbers(obj[0]) and isinstance(obj[1], (list, tuple)):
        return len(obj[1]) == 2 * len(obj[0]) and all(_numbers(c) for c in obj[1])
    if isinstance(obj, Mapping):
        keys = set(map(str, obj))
        if keys and keys <= {"train_losses", "test_losses"}:
            return True
        if keys == {"losses", "d_models"}:
            return True
    return False


def _run_of(path: Path) -> str:
    for prefix, run in _RUN_OF_PREFIX:
        if path.name.startswith(prefix):
            return run
    return "unknown"


def _sweep(values: Any, losses: Any, *, dim: str, units: str, path: Path) -> dict[str, Any]:
    vals = [float(v) if dim == "frac_train" else int(v) for v in values]
    if len(losses) != 2 * len(vals):
        raise CheckpointError(f"{len(losses)} curves for {len(vals)} values of {dim}: expected a (train, test) pair each",
                              path=path)
    lengths = [len(c) for c in losses]
    n = max(lengths)
    arr = np.full((2, len(vals), n), np.nan)
    for i, c in enumerate(losses):
        arr[i % 2, i // 2, : len(c)] = np.asarray([float(v) for v in c])
    run_len = [max(lengths[2 * i], lengths[2 * i + 1]) for i in range(len(vals))]
    pairing = f"losses[2 i] is the train curve and losses[2 i + 1] the test curve of {dim}[i]"
    ds = xr.Dataset(
        {"loss_train": ((dim, "epoch"), arr[0], {"units": "nats", "description": f"train loss of each run ({pairing})"}),
         "loss_test": ((dim, "epoch"), arr[1], {"units": "nats", "description": f"test loss of each run ({pairing})"}),
         "run_length": ((dim,), np.asarray(run_len, dtype=np.int64),
                        {"units": "epochs", "description": "entries in the run's curves (the rest is NaN padding)"})},
        coords={dim: (dim, vals, {"units": units}), "epoch": ("epoch", np.arange(n, dtype=np.int64), {"units": "epochs"})},
    )
    ds.attrs["curve_epochs"] = f"index i is epoch i; {pairing}; runs of different lengths are padded with NaN"
    return ds


def curves_dataset(obj: Any, path: str | Path) -> xr.Dataset:
    """The Dataset of curves of an already unpickled curve-only file (:func:`is_curve_only`).

    Parameters
    ----------
    obj : object
        The file's content.
    path : str or Path
        The file (provenance, the run named by its file name, error messages).

    Returns
    -------
    xarray.Dataset
        Curves over ``epoch`` (nats, float64), with the sweep's own dim (``frac_train``, ``d_model``) or
        ``answer_position`` where the file has one. Attrs ``task`` ("curves"), ``run``, ``source_format``
        ("curves"), ``source_files``, ``curve_epochs`` (the placement rule).

    Raises
    ------
    CheckpointError
        If the content is not one of the curve-only layouts, or a sweep's curves do not pair up.

    Examples
    --------
    >>> ds = curves_dataset({"train_losses": [3.0, 2.0, 1.0, 0.5, 0.4], "test_losses": [3.0, 1.5, 0.6]}, "run.pth")
    >>> ds["loss_test"].dropna("epoch")["epoch"].values.tolist()  # stride 2 inferred from the lengths
    [0, 2, 4]
    """
    path = Path(path)
    if not is_curve_only(obj):
        raise CheckpointError("not a loss-curve-only file (no train_losses/test_losses, list of floats, "
                              "per-token array, or sweep)", path=path)
    try:
        return _curves_dataset(obj, path)
    except (TypeError, ValueError, KeyError, IndexError, OverflowError) as e:
        raise CheckpointError(f"malformed loss curves ({type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''})",
                              path=path) from None


def _curves_dataset(obj: Any, path: Path) -> xr.Dataset:
    attrs: dict[str, Any] = {}
    if isinstance(obj, np.ndarray) and obj.ndim == 2:
        arr = np.asarray(obj, dtype=np.float64)
        steps = np.arange(arr.shape[0], dtype=np.int64)
        ds = xr.Dataset(
            {"loss_train_per_token": (("epoch", "answer_position"), arr,
                                      {"units": "nats", "description": "train loss at each answer position "
                                       "(answer position 0 is the carry-out token, then the sum digits from the most "
                                       "significant), batch mean"}),
             "loss_train": (("epoch",), arr.mean(axis=1), {"units": "nats", "description":
                                                            "mean of the per-token losses"})},
            coords={"epoch": ("epoch", steps, {"units": "steps"}),
                    "answer_position": ("answer_position", np.arange(arr.shape[1], dtype=np.int64))})
        attrs.update(curve_epochs="row i is step i (one fresh batch per step)", epoch_unit="optimiser step",
                     run="digit_addition", n_digits=int(arr.shape[1] - 1))
    elif isinstance(obj, np.ndarray) or _numbers(obj) or (isinstance(obj, Mapping) and set(map(str, obj)) <= {"train_losses", "test_losses"}):
        if isinstance(obj, Mapping):
            curves, rule = loss_curves(obj.get("train_losses"), obj.get("test_losses"), path=path)
        else:
            curves, rule = loss_curves(list(np.asarray(obj, dtype=np.float64).reshape(-1)), None, path=path)
            attrs["epoch_unit"] = "optimiser step (a list of one loss per step)"
        if not curves:
            raise CheckpointError("the file's loss lists are empty", path=path)
        epochs = np.unique(np.concatenate([e for e, _ in curves.values()]))
        data = {}
        for name, (e, v) in curves.items():
            full = np.full(epochs.shape, np.nan)
            full[np.searchsorted(epochs, e)] = v
            a = {"units": "nats", "description": f"{name.split('_')[1]} loss as stored"}
            k = curve_log_every(e)
            if k is not None:
                a["log_every"] = k
            data[name] = (("epoch",), full, a)
        ds = xr.Dataset(data, coords={"epoch": ("epoch", epochs, {"units": "epochs"})})
        attrs["curve_epochs"] = rule
        attrs["run"] = _run_of(path)
    elif isinstance(obj, Mapping):
        ds = _sweep(obj["d_models"], obj["losses"], dim="d_model", units="width of the residual stream", path=path)
        attrs["run"] = _run_of(path)
        attrs["pairing"] = "inferred (the file does not say which curve is train and which test)"
    else:
        ds = _sweep(obj[0], obj[1], dim="frac_train", units="fraction of the p^2 pairs", path=path)
        attrs["run"] = _run_of(path)
    ds.attrs.update({
        "title": "mechgrok curves", "task": "curves", "source_format": "curves",
        "source_files": json.dumps([str(path.resolve())]), "mechgrok_version": __version__, **ds.attrs, **attrs,
    })
    return ds


def load_loss_curves(path: str | Path, *, trusted: bool = False) -> xr.Dataset:
    """Read a loss-curve-only file (module docstring) into a Dataset of curves.

    This is the public loader of curve-only files; sweeps (``mod_addition_frac_train_sweep.pth``,
    ``no_wd_width_scan.pth``) come back with the swept quantity as a dim (``frac_train``, ``d_model``).

    Parameters
    ----------
    path : str or Path
        The ``.pth`` file.
    trusted : bool
        Allow a full unpickle (needed by ``5_digit_addition_infinite_per_token.pth``, a pickled numpy array).

    Returns
    -------
    xarray.Dataset
        As :func:`curves_dataset`.

    Raises
    ------
    CheckpointError
        If the file is unreadable or holds a model or anything but curves.
    UnsafeCheckpointError
        If the file needs a full unpickle and ``trusted`` is False.

    Examples
    --------
    >>> import tempfile, torch, os
    >>> f = os.path.join(tempfile.mkdtemp(), "skip_trigram_infinite.pth")
    >>> torch.save([2.0, 1.0, 0.1], f)
    >>> ds = load_loss_curves(f)
    >>> ds.attrs["run"], ds["loss_train"].values.tolist()
    ('skip_trigram', [2.0, 1.0, 0.1])
    """
    return curves_dataset(load_checkpoint_file(path, trusted=trusted), path)
