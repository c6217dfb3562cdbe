"""Figures of how the circuit forms: alignment trajectories with their bumps, and loss curves with slingshots.

* :func:`fig_competition_bumps`: the per-frequency aggregates N_k(t) of every vector family with the bumps of the
  key frequencies marked, and, per key frequency, the neuron whose alignment A_jk(t) has the largest bump with
  the frequency it realigns to (``competition`` group of :func:`mechgrok.analyze`; docs/competition.md).
* :func:`fig_toy_alignment`: the toy's |c_jk(t)| per learned vector with the bumps marked
  (:func:`mechgrok.toys.vector_competition.competition_flow`).
* :func:`fig_slingshots`: the train loss with the float32 floor, each spike's onset and peak marked
  (``slingshots`` group; docs/slingshots.md).

Each takes the analysis tree or the Dataset the analysis function returns (:mod:`mechgrok.figures.analysis`).
"""

from __future__ import annotations

import numpy as np
import xarray as xr
from matplotlib.figure import Figure

from mechgrok.analyses.bumps import find_bumps
from mechgrok.analyses.slingshots import FLOAT32_EPS
from mechgrok.errors import AnalysisError
from mechgrok.figures.analysis import group
from mechgrok.figures.style import key_freq_color, new_figure
from mechgrok.toys.vector_competition import competition_bumps

__all__ = ["fig_competition_bumps", "fig_toy_alignment", "fig_slingshots"]

_COMPETITION = ("mechgrok.analyses.modular.competition.competition_dataset(mechgrok.frequency_alignment(ds), "
                "key_freqs=...)")


def fig_competition_bumps(obj: xr.DataTree | xr.Dataset) -> Figure:
    """N_k(t) of each vector family with the key frequencies' bumps, and the largest neuron bumps A_jk(t).

    Parameters
    ----------
    obj : xarray.DataTree or xarray.Dataset
        The analysis tree (group ``competition``) or :func:`~mechgrok.analyses.modular.competition.competition_dataset`.

    Returns
    -------
    matplotlib.figure.Figure
        One panel per family (N_k of the key frequencies, log scale; a star at each bump's peak, hollow where
        the rule flags none), and a last panel with, per key frequency, the ``neuron_in`` vector whose A_jk has
        the most prominent bump (solid) and its alignment with the frequency it realigns to (dashed).

    Raises
    ------
    AnalysisError
        If the group or its variables are missing.
    """
    ds = group(obj, "competition", needs=["verdict", "is_bump", "peak_epoch"], figure="competition_bumps",
               producer=_COMPETITION)
    fams = [str(f) for f in ds["family"].values]
    keys = [int(k) for k in ds["key_freq"].values]
    epochs = ds["checkpoint"].values
    panels = len(fams) + ("neuron_in_alignment" in ds)
    ncol = 2
    nrow = int(np.ceil(panels / ncol))
    fig = new_figure(height=2.2 * nrow)
    axes = fig.subplots(nrow, ncol, squeeze=False).ravel()
    for ax, fam in zip(axes, fams):
        N = ds[f"{fam}_N"]
        for i, k in enumerate(keys):
            row = ds.sel(family=fam, key_freq=k)
            y = N.sel(freq=k).values
            c = key_freq_color(i)
            ax.plot(epochs, y, color=c, lw=1.2, label=f"k = {k}")
            pe = int(row["peak_epoch"])
            yp = float(N.sel(freq=k, checkpoint=pe))
            ax.plot([pe], [yp], marker="*", ms=9, color=c, mfc=c if bool(row["is_bump"]) else "none", zorder=5)
        ax.set_yscale("log", nonpositive="mask")
        ax.set_title(f"N_k, {fam}", fontsize=8)
        ax.set_xlabel("epoch")
        ax.set_ylabel("N_k (weight²)")
    axes[0].legend(fontsize=6.5, loc="lower right")
    if "neuron_in_alignment" in ds:
        ax = axes[len(fams)]
        A = ds["neuron_in_alignment"].astype(np.float64)
        b = find_bumps(A, dim="checkpoint", target_dim="freq", min_relative=float(ds.attrs.get("min_relative", 0.05)),
                       noise_factor=float(ds.attrs.get("noise_factor", 3.0)))
        for i, k in enumerate(keys):
            bk = b.sel(freq=k)
            prom = np.where(bk["is_bump"].values, bk["prominence"].values, -np.inf)
            if not np.isfinite(prom).any():
                continue
            j = int(np.argmax(prom))
            c = key_freq_color(i)
            ax.plot(epochs, A.sel(freq=k).isel(neuron=j).values, color=c, lw=1.2, label=f"neuron {j}: k = {k}")
            to = int(bk["realigns_to"].values[j])
            ax.plot(epochs, A.sel(freq=to).isel(neuron=j).values, color=c, lw=1.0, ls="--", label=f"neuron {j}: k' = {to}")
            ax.plot([float(bk["peak_time"].values[j])], [float(bk["peak_value"].values[j])], marker="*", ms=9, color=c)
        ax.set_title("largest neuron bumps A_jk (neuron_in)", fontsize=8)
        ax.set_xlabel("epoch")
        ax.set_ylabel("A_jk")
        ax.set_ylim(0, 1.05)
        ax.legend(fontsize=6, loc="upper left", ncol=2)
    for ax in axes[panels:]:
        ax.set_visible(False)
    fig.suptitle("Bumps of the Fourier alignments (stars: peaks; filled: a bump by the rule)", fontsize=9)
    return fig


