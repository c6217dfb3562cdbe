"""Bumps: a series that rises, peaks and falls again (the "bump on the Inner Product w/Truth").

A bump is the signature of *competition among vectors* proposed in the comment thread of Jermyn & Shlegeris
(2022), "Multi-Component Learning and S-Curves" (``shared/reference/beyond.md`` 3.1-3.3): two learned vectors
grow toward the same target; once it is represented, one of them realigns to another target, so its alignment
with the first rises, peaks and declines. This module detects that shape in any series over time (the toy's
alignments c_jk(t), mod-add alignments A_jk(t) and aggregates N_k(t) over ``checkpoint``, ...).

**Statistics** of a series x(t), t_0 .. t_end, along ``dim`` (beyond.md 3.3):

* peak time t* = argmax_t x(t) (the first maximum), peak value x(t*);
* prominence h = x(t*) - max(x(t_0), x(t_end)): how far the peak stands above both ends;
* relative height h / x(t*) (NaN where x(t*) <= 0);
* noise sigma: a robust white-noise estimate from the second differences,
  sigma = 1.4826 median|D2 x - median D2 x| / sqrt(6) (for a smooth series D2 x is small; for white noise of
  standard deviation s, D2 x has standard deviation sqrt(6) s). With ``seed_dim`` the estimates are pooled over
  the seeds (their median), so every seed is judged against the same **noise threshold across seeds**.

**Rule:** a bump is flagged where t* lies strictly inside the series, h > ``noise_factor`` * sigma and
h / x(t*) >= ``min_relative``. The defaults (3 sigma, 5 %) are recorded in the attrs of the result.

**Realignment:** with ``target_dim`` (the series are alignments x[..., k] of one vector with several targets), the
target the vector realigns to is k' != k with the largest rise x(t_end; k') - x(t*; k') after the peak of
x(.; k).
"""

from __future__ import annotations

import numpy as np
import xarray as xr
from scipy.signal import savgol_filter

from mechgrok.errors import AnalysisError

__all__ = ["find_bumps", "bump_noise", "BUMP_RULE"]

#: The rule :func:`find_bumps` applies, recorded in its result's attrs.
BUMP_RULE = (
    "bump where the first argmax t* is strictly inside the series, prominence h = x(t*) - max(x(t_0), x(t_end)) "
    "> noise_factor * sigma (sigma: robust white-noise estimate from second differences, pooled over seeds by "
    "their median where a seed dim is given) and h / x(t*) >= min_relative"
)


def bump_noise(x: xr.DataArray, *, dim: str, seed_dim: str | None = None) -> xr.DataArray:
    """Robust white-noise level of series from their second differences along ``dim``.

    sigma = 1.4826 median|D2 x - median(D2 x)| / sqrt(6), where D2 x(t) = x(t+1) - 2 x(t) + x(t-1). A smooth
    series gives about 0; white noise of standard deviation s gives about s.

    Parameters
    ----------
    x : xarray.DataArray
        Series along ``dim`` (at least 4 points for a nonzero estimate), any other dims.
    dim : str
        The time dim (``time``, ``checkpoint``, ``epoch``).
    seed_dim : str, optional
        Pool the estimates over this dim (their median), broadcast back over it.

    Returns
    -------
    xarray.DataArray
        ``x``'s dims without ``dim``; same units as ``x``.

    Raises
    ------
    AnalysisError
        If ``dim`` or ``seed_dim`` is not a dim of ``x``.

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> rng = np.random.default_rng(0)
    >>> x = xr.DataArray(np.sin(np.linspace(0, 3, 4000)) + rng.normal(0, 0.01, 4000), dims="time")
    >>> round(float(bump_noise(x, dim="time")), 3)
    0.01
    """
    _check_dims(x, dim, seed_dim)
    # contiguous along time: the medians partition rows (a strided view made them 2x slower)
    arr = np.ascontiguousarray(np.moveaxis(np.asarray(x.values, dtype=np.float64), x.get_axis_num(dim), -1))
    dims = [d for d in x.dims if d != dim]
    out = xr.DataArray(_noise(arr), dims=dims, coords={d: x[d] for d in dims if d in x.coords})
    if seed_dim is not None:
        out = out.median(seed_dim).broadcast_like(out).transpose(*dims)
    out.attrs = {"units": x.attrs.get("units", ""), "description": "robust white-noise level from second differences"}
    return out


