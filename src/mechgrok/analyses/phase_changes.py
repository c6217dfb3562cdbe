"""Phase changes in loss curves: where each drop starts, is steepest and ends, for any set of curves.

A phase change (Olsson et al. 2022; Nanda et al. 2023, appendix on 5-digit addition and induction heads) shows
in a loss curve as a drop that is steep compared with the rest of the curve. The rule, applied to every curve
(every entry of the dims other than ``dim``) on its own:

1. y = log10(max(loss, ``floor``)) at the curve's logged epochs (NaN entries, e.g. between test evaluations, are
   dropped; a curve longer than ``max_points`` (6000) is first averaged over blocks of ceil(n / max_points)
   points, each placed at its first epoch), smoothed by a running median over ``window`` points (default: ``max(5, n // 60)`` rounded up to
   odd, n the number of points) to remove batch noise;
2. the slope s = dy/d(epoch) (decades per epoch) over the window: (y[i + h] - y[i - h]) / (e[i + h] - e[i - h])
   with h = window // 2, and 0 within h points of either end (no full window there);
3. the **steep points** are those with s < ``slope_frac`` x min(s) (default 0.1: a tenth of the curve's steepest
   descent); runs of steep points closer than ``window`` points are merged;
4. each run is a drop: its **onset** is its first epoch, its **end** its last, its **steepest** epoch the
   argmin of s in it, its height the fall of the smoothed curve from onset to end (decades). Drops lower than
   ``min_drop`` decades (default 0.3, a factor of 2) are discarded; at most ``max_drops`` are kept (the highest),
   listed by onset along the ``drop`` dim;
5. separately, **first_below** is the first epoch whose raw loss is below ``threshold`` nats (default 0.1), the
   threshold crossing used to check the onsets.

The thresholds are recorded in ``attrs["rule"]`` and as attrs of their own. :func:`learning_order` orders the
curves along one dim (e.g. ``answer_position``) by the onset of their highest drop: the order in which the
answer digits are learned.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import xarray as xr
from scipy.ndimage import median_filter

from mechgrok.errors import AnalysisError

__all__ = ["phase_changes", "learning_order"]

_VARS = {
    "onset": ("epochs", "first epoch of the drop (its first steep point)"),
    "steepest": ("epochs", "epoch of the steepest descent in the drop"),
    "end": ("epochs", "last epoch of the drop (its last steep point)"),
    "drop_decades": ("decades", "fall of the smoothed log10 loss from onset to end"),
    "loss_before": ("nats", "smoothed loss at the onset"),
    "loss_after": ("nats", "smoothed loss at the end"),
}


def _one_curve(e: np.ndarray, v: np.ndarray, *, window: int | None, slope_frac: float, min_drop: float,
               max_drops: int, threshold: float, floor: float, max_points: int) -> tuple[np.ndarray, int, float, int]:
    ok = np.isfinite(v)
    e, v = e[ok].astype(np.float64), v[ok]
    out = np.full((max_drops, len(_VARS)), np.nan)
    below = np.flatnonzero(v < threshold)
    first_below = float(e[below[0]]) if below.size else np.nan
    if e.size < 5:
        return out, 0, first_below, 0
    if e.size > max_points:  # long curves: mean of log10 loss over blocks of b points, at each block's first epoch
        b = -(-e.size // max_points)
        m = e.size // b * b
        e = e[:m:b]
        v = 10 ** np.log10(np.maximum(v[:m], floor)).reshape(-1, b).mean(axis=1)
    w = window if window is not None else max(5, e.size // 60)
    w = int(w) + (1 - int(w) % 2)
    y = median_filter(np.log10(np.maximum(v, floor)), size=min(w, e.size - (1 - e.size % 2)), mode="nearest")
    h = w // 2  # slope over the window: (y[i + h] - y[i - h]) / (e[i + h] - e[i - h]), clamped at the ends
    lo, hi = np.maximum(np.arange(e.size) - h, 0), np.minimum(np.arange(e.size) + h, e.size - 1)
    s = (y[hi] - y[lo]) / (e[hi] - e[lo])
    s[(np.arange(e.size) < h) | (np.arange(e.size) > e.size - 1 - h)] = 0.0  # no full window at the ends
    smin = float(s.min())
    if not smin < 0:
        return out, 0, first_below, w
    steep = np.flatnonzero(s < slope_frac * smin)
    runs: list[list[int]] = [[int(steep[0]), int(steep[0])]]
    for i in steep[1:]:
        if i - runs[-1][1] <= w:
            runs[-1][1] = int(i)
        else:
            runs.append([int(i), int(i)])
    drops = []
    for i0, i1 in runs:
        height = y[i0] - y[i1]
        if height >= min_drop:
            k = i0 + int(np.argmin(s[i0 : i1 + 1]))
            drops.append((e[i0], e[k], e[i1], height, 10 ** y[i0], 10 ** y[i1]))
    drops = sorted(sorted(drops, key=lambda d: -d[3])[:max_drops])
    for j, d in enumerate(drops):
        out[j] = d
    return out, len(drops), first_below, w


def phase_changes(
    curves: xr.DataArray,
    *,
    dim: str = "epoch",
    window: int | None = None,
    slope_frac: float = 0.1,
    min_drop: float = 0.3,
    max_drops: int = 8,
    threshold: float = 0.1,
    floor: float = 1e-12,
    max_points: int = 6000,
) -> xr.Dataset:
    """Detect the phase changes (drops) of every curve (module docstring for the rule).

    Parameters
    ----------
    curves : xarray.DataArray
        Losses (nats) over ``dim`` and any other dims (``answer_position``, ``frac_train``, ``head``, ...).
    dim : str
        The dim along which the curves run (its coordinate: epochs or steps).
    window : int, optional
        Running-median width in points (default ``max(5, n // 60)``, made odd).
    slope_frac : float
        A point is steep where its slope is below ``slope_frac`` times the curve's steepest slope.
    min_drop : float
        Smallest drop kept, in decades of loss.
    max_drops : int
        Length of the ``drop`` dim.
    threshold : float
        Loss (nats) whose first crossing is reported as ``first_below``.
    floor : float
        Losses below it are clipped before the logarithm.
    max_points : int
        Longer curves are first averaged (log10 loss) over blocks of ceil(n / max_points) points, each placed at
        its first epoch; the epochs found are then accurate to a block.

    Returns
    -------
    xarray.Dataset
        Over the curves' other dims and ``drop``: ``onset``, ``steepest``, ``end`` (epochs, NaN where a curve has
        fewer drops), ``drop_decades``, ``loss_before``, ``loss_after``; over the other dims: ``n_drops``,
        ``main_drop`` (index of the highest drop), ``main_onset``, ``main_steepest``, ``main_end`` and
        ``first_below``. Attrs: the rule and every threshold.

    Raises
    ------
    AnalysisError
        If ``curves`` has no dim ``dim``.

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> e = np.arange(1000)
    >>> loss = 10 ** (0.3 - 2 / (1 + np.exp(-(e - 400) / 10)))  # log10 loss falls 2 decades around epoch 400
    >>> pc = phase_changes(xr.DataArray(loss, dims="epoch", coords={"epoch": e}))
    >>> int(pc["n_drops"]), 300 < float(pc["main_onset"]) < 400 < float(pc["main_end"]) < 500
    (1, True)
    >>> float(pc["main_steepest"])
    400.0
    """
    if dim not in curves.dims:
        raise AnalysisError(f"the curves have no dim {dim!r} (dims {curves.dims})")
    other = [d for d in curves.dims if d != dim]
    arr = curves.transpose(*other, dim).values.astype(np.float64)
    flat = arr.reshape(-1, arr.shape[-1])
    e = np.asarray(curves[dim].values, dtype=np.float64)
    res = np.full((flat.shape[0], max_drops, len(_VARS)), np.nan)
    n = np.zeros(flat.shape[0], dtype=np.int64)
    fb = np.full(flat.shape[0], np.nan)
    used_w = 0
    for i, v in enumerate(flat):
        res[i], n[i], fb[i], w = _one_curve(e, v, window=window, slope_frac=slope_frac, min_drop=min_drop,
                                            max_drops=max_drops, threshold=threshold, floor=floor,
                                            max_points=max_points)
        used_w = max(used_w, w)
    shape = arr.shape[:-1]
    coords = {d: curves[d] for d in other if d in curves.coords}
    data: dict[str, Any] = {}
    for j, (name, (units, desc)) in enumerate(_VARS.items()):
        data[name] = ((*other, "drop"), res[..., j].reshape(*shape, max_drops), {"units": units, "description": desc})
    heights = np.where(np.isnan(res[..., 3]), -np.inf, res[..., 3])
    main = np.where(n > 0, heights.argmax(axis=1), -1)
    pick = lambda j: np.where(n > 0, res[np.arange(len(n)), np.maximum(main, 0), j], np.nan)  # noqa: E731
    data["n_drops"] = (tuple(other), n.reshape(shape), {"units": "1", "description": "drops found"})
    data["main_drop"] = (tuple(other), main.reshape(shape), {"units": "1", "description": "index along drop of "
                                                              "the highest drop (-1: none)"})
    for j, name in ((0, "onset"), (1, "steepest"), (2, "end")):
        data[f"main_{name}"] = (tuple(other), pick(j).reshape(shape), {"units": "epochs", "description":
                                                                       f"{_VARS[name][1]}, for the highest drop"})
    data["first_below"] = (tuple(other), fb.reshape(shape), {"units": "epochs", "description":
                                                             f"first epoch with loss < {threshold} nats"})
    rule = (f"log10 loss (clipped at {floor}), running median over {'max(5, n // 60)' if window is None else window} "
            f"points (odd; widest used {used_w}); steep where d log10 loss / d {dim} < {slope_frac} x the curve's "
            f"steepest slope; steep runs closer than the window merged; a run is a drop if it falls >= {min_drop} "
            f"decades: onset = its first, end = its last, steepest = its steepest point; at most {max_drops} drops; "
            f"first_below = first {dim} with loss < {threshold} nats; curves longer than {max_points} points are first "
            f"averaged over blocks of ceil(n / {max_points}) points (log10 loss)")
    return xr.Dataset(data, coords={**coords, "drop": np.arange(max_drops)}, attrs={
        "title": "mechgrok phase changes", "rule": rule, "dim": dim, "slope_frac": slope_frac, "min_drop_decades":
        min_drop, "max_drops": max_drops, "threshold": threshold, "floor": floor,
        "window": "auto" if window is None else int(window), "max_points": max_points})


def learning_order(pc: xr.Dataset, dim: str) -> list[Any]:
    """The entries of ``dim`` ordered by the onset of their highest drop (entries without a drop last).

    Parameters
    ----------
    pc : xarray.Dataset
        Output of :func:`phase_changes` with ``dim`` among its dims (e.g. ``answer_position``).
    dim : str

    Returns
    -------
    list
        Coordinate values of ``dim``, earliest-learned first.

    Raises
    ------
    AnalysisError
        If ``dim`` is not a dim of ``pc``.

    Examples
    --------
    >>> import xarray as xr
    >>> pc = xr.Dataset({"main_onset": ("answer_position", [300.0, 100.0, float("nan")])},
    ...                 coords={"answer_position": [0, 1, 2]})
    >>> learning_order(pc, "answer_position")
    [1, 0, 2]
    """
    if dim not in pc.dims:
        raise AnalysisError(f"no dim {dim!r} in the phase changes (dims {tuple(pc.dims)})")
    onset = pc["main_onset"]
    extra = [d for d in onset.dims if d != dim]
    if extra:
        onset = onset.min(extra)
    v = np.where(np.isnan(onset.values), np.inf, onset.values)
    return [pc[dim].values[i].item() for i in np.argsort(v, kind="stable")]