def fig_toy_alignment(flow: xr.Dataset, *, seed: int | None = None, max_vectors: int = 4) -> Figure:
    """The toy's |c_jk(t)|, one panel per learned vector, with the bumps marked (beyond.md 3.3).

    Parameters
    ----------
    flow : xarray.Dataset
        :func:`~mechgrok.toys.vector_competition.competition_flow` (with or without ``seed``).
    seed : int, optional
        The seed to draw when ``flow`` has several (default the first).
    max_vectors : int
        Draw at most this many learned vectors.

    Returns
    -------
    matplotlib.figure.Figure

    Raises
    ------
    AnalysisError
        If ``flow`` is not a toy flow.
    """
    if not isinstance(flow, xr.Dataset) or "alignment" not in flow or "time" not in flow.dims:
        raise AnalysisError("fig_toy_alignment takes a competition_flow Dataset (alignment over time)")
    if "seed" in flow.dims:
        flow = flow.sel(seed=seed) if seed is not None else flow.isel(seed=0)
    b = competition_bumps(flow)
    n = min(int(flow.sizes["learned"]), int(max_vectors))
    fig = new_figure(height=1.9 * int(np.ceil(n / 2)))
    axes = fig.subplots(int(np.ceil(n / 2)), 2, squeeze=False).ravel()
    t = flow["time"].values
    for j, ax in zip(range(n), axes):
        for k in range(flow.sizes["target"]):
            c = key_freq_color(k)
            ax.plot(t, abs(flow["alignment"].isel(learned=j, target=k)).values, color=c, lw=1.1, label=f"target {k}")
            bk = b.isel(learned=j, target=k)
            if bool(bk["is_bump"]):
                ax.plot([float(bk["peak_time"])], [float(bk["peak_value"])], marker="*", ms=9, color=c, zorder=5)
        ax.set_title(f"learned vector {j}", fontsize=8)
        ax.set_xlabel("flow time")
        ax.set_ylabel("|c_jk|")
    axes[0].legend(fontsize=6.5)
    for ax in axes[n:]:
        ax.set_visible(False)
    fig.suptitle(f"Vector competition, rank {flow.attrs.get('rank')}: |<ã_j, a_k>| (stars: bumps)", fontsize=9)
    return fig


def fig_slingshots(obj: xr.DataTree | xr.Dataset) -> Figure:
    """The train loss (log scale) with the float32 floor and every slingshot's onset and peak marked.

    Parameters
    ----------
    obj : xarray.DataTree or xarray.Dataset
        The analysis tree (group ``slingshots``) or :func:`~mechgrok.analyses.slingshots.find_slingshots`.

    Returns
    -------
    matplotlib.figure.Figure

    Raises
    ------
    AnalysisError
        If the group or its variables are missing.
    """
    ds = group(obj, "slingshots", needs=["loss", "onset_epoch", "peak_epoch", "peak_loss", "onset_loss"],
               figure="slingshots", producer="mechgrok.find_slingshots(ds['loss_train'])")
    fig = new_figure(height=2.8)
    ax = fig.subplots()
    ax.plot(ds["epoch"].values, ds["loss"].values, color="#333333", lw=0.7, label=str(ds.attrs.get("curve") or "loss"))
    ax.axhline(FLOAT32_EPS, color="#D55E00", lw=0.8, ls=":", label="2^-23 (float32 spacing above 1)")
    if int(ds.sizes.get("spike", 0)):
        ax.plot(ds["onset_epoch"].values, ds["onset_loss"].values, "^", color="#0072B2", ms=4, label="onset")
        ax.plot(ds["peak_epoch"].values, ds["peak_loss"].values, "*", color="#D55E00", ms=7, label="spike peak")
    armed = int(ds["armed_epoch"]) if "armed_epoch" in ds else -1
    if armed >= 0:
        ax.axvline(armed, color="#999999", lw=0.7, ls="--", label="near the floor from here")
    ax.set_yscale("log", nonpositive="mask")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss (nats)")
    n = int(ds["n_spikes"]) if "n_spikes" in ds else int(ds.sizes.get("spike", 0))
    ax.set_title(f"Slingshots: {n} spike{'s' if n != 1 else ''} after the loss reached the float32 floor", fontsize=9)
    ax.legend(fontsize=6.5, loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=5, frameon=False)
    return fig
