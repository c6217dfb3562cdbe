"""Figures over training: loss curves, the progress measures (paper Fig. 7) and the key-frequency ablations.

Every function takes the analysis tree of :func:`mechgrok.pipeline.analyze` and returns a
:class:`matplotlib.figure.Figure` (headless, :mod:`mechgrok.figures.style`). The x axis is always epochs; losses
are in nats on a log scale; the phases of grokking (paper section 5.2, :mod:`mechgrok.phases`) are shaded.
"""

from __future__ import annotations

import numpy as np
import xarray as xr
from matplotlib.figure import Figure

from mechgrok.figures.analysis import group, has_groups, key_freqs, phase_spans
from mechgrok.figures.style import (
    COLORS,
    FULL_WIDTH,
    key_freq_color,
    new_figure,
    paper_style,
    phase_handles,
    shade_phases,
)

__all__ = ["fig_loss_curves", "fig_progress_measures", "fig_key_frequency_ablations"]


def _log_loss_axis(ax, ylabel: str = "loss (nats)") -> None:
    ax.set_yscale("log", nonpositive="mask")
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)


def _epochs(ds: xr.Dataset) -> np.ndarray:
    return ds["checkpoint"].values.astype(np.int64)


def _xlim(ax, epochs: np.ndarray) -> None:
    if epochs.size > 1:
        ax.set_xlim(float(epochs[0]), float(epochs[-1]))


def fig_loss_curves(tree: xr.DataTree, *, trajectory: xr.Dataset | None = None) -> Figure:
    """Train and test loss (log scale) and accuracy over training, with the phases shaded (paper Fig. 1).

    Parameters
    ----------
    tree : xarray.DataTree
        Analysis tree with the ``phases`` group (for the shading; optional) and, without ``trajectory``, the
        ``ablation`` group (``loss_train``, ``loss_test``, ``acc_train``, ``acc_test`` over ``checkpoint``).
    trajectory : xarray.Dataset, optional
        The run's trajectory (:func:`mechgrok.open_run`). When it has the per-epoch curves ``train_loss``,
        ``test_loss`` (dim ``epoch``; the training objective: cross-entropy over all p + 1 classes, float64) and
        ``train_acc``/``test_acc``, those are drawn at every epoch; otherwise the analysis losses at the
        checkpoints (over the p non-``=`` classes) are.

    Returns
    -------
    matplotlib.figure.Figure
        Two panels: loss (nats, log scale) and accuracy (fraction) against epoch.

    Raises
    ------
    AnalysisError
        If neither the trajectory curves nor the ``ablation`` group is available.
    """
    name = "loss curves"
    spans = phase_spans(tree) if isinstance(tree, xr.DataTree) else []
    if trajectory is not None and "train_loss" in trajectory and "test_loss" in trajectory and "epoch" in trajectory.dims:
        x = trajectory["epoch"].values
        curves = {k: trajectory[v].values for k, v in
                  (("train", "train_loss"), ("test", "test_loss"), ("train_acc", "train_acc"), ("test_acc", "test_acc"))
                  if v in trajectory}
        source = "every epoch; training objective: cross-entropy over the p + 1 classes"
    else:
        ab = group(tree, "ablation", figure=name)
        x = _epochs(ab)
        curves = {"train": ab["loss_train"].values, "test": ab["loss_test"].values,
                  "train_acc": ab["acc_train"].values, "test_acc": ab["acc_test"].values}
        source = "at the checkpoints; cross-entropy over the p non-'=' classes"
    with paper_style():
        fig = new_figure(FULL_WIDTH, 2.9)
        ax, ax2 = fig.subplots(1, 2, width_ratios=(1.5, 1))
        shade_phases(ax, spans)
        ax.plot(x, curves["train"], color=COLORS["train"], label="train")
        ax.plot(x, curves["test"], color=COLORS["test"], label="test")
        _log_loss_axis(ax)
        _xlim(ax, np.asarray(x))
        ax.set_title("Loss")
        ax.legend(loc="lower left")
        shade_phases(ax2, spans)
        if "train_acc" in curves and "test_acc" in curves:
            ax2.plot(x, curves["train_acc"], color=COLORS["train"], label="train")
            ax2.plot(x, curves["test_acc"], color=COLORS["test"], label="test")
            ax2.legend(loc="center right")
        ax2.set_ylim(-0.02, 1.02)
        _xlim(ax2, np.asarray(x))
        ax2.set_xlabel("epoch")
        ax2.set_ylabel("accuracy")
        ax2.set_title("Accuracy")
        if spans:
            fig.legend(handles=phase_handles(spans), loc="outside lower center", ncols=len(spans))
        fig.suptitle(f"Train and test loss ({source})")
    return fig


