"""Figures over training: loss curves, the progress measures (paper Fig. 7) and the key-frequency ablations.

Every function takes the analysis tree of :func:`mechgrok.analyze` or a plain Dataset with the variables it
draws (e.g. of :func:`mechgrok.progress_measures`; :mod:`mechgrok.figures.analysis`) and returns a
:class:`matplotlib.figure.Figure` (headless, :mod:`mechgrok.figures.style`). The x axis is always epochs; losses
are in nats on a log scale; the phases of grokking (paper section 5.2, :mod:`mechgrok.analyses.phases`) are shaded.
"""

from __future__ import annotations

import numpy as np
import xarray as xr
from matplotlib.figure import Figure

from mechgrok.errors import AnalysisError
from mechgrok.figures.analysis import PRODUCERS, group, key_freqs, optional_group, phase_spans
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


_CURVES = (("train", "loss_train"), ("test", "loss_test"), ("acc_train", "acc_train"), ("acc_test", "acc_test"))
_AB_LOSSES = ("loss_train", "loss_test")


def _has_curves(ds) -> bool:
    return isinstance(ds, xr.Dataset) and "epoch" in ds.dims and all(v in ds for v in ("loss_train", "loss_test"))


def _logged(da: xr.DataArray) -> tuple[np.ndarray, np.ndarray]:
    """A curve's (epochs, values) at the epochs it was logged: NaN (not logged) epochs dropped."""
    da = da.dropna("epoch")
    return np.asarray(da["epoch"].values), np.asarray(da.values, dtype=np.float64)


def _cadence(x: np.ndarray) -> str:
    """How often a curve was logged, from its logged epochs: "every epoch", "every 10 epochs", "at 7 epochs"."""
    d = np.diff(x)
    if d.size and (d == d[0]).all():
        return "every epoch" if d[0] == 1 else f"every {int(d[0])} epochs"
    return f"at {x.size} epoch{'s' if x.size != 1 else ''}"


def fig_loss_curves(tree: xr.DataTree | xr.Dataset, *, trajectory: xr.Dataset | None = None) -> Figure:
    """Train and test loss (log scale) and accuracy over training, with the phases shaded (paper Fig. 1).

    Parameters
    ----------
    tree : xarray.DataTree or xarray.Dataset
        One of

        - the run's trajectory (:func:`mechgrok.open_run`) with the curves ``loss_train``, ``loss_test`` (and
          ``acc_train``, ``acc_test``) over ``epoch``: those are drawn;
        - the analysis tree (:func:`mechgrok.analyze`): its ``ablation`` group (``loss_train``, ``loss_test``,
          and ``acc_train``, ``acc_test`` where present, over ``checkpoint``) is drawn, unless ``trajectory`` is
          given; its ``phases`` group (optional) is shaded;
        - a Dataset with those ablation variables over ``checkpoint`` (:func:`mechgrok.progress_measures`,
          :func:`mechgrok.ablation_losses`).
    trajectory : xarray.Dataset, optional
        The run's trajectory, whose curves are drawn instead of the analysis losses (when it has them). The
        curves are the training objective (cross-entropy over all p + 1 classes, float64, nats), each drawn
        over the epochs it was logged at: a curve logged every k epochs (``attrs["log_every"]``, e.g. the test
        loss of the paper's ``full_run_data.pth``) is NaN between them on the shared ``epoch`` dim, and those
        NaNs are left out, not interpolated. The analysis losses are over the p non-``=`` classes.

    Returns
    -------
    matplotlib.figure.Figure
        Two panels: loss (nats, log scale) and accuracy (fraction) against epoch; the title says how often
        each curve was logged.

    Raises
    ------
    AnalysisError
        If neither the trajectory's curves nor the ablation losses are available.
    """
    name = "loss curves"
    spans = phase_spans(tree)
    if trajectory is None and _has_curves(tree):
        trajectory = tree
    if _has_curves(trajectory):
        curves = {k: _logged(trajectory[v]) for k, v in _CURVES if v in trajectory}
        cad_train, cad_test = _cadence(curves["train"][0]), _cadence(curves["test"][0])
        cadence = cad_train if cad_train == cad_test else f"train {cad_train}, test {cad_test}"
        source = f"{cadence}; cross-entropy over the p + 1 classes"
    else:
        if isinstance(tree, xr.Dataset) and not all(v in tree for v in _AB_LOSSES):
            raise AnalysisError(
                f"figure {name!r} needs the curves loss_train, loss_test over epoch (the trajectory of "
                f"{PRODUCERS['curves']}) or the losses loss_train, loss_test over checkpoint (from "
                f"{PRODUCERS['ablation']}); the Dataset has neither"
            )
        ab = group(tree, "ablation", needs=_AB_LOSSES, figure=name)
        x = _epochs(ab)
        curves = {k: (x, ab[v].values) for k, v in
                  (("train", "loss_train"), ("test", "loss_test"), ("acc_train", "acc_train"), ("acc_test", "acc_test"))
                  if v in ab}
        source = "at the checkpoints; cross-entropy over the p non-'=' classes"
    every = np.concatenate([x for x, _ in curves.values()])
    span = np.array([every.min(), every.max()]) if every.size else every

    def line(ax, key: str, label: str) -> None:
        x, y = curves[key]
        ax.plot(x, y, color=COLORS[label], label=label, marker="o" if x.size == 1 else None, ms=3)

    with paper_style():
        fig = new_figure(FULL_WIDTH, 2.9)
        ax, ax2 = fig.subplots(1, 2, width_ratios=(1.5, 1))
        shade_phases(ax, spans)
        line(ax, "train", "train")
        line(ax, "test", "test")
        _log_loss_axis(ax)
        _xlim(ax, span)
        ax.set_title("Loss")
        ax.legend(loc="lower left")
        shade_phases(ax2, spans)
        if "acc_train" in curves and "acc_test" in curves:
            line(ax2, "acc_train", "train")
            line(ax2, "acc_test", "test")
            ax2.legend(loc="center right")
        ax2.set_ylim(-0.02, 1.02)
        _xlim(ax2, span)
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


