"""Slingshots: loss spikes after the train loss reaches the float32 floor (Thilak et al. 2022, "The Slingshot
Mechanism"; the float32 log-softmax of the released code, paper.md 2.3).

A float32 log-softmax rounds the correct class's probability to 1 once it is within 2^-24 of 1, so the
train loss of a fit model floors near the float32 spacing eps = 2^-23 = 1.19e-7 and the correct-class gradient
vanishes, while the other classes' terms do not: the loss then jumps up by orders of magnitude and decays again.
With a float64 log-softmax the curve is smooth (``mod_addition_no_wd.pth``: no jump; a float64 mechgrok run: none).

**Rules** (all recorded in the attrs of the result):

* **armed** at the first epoch whose loss is at most ``near_floor * eps`` (default 100 eps = 1.19e-5): the loss
  is then within two decades of the float32 floor, where the rounding starts to bite;
* **spike**: after arming, the first epoch whose loss exceeds ``spike_ratio`` (default 10) times the least loss
  of the ``window`` (default 100) values before it starts a spike; its **onset** is that least point (the latest, if tied; loss
  b), and the spike lasts until the loss is back at or below ``spike_ratio * b`` (or the curve ends). Its
  **peak** is the maximum inside, its **height** log10(peak / b) in decades. Bursts inside one spike (the loss
  often jumps twice before it decays) belong to that spike;
* **jumps** (the count of ``shared/data/nanda-saved-runs/README.md``): epoch-to-epoch ratios loss[i] / loss[i-1]
  above ``jump_ratio`` (default 10) and above 100, over the whole curve. A spike usually holds one or more jumps.

The released ``low_precision_mod_addition.pth`` has 108 jumps above 10x and 37 above 100x (docs/slingshots.md
lists its spikes); a float64 run has none.
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from mechgrok.errors import AnalysisError

__all__ = ["find_slingshots", "slingshot_summary", "FLOAT32_EPS", "SLINGSHOT_RULE"]

#: The spacing of float32 numbers just above 1 (2^-23): the scale of the float32 loss floor.
FLOAT32_EPS = float(np.finfo(np.float32).eps)

SLINGSHOT_RULE = (
    "armed at the first epoch with loss <= near_floor * 2^-23; after it a spike starts where the loss exceeds "
    "spike_ratio times the least of the window values before it (the onset) and lasts until the loss is back at "
    "or below spike_ratio times the onset loss; jumps are epoch-to-epoch ratios > jump_ratio over the whole curve"
)


def find_slingshots(
    loss: xr.DataArray,
    *,
    near_floor: float = 100.0,
    spike_ratio: float = 10.0,
    jump_ratio: float = 10.0,
    window: int = 100,
) -> xr.Dataset:
    """Spikes of a loss curve after it reaches the float32 floor (the Slingshot Mechanism), with their epochs.

    Parameters
    ----------
    loss : xarray.DataArray
        A loss curve over ``epoch`` (nats), e.g. ``ds["loss_train"]`` of a trajectory; NaN entries (epochs
        without a value) are dropped, and a loss of exactly 0 (a float32 loss can round to 0) is taken as the
        least positive loss of the curve (``attrs["n_zero_losses"]`` counts them).
    near_floor : float
        Detection starts at the first epoch whose loss is <= ``near_floor`` * 2^-23 (default 100).
    spike_ratio : float
        A spike starts where the loss exceeds ``spike_ratio`` times its recent least value (default 10) and ends
        when it is back at or below ``spike_ratio`` times that onset loss.
    jump_ratio : float
        Epoch-to-epoch ratio counted as a jump (default 10, as in the saved runs' README; jumps above 100 are
        counted too).
    window : int
        Number of curve values before an epoch in which its onset (least loss) is sought (default 100).

    Returns
    -------
    xarray.Dataset
        ``loss`` (epoch): the curve analysed (nats). Over ``spike``: ``onset_epoch``, ``peak_epoch`` (epochs), ``onset_loss``, ``peak_loss`` (nats),
        ``height`` (log10(peak / onset), decades). Scalars: ``n_spikes``, ``n_jumps`` (ratios > ``jump_ratio``),
        ``n_jumps_100x`` (> 100), ``armed_epoch`` (-1 if the loss never gets near the floor), ``floor_loss`` (the
        least loss after arming, nats; NaN if never armed). Attrs: the rule and thresholds.

    Raises
    ------
    AnalysisError
        If ``loss`` has no ``epoch`` dim, fewer than 3 finite values, a negative value, or a threshold out of
        range.

    Examples
    --------
    A loss at the float32 floor with one spike at epoch 5:

    >>> import numpy as np, xarray as xr
    >>> v = np.array([1e-3, 1e-5, 2e-7, 1.2e-7, 1.5e-6, 3e-2, 1e-4, 1e-6, 1.3e-7, 1.2e-7])
    >>> s = find_slingshots(xr.DataArray(v, dims="epoch", coords={"epoch": np.arange(10)}))
    >>> int(s["n_spikes"]), s["peak_epoch"].values.tolist(), s["onset_epoch"].values.tolist(), int(s["n_jumps"])
    (1, [5], [3], 2)
    """
    if "epoch" not in loss.dims or loss.ndim != 1:
        raise AnalysisError(f"a loss curve over 'epoch' is needed, got dims {tuple(loss.dims)}")
    curve = loss.dropna("epoch")
    if curve.sizes["epoch"] < 3:
        raise AnalysisError(f"the loss curve has {curve.sizes['epoch']} finite values; at least 3 are needed")
    x = np.asarray(curve.values, dtype=np.float64)
    if int(window) < 1 or not spike_ratio > 1 or not jump_ratio > 1:
        raise AnalysisError(f"window must be >= 1 and spike_ratio, jump_ratio > 1; got {window}, {spike_ratio}, {jump_ratio}")
    if np.any(x < 0):
        raise AnalysisError("the loss curve has a negative value; a cross-entropy is >= 0")
    n_zero = int((x == 0).sum())
    if n_zero:  # a float32 loss can round to exactly 0: count it at the least positive loss of the curve
        x = np.where(x > 0, x, x[x > 0].min() if (x > 0).any() else FLOAT32_EPS)
    epochs = np.asarray(curve["epoch"].values, dtype=np.int64)
    ratio = x[1:] / x[:-1]
    armed = np.flatnonzero(x <= near_floor * FLOAT32_EPS)
    start = int(armed[0]) if armed.size else len(x)
    # least loss of the `window` values before each position (inf before any)
    pad = np.concatenate([np.full(int(window), np.inf), x])
    recent = np.lib.stride_tricks.sliding_window_view(pad, int(window))[: len(x)].min(-1)
    elevated = x > spike_ratio * recent
    elevated[: start + 1] = False
    onsets, peaks = [], []
    i = 0
    while True:
        hits = np.flatnonzero(elevated[i:])
        if hits.size == 0:
            break
        i += int(hits[0])
        lo = max(start, i - int(window))
        o = i - 1 - int(np.argmin(x[lo:i][::-1]))  # the latest least point before the rise
        back = np.flatnonzero(x[i:] <= spike_ratio * x[o])
        end = i + int(back[0]) if back.size else len(x)
        onsets.append(o)
        peaks.append(i + int(np.argmax(x[i:end])))
        i = end
    left, peaks = np.asarray(onsets, dtype=np.int64), np.asarray(peaks, dtype=np.int64)
    logx = np.log10(x)
    data = {
        "loss": (("epoch",), x, {"units": "nats", "description": f"the loss curve analysed ({loss.name or 'loss'}, NaN epochs dropped)"}),
        "onset_epoch": (("spike",), epochs[left], {"units": "epochs", "description": "left base of the spike (last low point before it)"}),
        "peak_epoch": (("spike",), epochs[peaks], {"units": "epochs", "description": "epoch of the spike's maximum"}),
        "onset_loss": (("spike",), x[left], {"units": "nats", "description": "loss at the onset"}),
        "peak_loss": (("spike",), x[peaks], {"units": "nats", "description": "loss at the peak"}),
        "height": (("spike",), logx[peaks] - logx[left], {"units": "decades", "description": "log10(peak_loss / onset_loss)"}),
        "n_spikes": ((), int(peaks.size), {"units": "", "description": "spikes after the loss reached the float32 floor"}),
        "n_jumps": ((), int((ratio > jump_ratio).sum()), {"units": "", "description": f"epoch-to-epoch ratios > {jump_ratio:g}"}),
        "n_jumps_100x": ((), int((ratio > 100).sum()), {"units": "", "description": "epoch-to-epoch ratios > 100"}),
        "armed_epoch": ((), int(epochs[start]) if armed.size else -1, {"units": "epochs", "description": f"first epoch with loss <= {near_floor:g} * 2^-23"}),
        "floor_loss": ((), float(x[start:].min()) if armed.size else np.nan, {"units": "nats", "description": "least loss after arming"}),
    }
    return xr.Dataset(
        data,
        coords={"spike": np.arange(peaks.size), "epoch": ("epoch", epochs, {"units": "epochs"})},
        attrs={"rule": SLINGSHOT_RULE, "near_floor": float(near_floor), "spike_ratio": float(spike_ratio),
               "jump_ratio": float(jump_ratio), "window": int(window), "n_zero_losses": n_zero, "float32_eps": FLOAT32_EPS, "curve": str(loss.name or ""),
               "source": "Thilak et al. 2022, The Slingshot Mechanism, arXiv 2206.04817; the float32 loss of the code released with Nanda et al. 2023"},
    )


def slingshot_summary(ds: xr.Dataset, *, max_spikes: int = 100) -> dict:
    """The ``slingshots`` entry of ``report.json`` from a :func:`find_slingshots` result: the counts, the rule
    and the first ``max_spikes`` spikes (onset and peak epochs, losses in nats, height in decades).

    Raises
    ------
    AnalysisError
        If ``ds`` is not a :func:`find_slingshots` result.
    """
    if "n_spikes" not in ds:
        raise AnalysisError("not a find_slingshots result: no 'n_spikes'")
    spikes = [
        {"onset_epoch": int(ds["onset_epoch"].values[i]), "peak_epoch": int(ds["peak_epoch"].values[i]),
         "onset_loss": float(ds["onset_loss"].values[i]), "peak_loss": float(ds["peak_loss"].values[i]),
         "height_decades": float(ds["height"].values[i])}
        for i in range(min(int(ds.sizes.get("spike", 0)), int(max_spikes)))
    ]
    floor = float(ds["floor_loss"])
    return {
        "n_spikes": int(ds["n_spikes"]), "n_jumps": int(ds["n_jumps"]), "n_jumps_100x": int(ds["n_jumps_100x"]),
        "armed_epoch": int(ds["armed_epoch"]), "floor_loss": floor if np.isfinite(floor) else None,
        "rule": ds.attrs.get("rule"), "curve": ds.attrs.get("curve"), "spikes": spikes,
    }
