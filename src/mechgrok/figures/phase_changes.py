"""Figures of the tasks beyond modular arithmetic: loss curves with their phase changes marked, head-score
trajectories and an attention heatmap (induction), the loss per answer digit split by carry (addition).

:func:`write_task_figures` writes them (PNG and SVG, and an ``index.html``) from the tree of
:func:`mechgrok.task_pipeline.analyze_task`; :func:`mechgrok.figures.pack.write_figure_pack` calls it for these
tasks.
"""

from __future__ import annotations

import html
from pathlib import Path

import numpy as np
import xarray as xr
from matplotlib.figure import Figure

from mechgrok.figures.style import COLORS, FULL_WIDTH, PNG_DPI, key_freq_color, new_figure, paper_style

__all__ = ["plot_phase_changes", "plot_head_scores", "plot_attention_pattern", "plot_digit_losses",
           "write_task_figures"]


def plot_phase_changes(curve: xr.DataArray, pc: xr.Dataset, *, title: str = "") -> Figure:
    """Loss curves on a log axis with each detected drop marked: onset (dashed), steepest (dot), end (dotted).

    Parameters
    ----------
    curve : xarray.DataArray
        Losses over ``epoch`` and at most one other dim (one line per entry, e.g. answer positions).
    pc : xarray.Dataset
        :func:`mechgrok.analyses.phase_changes.phase_changes` of ``curve``.
    title : str

    Returns
    -------
    matplotlib.figure.Figure
    """
    fig = new_figure(FULL_WIDTH, 3.0)
    ax = fig.add_subplot()
    other = [d for d in curve.dims if d != "epoch"]
    lines = [(None, curve, pc)] if not other else [
        (v, curve.isel({other[0]: i}), pc.isel({other[0]: i})) for i, v in enumerate(curve[other[0]].values)]
    for i, (label, c, p) in enumerate(lines[:12]):
        c = c.dropna("epoch")
        color = COLORS["train"] if label is None else key_freq_color(i)
        ax.plot(c["epoch"].values, np.maximum(c.values, 1e-12), color=color, lw=0.8, alpha=0.85,
                label=None if label is None else f"{other[0]} {label}")
        for on, st, en in zip(p["onset"].values, p["steepest"].values, p["end"].values):
            if np.isfinite(on):
                ax.axvline(on, color=color, ls="--", lw=0.6)
                ax.axvline(en, color=color, ls=":", lw=0.6)
                y = float(c.sel(epoch=st, method="nearest"))
                ax.plot([st], [max(y, 1e-12)], "o", color=color, ms=3)
    ax.set_yscale("log")
    ax.set_xlabel("epoch (steps for infinite data)")
    ax.set_ylabel("loss (nats)")
    if other:
        ax.legend(ncol=3)
    ax.set_title(title or f"{curve.name}: phase changes (dashed onset, dot steepest, dotted end)")
    return fig


def plot_head_scores(ind: xr.Dataset) -> Figure:
    """Previous-token and induction scores of every head over checkpoints (the induction score's baseline dotted,
    where measured), with the loss on a second axis; each circuit head's formation epoch is marked with a dot."""
    fig = new_figure(FULL_WIDTH, 3.0)
    axes = fig.subplots(1, 2, sharey=True)
    e = ind["checkpoint"].values
    for ax, var, name, formed in ((axes[0], "prev_token_score", "previous-token score", "prev_token_formed"),
                                  (axes[1], "induction_score", "induction score (baseline dotted)",
                                   "induction_formed")):
        for i, (l, h) in enumerate(np.ndindex(ind.sizes["layer"], ind.sizes["head"])):
            ax.plot(e, ind[var].values[:, l, h], color=key_freq_color(i), lw=1.0, label=f"{l}.{h}")
            if var == "induction_score" and "induction_baseline" in ind:
                ax.plot(e, ind["induction_baseline"].values[:, l, h], color=key_freq_color(i), lw=0.8, ls=":")
            at = float(ind[formed].values[l, h]) if formed in ind else float("nan")
            if np.isfinite(at):
                ax.plot([at], [float(ind[var].sel(checkpoint=at).values[l, h])], "o", color=key_freq_color(i), ms=4)
        twin = ax.twinx()
        twin.plot(e, ind["loss"].values, color="#555555", lw=1.0, ls="--")
        twin.set_ylabel("loss (nats, dashed)")
        ax.set_title(name)
        ax.set_xlabel("epoch")
    axes[0].set_ylabel("attention weight")
    axes[1].legend(title="layer.head", ncol=2)
    return fig


