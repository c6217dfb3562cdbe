"""What ``mechgrok analyze`` and ``mechgrok figures`` share: running the analysis behind a progress bar,
writing its outputs (``analysis.zarr``, ``report.json``, ``report.md``) and printing the summary table.

Only calls into the library (:func:`mechgrok.analyze`, :func:`mechgrok.summarise`, :func:`mechgrok.report_markdown`,
:func:`mechgrok.write_analysis`) and rich printing; no command module is imported here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mechgrok_cli.app import out, run_guarded

if TYPE_CHECKING:  # pragma: no cover
    import xarray as xr

__all__ = ["default_out_dir", "run_analysis", "write_analysis_outputs", "print_summary", "print_task_summary"]


def default_out_dir(run_dir: str | Path) -> Path | str:
    """Where the outputs of a source go by default: the run directory itself, or beside a file or store (a
    local path, or a URL for a source at a URL)."""
    from mechgrok.store.location import is_dir, name_of, normalise, strip_suffix

    run_dir = normalise(run_dir)
    return run_dir if is_dir(run_dir) and not name_of(run_dir).endswith(".zarr") else strip_suffix(run_dir)


def run_analysis(ds: xr.Dataset, *, quiet: bool = False, **options: Any) -> xr.DataTree:
    """:func:`mechgrok.analyze` on ``ds`` with ``options``, with one progress bar per stage unless ``quiet``."""
    import mechgrok

    if quiet:
        return run_guarded(mechgrok.analyze, ds, **options)
    from mechgrok.progress_bar import rich_bar

    with rich_bar() as progress:
        return run_guarded(mechgrok.analyze, ds, progress=progress, **options)


def write_analysis_outputs(tree: xr.DataTree, target: str | Path, *, title: str) -> dict[str, Any]:
    """Write ``analysis.zarr``, ``report.json`` and ``report.md`` into ``target`` (a path or an fsspec URL);
    print the summary table.

    The reports are computed before anything is written, and each file is written aside and renamed into
    place (at a URL: the store uploaded with its root ``zarr.json`` last, each report in one request), so an
    error leaves no half-written file. The previous reports are removed before the new store is swapped in, so
    a process killed in between never leaves reports of another analysis beside the store. Returns the summary
    (:func:`mechgrok.summarise`).
    """
    import mechgrok
    from mechgrok.store.location import join, normalise, remove, write_text

    summary = run_guarded(mechgrok.summarise, tree)
    report_json = json.dumps(summary, indent=2)
    report_md = run_guarded(mechgrok.report_markdown, summary, title=title)
    target = normalise(target)
    if isinstance(target, Path):
        target.mkdir(parents=True, exist_ok=True)
    for stale in ("report.json", "report.md"):  # a run killed after the store swap then leaves no stale report
        run_guarded(remove, join(target, stale))
    run_guarded(mechgrok.write_analysis, tree, join(target, "analysis.zarr"))
    run_guarded(write_text, join(target, "report.json"), report_json)
    run_guarded(write_text, join(target, "report.md"), report_md)
    print_summary(summary)
    return summary


def print_summary(s: dict[str, Any]) -> None:
    """The summary of :func:`mechgrok.summarise` as a rich table."""
    from rich.table import Table

    if "task" in s:  # n-digit addition, repeated subsequences, curve-only files (mechgrok.task_pipeline)
        return print_task_summary(s)
    t = Table(title=f"mechgrok analysis (p = {s['p']}, reference epoch {s['reference_checkpoint']})", show_header=True)
    t.add_column("measure")
    t.add_column("value", overflow="fold")
    kf = s.get("key_frequencies")
    if kf:
        t.add_row("key frequencies", f"{kf['set']} (sources agree: {'yes' if kf['sources_agree'] else 'no'})")
    cl = s.get("clusters")
    if cl:
        t.add_row("cluster sizes", ", ".join(f"{k}: {v}" for k, v in cl["sizes"].items()))
        t.add_row(f"neurons with FVE >= {cl['threshold']}", f"{cl['share_above_threshold']:.1%}")
    ls = s.get("losses")
    if ls:
        f = ls["final"]

        def g(v):
            return "n/a" if v is None else f"{v:.3g}"

        t.add_row("final loss train / test (nats)", f"{g(f['loss_train'])} / {g(f['loss_test'])}")
        t.add_row("final accuracy train / test", f"{g(f['acc_train'])} / {g(f['acc_test'])}")
        t.add_row("restricted loss (all pairs)", g(f["restricted_loss_all"]))
        t.add_row("excluded loss (train, all key freqs)", g(f["excluded_loss_full"]))
    lg = s.get("logit_structure")
    if lg:
        t.add_row("logit variance explained by key freqs", f"{lg['fraction_of_logit_variance_explained_by_key_freqs']:.1%}")
    hd = s.get("heads")
    if hd:
        t.add_row("heads (freq, FVE)", "; ".join(
            f"{h['head']}: {h['freq']}, {'n/a' if h['fve'] is None else format(h['fve'], '.2f')}" for h in hd))
    al = s.get("algorithm")
    if al:
        fin = al["final"]
        t.add_row("Clock vs Pizza (final): DI, GS, circularity",
                  ", ".join("n/a" if fin[m] is None else f"{fin[m]:.3f}" for m in
                            ("distance_irrelevance", "gradient_symmetricity", "circularity")) + f" ({fin['side']} side)")
    ph = s.get("phases")
    if ph:
        t.add_row("phase ends (epochs)", ", ".join(f"{k}: {v['epoch'] if v['found'] else '-'}" for k, v in ph.items()
                                                  if k.endswith("_end")))
    ll = s.get("llc")
    if ll:
        ends = [(e, v) for e, v in zip(ll["checkpoints"], ll["llc_mean"]) if v is not None]
        t.add_row("LLC (first, peak, last checkpoint)",
                  ", ".join(f"{v:.4g} at epoch {e}" for e, v in (ends[0], max(ends, key=lambda ev: ev[1]), ends[-1]))
                  if ends else "-")
    out.print(t)


def print_task_summary(s: dict[str, Any]) -> None:
    """The summary of :func:`mechgrok.task_pipeline.summarise_task` as a rich table."""
    from rich.table import Table

    t = Table(title=f"mechgrok analysis ({s['task']}, {s['n_checkpoints']} checkpoints)", show_header=True)
    t.add_column("measure")
    t.add_column("value", overflow="fold")
    for name, v in (s.get("final_losses") or {}).items():
        t.add_row(f"final {name} (nats)", ", ".join(f"{x:.3g}" for x in v if x is not None) if isinstance(v, list)
                  else ("n/a" if v is None else f"{v:.3g}"))
    for name, pc in (s.get("phase_changes") or {}).items():
        onset = pc["main_onset"]
        t.add_row(f"phase change onset, {name}", ", ".join("-" if x is None else f"{x:.0f}" for x in onset)
                  if isinstance(onset, list) else ("-" if onset is None else f"{onset:.0f}"))
        if "learning_order" in pc:
            t.add_row("answer positions in order learned", str(pc["learning_order"]))
    ind = s.get("induction")
    if ind:
        t.add_row("previous-token heads", ", ".join(ind["prev_token_heads"]) or "none")
        t.add_row("induction heads", ", ".join(ind["induction_heads"]) or "none")
    dl = s.get("digit_losses")
    if dl:
        t.add_row("loss per answer digit (last checkpoint)", ", ".join(f"{x:.3g}" for x in dl["per_token"]))
    out.print(t)
