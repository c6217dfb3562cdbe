"""One consistent look for every mechgrok figure: paper-sized, headless, deterministic.

Every figure is a :class:`matplotlib.figure.Figure` with an Agg canvas attached (:func:`new_figure`), made
without ``pyplot``: no global backend is switched, no display is needed, and no figure is left registered in
pyplot's state (a user's notebook backend is untouched). Figures are sized for a paper: :data:`FULL_WIDTH`
inches wide (a two-column page's text width) with 8-point text, so that a PNG at :data:`PNG_DPI` read at 100 %
on the page stays legible.

The colours are the Okabe-Ito palette (safe for colour-blind readers); one colour per quantity (train, test,
restricted, excluded, ...) is used in every figure, and one colour per key frequency. The three phases of
grokking (paper section 5.2) are shaded in the same three tints everywhere (:func:`shade_phases`).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Sequence

import matplotlib as mpl
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.layout_engine import ConstrainedLayoutEngine
from matplotlib.patches import Patch

__all__ = [
    "FULL_WIDTH",
    "PNG_DPI",
    "GIF_DPI",
    "RC",
    "COLORS",
    "PHASE_COLORS",
    "PHASE_NAMES",
    "paper_style",
    "new_figure",
    "key_freq_color",
    "shade_phases",
    "phase_handles",
    "epoch_edges",
    "stagger_tick_labels",
    "freeze_layout",
]

#: Width of a full-width figure in inches (text width of a two-column paper page).
FULL_WIDTH = 7.0
#: Resolution of the PNG files of the pack (dots per inch).
PNG_DPI = 200
#: Resolution of the GIF animations (dots per inch); small on purpose.
GIF_DPI = 100

#: The rcParams of the mechgrok style (applied by :func:`paper_style`).
RC: dict[str, object] = {
    "font.family": "DejaVu Sans",
    "font.size": 8,
    "axes.titlesize": 8.5,
    "axes.labelsize": 8,
    "xtick.labelsize": 7,
    "ytick.labelsize": 7,
    "legend.fontsize": 7,
    "legend.frameon": False,
    "figure.titlesize": 9.5,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.linewidth": 0.7,
    "xtick.major.width": 0.7,
    "ytick.major.width": 0.7,
    "lines.linewidth": 1.3,
    "axes.grid": False,
    "image.cmap": "viridis",
    "image.interpolation": "nearest",
    "figure.constrained_layout.h_pad": 0.04,
    "figure.constrained_layout.w_pad": 0.04,
    "savefig.facecolor": "white",
    "figure.facecolor": "white",
    "svg.hashsalt": "mechgrok",  # deterministic SVG ids
    "svg.fonttype": "path",  # the SVG looks the same without the font installed
}

#: One colour per quantity, the same in every figure (Okabe-Ito).
COLORS: dict[str, str] = {
    "train": "#0072B2",  # blue
    "test": "#D55E00",  # vermillion
    "restricted": "#009E73",  # bluish green
    "excluded": "#CC79A7",  # reddish purple
    "all": "#555555",
    "W_E": "#0072B2",
    "W_logit": "#E69F00",  # orange
    "weights": "#555555",
    "llc": "#56B4E9",  # sky blue
    "cos": "#0072B2",
    "sin": "#E69F00",
    "const": "#555555",
    "unexplained": "#BBBBBB",
    "other": "#777777",
    "distance_irrelevance": "#0072B2",
    "gradient_symmetricity": "#D55E00",
    "circularity": "#009E73",
}
_KEY_CYCLE = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442", "#000000")

#: Phase tints (paper section 5.2), in order.
PHASE_COLORS: dict[str, str] = {
    "memorisation": "#56B4E9",
    "circuit_formation": "#F0E442",
    "cleanup": "#009E73",
}
#: Readable phase names.
PHASE_NAMES: dict[str, str] = {
    "memorisation": "memorisation",
    "circuit_formation": "circuit formation",
    "cleanup": "cleanup",
}
_PHASE_ALPHA = 0.16


@contextmanager
def paper_style() -> Iterator[None]:
    """Context manager applying :data:`RC` (matplotlib's defaults otherwise, whatever the user's rcParams)."""
    with mpl.rc_context():
        mpl.rcdefaults()
        mpl.rcParams.update(RC)
        yield


def new_figure(width: float = FULL_WIDTH, height: float = 3.0, *, layout: str | None = "constrained") -> Figure:
    """A Figure with an Agg canvas, made without pyplot (headless, nothing global).

    Parameters
    ----------
    width, height : float
        Size in inches.
    layout : {"constrained", None}
        Layout engine; animations lay out once themselves (:func:`freeze_layout`) and pass None.

    Returns
    -------
    matplotlib.figure.Figure
    """
    fig = Figure(figsize=(width, height), layout=layout)
    FigureCanvasAgg(fig)
    return fig


def key_freq_color(i: int) -> str:
    """Colour of the ``i``-th key frequency (position in the sorted key-frequency list)."""
    return _KEY_CYCLE[i % len(_KEY_CYCLE)]


def shade_phases(ax, spans: Sequence[tuple[str, float, float]], *, label: bool = False) -> None:
    """Shade the phases of grokking on an axis whose x is epochs.

    Parameters
    ----------
    ax : matplotlib.axes.Axes
    spans : sequence of (phase, start_epoch, end_epoch)
        From :func:`mechgrok.figures.analysis.phase_spans`; phases not found are absent.
    label : bool
        Also write the phase names along the top of the axis.
    """
    for name, start, end in spans:
        ax.axvspan(start, end, color=PHASE_COLORS[name], alpha=_PHASE_ALPHA, lw=0, zorder=0)
        if label:
            ax.text((start + end) / 2, 0.985, PHASE_NAMES[name], transform=ax.get_xaxis_transform(), ha="center",
                    va="top", fontsize=6.5, color="#333333", zorder=5, clip_on=True)


def phase_handles(spans: Sequence[tuple[str, float, float]]) -> list[Patch]:
    """Legend patches for the phases in ``spans``."""
    return [Patch(facecolor=PHASE_COLORS[name], alpha=_PHASE_ALPHA * 2.5, lw=0, label=PHASE_NAMES[name])
            for name, _, _ in spans]


def epoch_edges(epochs: np.ndarray) -> np.ndarray:
    """Cell edges (length n + 1) around checkpoint epochs, for heatmaps over non-uniformly spaced checkpoints.

    Each edge is half-way between neighbouring checkpoints; the outer edges extend by half the neighbouring gap.
    """
    e = np.asarray(epochs, dtype=np.float64)
    if e.size == 1:
        return np.array([e[0] - 0.5, e[0] + 0.5])
    mid = (e[1:] + e[:-1]) / 2
    return np.concatenate([[e[0] - (mid[0] - e[0])], mid, [e[-1] + (e[-1] - mid[-1])]])


def stagger_tick_labels(ax, positions: Sequence[float], texts: Sequence[str], *, axis: str,
                        fontsize: float | None = None) -> list[str]:
    """Tick labels that do not overlap where ticks are close: every other close label is moved aside.

    Closeness is judged in points from the axis' current data limits and size (set the limits first). On the x
    axis a moved label goes one line down; on the y axis it is pushed left (tick labels are right-aligned).

    Parameters
    ----------
    ax : matplotlib.axes.Axes
    positions : sequence of float
        Tick positions in data units, increasing.
    texts : sequence of str
        Their labels.
    axis : {"x", "y"}
    fontsize : float, optional
        Tick-label size in points (default: the style's).
    """
    size = fontsize if fontsize is not None else mpl.rcParams[f"{axis}tick.labelsize"]
    size = 7.0 if isinstance(size, str) else float(size)  # a named size ("medium") in a user's rcParams
    lo, hi = ax.get_xlim() if axis == "x" else ax.get_ylim()
    span = abs(hi - lo) or 1.0
    box = ax.get_position()
    length_pts = 0.85 * 72 * (box.width * ax.figure.get_figwidth() if axis == "x" else box.height * ax.figure.get_figheight())
    out, prev = [], None
    for pos, text in zip(positions, texts):
        close = False
        if prev is not None:
            gap = abs(pos - prev[0]) / span * length_pts
            need = (0.6 * size * (len(prev[1]) + len(text)) / 2 + 2) if axis == "x" else 1.25 * size
            close = gap < need
        out.append(("\n" + text if axis == "x" else text + "     ") if close else text)
        prev = None if close else (pos, text)
    return out


def freeze_layout(fig: Figure) -> None:
    """Lay a figure out once with the constrained-layout algorithm, without attaching a layout engine.

    For animations: the axes then stay still from frame to frame (no jitter as titles change), and saving a
    frame needs no layout pass.
    """
    ConstrainedLayoutEngine(h_pad=RC["figure.constrained_layout.h_pad"], w_pad=RC["figure.constrained_layout.w_pad"]).execute(fig)