def _panel(ax, x, series, spans, *, title: str, ylabel: str, log: bool = True) -> None:
    shade_phases(ax, spans)
    for label, y, color, style in series:
        ax.plot(x, y, color=color, ls=style, label=label)
    if log:
        _log_loss_axis(ax, ylabel)
    else:
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
    _xlim(ax, np.asarray(x))
    ax.set_title(title)
    ax.legend(loc="best")


def fig_progress_measures(tree: xr.DataTree) -> Figure:
    """The progress measures over training with the phases shaded (paper Fig. 7, section 5.1).

    Panels: excluded loss (all key frequencies removed, train split) with the train and test loss; restricted
    loss (only the key frequencies kept, all pairs) with the test loss; test and train loss; Gini coefficient of
    the Fourier-component norms of ``W_E`` and ``W_logit``; total sum of squared weights; and the local learning
    coefficient (mean +/- std over chains) when the tree has an ``llc`` group, else train, test and restricted
    accuracy.

    Parameters
    ----------
    tree : xarray.DataTree
        Analysis tree with groups ``ablation`` and ``measures`` (and optionally ``phases``, ``llc``).

    Returns
    -------
    matplotlib.figure.Figure
        Six panels against epoch; losses in nats on a log scale.

    Raises
    ------
    AnalysisError
        If the tree lacks ``ablation`` or ``measures``.
    """
    name = "progress measures"
    ab = group(tree, "ablation", figure=name)
    me = group(tree, "measures", figure=name)
    spans = phase_spans(tree)
    x = _epochs(ab)
    xm = _epochs(me)
    train, test = ab["loss_train"].values, ab["loss_test"].values
    with paper_style():
        fig = new_figure(FULL_WIDTH, 4.6)
        axes = fig.subplots(2, 3)
        _panel(axes[0, 0], x, [("excluded loss", ab["excluded_loss_full"].values, COLORS["excluded"], "-"),
                               ("train loss", train, COLORS["train"], "--"),
                               ("test loss", test, COLORS["test"], ":")], spans,
               title="Excluded loss (train)", ylabel="loss (nats)")
        _panel(axes[0, 1], x, [("restricted loss", ab["restricted_loss_all"].values, COLORS["restricted"], "-"),
                               ("test loss", test, COLORS["test"], ":")], spans,
               title="Restricted loss (all pairs)", ylabel="loss (nats)")
        _panel(axes[0, 2], x, [("test loss", test, COLORS["test"], "-"),
                               ("train loss", train, COLORS["train"], "--")], spans,
               title="Test and train loss", ylabel="loss (nats)")
        gini = [("W_E", me["gini_W_E_component"].values, COLORS["W_E"], "-"),
                ("W_logit", me["gini_W_logit_component"].values, COLORS["W_logit"], "-")]
        _panel(axes[1, 0], xm, gini, spans, title="Gini of Fourier norms", ylabel="Gini coefficient", log=False)
        _panel(axes[1, 1], xm, [("all parameters", me["sum_sq_weights_total"].values, COLORS["weights"], "-")],
               spans, title="Sum of squared weights", ylabel="sum of squared weights", log=False)
        axes[1, 1].get_legend().remove()
        ax = axes[1, 2]
        if has_groups(tree, "llc"):
            ll = group(tree, "llc", figure=name)
            xl = _epochs(ll)
            mean, std = ll["llc_mean"].values.astype(float), ll["llc_std"].values.astype(float)
            shade_phases(ax, spans)
            ax.fill_between(xl, mean - np.nan_to_num(std), mean + np.nan_to_num(std), color=COLORS["llc"], alpha=0.3,
                            lw=0, label="± std over chains")
            ax.plot(xl, mean, color=COLORS["llc"], marker="o", ms=2.5, label="LLC (mean)")
            ax.set_xlabel("epoch")
            ax.set_ylabel("local learning coefficient")
            _xlim(ax, x)
            ax.set_title("Local learning coefficient")
            ax.legend(loc="best")
        else:
            _panel(ax, x, [("train", ab["acc_train"].values, COLORS["train"], "--"),
                           ("test", ab["acc_test"].values, COLORS["test"], "-"),
                           ("restricted", ab["restricted_acc_all"].values, COLORS["restricted"], ":")], spans,
                   title="Accuracy", ylabel="accuracy", log=False)
            ax.set_ylim(-0.02, 1.02)
        if spans:
            fig.legend(handles=phase_handles(spans), loc="outside lower center", ncols=len(spans), title=None)
        ks = key_freqs(tree)
        fig.suptitle(f"Progress measures (key frequencies {', '.join(map(str, ks)) or 'none'})")
    return fig


