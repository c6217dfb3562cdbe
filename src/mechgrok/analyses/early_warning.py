"""Early warning: how many epochs before the test loss drops does each progress measure change?

Nanda et al. (2023, section 5.1) show that the restricted and excluded losses, the Gini coefficients of the
Fourier norms and the sum of squared weights move *before* the test loss falls: they are progress measures. This
module turns that into a number per run and measure, and a summary across a sweep. Any task: the functions take
plain curves over ``checkpoint`` (epochs) and vectorise over every other dim (seed, training fraction, ...).

The change-point rule (:func:`change_onset`), for a curve y(t) over the checkpoints, its direction (``fall`` or
``rise``) and its scale (``log`` for losses and norms, which change by orders of magnitude; ``linear`` for
Gini coefficients and the LLC):

1. z = log y on the log scale (non-positive values dropped), z = y on the linear scale; NaNs are dropped.
2. The **start** is the first extreme against the direction over the whole run (the maximum of a falling
   curve, the minimum of a rising one); the **end** is the extreme in the direction after it. The change is
   Δ = |z(end) - z(start)|.
3. The curve **changes** only if Δ is large enough: at least ``min_fold``-fold on the log scale, at least
   ``min_relative`` x max(|y(start)|, |y(end)|) on the linear scale. Otherwise the onset is NaN (no change).
4. The **onset** is the first checkpoint after the start at which z has covered ``fraction`` (default 0.1) of
   Δ toward the end.

The reference is the model's own test loss (``loss_test``, falling, log scale), which must fall at least
``reference_min_fold`` (10)-fold: a run that never generalises has no drop and no lead. The **lead** of a measure
is onset(test loss) - onset(measure), in epochs: positive when the measure changes first. Its resolution is the
checkpoint spacing (both onsets are checkpoint epochs).
"""

from __future__ import annotations

import warnings
from typing import Literal, Mapping, Sequence

import numpy as np
import xarray as xr

from mechgrok.errors import AnalysisError

__all__ = ["MEASURES", "REFERENCE", "change_onset", "lead_times", "summarise_leads"]

#: The progress measures and how each changes at grokking: name -> (direction, scale). Paper section 5.1: the
#: restricted loss falls, the excluded loss rises, the Gini coefficients rise, the sum of squared weights falls;
#: the LLC falls at grokking (Hoogland et al. 2024; ``docs/llc.md``).
MEASURES: dict[str, tuple[str, str]] = {
    "restricted_loss_test": ("fall", "log"),
    "excluded_loss_full": ("rise", "log"),
    "gini_W_E_component": ("rise", "linear"),
    "gini_W_logit_component": ("rise", "linear"),
    "sum_sq_weights_total": ("fall", "log"),
    "llc_mean": ("fall", "linear"),
}
#: The curve whose drop the leads are measured against: (name, direction, scale).
REFERENCE: tuple[str, str, str] = ("loss_test", "fall", "log")


def _onset_1d(y: np.ndarray, t: np.ndarray, *, direction: str, scale: str, fraction: float, min_fold: float,
              min_relative: float) -> float:
    y = np.asarray(y, dtype=np.float64)
    t = np.asarray(t, dtype=np.float64)
    ok = np.isfinite(y) & np.isfinite(t)
    if scale == "log":
        ok &= y > 0
    y, t = y[ok], t[ok]
    if y.size < 2:
        return np.nan
    z = np.log(y) if scale == "log" else y
    sign = 1.0 if direction == "rise" else -1.0
    s = sign * z  # rising in s is the direction of the change
    i0 = int(np.argmin(s))
    if i0 == s.size - 1:
        return np.nan
    i1 = i0 + int(np.argmax(s[i0:]))
    delta = s[i1] - s[i0]
    if scale == "log":
        if delta < np.log(min_fold):
            return np.nan
    elif delta < min_relative * max(abs(y[i0]), abs(y[i1])) or delta <= 0:
        return np.nan
    hit = np.nonzero(s[i0:] >= s[i0] + fraction * delta)[0]
    return float(t[i0 + hit[0]])