_AB_NEEDS = ("loss_train", "loss_test", "acc_train", "acc_test", "excluded_loss_full", "restricted_loss_all",
             "restricted_acc_all")
_ME_NEEDS = ("gini_W_E_component", "gini_W_logit_component", "sum_sq_weights_total")


def fig_progress_measures(tree: xr.DataTree | xr.Dataset) -> Figure:
    """The progress measures over training with the phases shaded (paper Fig. 7, section 5.1).

    Panels: excluded loss (all key frequencies removed, train split) with the train and test loss; restricted
    loss (only the key frequencies kept, all pairs) with the test loss; test and train loss; Gini coefficient of
    the Fourier-component norms of ``W_E`` and ``W_logit``; total sum of squared weights; and the local learning
    coefficient (mean +/- std over chains) where ``llc_mean`` is available, else train, test and restricted
    accuracy.

    Parameters
    ----------
    tree : xarray.DataTree or xarray.Dataset
        The analysis tree (:func:`mechgrok.analyze`) with groups ``ablation`` and ``measures`` (and optionally
        ``phases``, ``llc``), or one Dataset with the variables of both, as :func:`mechgrok.progress_measures`
        returns it (e.g. ``fig_progress_measures(mechgrok.progress_measures(ds, key_freqs=[14, 35]))``). Read:
        ``loss_train``, ``loss_test``, ``acc_train``, ``acc_test``, ``excluded_loss_full``,
        ``restricted_loss_all``, ``restricted_acc_all`` and ``gini_W_E_component``, ``gini_W_logit_component``,
        ``sum_sq_weights_total``, each over ``checkpoint`` (epochs); ``llc_mean``, ``llc_std`` (checkpoint) where
        present (the tree's ``llc`` group, or the Dataset itself); attrs ``key_freqs`` (for the title).

    Returns
    -------
    matplotlib.figure.Figure
        Six panels against epoch; losses in nats on a log scale.

    Raises
    ------
    AnalysisError
        If a needed variable is missing (naming it and the function that produces it).
    """
    name = "progress measures"
    ab = group(tree, "ablation", needs=_AB_NEEDS, figure=name)
    me = group(tree, "measures", needs=_ME_NEEDS, figure=name)
    ll = optional_group(tree, "llc", needs=("llc_mean", "llc_std"))
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
        if ll is not None:
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


def fig_key_frequency_ablations(tree: xr.DataTree | xr.Dataset) -> Figure:
    """Excluded loss per key frequency and the restricted loss over training (paper Figs. 7, 15; section 5.1).

    Left: the excluded loss on the training split with one key frequency k removed (one line per k), with all
    of them removed ("all key"), and the largest excluded loss over the non-key frequencies where there is
    ``excluded_loss_by_freq``; the train loss for comparison. Right: the restricted loss (only the key
    frequencies kept, with the constant) on all pairs, the train and the test split, with the test loss. The
    restricted loss exists only for the whole key set (removing one frequency is the excluded loss).

    Parameters
    ----------
    tree : xarray.DataTree or xarray.Dataset
        The analysis tree (:func:`mechgrok.analyze`) with the ``ablation`` group (and optionally ``phases``),
        or a Dataset of :func:`mechgrok.ablation_losses` or :func:`mechgrok.progress_measures`. Read:
        ``excluded_loss`` (checkpoint, key_freq), ``excluded_loss_full``, ``loss_train``, ``loss_test``,
        ``restricted_loss_all``, ``restricted_loss_train``, ``restricted_loss_test`` (checkpoint), and
        ``excluded_loss_by_freq`` (checkpoint, freq) where present (``all_freqs=True``).

    Returns
    -------
    matplotlib.figure.Figure
        Two panels against epoch; losses in nats on a log scale.

    Raises
    ------
    AnalysisError
        If a needed variable is missing (naming it and the function that produces it).
    """
    name = "key-frequency ablations"
    ab = group(tree, "ablation", needs=("excluded_loss", "excluded_loss_full", "loss_train", "loss_test",
                                        "restricted_loss_all", "restricted_loss_train", "restricted_loss_test"),
               figure=name)
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

