"""2D Fourier spectra over the (a, b) grid: the logits (paper Fig. 4c) and example neurons (Fig. 4a).

For a quantity M[a, b] over the p x p grid, M_hat = F M F^T (:func:`mechgrok.analyses.modular.fourier.fft2d`); row f is the
component along a, column g along b, both in the paper's order [const, cos 1, sin 1, ...]. The logits' map is
||L_hat[f, g, :]|| over the output class c; a neuron's map is |A_hat[f, g]| of its grid-centred activations.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import xarray as xr
from matplotlib.colors import PowerNorm
from matplotlib.figure import Figure

from mechgrok.figures.analysis import at_reference, epoch_label, group, key_freqs
from mechgrok.figures.style import FULL_WIDTH, key_freq_color, new_figure, paper_style, stagger_tick_labels

__all__ = ["component_ticks", "fig_fourier_spectra_2d"]


def component_ticks(ax, labels: Sequence[str], keys: Sequence[int], *, axis: str) -> None:
    """Ticks on a Fourier-component axis: "const" at its row, and k between the cos k and sin k rows of each key k.

    Parameters
    ----------
    ax : matplotlib.axes.Axes
    labels : sequence of str
        Component labels in axis order (``"const"``, ``"cos 1"``, ``"sin 1"``, ...).
    keys : sequence of int
        Key frequencies to label (coloured).
    axis : {"x", "y"}
    """
    labels = [str(s) for s in labels]
    keys = sorted(int(k) for k in keys)
    pos = [labels.index("const")] + [(labels.index(f"cos {k}") + labels.index(f"sin {k}")) / 2 for k in keys]
    text = stagger_tick_labels(ax, pos, ["const"] + [str(k) for k in keys], axis=axis)
    if axis == "x":
        ax.set_xticks(pos, text)
        ticklabels = ax.get_xticklabels()
    else:
        ax.set_yticks(pos, text)
        ticklabels = ax.get_yticklabels()
    for i, lab in enumerate(ticklabels[1:]):
        lab.set_color(key_freq_color(i))
        lab.set_fontweight("bold")


def _spectrum(ax, values: np.ndarray, labels_a, labels_b, keys, *, title: str, color: str = "black", first: bool):
    im = ax.imshow(values, cmap="viridis", origin="upper", interpolation="nearest",
                   norm=PowerNorm(gamma=0.5, vmin=0, vmax=float(np.nanmax(values)) or 1.0))
    component_ticks(ax, labels_b, keys, axis="x")
    component_ticks(ax, labels_a, keys, axis="y")
    ax.set_xlabel("Fourier component along b")
    if first:
        ax.set_ylabel("Fourier component along a")
    ax.set_title(title, color=color, fontsize=7.5)
    return im


def fig_fourier_spectra_2d(tree: xr.DataTree | xr.Dataset, *, neurons_per_cluster: int = 1) -> Figure:
    """2D Fourier spectra of the logits and of example neurons of each key-frequency cluster (paper Fig. 4).

    The logits' spectrum is sparse: non-zero only at (const, const), along the const row and column at the key
    frequencies, and in the (cos k, sin k)^2 blocks. A neuron of cluster k has its variance in the
    {const, cos k, sin k}^2 block (paper section 4.2).

    Parameters
    ----------
    tree : xarray.DataTree or xarray.Dataset
        The analysis tree (:func:`mechgrok.analyze`) with the ``reference`` group, or that group as a Dataset
        (:func:`mechgrok.analyses.modular.reference.reference_views`). Read: ``logits_fourier_norm`` (fa, fb),
        ``neuron_fourier`` (example, fa, fb), ``example_neuron``, ``example_freq`` (example); attrs ``key_freqs``
        (labelled) and ``checkpoint`` (the epoch, for the title).
    neurons_per_cluster : int
        Example neurons shown per key-frequency cluster (the best explained ones first).

    Returns
    -------
    matplotlib.figure.Figure
        Heatmaps (component along a x component along b), each with its own colour bar (the logits: norm over
        the output class, in logit units; the neurons: |coefficient|, activation units).

    Raises
    ------
    AnalysisError
        If a needed variable is missing (naming it and the function that produces it).
    """
    name = "2D Fourier spectra"
    ref, epoch = at_reference(group(tree, "reference", needs=("logits_fourier_norm", "neuron_fourier", "example_neuron",
                                                              "example_freq"), figure=name), tree)
    keys = key_freqs(tree)
    lf = ref["logits_fourier_norm"].transpose("fa", "fb")
    nf = ref["neuron_fourier"].transpose("example", "fa", "fb")
    la, lb = [str(s) for s in lf["fa"].values], [str(s) for s in lf["fb"].values]
    na, nb = [str(s) for s in nf["fa"].values], [str(s) for s in nf["fb"].values]
    neuron = ref["example_neuron"].values.astype(np.int64)
    freq = ref["example_freq"].values.astype(np.int64)
    picks: list[int] = []
    for k in dict.fromkeys(int(f) for f in freq):
        picks += list(np.flatnonzero(freq == k)[: max(1, int(neurons_per_cluster))])
    n = 1 + len(picks)
    ncols = 2 if n <= 4 else 3
    nrows = int(np.ceil(n / ncols))
    with paper_style():
        fig = new_figure(FULL_WIDTH * (0.8 if ncols == 2 else 1.0), (FULL_WIDTH * 0.8 / ncols) * 0.86 * nrows + 0.35)
        axes = np.atleast_2d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
        im = _spectrum(axes[0], lf.values, la, lb, keys, title="logits: norm over c", first=True)
        fig.colorbar(im, ax=axes[0], fraction=0.046, pad=0.03).set_label("norm (sqrt colour scale)")
        for j, e in enumerate(picks, start=1):
            k = int(freq[e])
            color = key_freq_color(keys.index(k)) if k in keys else "black"
            im = _spectrum(axes[j], nf.values[e], na, nb, keys, title=f"neuron {neuron[e]} (cluster {k})",
                           color=color, first=(j % ncols == 0))
            fig.colorbar(im, ax=axes[j], fraction=0.046, pad=0.03).set_label("|coefficient| (sqrt colour scale)")
        for ax in axes[n:]:
            ax.set_axis_off()
        fig.suptitle(f"2D Fourier spectra over (a, b) at {epoch_label(epoch)} (key frequencies labelled)")
    return fig
