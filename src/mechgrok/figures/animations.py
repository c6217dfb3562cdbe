"""Animations over training (GIF through matplotlib's Pillow writer): the W_E Fourier norms and the neuron clusters.

Each function returns a :class:`matplotlib.animation.FuncAnimation` over at most ``max_frames`` checkpoints,
evenly spaced in checkpoint index and always including the first and the last; :func:`save_gif` writes it. Below
each animation a strip shows the train and test loss (nats, log scale) with a cursor at the frame's epoch and the
phases shaded, so that a reader knows where in training the frame is.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import xarray as xr
from matplotlib.animation import FuncAnimation, PillowWriter
from matplotlib.colors import BoundaryNorm, ListedColormap

from mechgrok.errors import AnalysisError
from mechgrok.figures.analysis import group, key_freqs, need_checkpoints, optional_group, phase_spans
from mechgrok.figures.fourier_norms import cos_sin_norms, mark_key_freq_ticks
from mechgrok.figures.style import (
    COLORS,
    GIF_DPI,
    freeze_layout,
    key_freq_color,
    new_figure,
    paper_style,
    shade_phases,
)

__all__ = ["frame_indices", "animate_W_E_fourier_norms", "animate_neuron_frequencies", "save_gif"]


def frame_indices(n: int, max_frames: int) -> np.ndarray:
    """Indices of at most ``max_frames`` of ``n`` checkpoints, evenly spaced, first and last included.

    Raises
    ------
    AnalysisError
        If ``n`` < 1 or ``max_frames`` < 2.
    """
    if n < 1:
        raise AnalysisError("an animation needs at least one checkpoint")
    if max_frames < 2:
        raise AnalysisError(f"max_frames must be >= 2, got {max_frames}")
    return np.unique(np.round(np.linspace(0, n - 1, min(n, max_frames))).astype(np.int64))


def _loss_strip(fig, ax, tree: xr.DataTree | xr.Dataset):
    """Train/test loss against epoch with a cursor; returns the cursor line (or None without the losses)."""
    ab = optional_group(tree, "ablation", needs=("loss_train", "loss_test"))
    if ab is None or "checkpoint" not in ab["loss_train"].dims:
        ax.set_axis_off()
        return None
    x = ab["checkpoint"].values
    shade_phases(ax, phase_spans(tree))
    ax.plot(x, ab["loss_train"].values, color=COLORS["train"], lw=1.0, label="train")
    ax.plot(x, ab["loss_test"].values, color=COLORS["test"], lw=1.0, label="test")
    ax.set_yscale("log", nonpositive="mask")
    if x.size > 1:
        ax.set_xlim(float(x[0]), float(x[-1]))
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss (nats)")
    ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5))
    return ax.axvline(float(x[0]), color="black", lw=1.2)


def _phase_at(tree: xr.DataTree | xr.Dataset, epoch: int) -> str:
    for name, start, end in phase_spans(tree):
        if start <= epoch <= end:
            return name.replace("_", " ")
    return ""


def _prepare_for_frames(fig) -> None:
    """Lay out once (:func:`~mechgrok.figures.style.freeze_layout`) and skip the redundant draw per frame.

    ``Animation.save`` draws every frame twice: a ``draw_idle`` after the update, then the writer's
    ``savefig``. These figures live on a headless Agg canvas that nothing displays, so ``draw_idle`` is made a
    no-op on this canvas (halving the time to write a GIF); every frame is still drawn by the writer.
    """
    freeze_layout(fig)
    fig.canvas.draw_idle = lambda *args, **kwargs: None


def _animation(fig, draw, *, tree: xr.DataTree | xr.Dataset, epochs, title, label: str, cursor,
               interval_ms: int) -> FuncAnimation:
    """A FuncAnimation whose frame j calls ``draw(j)``, then sets the title (epoch and phase) and the loss cursor."""

    def update(j: int):
        draw(j)
        e = int(epochs[j])
        phase = _phase_at(tree, e)
        title.set_text(f"{label}, epoch {e}" + (f" ({phase})" if phase else ""))
        if cursor is not None:
            cursor.set_xdata([e, e])
        return []

    update(0)
    _prepare_for_frames(fig)  # after update(0), so that the title has its space
    return FuncAnimation(fig, update, frames=len(epochs), interval=interval_ms, blit=False, repeat=True,
                         cache_frame_data=False)


def animate_W_E_fourier_norms(
    tree: xr.DataTree | xr.Dataset, *, max_frames: int = 40, interval_ms: int = 200
) -> FuncAnimation:
    """Animation of the W_E Fourier-component norms (const, cos k, sin k) over training.

    Parameters
    ----------
    tree : xarray.DataTree or xarray.Dataset
        The analysis tree (:func:`mechgrok.analyze`) with ``fourier_norms`` (``W_E_fourier_norm`` (checkpoint,
        fourier)), and optionally ``ablation`` (``loss_train``, ``loss_test``) and ``phases`` for the loss
        strip; or a Dataset with ``W_E_fourier_norm`` (:func:`mechgrok.analyses.modular.fourier_norms.fourier_norms`,
        or :func:`mechgrok.progress_measures`, whose losses then fill the strip). Attrs ``key_freqs``.
    max_frames : int
        At most this many frames (checkpoints, evenly spaced).
    interval_ms : int
        Milliseconds per frame.

    Returns
    -------
    matplotlib.animation.FuncAnimation
        One frame per chosen checkpoint; the bars share one y scale (the largest norm over all frames).

    Raises
    ------
    AnalysisError
        If ``W_E_fourier_norm`` is missing (naming the function that produces it) or ``max_frames`` < 2.
    """
    fn = group(tree, "fourier_norms", needs=("W_E_fourier_norm",), figure="W_E Fourier norms animation")
    need_checkpoints(fn, "W_E_fourier_norm", figure="W_E Fourier norms animation")
    keys = key_freqs(tree)
    norms = fn["W_E_fourier_norm"]
    epochs = fn["checkpoint"].values.astype(np.int64)
    idx = frame_indices(epochs.size, max_frames)
    split = [cos_sin_norms(norms.isel(checkpoint=int(i))) for i in idx]
    n = split[0][1].size
    k = np.arange(1, n + 1)
    top = max(max(c, cs.max(), sn.max()) for c, cs, sn in split) * 1.05 or 1.0
    with paper_style():
        fig = new_figure(6.0, 3.6, layout=None)
        ax, strip = fig.subplots(2, 1, height_ratios=(2.6, 1))
        for kk in keys:
            ax.axvspan(kk - 0.5, kk + 0.5, color="#000000", alpha=0.06, lw=0, zorder=0)
        const = ax.bar([0], [split[0][0]], width=0.8, color=COLORS["const"], label="const")
        cos = ax.bar(k - 0.2, split[0][1], width=0.4, color=COLORS["cos"], label="cos k")
        sin = ax.bar(k + 0.2, split[0][2], width=0.4, color=COLORS["sin"], label="sin k")
        ax.set_xlim(-0.7, n + 0.7)
        ax.set_ylim(0, top)
        mark_key_freq_ticks(ax, keys, axis="x", const=True, n_freq=n)
        ax.set_xlabel("frequency k (key frequencies labelled)")
        ax.set_ylabel("norm over d_model")
        ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5))
        title = ax.set_title("")
        cursor = _loss_strip(fig, strip, tree)

        def draw(j: int) -> None:
            c, cs, sn = split[j]
            const[0].set_height(c)
            for bar, h in zip(cos, cs):
                bar.set_height(h)
            for bar, h in zip(sin, sn):
                bar.set_height(h)

        return _animation(fig, draw, tree=tree, epochs=epochs[idx], title=title, label="W_E Fourier norms",
                          cursor=cursor, interval_ms=interval_ms)


def animate_neuron_frequencies(
    tree: xr.DataTree | xr.Dataset, *, max_frames: int = 40, interval_ms: int = 200
) -> FuncAnimation:
    """Animation of the neuron-frequency assignment (clusters by FVE, paper section 4.2) over training.

    Left: every MLP neuron as a cell, coloured by its cluster at the frame's checkpoint (a key frequency's
    colour, grey for another frequency, light grey for unexplained); cells are ordered by the cluster at the
    last checkpoint, so the clusters fill in as blocks. Right: neurons per cluster.

    Parameters
    ----------
    tree : xarray.DataTree or xarray.Dataset
        The analysis tree (:func:`mechgrok.analyze`) with ``neurons`` (``cluster`` (checkpoint, d_mlp)), and
        optionally ``ablation`` and ``phases`` for the loss strip; or a Dataset of
        :func:`mechgrok.neuron_clusters` (no loss strip). Attrs ``key_freqs`` (none where absent: every
        cluster is then "other k").
    max_frames : int
        At most this many frames (checkpoints, evenly spaced).
    interval_ms : int
        Milliseconds per frame.

    Returns
    -------
    matplotlib.animation.FuncAnimation

    Raises
    ------
    AnalysisError
        If ``cluster`` is missing (naming the function that produces it) or ``max_frames`` < 2.
    """
    nz = group(tree, "neurons", needs=("cluster",), figure="neuron frequencies animation")
    need_checkpoints(nz, "cluster", figure="neuron frequencies animation")
    keys = key_freqs(tree)
    cluster = nz["cluster"].transpose("checkpoint", "d_mlp").values.astype(np.int64)
    epochs = nz["checkpoint"].values.astype(np.int64)
    idx = frame_indices(epochs.size, max_frames)
    d_mlp = cluster.shape[1]
    # categories: 0 unexplained, 1 other frequency, 2 + i the i-th key frequency
    cats = np.ones_like(cluster)
    cats[cluster == -1] = 0
    for i, kk in enumerate(keys):
        cats[cluster == kk] = 2 + i
    final = cats[-1]
    order = np.lexsort((np.arange(d_mlp), np.where(final >= 2, final, 100 + (1 - final))))
    ncols = int(np.ceil(np.sqrt(d_mlp * 1.5)))
    nrows = int(np.ceil(d_mlp / ncols))

    def grid(j: int) -> np.ndarray:
        g = np.full(nrows * ncols, -1.0)
        g[:d_mlp] = cats[idx[j]][order]
        return np.ma.masked_less(g.reshape(nrows, ncols), 0)

    colors = [COLORS["unexplained"], COLORS["other"]] + [key_freq_color(i) for i in range(len(keys))]
    cmap = ListedColormap(colors).with_extremes(bad="white")
    norm = BoundaryNorm(np.arange(-0.5, len(colors) + 0.5), cmap.N)
    names = [f"k = {kk}" for kk in keys] + ["other k", "unexplained"]
    sizes = np.stack([[(cats[i] == 2 + q).sum() for q in range(len(keys))] + [(cats[i] == 1).sum(), (cats[i] == 0).sum()]
                      for i in idx])
    bar_colors = [key_freq_color(q) for q in range(len(keys))] + [COLORS["other"], COLORS["unexplained"]]
    with paper_style():
        fig = new_figure(6.0, 3.8, layout=None)
        gs = fig.add_gridspec(2, 2, height_ratios=(2.6, 1), width_ratios=(1.3, 1))
        ax = fig.add_subplot(gs[0, 0])
        axb = fig.add_subplot(gs[0, 1])
        strip = fig.add_subplot(gs[1, :])
        im = ax.imshow(grid(0), cmap=cmap, norm=norm, interpolation="nearest", aspect="equal")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_xlabel(f"{d_mlp} neurons, ordered by final cluster")
        title = ax.set_title("")
        xs = np.arange(len(names))
        bars = axb.bar(xs, sizes[0], color=bar_colors)
        axb.set_xticks(xs, names, rotation=45, ha="right")
        axb.set_ylim(0, d_mlp)
        axb.set_ylabel("neurons")
        axb.set_title("Cluster sizes")
        cursor = _loss_strip(fig, strip, tree)

        def draw(j: int) -> None:
            im.set_data(grid(j))
            for bar, h in zip(bars, sizes[j]):
                bar.set_height(h)

        return _animation(fig, draw, tree=tree, epochs=epochs[idx], title=title, label="Neuron clusters",
                          cursor=cursor, interval_ms=interval_ms)


def save_gif(anim: FuncAnimation, path: str | Path, *, fps: float = 5.0, dpi: int = GIF_DPI) -> Path:
    """Write an animation as a looping GIF with matplotlib's Pillow writer (no external program needed).

    Parameters
    ----------
    anim : matplotlib.animation.FuncAnimation
    path : str or Path
        Target ``.gif`` file.
    fps : float
        Frames per second.
    dpi : int
        Resolution (the GIF is width x dpi pixels wide).

    Returns
    -------
    Path
    """
    path = Path(path)
    with paper_style():
        anim.save(path, writer=PillowWriter(fps=fps), dpi=dpi)
    return path