def fig_key_frequency_ablations(tree: xr.DataTree) -> Figure:
    """Excluded loss per key frequency and the restricted loss over training (paper Figs. 7, 15; section 5.1).

    Left: the excluded loss on the training split with one key frequency k removed (one line per k), with all
    of them removed ("all key"), and the largest excluded loss over the non-key frequencies when the tree has
    ``excluded_loss_by_freq``; the train loss for comparison. Right: the restricted loss (only the key
    frequencies kept, with the constant) on all pairs, the train and the test split, with the test loss. The
    restricted loss exists only for the whole key set (removing one frequency is the excluded loss).

    Parameters
    ----------
    tree : xarray.DataTree
        Analysis tree with the ``ablation`` group (and optionally ``phases``).

    Returns
    -------
    matplotlib.figure.Figure
        Two panels against epoch; losses in nats on a log scale.

    Raises
    ------
    AnalysisError
        If the tree lacks ``ablation``.
    """
    name = "key-frequency ablations"
    ab = group(tree, "ablation", figure=name)
    spans = phase_spans(tree)
    x = _epochs(ab)
    ks = [int(k) for k in ab["key_freq"].values]
    with paper_style():
        fig = new_figure(FULL_WIDTH, 3.9)
        ax, ax2 = fig.subplots(1, 2)
        shade_phases(ax, spans)
        for i, k in enumerate(ks):
            ax.plot(x, ab["excluded_loss"].sel(key_freq=k).values, color=key_freq_color(i), label=f"k = {k} removed")
        ax.plot(x, ab["excluded_loss_full"].values, color="black", lw=1.6, label="all key removed")
        if "excluded_loss_by_freq" in ab:
            other = [int(f) for f in ab["freq"].values if int(f) not in ks]
            if other:
                mx = ab["excluded_loss_by_freq"].sel(freq=other).max("freq").values
                ax.plot(x, mx, color=COLORS["other"], ls="-.", lw=1.0, label="max over non-key k")
        ax.plot(x, ab["loss_train"].values, color=COLORS["train"], ls="--", lw=1.0, label="train loss")
        _log_loss_axis(ax)
        _xlim(ax, x)
        ax.set_title("Excluded loss per key frequency (train)")
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), ncols=2)
        shade_phases(ax2, spans)
        for split, style in (("all", "-"), ("train", "--"), ("test", ":")):
            ax2.plot(x, ab[f"restricted_loss_{split}"].values, color=COLORS["restricted"], ls=style,
                     label=f"restricted, {split} pairs")
        ax2.plot(x, ab["loss_test"].values, color=COLORS["test"], lw=1.0, label="test loss")
        _log_loss_axis(ax2)
        _xlim(ax2, x)
        ax2.set_title(f"Restricted loss (key frequencies {', '.join(map(str, ks))} kept)")
        ax2.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), ncols=2)
        if spans:
            fig.legend(handles=phase_handles(spans), loc="outside lower center", ncols=len(spans))
        fig.suptitle("Fourier-space ablations of the key frequencies over training")
    return fig

