"""Attention figure: the attention from ``=`` to a over the (a, b) grid per head, with the fitted frequency.

Each head's attention from the ``=`` position to the ``a`` token is close to
offset + C (cos(w (a + theta)) - cos(w (b + theta))), w = 2 pi k / p, for one frequency k per head (paper
appendix C.1.3, Table 2; :mod:`mechgrok.analyses.modular.attention`); its score vector W_attn (vocab) is sparse in the Fourier
basis at that frequency (paper Fig. 8).
"""

from __future__ import annotations

import numpy as np
import xarray as xr
from matplotlib.figure import Figure

from mechgrok.figures.analysis import at_reference, epoch_label, group, key_freqs, optional_group
from mechgrok.figures.fourier_norms import fourier_bars
from mechgrok.figures.style import FULL_WIDTH, key_freq_color, new_figure, paper_style

__all__ = ["fig_attention"]


def fig_attention(tree: xr.DataTree | xr.Dataset) -> Figure:
    """Attention from ``=`` to a over the (a, b) grid per head, titled with the fitted frequency (paper Fig. 8).

    Parameters
    ----------
    tree : xarray.DataTree or xarray.Dataset
        The analysis tree (:func:`mechgrok.analyze`) with the ``reference`` group (``attn_to_a`` (head, a, b);
        ``W_attn_fourier`` (fourier, head) where present) and, for the fitted frequency, the ``attention``
        group (``head_freq``, ``head_fve`` over (checkpoint, head), as :func:`mechgrok.attention_fit` returns
        them); or the ``reference`` group as a Dataset (:func:`mechgrok.analyses.modular.reference.reference_views`;
        with the fit where it also holds ``head_freq`` and ``head_fve``, e.g. merged in). Attrs ``key_freqs``,
        ``checkpoint``.

    Returns
    -------
    matplotlib.figure.Figure
        Top row: one heatmap per head (rows a, columns b, 0..p-1; colour: attention weight, 0..1). Bottom row:
        |W_attn| in the Fourier basis per head (const, cos k, sin k), with the fitted frequency shaded.

    Raises
    ------
    AnalysisError
        If ``attn_to_a`` is missing (naming it and the function that produces it).
    """
    name = "attention"
    ref, epoch = at_reference(group(tree, "reference", needs=("attn_to_a",), figure=name), tree)
    keys = key_freqs(tree)
    attn = ref["attn_to_a"].transpose("head", "a", "b").values.astype(np.float64)
    n_heads, p = attn.shape[0], attn.shape[-1]
    fit = None
    at = optional_group(tree, "attention", needs=("head_freq", "head_fve"))
    if at is not None:
        if "checkpoint" not in at["head_freq"].dims:
            fit = at
        elif epoch in set(int(e) for e in at["checkpoint"].values):
            fit = at.sel(checkpoint=epoch)
    W = ref["W_attn_fourier"].transpose("fourier", "head") if "W_attn_fourier" in ref else None
    with paper_style():
        fig = new_figure(FULL_WIDTH, 4.3 if W is not None else 2.4)
        axes = fig.subplots(2 if W is not None else 1, n_heads, squeeze=False)
        im = None
        for h in range(n_heads):
            ax = axes[0, h]
            im = ax.imshow(attn[h], vmin=0, vmax=1, cmap="viridis", origin="upper", interpolation="nearest")
            ax.set_xticks([0, p - 1])
            ax.set_yticks([0, p - 1])
            ax.set_xlabel("b")
            if h == 0:
                ax.set_ylabel("a")
            title = f"head {h}"
            color = "black"
            if fit is not None:
                k = int(fit["head_freq"].values[h])
                title += f": k = {k}, FVE {float(fit['head_fve'].values[h]):.2f}"
                color = key_freq_color(keys.index(k)) if k in keys else "black"
            ax.set_title(title, color=color, fontsize=7.5)
            if W is not None:
                ax2 = axes[1, h]
                hk = [int(fit["head_freq"].values[h])] if fit is not None else []
                fourier_bars(ax2, abs(W.isel(head=h)), keys=hk, ylabel="|W_attn F^T|" if h == 0 else "")
                ax2.set_xlabel("frequency k")
                if hk and hk[0] in keys:
                    for lab in ax2.get_xticklabels()[1:]:
                        lab.set_color(key_freq_color(keys.index(hk[0])))
        cb = fig.colorbar(im, ax=axes[0, :].tolist(), fraction=0.03, pad=0.01)
        cb.set_label("attention from = to a")
        if W is not None:
            fig.legend(*axes[1, 0].get_legend_handles_labels(), loc="outside lower center", ncols=3)
        fig.suptitle(f"Attention from '=' to a per head, with the fitted frequency ({epoch_label(epoch)})")
    return fig
