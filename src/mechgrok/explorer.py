"""The explorer: one self-contained interactive HTML page per run, for exploring the analyses in a browser.

Beside the publication figures (:mod:`mechgrok.figures`, matplotlib), the explorer is for looking around: every
plot has hover values, zoom and pan. It is written with plotly, whose JavaScript is inlined in the page, so the
page works offline and from a file (no CDN, no server). Sections, each a plotly figure in a ``div`` with a fixed
id:

``curves``
    Loss (nats, log scale) and accuracy over epochs, train and test, with the restricted and excluded losses of
    the progress measures; the three phases (memorisation, circuit formation, cleanup) shaded (Nanda et al. 2023,
    Fig. 7, section 5.2).
``measures``
    The weight-based progress measures over checkpoints: Gini coefficients of the Fourier norms and the sum of
    squared weights (section 5.1).
``fourier-norms``
    The Fourier-component norms of ``W_E`` and of the neuron-logit map ``W_logit`` (Fig. 3) with an epoch slider:
    the animations of the figure pack, scrubbable.
``clusters``
    Neuron cluster sizes over checkpoints, one band per frequency (Fig. 5; the clusters of
    :func:`mechgrok.neuron_clusters`).
``attention``
    The attention pattern from the ``=`` position to ``a`` over the input grid (a, b), per head, at the reference
    checkpoint (Fig. 8), with a head selector.

A section whose analysis is not in the tree is left out (its reason is listed on the page).
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from mechgrok.errors import AnalysisError, ConfigError
from mechgrok.figures.analysis import phase_spans
from mechgrok.rundir import write_atomic

__all__ = ["explorer_html", "write_explorer", "SECTIONS"]

#: The sections of the page, in order: div id -> heading.
SECTIONS: dict[str, str] = {
    "curves": "Loss and progress measures",
    "measures": "Weight-based progress measures",
    "fourier-norms": "Fourier norms of W_E and W_logit",
    "clusters": "Neuron clusters",
    "attention": "Attention patterns",
}
#: Shading of each phase (names of :func:`mechgrok.figures.analysis.phase_spans`).
_PHASE_COLOURS = {"memorisation": "rgba(31,119,180,0.12)", "circuit_formation": "rgba(255,127,14,0.12)",
                  "cleanup": "rgba(44,160,44,0.12)"}


def _plotly() -> Any:
    try:
        import plotly.graph_objects as go
    except ImportError:  # a dependency; only a broken environment lacks it
        raise ConfigError("the explorer needs plotly (pip install plotly)") from None
    return go


def _group(tree: xr.DataTree, name: str) -> xr.Dataset | None:
    return tree[name].to_dataset(inherit=False) if name in tree.children else None


def _phase_spans(tree: xr.DataTree) -> list[tuple[float, float, str, str]]:
    """(start, end, label, colour) of each phase found (:func:`mechgrok.figures.analysis.phase_spans`)."""
    return [(a, b, name.replace("_", " "), _PHASE_COLOURS[name]) for name, a, b in phase_spans(tree)]


def _curves(go: Any, tree: xr.DataTree, trajectory: xr.Dataset | None) -> Any:
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.06,
                        subplot_titles=("loss (nats)", "accuracy"))
    ab = _group(tree, "ablation")
    if trajectory is not None and "loss_train" in trajectory:
        x, src = trajectory["epoch"].values, trajectory
    elif ab is not None:
        x, src = ab["checkpoint"].values, ab
    else:
        raise AnalysisError("the explorer needs the ablation analysis or a trajectory with loss curves")
    for name, colour in (("train", "#1f77b4"), ("test", "#d62728")):
        if f"loss_{name}" in src:
            fig.add_scatter(x=x, y=src[f"loss_{name}"].values, name=f"{name} loss", line={"color": colour},
                            hovertemplate="epoch %{x}<br>%{y:.4g} nats", row=1, col=1)
        if f"acc_{name}" in src:
            fig.add_scatter(x=x, y=src[f"acc_{name}"].values, name=f"{name} accuracy", showlegend=True,
                            line={"color": colour, "dash": "dot"}, hovertemplate="epoch %{x}<br>%{y:.3f}", row=2, col=1)
    if ab is not None:
        e = ab["checkpoint"].values
        for name, label, colour in (("restricted_loss_test", "restricted loss (test)", "#2ca02c"),
                                    ("excluded_loss_full", "excluded loss (train)", "#9467bd")):
            if name in ab:
                fig.add_scatter(x=e, y=ab[name].values, name=label, mode="lines+markers", line={"color": colour},
                                hovertemplate="epoch %{x}<br>%{y:.4g} nats", row=1, col=1)
    for start, end, label, colour in _phase_spans(tree):
        fig.add_vrect(x0=start, x1=end, fillcolor=colour, line_width=0, layer="below",
                      annotation_text=label, annotation_position="top left", row="all", col=1)
    fig.update_yaxes(type="log", row=1, col=1)
    fig.update_xaxes(title_text="epoch", row=2, col=1)
    fig.update_layout(height=620, hovermode="x unified", margin={"t": 40, "b": 40})
    return fig


def _measures(go: Any, tree: xr.DataTree) -> Any:
    from plotly.subplots import make_subplots

    ms = _group(tree, "measures")
    if ms is None:
        return None
    fig = make_subplots(rows=1, cols=2, subplot_titles=("Gini coefficient of the Fourier norms", "sum of squared weights"))
    e = ms["checkpoint"].values
    for name in ("gini_W_E_component", "gini_W_logit_component", "gini_W_E_freq", "gini_W_logit_freq"):
        if name in ms:
            fig.add_scatter(x=e, y=ms[name].values, name=name, hovertemplate="epoch %{x}<br>%{y:.3f}", row=1, col=1)
    if "sum_sq_weights_total" in ms:
        fig.add_scatter(x=e, y=ms["sum_sq_weights_total"].values, name="sum of squared weights",
                        hovertemplate="epoch %{x}<br>%{y:.4g}", row=1, col=2)
    for start, end, label, colour in _phase_spans(tree):
        fig.add_vrect(x0=start, x1=end, fillcolor=colour, line_width=0, layer="below", row="all", col="all")
    fig.update_xaxes(title_text="epoch")
    fig.update_layout(height=380, margin={"t": 40, "b": 40})
    return fig


def _fourier_norms(go: Any, tree: xr.DataTree) -> Any:
    from plotly.subplots import make_subplots

    fn = _group(tree, "fourier_norms")
    if fn is None:
        return None
    labels = [str(f) for f in fn["fourier"].values]
    epochs = fn["checkpoint"].values
    we, wl = fn["W_E_fourier_norm"].values, fn["W_logit_fourier_norm"].values
    last = len(epochs) - 1
    fig = make_subplots(rows=2, cols=1, vertical_spacing=0.14,
                        subplot_titles=("W_E: norm of each Fourier component (over d_model)",
                                        "W_logit: norm of each Fourier component (over neurons)"))
    fig.add_bar(x=labels, y=we[last], name="W_E", marker_color="#1f77b4", hovertemplate="%{x}: %{y:.4g}", row=1, col=1)
    fig.add_bar(x=labels, y=wl[last], name="W_logit", marker_color="#ff7f0e", hovertemplate="%{x}: %{y:.4g}", row=2, col=1)
    steps = [{"method": "restyle", "label": str(int(e)),
              "args": [{"y": [we[i].tolist(), wl[i].tolist()]}, [0, 1]]} for i, e in enumerate(epochs)]
    fig.update_layout(
        height=640, showlegend=False, margin={"t": 40, "b": 40},
        sliders=[{"active": last, "currentvalue": {"prefix": "epoch "}, "pad": {"t": 50}, "steps": steps}],
        yaxis={"range": [0, float(we.max()) * 1.05]}, yaxis2={"range": [0, float(wl.max()) * 1.05]},
    )
    return fig


def _clusters(go: Any, tree: xr.DataTree) -> Any:
    nr = _group(tree, "neurons")
    if nr is None or "cluster_sizes" not in nr:
        return None
    sizes = nr["cluster_sizes"]
    e = nr["checkpoint"].values
    fig = go.Figure()
    for f in nr["cluster_freq"].values:
        col = sizes.sel(cluster_freq=f).values
        if not col.any():
            continue
        name = "no cluster" if int(f) < 0 else f"freq {int(f)}"
        fig.add_scatter(x=e, y=col, name=name, stackgroup="clusters", mode="lines",
                        hovertemplate=f"{name}<br>epoch %{{x}}: %{{y}} neurons")
    fig.update_layout(height=420, xaxis_title="epoch", yaxis_title="neurons", margin={"t": 30, "b": 40},
                      title=f"neurons per frequency cluster (FVE threshold {nr.attrs.get('threshold', '')})")
    return fig


def _attention(go: Any, tree: xr.DataTree) -> Any:
    ref = _group(tree, "reference")
    if ref is None or "attn_to_a" not in ref:
        return None
    att = ref["attn_to_a"]
    n = att.sizes["head"]
    fig = go.Figure()
    for h in range(n):
        fig.add_heatmap(z=att.isel(head=h).values, visible=h == 0, colorscale="Viridis", zmin=0, zmax=1,
                        name=f"head {h}", hovertemplate="a %{y}, b %{x}<br>attention to a: %{z:.3f}<extra></extra>")
    buttons = [{"label": f"head {h}", "method": "update", "args": [{"visible": [i == h for i in range(n)]}]}
               for h in range(n)]
    fig.update_layout(height=520, width=620, xaxis_title="b", yaxis_title="a", margin={"t": 60},
                      title=f"attention from = to a, epoch {tree.attrs.get('reference_checkpoint', '')}",
                      updatemenus=[{"buttons": buttons, "direction": "right", "type": "buttons", "x": 0, "y": 1.12,
                                    "xanchor": "left"}])
    return fig


def explorer_html(tree: xr.DataTree, *, trajectory: xr.Dataset | None = None, title: str = "mechgrok explorer") -> str:
    """The explorer page of an analysis tree as one self-contained HTML string (plotly's JavaScript inlined).

    Parameters
    ----------
    tree : xarray.DataTree
        Output of :func:`mechgrok.analyze` (or :func:`mechgrok.open_analysis`); the groups ``ablation``,
        ``measures``, ``phases``, ``fourier_norms``, ``neurons`` and ``reference`` are shown where present.
    trajectory : xarray.Dataset, optional
        The trajectory, for the per-epoch loss curves (``loss_train``/``loss_test`` over ``epoch``); without it
        the curves are the ablation group's losses at the checkpoints.
    title : str
        The page title.

    Returns
    -------
    str
        A complete HTML document (about 5 MB, mostly plotly.js) that loads no other file.

    Raises
    ------
    AnalysisError
        If the tree has neither the ablation group nor a trajectory with curves.

    Examples
    --------
    >>> import mechgrok
    >>> tree = mechgrok.analyze(mechgrok.open_run("fixtures/quick-run").isel(checkpoint=[-3, -2, -1]),
    ...                         analyses=["fourier_norms", "ablation"])
    >>> page = explorer_html(tree)
    >>> import re; 'id="fourier-norms"' in page and not re.search(r"<script[^>]+src=", page)
    True
    """
    go = _plotly()
    builders = {"curves": lambda: _curves(go, tree, trajectory), "measures": lambda: _measures(go, tree),
                "fourier-norms": lambda: _fourier_norms(go, tree), "clusters": lambda: _clusters(go, tree),
                "attention": lambda: _attention(go, tree)}
    parts, missing, first = [], [], True
    for div_id, heading in SECTIONS.items():
        fig = builders[div_id]()
        if fig is None:
            missing.append(heading)
            continue
        fig.update_layout(template="plotly_white")
        body = fig.to_html(full_html=False, include_plotlyjs=first, div_id=div_id,
                           config={"displaylogo": False, "responsive": True})
        first = False
        parts.append(f"<section><h2>{html.escape(heading)}</h2>\n{body}\n</section>")
    attrs = tree.attrs
    facts = {k: attrs[k] for k in ("p", "key_freqs", "reference_checkpoint", "n_checkpoints", "mechgrok_version")
             if k in attrs}
    note = ("<p class='note'>Not shown (analysis not in the tree): " + html.escape(", ".join(missing)) + "</p>"
            if missing else "")
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title>"
        "<style>body{font-family:sans-serif;max-width:1100px;margin:1em auto;padding:0 1em;color:#222}"
        "h2{margin-top:1.6em;border-bottom:1px solid #ddd}.note{color:#666}code{background:#f4f4f4}</style>"
        f"</head><body><h1>{html.escape(title)}</h1>"
        f"<p><code>{html.escape(json.dumps(facts, default=_plain))}</code></p>{note}\n"
        + "\n".join(parts) + "\n</body></html>\n"
    )


def _plain(value: Any) -> Any:
    return value.tolist() if isinstance(value, np.ndarray) else str(value)


def write_explorer(tree: xr.DataTree, path: str | Path, *, trajectory: xr.Dataset | None = None,
                   title: str = "mechgrok explorer") -> Path:
    """Write :func:`explorer_html` to ``path`` (written aside and renamed into place).

    Parameters
    ----------
    tree, trajectory, title
        As :func:`explorer_html`.
    path : str or Path
        The HTML file, e.g. ``RUN_DIR/explorer.html``.

    Returns
    -------
    Path

    Raises
    ------
    AnalysisError
        As :func:`explorer_html`.
    """
    path = Path(path)
    write_atomic(path, explorer_html(tree, trajectory=trajectory, title=title))
    return path
