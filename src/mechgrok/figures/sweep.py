"""The figures of a sweep: phase diagrams, test-loss curves of every run, early-warning leads.

* **Phase diagram** (:func:`phase_diagram`): the grokking epoch and the phase boundaries (memorisation,
  circuit-formation and cleanup ends) over the swept fields, and the grokking delay (epochs from memorisation to
  generalisation, :func:`mechgrok.analyses.grokking_epoch.grokking_delay`) where the runs have it. Seeds
  (``seed``, ``model_seed``) are the spread, never an axis. One other swept field: lines (mean over seeds) with
  every seed as a dot and the min-max band, the epochs in one panel and the grokking delay in a second; two:
  heatmaps of the seed mean, one panel per quantity, annotated; more: the first two as the heatmap axes,
  averaged over the rest (said in the title).
* **Test-loss curves** (:func:`loss_curves`): every run's test loss against epochs, coloured by the first swept
  field.
* **Early warning** (:func:`lead_figure`): the lead of each progress measure over the test-loss drop in every
  run, with the median (:mod:`mechgrok.analyses.early_warning`).

:func:`write_sweep_figures` writes them (PNG and SVG) with an ``index.html``, one set per shape group.
"""

from __future__ import annotations

import html
from pathlib import Path

import numpy as np
import xarray as xr
from matplotlib.figure import Figure

from mechgrok.errors import AnalysisError, StoreError
from mechgrok.figures.style import COLORS, PNG_DPI, key_freq_color, new_figure, paper_style

__all__ = ["SEED_FIELDS", "PHASE_QUANTITIES", "DURATIONS", "phase_diagram", "loss_curves", "lead_figure",
           "write_sweep_figures"]

#: Swept fields treated as repetitions (the spread), never as axes.
SEED_FIELDS = ("seed", "model_seed")
#: The quantities of the phase diagram, in order, with their labels.
PHASE_QUANTITIES = {
    "grokking_epoch": "grokking epoch",
    "memorisation_end": "memorisation ends",
    "circuit_formation_end": "circuit formation ends",
    "cleanup_end": "cleanup ends",
    "grokking_delay": "grokking delay",
}
#: Quantities that are durations (epochs between two events), drawn in their own panel of the line diagram.
DURATIONS = ("grokking_delay",)


def _fields(ds: xr.Dataset) -> tuple[list[str], list[str]]:
    """(axis fields, seed fields) of a shape group; a field with one value (p in its own group) is no axis."""
    swept = list(ds.attrs.get("swept_fields", []))
    swept = [f for f in swept if f in ds.dims]
    return ([f for f in swept if f not in SEED_FIELDS and ds.sizes[f] > 1],
            [f for f in swept if f in SEED_FIELDS])


def _quantities(ds: xr.Dataset) -> list[str]:
    return [q for q in PHASE_QUANTITIES if q in ds and bool(ds[q].notnull().any())]


def _fmt(v: float) -> str:
    return "-" if not np.isfinite(v) else f"{v:.0f}" if abs(v) >= 10 else f"{v:.2g}"


def _lines(ax, ds: xr.Dataset, qs: list[str], x_name: str | None, *, offset: int = 0) -> None:
    """Draw ``qs`` against ``x_name``: the seed mean as a line, every seed as a dot, the min-max band."""
    for k, q in enumerate(qs):
        v = ds[q]
        if x_name is None:
            xs = np.zeros(1)
            pts = v.values.reshape(1, -1)
        else:
            v = v.transpose(x_name, ...)
            xs = np.asarray(v[x_name].values, dtype=float)
            pts = v.values.reshape(xs.size, -1)
        color = key_freq_color(k + offset)
        fin = np.isfinite(pts)
        n = fin.sum(axis=1)
        mean = np.where(n > 0, np.where(fin, pts, 0.0).sum(axis=1) / np.maximum(n, 1), np.nan)
        ax.plot(xs, mean, "-o", color=color, ms=3, label=PHASE_QUANTITIES[q])
        if pts.shape[1] > 1:
            lo = np.where(n > 0, np.where(fin, pts, np.inf).min(axis=1), np.nan)
            hi = np.where(n > 0, np.where(fin, pts, -np.inf).max(axis=1), np.nan)
            ax.fill_between(xs, lo, hi, color=color, alpha=0.15, lw=0)
            for col in range(pts.shape[1]):
                ax.plot(xs, pts[:, col], ".", color=color, ms=2.5, alpha=0.7)
    ax.set_xlabel(x_name or "")
    finite = np.concatenate([ds[q].values.ravel() for q in qs])
    finite = finite[np.isfinite(finite) & (finite > 0)]
    if finite.size and finite.max() / max(finite.min(), 1) > 30:
        ax.set_yscale("log")
    ax.legend()


