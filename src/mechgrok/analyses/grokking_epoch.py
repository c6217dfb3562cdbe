"""The grokking epoch and the grokking delay of a run, from its loss curves alone (so that curve-only files have
them too).

Rules (``docs/sweeps.md``, "Grokking epoch and grokking delay"):

* the **grokking epoch** is the **first epoch at which the test loss is at or below** ``threshold`` nats
  (default 0.1, the loss fallback of He et al.'s stage detector for the end of generalisation; ``beyond.md`` 4.4),
  NaN if it never gets there;
* the **grokking delay** is the number of epochs from memorisation to generalisation: the grokking epoch minus the
  **first epoch at which the training loss is at or below** the same threshold, NaN if either never gets there.
  Grokking is *delayed* generalisation, and the delay separates it from runs that generalise as fast as they
  memorise: in the released training-fraction sweep the grokking epoch inverts between fractions 0.8 and 0.7
  (both runs generalise within 260 epochs), while the delay rises strictly as the fraction falls.

Both need no weights and no accuracy, so runs trained by mechgrok, the released training-fraction sweep and the
width scan (loss curves only) are all placed by the same rules.
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from mechgrok.errors import AnalysisError

__all__ = ["GROKKING_LOSS", "grokking_epoch", "grokking_delay"]

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


def _delay(y_train: np.ndarray, y_test: np.ndarray, t: np.ndarray, *, threshold: float) -> float:
    return _first_below(y_test, t, threshold=threshold) - _first_below(y_train, t, threshold=threshold)


def grokking_delay(
    loss_train: xr.DataArray,
    loss_test: xr.DataArray,
    *,
    threshold: float = GROKKING_LOSS,
    dim: str = "epoch",
) -> xr.DataArray:
    """Epochs from memorisation (train loss <= ``threshold``) to generalisation (test loss <= ``threshold``).

    The grokking epoch (:func:`grokking_epoch`) minus the first epoch at which the training loss is at or below
    the same threshold: how long generalisation is *delayed* after the training set is fitted (memorisation, then
    circuit formation and cleanup before the test loss drops; paper 5.2, ``paper.md`` 3.12). Negative if the test
    loss gets there first. On the released training-fraction sweep (``paper.md`` 4.5) it rises strictly as the
    fraction falls, where the grokking epoch does not (``docs/sweeps.md``).

    Parameters
    ----------
    loss_train, loss_test : xarray.DataArray
        Training and test loss in nats over ``dim`` (the same epochs, increasing), and any other dims (vectorised
        over them, broadcast against each other: one delay per run of a sweep). NaN entries (a shorter run on a
        common axis) never count.
    threshold : float
        Loss in nats for both curves (default :data:`GROKKING_LOSS`).
    dim : str
        The epoch dim: ``epoch`` for per-epoch curves, ``checkpoint`` for losses measured at checkpoints.

    Returns
    -------
    xarray.DataArray
        The other dims; float64 epochs, NaN where either loss never reaches the threshold. attrs: ``units``,
        ``description``, ``rule``, ``threshold``.

    Raises
    ------
    AnalysisError
        If ``dim`` is missing from either curve, their ``dim`` coordinates differ, or ``threshold`` is not
        positive.

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> coords = {"frac_train": [0.5, 0.3], "epoch": [0, 100, 200, 300, 400]}
    >>> train = xr.DataArray([[4.7, 0.05, 0.01, 0.01, 0.01], [4.7, 0.5, 0.05, 0.01, 0.01]],
    ...                      dims=("frac_train", "epoch"), coords=coords)
    >>> test = xr.DataArray([[4.7, 3.0, 0.5, 0.05, 0.01], [4.7, 4.0, 3.0, 2.0, 1.0]],
    ...                     dims=("frac_train", "epoch"), coords=coords)
    >>> grokking_delay(train, test).values.tolist()
    [200.0, nan]
    """
    for name, curve in (("training", loss_train), ("test", loss_test)):
        if dim not in curve.dims:
            raise AnalysisError(f"grokking_delay: the {name} loss has no {dim!r} dim (dims: {curve.dims})")
    if not threshold > 0:
        raise AnalysisError(f"grokking_delay: threshold must be positive, got {threshold}")
    try:
        loss_train, loss_test = xr.align(loss_train, loss_test, join="exact", exclude=[d for d in
                                         set(loss_train.dims) | set(loss_test.dims) if d != dim])
    except ValueError:
        raise AnalysisError(f"grokking_delay: the training and test losses are on different {dim!r} "
                            "coordinates") from None
    out = xr.apply_ufunc(_delay, loss_train, loss_test, loss_test[dim].astype(np.float64),
                         input_core_dims=[[dim], [dim], [dim]], vectorize=True, output_dtypes=[np.float64],
                         kwargs={"threshold": float(threshold)})
    out.attrs = {
        "units": "epochs",
        "description": "grokking delay: epochs from memorisation (train loss at or below the threshold) to "
                       "generalisation (test loss at or below it); NaN if either never gets there",
        "rule": f"first epoch with loss_test <= {threshold} nats minus first epoch with loss_train <= {threshold} nats",
        "threshold": float(threshold),
    }
    return out.rename("grokking_delay")