def _noise(arr: np.ndarray) -> np.ndarray:
    """:func:`bump_noise` of series along the last axis of ``arr`` (contiguous along it: the medians partition rows)."""
    if arr.shape[-1] < 4:
        return np.zeros(arr.shape[:-1])
    d2 = np.diff(arr, n=2, axis=-1)
    mad = np.median(np.abs(d2 - np.median(d2, axis=-1, keepdims=True)), axis=-1)
    return 1.4826 * mad / np.sqrt(6.0)


def _check_dims(x: xr.DataArray, *dims: str | None) -> None:
    for d in dims:
        if d is not None and d not in x.dims:
            raise AnalysisError(f"the series has no dim {d!r} (dims {tuple(x.dims)})")


def find_bumps(
    x: xr.DataArray,
    *,
    dim: str,
    min_relative: float = 0.05,
    noise_factor: float = 3.0,
    seed_dim: str | None = None,
    target_dim: str | None = None,
    smooth: int | None = None,
) -> xr.Dataset:
    """Bump statistics of every series of ``x`` along ``dim`` (beyond.md 3.3), and which are bumps.

    Parameters
    ----------
    x : xarray.DataArray
        Series along ``dim``; every other dim indexes a separate series (learned vector, target, seed, ...).
        NaN is not allowed.
    dim : str
        The time dim; its coordinate (flow time, epochs) gives ``peak_time``.
    min_relative : float
        Smallest relative height h / x(t*) of a bump (default 0.05).
    noise_factor : float
        A bump's prominence must exceed ``noise_factor`` times the noise level (:func:`bump_noise`; default 3).
    seed_dim : str, optional
        Dim of repeated runs (seeds): the noise threshold is pooled across it.
    target_dim : str, optional
        Dim of the targets of an alignment: adds ``realigns_to``, the target whose alignment rises most after
        the peak, and that rise ``realign_gain``.
    smooth : int, optional
        Savitzky-Golay window (odd number of points, polynomial order 2; ``scipy.signal.savgol_filter``) applied
        along ``dim`` before the statistics; the noise level is taken from the raw series.

    Returns
    -------
    xarray.Dataset
        Over ``x``'s dims without ``dim``: ``peak_time`` (``dim``'s units), ``peak_index``, ``peak_value``,
        ``prominence`` (units of ``x``), ``relative_height`` (fraction), ``noise``, ``threshold`` (units of
        ``x``), ``is_bump`` (bool); with ``target_dim`` also ``realigns_to`` (a target label) and
        ``realign_gain`` (units of ``x``). Attrs: ``rule``, ``min_relative``, ``noise_factor``, ``seed_dim``,
        ``smooth``.

    Raises
    ------
    AnalysisError
        If a dim is missing, ``x`` has fewer than 3 points along ``dim``, holds NaN, ``smooth`` is not an odd
        number >= 3 and at most the series length, or ``target_dim`` has one entry.

    Examples
    --------
    A rise and fall over a rising tail, with two targets:

    >>> import numpy as np, xarray as xr
    >>> t = np.linspace(0, 10, 101)
    >>> x = xr.DataArray(np.stack([np.exp(-(t - 4) ** 2), 0.1 * t], -1), dims=("time", "target"),
    ...                  coords={"time": t, "target": [0, 1]})
    >>> b = find_bumps(x, dim="time", target_dim="target")
    >>> b["is_bump"].values.tolist(), float(b["peak_time"][0]), int(b["realigns_to"][0])
    ([True, False], 4.0, 1)
    """
    _check_dims(x, dim, seed_dim, target_dim)
    n = x.sizes[dim]
    if n < 3:
        raise AnalysisError(f"a bump needs at least 3 points along {dim!r}, the series has {n}")
    raw = x.transpose(..., dim)
    arr = np.ascontiguousarray(raw.values, dtype=np.float64)  # rows along dim: argmax and medians run on rows
    if np.isnan(arr).any():
        raise AnalysisError("the series holds NaN; select the finite part first")
    if smooth is not None:
        if int(smooth) < 3 or int(smooth) % 2 == 0 or int(smooth) > n:
            raise AnalysisError(f"smooth must be an odd window of 3..{n} points, got {smooth!r}")
        arr = savgol_filter(arr, int(smooth), 2, axis=-1)
    idx = arr.argmax(-1)
    peak = np.take_along_axis(arr, idx[..., None], -1)[..., 0]
    prom = peak - np.maximum(arr[..., 0], arr[..., -1])
    with np.errstate(invalid="ignore", divide="ignore"):
        rel = np.where(peak > 0, prom / np.where(peak > 0, peak, 1.0), np.nan)
    dims = list(raw.dims[:-1])
    coords = {d: raw[d] for d in dims if d in raw.coords}
    noise = xr.DataArray(_noise(arr), dims=dims, coords=coords)
    if seed_dim is not None:
        noise = noise.median(seed_dim).broadcast_like(noise).transpose(*dims)
    thr = noise_factor * noise.values
    is_bump = (idx > 0) & (idx < n - 1) & (prom > thr) & (np.nan_to_num(rel) >= min_relative)
    tcoord = np.asarray(x[dim].values) if dim in x.coords else np.arange(n)
    units = x.attrs.get("units", "")
    tunits = x[dim].attrs.get("units", "") if dim in x.coords else "steps"
    data = {
        "peak_time": (dims, tcoord[idx], {"units": tunits, "description": f"{dim} of the (first) maximum t*"}),
        "peak_index": (dims, idx.astype(np.int64), {"units": "", "description": f"position of t* along {dim}"}),
        "peak_value": (dims, peak, {"units": units, "description": "x(t*)"}),
        "prominence": (dims, prom, {"units": units, "description": "h = x(t*) - max(x(t_0), x(t_end))"}),
        "relative_height": (dims, rel, {"units": "fraction", "description": "h / x(t*)"}),
        "noise": (dims, noise.values, {"units": units, "description": "robust white-noise level from second differences"}),
        "threshold": (dims, thr, {"units": units, "description": "noise_factor * noise: the smallest prominence of a bump"}),
        "is_bump": (dims, is_bump, {"units": "", "description": BUMP_RULE}),
    }
    if target_dim is not None:
        m = raw.sizes[target_dim]
        if m < 2:
            raise AnalysisError(f"realignment needs at least 2 targets along {target_dim!r}")
        ax = dims.index(target_dim)
        # rise of every target k' after the peak of series k: x(t_end; k') - x(t*_k; k')
        a = np.moveaxis(arr, ax, -2)  # (..., target, time)
        pk = np.moveaxis(idx, ax, -1)  # (..., target k)
        at_peak = np.take_along_axis(a[..., None, :, :], pk[..., :, None, None], -1)[..., 0]  # (..., k, k')
        gain = a[..., None, :, -1] - at_peak
        eye = np.eye(m, dtype=bool)
        gain = np.where(eye, -np.inf, gain)
        best = gain.argmax(-1)
        best_gain = np.take_along_axis(gain, best[..., None], -1)[..., 0]
        labels = np.asarray(raw[target_dim].values) if target_dim in raw.coords else np.arange(m)
        data["realigns_to"] = (dims, np.moveaxis(labels[best], -1, ax),
                               {"units": "", "description": f"the {target_dim} whose alignment rises most after t*"})
        data["realign_gain"] = (dims, np.moveaxis(best_gain, -1, ax),
                                {"units": units, "description": "x(t_end; k') - x(t*; k') of that target"})
    return xr.Dataset(
        data,
        coords=coords,
        attrs={"rule": BUMP_RULE, "min_relative": float(min_relative), "noise_factor": float(noise_factor),
               "seed_dim": seed_dim or "", "smooth": int(smooth or 0), "dim": dim,
               "source": "Jermyn & Shlegeris 2022, Multi-Component Learning and S-Curves (AI Alignment Forum), comment thread"},
    )
