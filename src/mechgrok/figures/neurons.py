"""Neuron figures: frequency clusters (paper Fig. 5a), ``W_logit`` per cluster (Fig. 5b) and activations (Fig. 4b).

Each takes the analysis tree of :func:`mechgrok.analyze` or a plain Dataset (:mod:`mechgrok.figures.analysis`):
``fig_neuron_clusters(mechgrok.neuron_clusters(ds))``, ``fig_neuron_activations(tree["reference"])``.

Neurons are assigned to the frequency whose 3 x 3 block {const, cos k, sin k}^2 of the 2D Fourier spectrum of
their activations explains the largest fraction of variance (FVE), if that fraction reaches the threshold
(0.85; paper section 4.2, :mod:`mechgrok.analyses.modular.neurons`); the others are "unexplained".
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import xarray as xr
from matplotlib.figure import Figure

from mechgrok.figures.analysis import (
    PRODUCERS,
    at_reference,
    epoch_label,
    group,
    key_freqs,
    optional_group,
    phase_spans,
)
from mechgrok.figures.style import (
    COLORS,
    FULL_WIDTH,
    key_freq_color,
    new_figure,
    paper_style,
    phase_handles,
    shade_phases,
)

__all__ = ["fve_threshold", "fig_neuron_clusters", "fig_W_logit_per_cluster", "fig_neuron_activations"]


def fve_threshold(tree: xr.DataTree | xr.Dataset) -> float | None:
    """The FVE threshold of the neuron clustering, or None.

    From the attrs of the tree's ``neurons`` or ``key_frequencies`` group, or of a Dataset (as
    :func:`mechgrok.neuron_clusters` records it).
    """
    if isinstance(tree, xr.Dataset):
        return float(tree.attrs["threshold"]) if "threshold" in tree.attrs else None
    if isinstance(tree, xr.DataTree):
        for name in ("neurons", "key_frequencies"):
            if name in tree.children and "threshold" in tree[name].attrs:
                return float(tree[name].attrs["threshold"])
    return None


def _key_color(keys: Sequence[int], f: int) -> str:
    keys = sorted(keys)
    return key_freq_color(keys.index(f)) if f in keys else COLORS["other"]


def fig_neuron_clusters(tree: xr.DataTree | xr.Dataset) -> Figure:
    """Neuron frequency clusters: FVE histogram, cluster sizes, and cluster sizes over training (paper Fig. 5a).

    Parameters
    ----------
    tree : xarray.DataTree or xarray.Dataset
        One of

        - the analysis tree (:func:`mechgrok.analyze`): its ``reference`` group (``frac_explained``,
          ``cluster`` over ``d_mlp``) for the first two panels and, for the third, its ``neurons`` group
          (``cluster_sizes`` (checkpoint, cluster_freq); cluster_freq -1 is "unexplained");
        - a Dataset of :func:`mechgrok.neuron_clusters` (``frac_explained``, ``cluster`` (checkpoint, d_mlp),
          ``cluster_sizes`` (checkpoint, cluster_freq)): the first two panels at its attr
          ``reference_checkpoint`` where it has that checkpoint, else at its last checkpoint;
        - the tree's ``reference`` group as a Dataset (the third panel is then left out).

        Key frequencies (coloured) from attrs ``key_freqs`` (none where absent, e.g. of
        :func:`mechgrok.neuron_clusters`: every cluster is then "other k"); the threshold from attrs
        ``threshold``.

    Returns
    -------
    matplotlib.figure.Figure
        (a) histogram of each neuron's largest FVE (fraction, 0..1) at the reference checkpoint with the
        threshold; (b) neurons per cluster at the reference checkpoint; (c) neurons per key-frequency cluster,
        in other clusters and unexplained, against epoch.

    Raises
    ------
    AnalysisError
        If ``frac_explained`` or ``cluster`` is missing (naming it and the function that produces it).
    """
    name = "neuron clusters"
    ref, epoch = at_reference(group(tree, "reference", needs=("frac_explained", "cluster"), figure=name,
                                    producer=f"{PRODUCERS['neurons']} or {PRODUCERS['reference']}"), tree)
    keys = key_freqs(tree)
    thr = fve_threshold(tree)
    fve = ref["frac_explained"].values.astype(np.float64)
    cluster = ref["cluster"].values.astype(np.int64)
    d_mlp = cluster.size
    nz = optional_group(tree, "neurons", needs=("cluster_sizes",))
    over_training = nz is not None and "checkpoint" in nz["cluster_sizes"].dims
    with paper_style():
        fig = new_figure(FULL_WIDTH, 2.8)
        axes = fig.subplots(1, 3 if over_training else 2, width_ratios=(1, 1, 1.4) if over_training else (1, 1))
        ax = axes[0]
        ax.hist(fve, bins=np.linspace(0, 1, 26), color=COLORS["all"], edgecolor="white", linewidth=0.4)
        if thr is not None:
            ax.axvline(thr, color="black", ls="--", lw=1.0, label=f"threshold {thr:g}")
            ax.legend(loc="upper left")
        ax.set_xlabel("fraction of variance explained\nby the neuron's frequency")
        ax.set_ylabel("neurons")
        ax.set_xlim(0, 1)
        ax.set_title(f"Neuron FVE ({epoch_label(epoch)})")

        ax = axes[1]
        present = sorted(set(int(c) for c in cluster) - {-1})
        names = [str(f) for f in present] + ["none"]
        counts = [int((cluster == f).sum()) for f in present] + [int((cluster == -1).sum())]
        colors = [_key_color(keys, f) for f in present] + [COLORS["unexplained"]]
        xs = np.arange(len(names))
        bars = ax.bar(xs, counts, color=colors)
        ax.bar_label(bars, fontsize=6.5, padding=1)
        ax.set_xticks(xs, names, rotation=90 if len(names) > 8 else 0)
        ax.set_xlabel("cluster: frequency k\n(none: unexplained)")
        ax.set_ylabel("neurons")
        ax.set_ylim(0, max(counts) * 1.15 + 1)
        ax.set_title(f"Cluster sizes ({d_mlp} neurons)")

        if over_training:
            x = nz["checkpoint"].values
            sizes = nz["cluster_sizes"]
            cf = [int(f) for f in nz["cluster_freq"].values]
            ax = axes[2]
            spans = phase_spans(tree)
            shade_phases(ax, spans)
            for i, k in enumerate(keys):
                if k in cf:
                    ax.plot(x, sizes.sel(cluster_freq=k).values, color=key_freq_color(i), label=f"k = {k}")
            other = [f for f in cf if f != -1 and f not in keys]
            ax.plot(x, sizes.sel(cluster_freq=other).sum("cluster_freq").values, color=COLORS["other"], ls="--",
                    label="other k")
            ax.plot(x, sizes.sel(cluster_freq=-1).values, color=COLORS["unexplained"], lw=1.6, label="unexplained")
            ax.set_xlabel("epoch")
            ax.set_ylabel("neurons")
            if x.size > 1:
                ax.set_xlim(float(x[0]), float(x[-1]))
            ax.set_ylim(0, d_mlp * 1.02)
            ax.set_title("Cluster sizes over training")
            ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5))
            if spans:
                fig.legend(handles=phase_handles(spans), loc="outside lower center", ncols=len(spans))
    return fig


def fig_W_logit_per_cluster(tree: xr.DataTree | xr.Dataset) -> Figure:
    """``W_logit`` in the Fourier basis (along the output logit), per key-frequency cluster (paper Fig. 5b).

    For the neurons N_k of cluster k, F W_logit[:, N_k] is drawn as a (Fourier component x neuron) map. In the
    paper's model only the cos k and sin k rows are non-trivial: each cluster writes only its own frequency to
    the logits (paper section 4.2; paper.md 3.4).

    Parameters
    ----------
    tree : xarray.DataTree or xarray.Dataset
        The analysis tree (:func:`mechgrok.analyze`) with the ``reference`` group, or that group as a Dataset
        (:func:`mechgrok.analyses.modular.reference.reference_views`). Read: ``W_logit_fourier`` (fourier,
        d_mlp), ``cluster`` (d_mlp); attrs ``key_freqs`` (one panel each; the tree's root attrs, or the
        Dataset's) and ``checkpoint`` (the epoch, for the title).

    Returns
    -------
    matplotlib.figure.Figure
        One panel per key frequency, all on one signed colour scale (the weights' units).

    Raises
    ------
    AnalysisError
        If a needed variable is missing (naming it and the function that produces it).
    """
    name = "W_logit per cluster"
    ref, epoch = at_reference(group(tree, "reference", needs=("W_logit_fourier", "cluster"), figure=name), tree)
    keys = key_freqs(tree)
    cluster = ref["cluster"].values.astype(np.int64)
    W = ref["W_logit_fourier"].transpose("fourier", "d_mlp")
    labels = [str(s) for s in W["fourier"].values]
    shown = [k for k in keys if (cluster == k).any()]
    with paper_style():
        fig = new_figure(FULL_WIDTH, 3.4)
        if not shown:
            ax = fig.subplots()
            ax.text(0.5, 0.5, "no neuron is in a key-frequency cluster", ha="center", va="center")
            ax.set_axis_off()
            return fig
        vmax = max(float(np.abs(W.values[:, cluster == k]).max()) for k in shown) or 1.0
        axes = np.atleast_1d(fig.subplots(1, len(shown)))
        for i, (ax, k) in enumerate(zip(axes, shown)):
            members = np.flatnonzero(cluster == k)
            im = ax.imshow(W.values[:, members], aspect="auto", cmap="RdBu_r", vmin=-vmax, vmax=vmax,
                           interpolation="nearest")
            pair = (labels.index(f"cos {k}") + labels.index(f"sin {k}")) / 2
            ax.set_yticks([labels.index("const"), pair], ["const", f"cos/sin {k}"])
            lab = ax.get_yticklabels()[1]
            lab.set_color(key_freq_color(keys.index(k)))
            lab.set_fontweight("bold")
            ax.set_xticks([])
            ax.set_xlabel(f"its {len(members)} neurons")
            ax.set_title(f"cluster k = {k}", color=key_freq_color(keys.index(k)))
            if i == 0:
                ax.set_ylabel("Fourier component of the output logit")
        cb = fig.colorbar(im, ax=list(axes), fraction=0.03, pad=0.01)
        cb.set_label("F W_logit (weight units)")
        fig.suptitle(f"W_logit in the Fourier basis, neurons grouped by cluster ({epoch_label(epoch)})")
    return fig


def fig_neuron_activations(tree: xr.DataTree | xr.Dataset) -> Figure:
    """Activations of example neurons of each key-frequency cluster over the (a, b) grid (paper Fig. 4b).

    The examples are the neurons of each cluster whose frequency explains the most variance
    (:func:`mechgrok.analyses.modular.reference.reference_views`). Each map is the post-ReLU activation at the reference
    checkpoint divided by that neuron's maximum over the grid.

    Parameters
    ----------
    tree : xarray.DataTree or xarray.Dataset
        The analysis tree (:func:`mechgrok.analyze`) with the ``reference`` group, or that group as a Dataset
        (:func:`mechgrok.analyses.modular.reference.reference_views`). Read: ``neuron_acts`` (example, a, b),
        ``example_neuron``, ``example_freq`` (example); attrs ``key_freqs`` and ``checkpoint``.

    Returns
    -------
    matplotlib.figure.Figure
        One row per key frequency, one column per example neuron; rows are a, columns b (0..p-1).

    Raises
    ------
    AnalysisError
        If a needed variable is missing (naming it and the function that produces it).
    """
    name = "neuron activations"
    ref, epoch = at_reference(group(tree, "reference", needs=("neuron_acts", "example_neuron", "example_freq"),
                                    figure=name), tree)
    keys = key_freqs(tree)
    acts = ref["neuron_acts"].transpose("example", "a", "b").values.astype(np.float64)
    neuron = ref["example_neuron"].values.astype(np.int64)
    freq = ref["example_freq"].values.astype(np.int64)
    p = acts.shape[-1]
    rows = [k for k in dict.fromkeys(int(f) for f in freq)]
    ncols = max((int((freq == k).sum()) for k in rows), default=1)
    with paper_style():
        nrows = max(len(rows), 1)
        fig = new_figure(min(FULL_WIDTH, 1.55 * ncols + 0.9), 1.45 * nrows + 0.5)
        axes = np.atleast_2d(fig.subplots(nrows, ncols, squeeze=False))
        im = None
        for r, k in enumerate(rows):
            idx = np.flatnonzero(freq == k)
            for c in range(ncols):
                ax = axes[r, c]
                if c >= idx.size:
                    ax.set_axis_off()
                    continue
                e = idx[c]
                m = acts[e].max()
                im = ax.imshow(acts[e] / (m if m > 0 else 1.0), vmin=0, vmax=1, cmap="viridis", origin="upper",
                               interpolation="nearest")
                ax.set_title(f"neuron {neuron[e]}", fontsize=7.5)
                ax.set_xticks([0, p - 1])
                ax.set_yticks([0, p - 1])
                if r == nrows - 1:
                    ax.set_xlabel("b")
                if c == 0:
                    color = key_freq_color(keys.index(k)) if k in keys else "black"
                    ax.set_ylabel(f"k = {k}\na", color=color)
        if im is not None:
            cb = fig.colorbar(im, ax=axes.ravel().tolist(), fraction=0.03, pad=0.02, aspect=35)
            cb.set_label("activation / neuron's max")
        fig.suptitle(f"Example neurons over the (a, b) grid ({epoch_label(epoch)})")
    return fig