def phase_diagram(ds: xr.Dataset) -> Figure:
    """The phase diagram of one shape group of a sweep (see the module docstring).

    Parameters
    ----------
    ds : xarray.Dataset
        A shape group of the sweep tree (:func:`mechgrok.sweep.summary.combine_runs`), with ``attrs["swept_fields"]``.

    Returns
    -------
    matplotlib.figure.Figure

    Raises
    ------
    AnalysisError
        If the Dataset has none of the phase quantities.

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> ds = xr.Dataset({"grokking_epoch": (("seed", "frac_train"), [[900.0, 300.0], [1000.0, 350.0]])},
    ...                 coords={"seed": [0, 1], "frac_train": [0.3, 0.5]}, attrs={"swept_fields": ["seed", "frac_train"]})
    >>> len(phase_diagram(ds).axes)
    1
    """
    qs = _quantities(ds)
    if not qs:
        raise AnalysisError(f"phase_diagram: none of {list(PHASE_QUANTITIES)} has a value")
    axes_f, seeds = _fields(ds)
    extra = axes_f[2:]
    with paper_style():
        if len(axes_f) >= 2:
            fy, fx = axes_f[0], axes_f[1]
            fig = new_figure(height=2.6 * ((len(qs) + 1) // 2), width=7.0)
            grid = fig.subplots((len(qs) + 1) // 2, 2 if len(qs) > 1 else 1, squeeze=False)
            for ax, q in zip(grid.flat, qs):
                m = ds[q].mean([d for d in ds[q].dims if d not in (fy, fx)], skipna=True).transpose(fy, fx)
                im = ax.imshow(m.values, origin="lower", aspect="auto", cmap="viridis")
                for (i, j), v in np.ndenumerate(m.values):
                    ax.text(j, i, _fmt(v), ha="center", va="center", fontsize=6, color="white")
                ax.set_xticks(range(m.sizes[fx]), [str(v) for v in m[fx].values])
                ax.set_yticks(range(m.sizes[fy]), [str(v) for v in m[fy].values])
                ax.set_xlabel(fx)
                ax.set_ylabel(fy)
                ax.set_title(PHASE_QUANTITIES[q] + (f" (mean over {', '.join(seeds + extra)})" if seeds or extra else ""))
                fig.colorbar(im, ax=ax, label="epochs", shrink=0.9)
            for ax in list(grid.flat)[len(qs):]:
                ax.set_visible(False)
        else:
            x_name = axes_f[0] if axes_f else None
            panels = [p for p in ([q for q in qs if q not in DURATIONS], [q for q in qs if q in DURATIONS]) if p]
            fig = new_figure(height=2.8)
            spread = f"; seeds ({', '.join(seeds)}) as dots and min-max band" if seeds else ""
            for ax, panel in zip(fig.subplots(1, len(panels), squeeze=False).flat, panels):
                _lines(ax, ds, panel, x_name, offset=qs.index(panel[0]))
                is_delay = panel[0] in DURATIONS
                ax.set_title(("grokking delay" if is_delay else "phase diagram") + ("" if len(panels) > 1 else spread))
                ax.set_ylabel("epochs after memorisation" if is_delay else "epochs")
            if len(panels) > 1 and spread:
                fig.suptitle(spread.lstrip("; "))
    return fig


def loss_curves(ds: xr.Dataset) -> Figure:
    """Every run's test loss against epochs (log scale), coloured by the first swept field.

    Raises
    ------
    AnalysisError
        If the Dataset has no ``loss_test`` curve.
    """
    if "loss_test" not in ds or "epoch" not in ds["loss_test"].dims:
        raise AnalysisError("loss_curves: no per-epoch loss_test curve")
    axes_f, seeds = _fields(ds)
    by = axes_f[0] if axes_f else (seeds[0] if seeds else None)
    with paper_style():
        fig = new_figure(height=2.8)
        ax = fig.subplots()
        te = ds["loss_test"]
        runs = te.stack(run=[d for d in te.dims if d != "epoch"]) if te.ndim > 1 else te.expand_dims(run=[0])
        values = list(dict.fromkeys(np.asarray(ds[by].values).tolist())) if by else [None]
        labelled: set = set()
        for i in range(runs.sizes["run"]):
            r = runs.isel(run=i)
            label_v = r[by].item() if by else None
            color = key_freq_color(values.index(label_v)) if by else COLORS["test"]
            label = f"{by} = {label_v}" if by and label_v not in labelled else None
            labelled.add(label_v)
            ax.plot(ds["epoch"].values, r.values, color=color, lw=0.8, label=label)
        ax.set_yscale("log")
        ax.set_xlabel("epoch")
        ax.set_ylabel("test loss (nats)")
        ax.set_title("test loss of every run")
        if by:
            ax.legend(ncol=2)
    return fig


def lead_figure(ds: xr.Dataset) -> Figure:
    """The lead of each progress measure over the test-loss drop, one dot per run, the median as a bar.

    Raises
    ------
    AnalysisError
        If the Dataset has no ``lead`` variable.
    """
    if "lead" not in ds:
        raise AnalysisError("lead_figure: no early-warning leads (the runs have no progress measures)")
    lead = ds["lead"]
    measures = [str(m) for m in lead["measure"].values]
    with paper_style():
        fig = new_figure(height=2.8)
        ax = fig.subplots()
        for i, m in enumerate(measures):
            v = lead.sel(measure=m).values.ravel()
            v = v[np.isfinite(v)]
            jitter = (np.arange(v.size) - (v.size - 1) / 2) * (0.4 / max(v.size, 1))
            ax.plot(i + jitter, v, ".", color=key_freq_color(i), ms=4)
            if v.size:
                ax.plot([i - 0.3, i + 0.3], [np.median(v)] * 2, color="black", lw=1.2)
        ax.axhline(0, color="#777777", lw=0.7, ls="--")
        ax.set_xticks(range(len(measures)), [m.replace("_", " ") for m in measures], rotation=20, ha="right")
        ax.set_ylabel("lead over the test-loss drop (epochs)")
        ax.set_title("early warning: positive = the measure changes before the test loss drops (bar: median)")
    return fig


def write_sweep_figures(tree: xr.DataTree, out_dir: str | Path, *, title: str = "mechgrok sweep",
                        dpi: int = PNG_DPI) -> Path:
    """Write the sweep's figures (PNG + SVG) and ``index.html`` into ``out_dir``.

    Parameters
    ----------
    tree : xarray.DataTree
        The sweep tree (:func:`mechgrok.sweep.summary.combine_runs`, :func:`mechgrok.sweep.runner.open_sweep`).
    out_dir : str or Path
        Local folder (created if needed).
    title : str
        Heading of ``index.html``.
    dpi : int
        PNG resolution.

    Returns
    -------
    Path
        The ``index.html``.

    Raises
    ------
    StoreError
        If the folder cannot be written.
    """
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise StoreError(f"cannot create the figure folder ({e.strerror})", path=out) from None
    tree = tree.compute()
    groups = {"": tree.to_dataset(inherit=False)} if "swept_fields" in tree.to_dataset(inherit=False).attrs and \
        any(v.ndim for v in tree.to_dataset(inherit=False).data_vars.values()) else {}
    for name, child in tree.children.items():
        if name.startswith("p="):
            groups[name] = child.to_dataset(inherit=False)
    items = []
    for gname, ds in groups.items():
        suffix = f"_{gname.replace('=', '')}" if gname else ""
        for fname, make, caption in (
            ("phase_diagram", phase_diagram,
             "Phase diagram: grokking epoch, phase boundaries and grokking delay over the swept fields"),
            ("loss_curves", loss_curves, "Test loss of every run"),
            ("early_warning", lead_figure, "Early warning: lead of each progress measure over the test-loss drop"),
        ):
            try:
                fig = make(ds)
            except AnalysisError:
                continue
            stem = f"{fname}{suffix}"
            try:
                with paper_style():
                    fig.savefig(out / f"{stem}.png", dpi=dpi)
                    fig.set_layout_engine("none")
                    fig.savefig(out / f"{stem}.svg", metadata={"Date": None})
            except OSError as e:
                raise StoreError(f"cannot write the figures ({e.strerror or e})", path=out) from None
            items.append((stem, caption + (f" ({gname})" if gname else "")))
    body = "\n".join(f'<figure><a href="{s}.svg"><img src="{s}.png" alt="{html.escape(c)}" style="width:100%"></a>'
                     f"<figcaption>{html.escape(c)}</figcaption></figure>" for s, c in items)
    index = out / "index.html"
    index.write_text(f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}"
                     f"</title></head>\n<body style=\"max-width:62rem;margin:2rem auto;font-family:sans-serif\">\n"
                     f"<h1>{html.escape(title)}</h1>\n{body}\n</body></html>\n", encoding="utf-8")
    return index
