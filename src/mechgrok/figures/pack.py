"""The figure pack: every figure as PNG and SVG, the GIF animations, and an ``index.html`` that shows them all.

:func:`write_figure_pack` is what ``mechgrok figures RUN_DIR`` and ``mechgrok analyze --figures`` call. File
names are fixed (:data:`FIGURES`, :data:`ANIMATIONS`): ``01_loss_curves.png`` ... ``12_neuron_frequencies.gif``,
so a pack can be diffed and linked to. A figure whose analysis the tree lacks (``mechgrok analyze --only``) is
left out, and ``index.html`` says which and why.
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import xarray as xr

from mechgrok import __version__
from mechgrok.errors import AnalysisError, StoreError
from mechgrok.figures.phase_changes import write_task_figures
from mechgrok.task_pipeline import TASK_ANALYSES
from mechgrok.figures.analysis import has_groups, key_freqs, phase_spans, reference_epoch
from mechgrok.figures.algorithm import fig_algorithm_metrics
from mechgrok.figures.animations import animate_neuron_frequencies, animate_W_E_fourier_norms, save_gif
from mechgrok.figures.attention import fig_attention
from mechgrok.figures.competition import fig_competition_bumps, fig_slingshots
from mechgrok.figures.fourier_norms import fig_fourier_norms, fig_fourier_norms_over_training
from mechgrok.figures.neurons import fig_neuron_activations, fig_neuron_clusters, fig_W_logit_per_cluster, fve_threshold
from mechgrok.figures.spectra import fig_fourier_spectra_2d
from mechgrok.figures.style import GIF_DPI, PNG_DPI, paper_style
from mechgrok.figures.training import fig_key_frequency_ablations, fig_loss_curves, fig_progress_measures

__all__ = ["FigureSpec", "FIGURES", "ANIMATIONS", "write_figure_pack", "pack_files"]


@dataclass(frozen=True)
class FigureSpec:
    """One entry of the pack.

    Attributes
    ----------
    name : str
        File stem, e.g. ``"01_loss_curves"``.
    needs : tuple of str
        Analysis groups the figure needs (it is left out when one is missing).
    make : callable
        ``make(tree, trajectory) -> Figure``; for an animation ``make(tree, trajectory, max_frames) ->
        FuncAnimation``.
    caption : callable
        ``caption(tree) -> str``: the one-line caption in ``index.html``.
    """

    name: str
    needs: tuple[str, ...]
    make: Callable
    caption: Callable[[xr.DataTree], str]


def _ks(tree: xr.DataTree) -> str:
    return ", ".join(map(str, key_freqs(tree))) or "none"


def _ref(tree: xr.DataTree) -> str:
    ref = reference_epoch(tree)
    return "the reference checkpoint" if ref is None else f"epoch {ref} (reference checkpoint)"


def _loss_caption(tree: xr.DataTree) -> str:
    return ("Train and test loss (nats, log scale) and accuracy over training; phases shaded "
            "(memorisation, circuit formation, cleanup).")


def _measures_caption(tree: xr.DataTree) -> str:
    last = "local learning coefficient" if has_groups(tree, "llc") else "train, test and restricted accuracy"
    return ("Progress measures (paper Fig. 7): excluded loss (train), restricted loss, test and train loss, Gini of "
            f"the W_E and W_logit Fourier norms, sum of squared weights and {last}; phases shaded.")


def _cluster_caption(tree: xr.DataTree) -> str:
    thr = fve_threshold(tree)
    t = f" (threshold {thr:g})" if thr is not None else ""
    return (f"Neuron clusters: fraction of each neuron's variance explained by its best frequency{t}, cluster sizes "
            f"at {_ref(tree)}, and cluster sizes over training.")


#: The still figures of the pack, in order.
FIGURES: tuple[FigureSpec, ...] = (
    FigureSpec("01_loss_curves", (), lambda t, tr: fig_loss_curves(t, trajectory=tr), _loss_caption),
    FigureSpec("02_progress_measures", ("ablation", "measures"), lambda t, tr: fig_progress_measures(t),
               _measures_caption),
    FigureSpec("03_fourier_norms", ("fourier_norms",), lambda t, tr: fig_fourier_norms(t),
               lambda t: f"Norms of the Fourier components (const, cos k, sin k) of W_E and W_logit at {_ref(t)}; "
                         f"key frequencies {_ks(t)}."),
    FigureSpec("04_fourier_norms_over_training", ("fourier_norms",), lambda t, tr: fig_fourier_norms_over_training(t),
               lambda t: "Norm per frequency of W_E and W_logit over training (frequency x epoch); key frequencies "
                         "marked, phases in the strip above each map."),
    FigureSpec("05_neuron_clusters", ("reference",), lambda t, tr: fig_neuron_clusters(t), _cluster_caption),
    FigureSpec("06_W_logit_per_cluster", ("reference",), lambda t, tr: fig_W_logit_per_cluster(t),
               lambda t: f"W_logit in the Fourier basis of the output logit, for the neurons of each key-frequency "
                         f"cluster, at {_ref(t)}."),
    FigureSpec("07_fourier_spectra_2d", ("reference",), lambda t, tr: fig_fourier_spectra_2d(t),
               lambda t: f"2D Fourier spectra over (a, b) of the logits (norm over the output c) and of one example "
                         f"neuron per key-frequency cluster, at {_ref(t)}."),
    FigureSpec("08_neuron_activations", ("reference",), lambda t, tr: fig_neuron_activations(t),
               lambda t: f"Activations of example neurons of each key-frequency cluster over the (a, b) grid, at "
                         f"{_ref(t)}."),
    FigureSpec("09_attention", ("reference",), lambda t, tr: fig_attention(t),
               lambda t: f"Attention from '=' to a over the (a, b) grid per head with the fitted frequency and its "
                         f"FVE, and |W_attn| in the Fourier basis, at {_ref(t)}."),
    FigureSpec("10_key_frequency_ablations", ("ablation",), lambda t, tr: fig_key_frequency_ablations(t),
               lambda t: f"Excluded loss (train) with each key frequency ({_ks(t)}) removed and with all removed, "
                         f"and the restricted loss on all, train and test pairs, over training."),
    FigureSpec("13_clock_vs_pizza", ("algorithm",), lambda t, tr: fig_algorithm_metrics(t),
               lambda t: "Clock vs Pizza (Zhong et al. 2023): distance irrelevance, gradient symmetricity and "
                         "circularity over training, phases shaded, and the path in the (DI, GS) plane."),
    FigureSpec("14_vector_competition", ("competition",), lambda t, tr: fig_competition_bumps(t),
               lambda t: f"Bumps of the Fourier alignments: N_k(t) of each vector family for the key frequencies "
                         f"({_ks(t)}), peaks starred (filled: a bump), and the neurons with the largest A_jk bumps "
                         f"with the frequency they realign to (docs/competition.md)."),
    FigureSpec("15_slingshots", ("slingshots",), lambda t, tr: fig_slingshots(t),
               lambda t: "Train loss with the float32 floor (2^-23) and each slingshot's onset and peak "
                         "(docs/slingshots.md)."),
)

#: The animations of the pack (GIF), in order.
ANIMATIONS: tuple[FigureSpec, ...] = (
    FigureSpec("11_W_E_fourier_norms", ("fourier_norms",), lambda t, tr, n: animate_W_E_fourier_norms(t, max_frames=n),
               lambda t: "Animation: the Fourier-component norms of W_E over training, with the loss and a cursor."),
    FigureSpec("12_neuron_frequencies", ("neurons",), lambda t, tr, n: animate_neuron_frequencies(t, max_frames=n),
               lambda t: "Animation: each neuron's frequency cluster over training, with the cluster sizes and the "
                         "loss."),
)


def pack_files() -> list[str]:
    """Every file name a complete pack has (``index.html``, the PNG and SVG of each figure, the GIFs)."""
    names = ["index.html"]
    for spec in FIGURES:
        names += [f"{spec.name}.png", f"{spec.name}.svg"]
    names += [f"{spec.name}.gif" for spec in ANIMATIONS]
    return names


def _loss_curves_possible(tree: xr.DataTree, trajectory: xr.Dataset | None) -> bool:
    if trajectory is not None and "loss_train" in trajectory and "loss_test" in trajectory:
        return True
    return has_groups(tree, "ablation")


def _missing(spec: FigureSpec, tree: xr.DataTree, trajectory: xr.Dataset | None) -> list[str]:
    if spec.name == "01_loss_curves" and not _loss_curves_possible(tree, trajectory):
        return ["ablation (or a trajectory with loss curves)"]
    return [g for g in spec.needs if g not in tree.children]


def write_figure_pack(
    tree: xr.DataTree,
    out_dir: str | Path,
    *,
    trajectory: xr.Dataset | None = None,
    animations: bool = True,
    max_frames: int = 40,
    dpi: int = PNG_DPI,
    gif_dpi: int = GIF_DPI,
    fps: float = 5.0,
    title: str | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> Path:
    """Write the figure pack: PNG and SVG of every figure, the GIF animations, and ``index.html``.

    Parameters
    ----------
    tree : xarray.DataTree
        The analysis tree (:func:`mechgrok.pipeline.analyze`, or :func:`mechgrok.store.analysis_store.open_analysis` of an
        ``analysis.zarr``).
    out_dir : str or Path
        Folder to write (created if needed), e.g. ``RUN_DIR/figures``. Files of an earlier pack that this one
        does not write (a figure now left out) are removed; other files are left alone.
    trajectory : xarray.Dataset, optional
        The run's trajectory (:func:`mechgrok.open_run`), for the per-epoch loss curves of the first figure.
    animations : bool
        Also write the GIF animations.
    max_frames : int
        At most this many frames per animation (checkpoints evenly spaced).
    dpi : int
        Resolution of the PNG files (dots per inch; the figures are 7 inches wide).
    gif_dpi : int
        Resolution of the GIF animations.
    fps : float
        Frames per second of the animations.
    title : str, optional
        Heading of ``index.html`` (default: "mechgrok figures").
    progress : callable, optional
        ``progress("figures", done, total)`` after each figure and animation (written or skipped).

    Returns
    -------
    Path
        The ``index.html`` written.

    Raises
    ------
    AnalysisError
        If ``tree`` is not an analysis tree (no root attr ``p``).
    StoreError
        If ``out_dir`` cannot be written.
    """
    if isinstance(tree, xr.DataTree) and tree.attrs.get("task") in TASK_ANALYSES:  # addition, induction, curves
        return write_task_figures(tree, out_dir, dpi=dpi)
    if not isinstance(tree, xr.DataTree) or "p" not in tree.attrs:
        raise AnalysisError("the figure pack needs the analysis tree of mechgrok.pipeline.analyze / open_analysis "
                            f"(a DataTree with attrs['p']), got {type(tree).__name__}")
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise StoreError(f"cannot create the figure folder ({e.strerror})", path=out) from None
    tree = tree.compute()  # one read of a lazily opened analysis.zarr
    written: list[tuple[FigureSpec, list[str]]] = []
    skipped: list[tuple[FigureSpec, list[str]]] = []
    todo = len(FIGURES) + (len(ANIMATIONS) if animations else 0)

    def report() -> None:
        if progress is not None:
            progress("figures", len(written) + len(skipped), todo)

    try:
        for spec in FIGURES:
            report()
            missing = _missing(spec, tree, trajectory)
            if missing:
                skipped.append((spec, missing))
                continue
            with paper_style():
                fig = spec.make(tree, trajectory)
                fig.savefig(out / f"{spec.name}.png", dpi=dpi)
                fig.set_layout_engine("none")  # keep the layout just computed: the SVG needs no second solve
                fig.savefig(out / f"{spec.name}.svg", metadata={"Date": None})
            del fig
            written.append((spec, [f"{spec.name}.png", f"{spec.name}.svg"]))
        for spec in ANIMATIONS if animations else ():
            report()
            missing = _missing(spec, tree, trajectory)
            if missing:
                skipped.append((spec, missing))
                continue
            anim = spec.make(tree, trajectory, max_frames)
            save_gif(anim, out / f"{spec.name}.gif", fps=fps, dpi=gif_dpi)
            del anim
            written.append((spec, [f"{spec.name}.gif"]))
    except OSError as e:
        raise StoreError(f"cannot write the figure pack ({e.strerror or e})", path=out) from None
    report()
    keep = {f for _, files in written for f in files} | {"index.html"}
    for name in pack_files():
        if name not in keep and (out / name).is_file():
            (out / name).unlink()
    index = out / "index.html"
    index.write_text(_index_html(tree, written, skipped, title=title or "mechgrok figures"), encoding="utf-8")
    return index


def _summary_line(tree: xr.DataTree) -> str:
    parts = [f"p = {int(tree.attrs['p'])}"]
    if "n_checkpoints" in tree.attrs:
        parts.append(f"{int(tree.attrs['n_checkpoints'])} checkpoints")
    ref = reference_epoch(tree)
    if ref is not None:
        parts.append(f"reference checkpoint: epoch {ref}")
    parts.append(f"key frequencies: {_ks(tree)}")
    spans = phase_spans(tree)
    if spans:
        parts.append("phases: " + "; ".join(f"{n.replace('_', ' ')} {int(a)}-{int(b)}" for n, a, b in spans)
                     + " (epochs)")
    return ", ".join(parts)


_CSS = """
body { font-family: system-ui, -apple-system, "DejaVu Sans", sans-serif; max-width: 62rem; margin: 2rem auto;
       padding: 0 1rem; color: #222; line-height: 1.45; }
h1 { font-size: 1.5rem; margin-bottom: 0.2rem; }
p.meta { color: #555; margin-top: 0; }
nav { font-size: 0.9rem; margin: 1rem 0 1.5rem; }
nav a { margin-right: 0.6rem; white-space: nowrap; }
figure { margin: 0 0 2.2rem; padding-bottom: 1rem; border-bottom: 1px solid #e4e4e4; }
figure img { width: 100%; height: auto; display: block; }
figure img.anim { width: auto; max-width: 100%; }
figcaption { font-size: 0.95rem; margin-top: 0.4rem; }
figcaption .num { font-weight: 600; }
figcaption .files { color: #666; font-size: 0.85rem; margin-left: 0.4rem; }
.skipped { color: #8a4b00; }
"""


def _index_html(tree: xr.DataTree, written, skipped, *, title: str) -> str:
    esc = html.escape
    items, nav = [], []
    for i, (spec, files) in enumerate(written, start=1):
        caption = esc(spec.caption(tree))
        nav.append(f'<a href="#{spec.name}">{i}</a>')
        if files[0].endswith(".gif"):
            body = f'<img class="anim" src="{files[0]}" alt="{caption}">'
            links = f'<a href="{files[0]}">GIF</a>'
        else:
            body = f'<a href="{files[1]}"><img src="{files[0]}" alt="{caption}" loading="lazy"></a>'
            links = f'<a href="{files[0]}">PNG</a> · <a href="{files[1]}">SVG</a>'
        items.append(f'<figure id="{spec.name}">\n  {body}\n  <figcaption><span class="num">Figure {i}.</span> '
                     f'{caption}<span class="files">{links}</span></figcaption>\n</figure>')
    notes = ""
    if skipped:
        lis = "".join(f"<li><code>{esc(s.name)}</code>: needs {esc(', '.join(m))}</li>" for s, m in skipped)
        notes = f'<p class="skipped">Left out (the analysis tree lacks what they need):</p><ul class="skipped">{lis}</ul>'
    meta = esc(_summary_line(tree))
    source = tree.attrs.get("trajectory_source_files", "")
    try:
        source = ", ".join(json.loads(source)) if source else ""
    except (TypeError, ValueError):
        source = str(source)
    src = f"<br>Run: <code>{esc(source)}</code>" if source else ""
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n<title>{esc(title)}</title>\n"
        f"<style>{_CSS}</style>\n</head>\n<body>\n<h1>{esc(title)}</h1>\n"
        f"<p class=\"meta\">{meta}{src}<br>mechgrok {esc(str(tree.attrs.get('mechgrok_version', __version__)))}; "
        "losses in nats; figures follow Nanda et al. (2023), <i>Progress measures for grokking via mechanistic "
        "interpretability</i>.</p>\n"
        f"<nav>Figures: {' '.join(nav)}</nav>\n{notes}\n" + "\n".join(items) + "\n</body>\n</html>\n"
    )

