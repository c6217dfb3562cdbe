"""Fourier norms of ``W_E`` and ``W_logit``: at the reference checkpoint (paper Fig. 3) and over training.

The Fourier components are picked by their **labels** (``"cos k"``, ``"sin k"`` of the ``fourier`` coordinate,
:func:`mechgrok.analyses.modular.fourier.fourier_labels`), never by index arithmetic, so cos and sin are labelled correctly. (The
original notebook's bar plot has them swapped: its ``embed_to_cos_sin`` stacks cos first but the legend names
index 0 "sin"; paper.md 3.2 and pitfall 2.)
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import xarray as xr
from matplotlib.figure import Figure

from mechgrok.errors import AnalysisError
from mechgrok.figures.analysis import at_reference, epoch_label, group, key_freqs, need_checkpoints, p_of, phase_spans
from mechgrok.figures.style import (
    COLORS,
    FULL_WIDTH,
    PHASE_COLORS,
    epoch_edges,
    key_freq_color,
    new_figure,
    paper_style,
    phase_handles,
    stagger_tick_labels,
)

__all__ = ["cos_sin_norms", "fourier_bars", "mark_key_freq_ticks", "fig_fourier_norms",
           "fig_fourier_norms_over_training"]


def cos_sin_norms(values: xr.DataArray) -> tuple[float, np.ndarray, np.ndarray]:
    """Split a vector over Fourier components into (const, cos k, sin k) by the component labels.

    Parameters
    ----------
    values : xarray.DataArray
        One dim, ``fourier``, whose coordinate holds the labels ``"const"``, ``"cos 1"``, ``"sin 1"``, ...

    Returns
    -------
    const : float
    cos, sin : numpy.ndarray
        Shape ((p - 1) / 2,): the values at ``"cos k"`` and ``"sin k"`` for k = 1..(p - 1) / 2.

    Raises
    ------
    AnalysisError
        If the labels are not the full set of components.
    """
    labels = [str(s) for s in values["fourier"].values]
    index = {s: i for i, s in enumerate(labels)}
    n = (len(labels) - 1) // 2
    try:
        cos = np.array([values.values[index[f"cos {k}"]] for k in range(1, n + 1)], dtype=np.float64)
        sin = np.array([values.values[index[f"sin {k}"]] for k in range(1, n + 1)], dtype=np.float64)
        const = float(values.values[index["const"]])
    except KeyError as e:
        raise AnalysisError(f"Fourier component {e.args[0]!r} missing from the 'fourier' coordinate") from None
    return const, cos, sin


def mark_key_freq_ticks(ax, keys: Sequence[int], *, axis: str = "x", const: bool = False, n_freq: int | None = None) -> None:
    """Major ticks at the key frequencies (coloured labels, staggered when neighbours are close), minor at every k.

    Parameters
    ----------
    ax : matplotlib.axes.Axes
    keys : sequence of int
        Key frequencies (in axis data units, one unit per frequency).
    axis : {"x", "y"}
    const : bool
        Also a major tick at 0 labelled "const".
    n_freq : int, optional
        Number of frequencies (for the minor ticks: at 1..n_freq, or at multiples of 5 beyond 30 frequencies).

    Set the axis limits first: close labels are staggered (:func:`~mechgrok.figures.style.stagger_tick_labels`).
    """
    keys = sorted(int(k) for k in keys)
    ticks = ([0] if const else []) + keys
    labels = stagger_tick_labels(ax, ticks, (["const"] if const else []) + [str(k) for k in keys], axis=axis)
    set_ticks = ax.set_xticks if axis == "x" else ax.set_yticks
    set_ticks(ticks, labels)
    if n_freq:  # minor ticks at every k, or at every 5th where every k would be a comb
        set_ticks(np.arange(1, n_freq + 1) if n_freq <= 30 else np.arange(5, n_freq + 1, 5), minor=True)
    tick_labels = ax.get_xticklabels() if axis == "x" else ax.get_yticklabels()
    offset = 1 if const else 0
    for i, lab in enumerate(tick_labels):
        if i >= offset:
            lab.set_color(key_freq_color(i - offset))
            lab.set_fontweight("bold")


def fourier_bars(ax, values: xr.DataArray, *, keys: Sequence[int] = (), ylabel: str = "norm",
                 legend: bool = False) -> None:
    """Grouped bars of a vector over Fourier components: const at 0, then cos k and sin k side by side at k.

    Parameters
    ----------
    ax : matplotlib.axes.Axes
    values : xarray.DataArray
        Dim ``fourier`` with component labels (see :func:`cos_sin_norms`).
    keys : sequence of int
        Key frequencies to mark (shaded columns, coloured tick labels).
    ylabel : str
        Label of the y axis.
    legend : bool
        Add a legend (const, cos k, sin k) to the axis; figures with several such panels use one figure legend.
    """
    const, cos, sin = cos_sin_norms(values)
    n = cos.size
    k = np.arange(1, n + 1)
    for kk in keys:
        ax.axvspan(kk - 0.5, kk + 0.5, color="#000000", alpha=0.06, lw=0, zorder=0)
    ax.bar([0], [const], width=0.8, color=COLORS["const"], label="const")
    ax.bar(k - 0.2, cos, width=0.4, color=COLORS["cos"], label="cos k")
    ax.bar(k + 0.2, sin, width=0.4, color=COLORS["sin"], label="sin k")
    ax.set_xlim(-0.7, n + 0.7)
    mark_key_freq_ticks(ax, keys, axis="x", const=True, n_freq=n)
    ax.set_xlabel("frequency k (key frequencies labelled)")
    ax.set_ylabel(ylabel)
    if legend:
        ax.legend(loc="upper right", ncols=3)


_COMPONENT_NORMS = ("W_E_fourier_norm", "W_logit_fourier_norm")
_FREQ_NORMS = ("W_E_freq_norm", "W_logit_freq_norm")


def fig_fourier_norms(tree: xr.DataTree | xr.Dataset) -> Figure:
    """Norms of the Fourier components of ``W_E`` and ``W_logit`` at the reference checkpoint (paper Fig. 3).

    ``W_E`` (vocab without ``=``, d_model) is Fourier-transformed along the input (vocab) and the l2-norm taken
    over d_model (paper section 4.1; paper.md 3.2). ``W_logit = W_out W_U`` (d_mlp, p) is transformed along the
    output and the norm taken over the neurons. Bars: const, then cos k and sin k per frequency k, picked by
    their component labels (the original plot's legend swaps cos and sin).

    Parameters
    ----------
    tree : xarray.DataTree or xarray.Dataset
        The analysis tree (:func:`mechgrok.analyze`) with the ``fourier_norms`` group, or a Dataset of
        :func:`mechgrok.analyses.modular.fourier_norms.fourier_norms` or :func:`mechgrok.progress_measures`.
        Read: ``W_E_fourier_norm``, ``W_logit_fourier_norm`` (checkpoint, fourier), ``fourier`` labelled
        ``"const"``, ``"cos k"``, ``"sin k"``; attrs ``reference_checkpoint`` (the checkpoint drawn; default
        the last) and ``key_freqs`` (shaded; none where absent), of the tree's root or of the Dataset.

    Returns
    -------
    matplotlib.figure.Figure
        Two panels of grouped bars (norm, unitless like the weights) against frequency.

    Raises
    ------
    AnalysisError
        If a needed variable is missing (naming it and the function that produces it).
    """
    fn = group(tree, "fourier_norms", needs=_COMPONENT_NORMS, figure="Fourier norms")
    at, ref = at_reference(fn, tree)
    keys = key_freqs(tree)
    with paper_style():
        fig = new_figure(FULL_WIDTH, 4.2)
        ax1, ax2 = fig.subplots(2, 1)
        fourier_bars(ax1, at["W_E_fourier_norm"], keys=keys, ylabel="norm over d_model")
        ax1.set_title("W_E: Fourier transform along the input token")
        fourier_bars(ax2, at["W_logit_fourier_norm"], keys=keys, ylabel="norm over neurons")
        ax2.set_title("W_logit = W_out W_U: Fourier transform along the output logit")
        fig.legend(*ax1.get_legend_handles_labels(), loc="outside lower center", ncols=3)
        fig.suptitle(f"Norms of the Fourier components at {epoch_label(ref)}")
    return fig


def _heatmap(ax, epochs: np.ndarray, norm: xr.DataArray, keys: Sequence[int], spans, *, title: str, fig) -> None:
    freqs = norm["freq"].values.astype(np.int64)
    x = epoch_edges(epochs)
    y = np.concatenate([freqs - 0.5, [freqs[-1] + 0.5]])
    mesh = ax.pcolormesh(x, y, norm.transpose("freq", "checkpoint").values, shading="flat", rasterized=True,
                         cmap="viridis")
    cb = fig.colorbar(mesh, ax=ax, pad=0.01, fraction=0.04)
    cb.set_label("norm")
    mark_key_freq_ticks(ax, keys, axis="y", n_freq=int(freqs[-1]))
    for i, k in enumerate(sorted(keys)):
        ax.plot([1.0], [k], marker="<", ms=4, color=key_freq_color(i), transform=ax.get_yaxis_transform(),
                clip_on=False)
    for name, start, end in spans:
        ax.axvspan(start, end, ymin=1.0, ymax=1.035, color=PHASE_COLORS[name], alpha=0.7, lw=0, clip_on=False)
    ax.set_ylabel("frequency k")
    ax.set_xlabel("epoch")
    ax.ticklabel_format(axis="x", useOffset=False, style="plain")
    ax.set_title(title, pad=9)


def fig_fourier_norms_over_training(tree: xr.DataTree | xr.Dataset) -> Figure:
    """Norm per frequency of ``W_E`` and ``W_logit`` over training, as frequency x epoch heatmaps.

    The per-frequency norm is sqrt(n_cos k^2 + n_sin k^2) of the component norms of :func:`fig_fourier_norms`
    (mechgrok's combination; paper.md 3.2). The key frequencies are marked (coloured ticks and arrows); the
    phases are the coloured strip above each map.

    Parameters
    ----------
    tree : xarray.DataTree or xarray.Dataset
        The analysis tree (:func:`mechgrok.analyze`) with the ``fourier_norms`` group (optionally ``phases``),
        or a Dataset of :func:`mechgrok.analyses.modular.fourier_norms.fourier_norms` or
        :func:`mechgrok.progress_measures`. Read: ``W_E_freq_norm``, ``W_logit_freq_norm`` (checkpoint, freq);
        attrs ``key_freqs`` (marked; none where absent) and ``p``.

    Returns
    -------
    matplotlib.figure.Figure
        Two heatmaps (frequency 1..(p - 1)/2 against epoch), each with a colour bar of the norm.

    Raises
    ------
    AnalysisError
        If a needed variable is missing (naming it and the function that produces it).
    """
    fn = group(tree, "fourier_norms", needs=_FREQ_NORMS, figure="Fourier norms over training")
    for v in _FREQ_NORMS:
        need_checkpoints(fn, v, figure="Fourier norms over training")
    keys = key_freqs(tree)
    spans = phase_spans(tree)
    epochs = fn["checkpoint"].values.astype(np.int64)
    p = p_of(tree, figure="Fourier norms over training", default=2 * fn.sizes["freq"] + 1)
    with paper_style():
        fig = new_figure(FULL_WIDTH, 5.0)
        ax1, ax2 = fig.subplots(2, 1, sharex=True)
        _heatmap(ax1, epochs, fn["W_E_freq_norm"], keys, spans, title="W_E: norm per frequency", fig=fig)
        _heatmap(ax2, epochs, fn["W_logit_freq_norm"], keys, spans, title="W_logit: norm per frequency", fig=fig)
        ax1.set_xlabel("")
        if spans:
            fig.legend(handles=phase_handles(spans), loc="outside lower center", ncols=len(spans))
        fig.suptitle(f"Fourier norms over training (p = {p}; key frequencies marked)")
    return fig
