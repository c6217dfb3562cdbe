"""``mechgrok analyze``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from cli.main import app, fail, out, run_guarded


def _parse_epochs(text: str | None) -> list[int] | None:
    """'0,100,200' or '0:4000:500' (start:stop:step, stop inclusive) -> epochs."""
    if text is None:
        return None
    epochs: list[int] = []
    try:
        for part in text.split(","):
            part = part.strip()
            if ":" in part:
                start, stop, *step = (int(x) for x in part.split(":"))
                epochs += list(range(start, stop + 1, step[0] if step else 1))
            elif part:
                epochs.append(int(part))
    except ValueError:
        fail(f"--checkpoints: cannot parse {text!r}; use e.g. '0,100,200' or '0:4000:500'")
    return epochs


@app.command()
def analyze(
    run_dir: Annotated[Path, typer.Argument(help="A run directory or any trajectory `mechgrok ingest` accepts.")],
    out_dir: Annotated[Optional[Path], typer.Option("--out", help="Where to write analysis.zarr and the reports (default: RUN_DIR, or beside a file).")] = None,
    reference: Annotated[Optional[int], typer.Option(help="Epoch of the reference checkpoint for the key frequencies (default: the last).")] = None,
    checkpoints: Annotated[Optional[str], typer.Option(help="Epochs to analyse: '0,100,200' or '0:4000:500' (default: all).")] = None,
    only: Annotated[Optional[str], typer.Option(help="Comma-separated analyses to run (default: all but llc).")] = None,
    chunk: Annotated[int, typer.Option(min=1, help="Checkpoints per batched forward pass.")] = 8,
    llc: Annotated[bool, typer.Option("--llc", help="Also estimate the local learning coefficient.")] = False,
    llc_every: Annotated[int, typer.Option(min=1, help="With --llc: every N-th checkpoint.")] = 10,
    figures: Annotated[bool, typer.Option("--figures", help="Also write the figure pack (RUN_DIR/figures).")] = False,
    fmt: Annotated[Optional[str], typer.Option("--format", help="Source format (default: detected).")] = None,
    trust_checkpoint: Annotated[bool, typer.Option("--trust-checkpoint", help="Allow full unpickling of trusted .pth files.")] = False,
    seed: Annotated[Optional[int], typer.Option(help="Split seed, for formats that do not store the split.")] = None,
    frac_train: Annotated[Optional[float], typer.Option(help="Training fraction, for formats that do not store the split.")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Run every analysis of the paper over a trajectory; write analysis.zarr, report.md and report.json."""
    from mechgrok.pipeline import ANALYSES, analyze as run_analyze, report_markdown, summarise, write_analysis
    from mechgrok.rundir import write_atomic
    from mechgrok.store import open_run

    analyses = None
    if only is not None:
        analyses = [a.strip() for a in only.split(",") if a.strip()]
        unknown = sorted(set(analyses) - set(ANALYSES))
        if unknown:
            fail(f"--only: unknown analyses {', '.join(unknown)}; known: {', '.join(ANALYSES)}")
    epochs = _parse_epochs(checkpoints)
    ds = run_guarded(open_run, run_dir, format=fmt, trusted=trust_checkpoint, seed=seed, frac_train=frac_train)
    target = out_dir or (run_dir if run_dir.is_dir() and not run_dir.name.endswith(".zarr") else run_dir.with_suffix(""))

    def go(progress=None):
        return run_guarded(run_analyze, ds, reference=reference, checkpoints=epochs, analyses=analyses, chunk=chunk,
                           llc=llc, llc_every=llc_every, progress=progress)

    if quiet:
        tree = go()
    else:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        with Progress(TextColumn("[bold]{task.description:<28}"), BarColumn(), MofNCompleteColumn(),
                      TimeElapsedColumn(), console=out) as bar:
            tasks: dict[str, int] = {}

            def progress(stage: str, done: int, total: int) -> None:
                if stage not in tasks:
                    tasks[stage] = bar.add_task(stage, total=total)
                bar.update(tasks[stage], completed=done, total=total)

            tree = go(progress)
    target.mkdir(parents=True, exist_ok=True)
    summary = summarise(tree)
    run_guarded(write_analysis, tree, target / "analysis.zarr")
    write_atomic(target / "report.json", json.dumps(summary, indent=2))
    write_atomic(target / "report.md", report_markdown(summary, title=f"mechgrok report: {run_dir}"))
    _print_summary(summary)
    if figures:
        from mechgrok.figures.pack import write_figure_pack

        run_guarded(write_figure_pack, tree, target / "figures", trajectory=ds)
        out.print(f"figures: [bold]{target / 'figures' / 'index.html'}[/]")
    out.print(f"wrote [bold]{target / 'analysis.zarr'}[/], [bold]{target / 'report.md'}[/], [bold]{target / 'report.json'}[/]")


def _print_summary(s: dict) -> None:
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
