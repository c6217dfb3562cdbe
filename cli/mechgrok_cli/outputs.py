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

__all__ = ["default_out_dir", "run_analysis", "write_analysis_outputs", "print_summary"]


def default_out_dir(run_dir: Path) -> Path:
    """Where the outputs of a source go by default: the run directory itself, or beside a file or store."""
    return run_dir if run_dir.is_dir() and not run_dir.name.endswith(".zarr") else run_dir.with_suffix("")


def run_analysis(ds: xr.Dataset, *, quiet: bool = False, **options: Any) -> xr.DataTree:
    """:func:`mechgrok.analyze` on ``ds`` with ``options``, with one progress bar per stage unless ``quiet``."""
    import mechgrok

    if quiet:
        return run_guarded(mechgrok.analyze, ds, **options)
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("[bold]{task.description:<28}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=out) as bar:
        tasks: dict[str, Any] = {}

        def progress(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task(stage, total=total)
            bar.update(tasks[stage], completed=done, total=total)

        return run_guarded(mechgrok.analyze, ds, progress=progress, **options)


def write_analysis_outputs(tree: xr.DataTree, target: Path, *, title: str) -> dict[str, Any]:
    """Write ``analysis.zarr``, ``report.json`` and ``report.md`` into ``target``; print the summary table.

    The reports are computed before anything is written, and each file is written aside and renamed into
    place, so an error leaves no half-written file. Returns the summary (:func:`mechgrok.summarise`).
    """
    import mechgrok
    from mechgrok.rundir import write_atomic

    summary = run_guarded(mechgrok.summarise, tree)
    report_json = json.dumps(summary, indent=2)
    report_md = run_guarded(mechgrok.report_markdown, summary, title=title)
    target.mkdir(parents=True, exist_ok=True)
    run_guarded(mechgrok.write_analysis, tree, target / "analysis.zarr")
    write_atomic(target / "report.json", report_json)
    write_atomic(target / "report.md", report_md)
    print_summary(summary)
    return summary


def print_summary(s: dict[str, Any]) -> None:
    """The summary of :func:`mechgrok.summarise` as a rich table."""
    from rich.table import Table

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
        t.add_row("heads (freq, FVE)", "; ".join(f"{h['head']}: {h['freq']}, {h['fve']:.2f}" for h in hd))
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
