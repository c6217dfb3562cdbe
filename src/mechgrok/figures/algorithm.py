"""The Clock-versus-Pizza metrics over training (:mod:`mechgrok.analyses.modular.algorithm_metrics`).

:func:`fig_algorithm_metrics` draws distance irrelevance (DI), gradient symmetricity (GS) and circularity over
the epochs with the phases of grokking shaded, beside the path the model takes in the (DI, GS) plane, where the
diagonal GS = DI separates the Pizza side (GS > DI) from the Clock side (GS < DI).
"""

from __future__ import annotations

import numpy as np
import xarray as xr
from matplotlib.figure import Figure

from mechgrok.figures.analysis import group, phase_spans
from mechgrok.figures.style import COLORS, FULL_WIDTH, new_figure, paper_style, phase_handles, shade_phases

__all__ = ["fig_algorithm_metrics"]

_NEEDS = ("distance_irrelevance", "gradient_symmetricity", "circularity")


def fig_algorithm_metrics(tree: xr.DataTree | xr.Dataset) -> Figure:
    """DI, GS and circularity over training (phases shaded) and the path in the (DI, GS) plane.

    Zhong et al. (2023), section 4; the metrics of :func:`mechgrok.analyses.modular.algorithm_metrics.
    algorithm_metrics`.

    Parameters
    ----------
    tree : xarray.DataTree or xarray.Dataset
        The analysis tree of :func:`mechgrok.analyze` (its ``algorithm`` group, and ``phases`` when present),
        or the Dataset of :func:`~mechgrok.analyses.modular.algorithm_metrics.algorithm_metrics`.

    Returns
    -------
    matplotlib.figure.Figure

    Raises
    ------
    AnalysisError
        If the metrics are missing.

    Examples
    --------
    >>> import xarray as xr
    >>> ds = xr.Dataset({k: ("checkpoint", [0.2, 0.5, 0.9]) for k in ("distance_irrelevance",
    ...                  "gradient_symmetricity", "circularity")}, coords={"checkpoint": [0, 10, 20]})
    >>> len(fig_algorithm_metrics(ds).axes)  # the metrics, the (DI, GS) plane and its colour bar
    3
    """
    al = group(tree, "algorithm", needs=_NEEDS, figure="algorithm_metrics",
               producer="mechgrok.algorithm_metrics(ds)")
    epochs = al["checkpoint"].values.astype(np.float64)
    di, gs, circ = (np.asarray(al[v].values, dtype=np.float64) for v in _NEEDS)
    spans = phase_spans(tree)
    with paper_style():
        fig = new_figure(FULL_WIDTH, 3.0)
        ax, ax2 = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1.6, 1]})
        shade_phases(ax, spans)
        ax.plot(epochs, di, color=COLORS["distance_irrelevance"], label="distance irrelevance (DI)")
        ax.plot(epochs, gs, color=COLORS["gradient_symmetricity"], label="gradient symmetricity (GS)")
        ax.plot(epochs, circ, color=COLORS["circularity"], ls="--", label="circularity")
        ax.set_xlabel("epoch")
        ax.set_ylabel("value")
        if epochs.size > 1:
            ax.set_xlim(epochs[0], epochs[-1])
        ax.set_title("Clock vs Pizza metrics over training")
        ax.legend(loc="best")
        ax2.plot([0, 1], [0, 1], color="0.6", lw=0.8, ls=":")
        ax2.text(0.05, 0.92, "Pizza side (GS > DI)", fontsize="small", color="0.35")
        ax2.text(0.95, 0.05, "Clock side (GS < DI)", fontsize="small", color="0.35", ha="right")
        ax2.plot(di, gs, color="0.5", lw=0.8)
        pts = ax2.scatter(di, gs, c=epochs, cmap="viridis", s=12, zorder=3)
        ax2.scatter(di[-1:], gs[-1:], s=60, facecolors="none", edgecolors="k", zorder=4, label="last checkpoint")
        ax2.set_xlim(-0.02, 1.02)
        ax2.set_ylim(min(-0.02, float(np.nanmin(gs)) - 0.02) if gs.size else -0.02, 1.02)
        ax2.set_xlabel("DI")
        ax2.set_ylabel("GS")
        ax2.set_title("path in the (DI, GS) plane")
        fig.colorbar(pts, ax=ax2, label="epoch")
        if spans:
            fig.legend(handles=phase_handles(spans), loc="outside lower center", ncols=len(spans))
    return fig