def change_onset(
    curve: xr.DataArray,
    *,
    direction: Literal["fall", "rise"],
    scale: Literal["log", "linear"] = "linear",
    dim: str = "checkpoint",
    fraction: float = 0.1,
    min_fold: float = 2.0,
    min_relative: float = 0.1,
) -> xr.DataArray:
    """The epoch at which a curve starts its change, by the rule of the module docstring.

    Parameters
    ----------
    curve : xarray.DataArray
        Over ``dim`` (its coordinate: epochs, increasing) and any other dims (vectorised over them).
    direction : {"fall", "rise"}
        The direction of the change at grokking.
    scale : {"log", "linear"}
        Measure the change of log y (losses, norms) or of y (Gini coefficients, LLC).
    dim : str
        The epoch dim, ``checkpoint`` by default.
    fraction : float
        In (0, 1): the onset is where the curve has covered this fraction of its change.
    min_fold : float
        On the log scale, the least fold change that counts as a change (> 1).
    min_relative : float
        On the linear scale, the least change relative to the larger magnitude of the start and end levels.

    Returns
    -------
    xarray.DataArray
        ``curve``'s dims without ``dim``; float64 epochs, NaN where the curve does not change. attrs:
        ``units``, ``description`` and ``rule``.

    Raises
    ------
    AnalysisError
        If ``dim`` is missing or an option is out of range.

    Examples
    --------
    A loss that falls 100-fold between epochs 300 and 500 starts its fall at epoch 350 (a tenth of the way
    on the log scale):

    >>> import numpy as np, xarray as xr
    >>> t = np.arange(0, 1000, 50)
    >>> y = xr.DataArray(10.0 ** np.interp(t, [0, 300, 500, 950], [0, 0, -2, -2]), dims="checkpoint",
    ...                  coords={"checkpoint": t})
    >>> float(change_onset(y, direction="fall", scale="log"))
    350.0
    """
    if dim not in curve.dims:
        raise AnalysisError(f"change_onset: the curve {curve.name!r} has no {dim!r} dim (dims: {curve.dims})")
    if direction not in ("fall", "rise") or scale not in ("log", "linear"):
        raise AnalysisError(f"change_onset: direction must be 'fall' or 'rise' and scale 'log' or 'linear', got "
                            f"{direction!r}, {scale!r}")
    if not 0 < fraction < 1 or not min_fold > 1 or not min_relative >= 0:
        raise AnalysisError(f"change_onset: need 0 < fraction < 1, min_fold > 1, min_relative >= 0; got {fraction}, "
                            f"{min_fold}, {min_relative}")
    t = curve[dim].astype(np.float64)
    out = xr.apply_ufunc(
        _onset_1d, curve, t, input_core_dims=[[dim], [dim]], vectorize=True, output_dtypes=[np.float64],
        kwargs={"direction": direction, "scale": scale, "fraction": fraction, "min_fold": min_fold,
                "min_relative": min_relative},
    )
    threshold = f"{min_fold}-fold" if scale == "log" else f"{min_relative} x the larger level"
    out.attrs = {
        "units": "epochs",
        "description": f"onset of the {direction} of {curve.name or 'the curve'}; NaN where it does not change",
        "rule": (f"first epoch after the extreme against the {direction} at which the curve ({scale} scale) has "
                 f"covered {fraction} of its change to the extreme after it; a change must be at least {threshold}"),
    }
    return out


