"""``mechgrok sweep``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from mechgrok_cli.app import app, err, out, run_guarded


@app.command()
def sweep(
    spec: Annotated[Path, typer.Argument(help="The sweep spec, a TOML or JSON file (docs/sweeps.md); or a released curve-only sweep file (.pth) to ingest.")],
    out_dir: Annotated[Optional[str], typer.Option("--out", help="The sweep folder: a path or an fsspec URL (s3://..., gs://...). Default: beside SPEC, named after it.")] = None,
    workers: Annotated[Optional[int], typer.Option(min=1, help="Worker processes of the local dask cluster (default: the number of CPUs).")] = None,
    scheduler: Annotated[Optional[str], typer.Option(help="Address of a running dask scheduler (tcp://HOST:8786) instead of a local cluster.")] = None,
    figures: Annotated[bool, typer.Option("--figures/--no-figures", help="Draw the phase diagrams and early-warning figures.")] = True,
    trust_checkpoint: Annotated[bool, typer.Option("--trust-checkpoint", help="Allow full unpickling of a trusted .pth sweep file.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Run a grid of runs on dask.distributed (resumable); write summary.zarr, phase diagrams and lead times."""
    from mechgrok.sweep import load_spec, run_sweep

    target = out_dir or str(spec.with_suffix(""))
    if spec.suffix in (".pth", ".pt"):  # a released sweep of loss curves: ingest it as a sweep
        from mechgrok.sweep.released import ingest_released_sweep

        tree = run_guarded(ingest_released_sweep, spec, target, trusted=trust_checkpoint, figures=figures)
        field = tree.attrs["swept_fields"][0]
        out.print(f"{tree.sizes.get(field, 0)} runs over {field}: wrote [bold]{target}/summary.zarr[/]"
                  + (f" and [bold]{target}/figures/index.html[/]" if figures else ""))
        return
    parsed = run_guarded(load_spec, spec)
    if quiet:
        result = run_guarded(run_sweep, parsed, target, workers=workers, scheduler=scheduler, figures=figures)
    else:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        with Progress(TextColumn("[bold]{task.description:<40}"), BarColumn(), MofNCompleteColumn(),
                      TimeElapsedColumn(), console=out) as bar:
            task = bar.add_task(f"sweep {parsed.name}", total=len(parsed.cells))

            def progress(status: dict[str, Any], done: int, total: int) -> None:
                mark = "[green]done[/]" if status.get("status") == "done" else "[red]failed[/]"
                bar.console.print(f"{mark} {status.get('name')} ({status.get('seconds', '?')} s)", highlight=False)
                bar.update(task, completed=done, total=total)

            bar.update(task, completed=0)
            result = run_guarded(run_sweep, parsed, target, workers=workers, scheduler=scheduler, figures=figures,
                                 progress=progress)
            bar.update(task, completed=len(result.ran) + len(result.skipped))
    out.print(f"{len(result.ran)} runs now, {len(result.skipped)} finished before, {len(result.failed)} failed")
    if result.tree is not None:
        out.print(f"wrote [bold]{target}/summary.zarr[/]" + (f" and [bold]{target}/figures/index.html[/]" if figures else ""))
    for name in result.failed:
        err.print(f"[bold red]failed:[/] {name}: {result.statuses[name].get('error')}", highlight=False, soft_wrap=True)
    if result.failed:
        raise typer.Exit(code=1)
