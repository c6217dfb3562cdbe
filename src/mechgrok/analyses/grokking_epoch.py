"""The grokking epoch of a run, from its test-loss curve alone (so that curve-only files have one too).

Rule: the grokking epoch is the **first epoch at which the test loss is at or below** ``threshold`` nats
(default 0.1, the loss fallback of He et al.'s stage detector for the end of generalisation; ``beyond.md`` 4.4),
NaN if it never gets there. It needs no weights and no accuracy, so runs trained by mechgrok, the released
training-fraction sweep and the width scan (loss curves only) are all placed by the same rule.
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from mechgrok.errors import AnalysisError

__all__ = ["GROKKING_LOSS", "grokking_epoch"]

#: Test loss (nats) at or below which a run counts as having generalised.
GROKKING_LOSS = 0.1


def _first_below(y: np.ndarray, t: np.ndarray, *, threshold: float) -> float:
    hit = np.nonzero(np.asarray(y, dtype=np.float64) <= threshold)[0]
    return float(t[hit[0]]) if hit.size else np.nan


def grokking_epoch(loss_test: xr.DataArray, *, threshold: float = GROKKING_LOSS, dim: str = "epoch") -> xr.DataArray:
    """The first epoch at which the test loss is at or below ``threshold``.

    Parameters
    ----------
    loss_test : xarray.DataArray
        Test loss in nats over ``dim`` (its coordinate: epochs, increasing), and any other dims (vectorised over
        them: one epoch per run of a sweep). NaN entries (a shorter run on a common axis) never count.
    threshold : float
        Loss in nats (default :data:`GROKKING_LOSS`).
    dim : str
        The epoch dim: ``epoch`` for per-epoch curves, ``checkpoint`` for losses measured at checkpoints.

    Returns
    -------
    xarray.DataArray
        The other dims; float64 epochs, NaN where the loss never reaches the threshold. attrs: ``units``,
        ``description``, ``rule``.

    Raises
    ------
    AnalysisError
        If ``dim`` is missing or ``threshold`` is not positive.

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> loss = xr.DataArray([[4.7, 3.0, 0.5, 0.05, 0.01], [4.7, 4.0, 3.0, 2.0, 1.0]], dims=("frac_train", "epoch"),
    ...                     coords={"frac_train": [0.5, 0.3], "epoch": [0, 100, 200, 300, 400]})
    >>> grokking_epoch(loss).values.tolist()
    [300.0, nan]
    """
    if dim not in loss_test.dims:
        raise AnalysisError(f"grokking_epoch: the test loss has no {dim!r} dim (dims: {loss_test.dims})")
    if not threshold > 0:
        raise AnalysisError(f"grokking_epoch: threshold must be positive, got {threshold}")
    out = xr.apply_ufunc(_first_below, loss_test, loss_test[dim].astype(np.float64), input_core_dims=[[dim], [dim]],
                         vectorize=True, output_dtypes=[np.float64], kwargs={"threshold": float(threshold)})
    out.attrs = {
        "units": "epochs",
        "description": "grokking epoch: first epoch with the test loss at or below the threshold; NaN if never",
        "rule": f"first epoch with loss_test <= {threshold} nats (He et al.'s loss fallback for the end of generalisation)",
        "threshold": float(threshold),
    }
    return out.rename("grokking_epoch")