def lead_times(
    measures: xr.Dataset,
    *,
    spec: Mapping[str, tuple[str, str]] | None = None,
    reference: tuple[str, str, str] = REFERENCE,
    dim: str = "checkpoint",
    fraction: float = 0.1,
    min_fold: float = 2.0,
    min_relative: float = 0.1,
    reference_min_fold: float = 10.0,
) -> xr.Dataset:
    """The lead of each progress measure's change over the drop of the test loss, per run.

    Parameters
    ----------
    measures : xarray.Dataset
        The reference curve (``loss_test``) and any of the measures of ``spec`` over ``dim`` (epochs), e.g. the
        ``ablation`` and ``measures`` groups of :func:`mechgrok.analyze` merged, or a sweep's ``measures`` group
        (then over the swept dims too: the result is per run). Measures absent from it are left out.
    spec : mapping, optional
        Measure name -> (direction, scale); default :data:`MEASURES`.
    reference : (name, direction, scale)
        The curve whose drop the leads are measured against (default :data:`REFERENCE`).
    dim, fraction, min_fold, min_relative : optional
        As :func:`change_onset`.
    reference_min_fold : float
        The least fold drop of the reference that counts as a drop (default 10: the model generalised).

    Returns
    -------
    xarray.Dataset
        ``onset_epoch`` (measure, ...) and ``reference_onset_epoch`` (...) in epochs, ``lead`` (measure, ...) =
        reference onset - measure onset in epochs (positive: the measure changes first; NaN where either does
        not change), ``leads`` (measure, ...) bool-valued float (1.0 where the lead is > 0, NaN where the lead is
        NaN). Coord ``measure`` (object strings) with ``direction`` and ``scale``. attrs: the rule and options.

    Raises
    ------
    AnalysisError
        If the reference curve or every measure is missing, or ``dim`` is absent.

    Examples
    --------
    A restricted loss that falls 200 epochs before the test loss leads it by 200 epochs:

    >>> import numpy as np, xarray as xr
    >>> t = np.arange(0, 2000, 50)
    >>> fall = lambda a, b: np.interp(t, [0, a, b, 1950], [1.0, 1.0, 1e-3, 1e-3])
    >>> ds = xr.Dataset({"loss_test": ("checkpoint", fall(1000, 1300)),
    ...                  "restricted_loss_test": ("checkpoint", fall(800, 1100))}, coords={"checkpoint": t})
    >>> lead_times(ds)["lead"].sel(measure="restricted_loss_test").item()
    200.0
    """
    spec = dict(MEASURES if spec is None else spec)
    ref_name, ref_dir, ref_scale = reference
    if ref_name not in measures:
        raise AnalysisError(f"lead_times: the reference curve {ref_name!r} is missing")
    names = [m for m in spec if m in measures and m != ref_name]
    if not names:
        raise AnalysisError(f"lead_times: none of the measures {sorted(spec)} is present")
    opts = {"dim": dim, "fraction": fraction, "min_relative": min_relative}
    ref = change_onset(measures[ref_name], direction=ref_dir, scale=ref_scale, min_fold=reference_min_fold, **opts)
    onsets = [change_onset(measures[m], direction=spec[m][0], scale=spec[m][1], min_fold=min_fold, **opts)
              for m in names]
    coord = {"measure": np.array(names, dtype=object)}
    onset = xr.concat([o.drop_attrs() for o in onsets], dim="measure", coords="minimal").assign_coords(coord)
    onset = onset.assign_coords(direction=("measure", np.array([spec[m][0] for m in names], dtype=object)),
                                scale=("measure", np.array([spec[m][1] for m in names], dtype=object)))
    lead = (ref - onset).transpose(..., "measure")
    onset = onset.transpose(..., "measure")
    return xr.Dataset(
        {
            "onset_epoch": onset.assign_attrs(units="epochs", description="onset of each measure's change (NaN: no change)"),
            "reference_onset_epoch": ref.drop_attrs().assign_attrs(
                units="epochs", description=f"onset of the drop of {ref_name} (NaN: it does not drop {reference_min_fold}-fold)"),
            "lead": lead.assign_attrs(units="epochs", description=f"onset of the drop of {ref_name} minus the measure's "
                                      "onset; positive: the measure changes first"),
            "leads": xr.where(lead.notnull(), (lead > 0).astype(np.float64), np.nan).assign_attrs(
                units="1", description="1 where the measure changes before the test loss drops, 0 where not, NaN where undefined"),
        },
        attrs={
            "title": "mechgrok early warning: lead of each progress measure over the test-loss drop",
            "rule": ref.attrs["rule"] + f" (the reference {ref_name} must drop {reference_min_fold}-fold; the "
                    f"measures change at least {min_fold}-fold on the log scale or {min_relative} x on the linear "
                    "scale); lead = reference onset - measure onset",
            "reference": ref_name,
            "fraction": float(fraction),
            "min_fold": float(min_fold),
            "min_relative": float(min_relative),
            "reference_min_fold": float(reference_min_fold),
            "source": "mechgrok docs/sweeps.md, 'The lead-time rule'; measures of Nanda et al. 2023, section 5.1",
        },
    )