def plot_attention_pattern(ind: xr.Dataset, layer: int, head: int) -> Figure:
    """The attention pattern of one head on the first evaluation sequence at the last checkpoint."""
    fig = new_figure(3.6, 3.3)
    ax = fig.add_subplot()
    a = ind["attn_pattern"].isel(checkpoint=-1).sel(layer=layer, head=head).values
    im = ax.imshow(a, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(im, ax=ax, shrink=0.8, label="attention")
    ax.set_xlabel("key position")
    ax.set_ylabel("query position")
    ax.set_title(f"head {layer}.{head}, epoch {int(ind['checkpoint'].values[-1])}")
    return fig


def plot_digit_losses(dl: xr.Dataset) -> Figure:
    """Loss of every answer digit over checkpoints, solid for sums without a carry into it, dashed with one."""
    fig = new_figure(FULL_WIDTH, 3.0)
    ax = fig.add_subplot()
    e = dl["checkpoint"].values
    for k in range(dl.sizes["answer_position"]):
        for c, ls in ((0, "-"), (1, "--")):
            ax.plot(e, np.maximum(dl["loss_by_carry"].values[:, k, c], 1e-12), color=key_freq_color(k), ls=ls, lw=1.0,
                    label=f"position {k}" if c == 0 else None)
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss (nats)")
    ax.set_title("loss per answer digit: no carry (solid) / carry (dashed)")
    ax.legend(ncol=3)
    return fig


def write_task_figures(tree: xr.DataTree, out_dir: str | Path, *, dpi: int = PNG_DPI) -> Path:
    """Write every figure of a sequence-task or curve-only analysis (PNG + SVG, numbered ``01_...`` like the
    figure pack's) and ``index.html``.

    Parameters
    ----------
    tree : xarray.DataTree
        From :func:`mechgrok.task_pipeline.analyze_task` (or ``open_analysis`` of its store).
    out_dir : str or Path
    dpi : int

    Returns
    -------
    Path
        ``out_dir / "index.html"``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    figs: list[tuple[str, str, Figure]] = []
    with paper_style():
        if "curves" in tree.children:
            cv = tree["curves"].to_dataset(inherit=False)
            for name in tree["phase_changes"].children:
                c = cv[name]
                if c.ndim <= 2:
                    pc = tree["phase_changes"][name].to_dataset(inherit=False)
                    figs.append((f"phase_changes_{name}", f"{name} with its phase changes", plot_phase_changes(c, pc)))
        if "induction" in tree.children:
            ind = tree["induction"].to_dataset(inherit=False)
            figs.append(("head_scores", "previous-token and induction scores of every head", plot_head_scores(ind)))
            last = ind["induction_score"].isel(checkpoint=-1).values
            l, h = np.unravel_index(int(np.argmax(np.where(np.arange(last.shape[0])[:, None] > 0, last, -1))), last.shape)
            figs.append(("attention_induction_head", f"attention of the top induction head {l}.{h}",
                         plot_attention_pattern(ind, int(l), int(h))))
            prev = ind["prev_token_score"].isel(checkpoint=-1).values[:-1]
            l, h = np.unravel_index(int(np.argmax(prev)), prev.shape)
            figs.append(("attention_prev_token_head", f"attention of the top previous-token head {l}.{h}",
                         plot_attention_pattern(ind, int(l), int(h))))
        if "digit_losses" in tree.children and tree["digit_losses"].sizes.get("checkpoint", 0) > 1:
            figs.append(("digit_losses", "loss per answer digit split by carry",
                         plot_digit_losses(tree["digit_losses"].to_dataset(inherit=False))))
        figs = [(f"{i:02d}_{stem}", cap, fig) for i, (stem, cap, fig) in enumerate(figs, start=1)]  # pack's naming
        for stem, _, fig in figs:
            fig.savefig(out / f"{stem}.png", dpi=dpi)
            fig.savefig(out / f"{stem}.svg", metadata={"Date": None})
    body = "".join(f"<h2>{html.escape(cap)}</h2><img src='{stem}.png' width='700'>\n" for stem, cap, _ in figs)
    task = html.escape(str(tree.attrs.get("task", "")))
    index = out / "index.html"
    index.write_text(f"<!doctype html><html><head><meta charset='utf-8'><title>mechgrok figures ({task})</title>"
                     f"</head><body><h1>mechgrok figures: {task}</h1>\n{body}</body></html>\n")
    return index