def summarise_leads(leads: xr.Dataset, *, over: Sequence[str] | None = None) -> xr.Dataset:
    """The leads of :func:`lead_times` summarised across runs.

    Parameters
    ----------
    leads : xarray.Dataset
        Output of :func:`lead_times` over a sweep (``lead`` and ``leads`` over ``measure`` and the swept dims).
    over : sequence of str, optional
        The dims to summarise over (default: every dim but ``measure``).

    Returns
    -------
    xarray.Dataset
        Over ``measure`` (and the dims not in ``over``): ``median_lead``, ``lead_q25``, ``lead_q75`` (the
        spread: quartiles), ``min_lead``, ``max_lead`` (epochs), ``fraction_leading`` (share of the runs with a
        defined lead in which the measure leads), ``n_runs`` (runs with a defined lead).

    Raises
    ------
    AnalysisError
        If ``leads`` has no ``lead`` variable or ``over`` names a missing dim.

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> lead = xr.DataArray([[100.0, -50.0, np.nan, 300.0]], dims=("measure", "seed"),
    ...                     coords={"measure": ["restricted_loss_test"], "seed": [0, 1, 2, 3]})
    >>> s = summarise_leads(xr.Dataset({"lead": lead, "leads": xr.where(lead.notnull(), lead > 0, np.nan)}))
    >>> s["median_lead"].item(), round(s["fraction_leading"].item(), 3), s["n_runs"].item()
    (100.0, 0.667, 3)
    """
    if "lead" not in leads:
        raise AnalysisError("summarise_leads needs the Dataset of lead_times (a 'lead' variable)")
    dims = [d for d in leads["lead"].dims if d != "measure"] if over is None else list(over)
    missing = [d for d in dims if d not in leads["lead"].dims]
    if missing:
        raise AnalysisError(f"summarise_leads: no dims {missing} in the leads (dims: {leads['lead'].dims})")
    lead = leads["lead"].drop_attrs()
    n = lead.notnull().sum(dims)
    leading = (lead > 0).where(lead.notnull()).sum(dims)
    with warnings.catch_warnings():  # a measure without any defined lead has NaN quartiles, said by n_runs = 0
        warnings.filterwarnings("ignore", "All-NaN slice", RuntimeWarning)
        q = lead.quantile([0.25, 0.5, 0.75], dim=dims, skipna=True)
    ep = {"units": "epochs"}
    return xr.Dataset(
        {
            "median_lead": q.sel(quantile=0.5, drop=True).assign_attrs(ep, description="median lead over the runs"),
            "lead_q25": q.sel(quantile=0.25, drop=True).assign_attrs(ep, description="first quartile of the lead"),
            "lead_q75": q.sel(quantile=0.75, drop=True).assign_attrs(ep, description="third quartile of the lead"),
            "min_lead": lead.min(dims).assign_attrs(ep, description="smallest lead"),
            "max_lead": lead.max(dims).assign_attrs(ep, description="largest lead"),
            "fraction_leading": (leading / n.where(n > 0)).assign_attrs(
                units="1", description="share of the runs with a defined lead in which the measure changes first"),
            "n_runs": n.astype(np.int64).assign_attrs(units="runs", description="runs with a defined lead"),
        },
        attrs={**{k: v for k, v in leads.attrs.items() if k != "title"},
               "title": "mechgrok early warning across runs", "summarised_over": list(dims)},
    )
