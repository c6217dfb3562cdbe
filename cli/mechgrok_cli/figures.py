"""``mechgrok figures``."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from mechgrok_cli.app import app, err, fail, out, run_guarded
from mechgrok_cli.outputs import default_out_dir, run_analysis, write_analysis_outputs


def _is_analysis_store(path: Path) -> bool:
    """Whether ``path`` is an ``analysis.zarr`` written by ``mechgrok analyze`` (root attr title)."""
    import json

    meta = path / "zarr.json"
    if not meta.is_file():
        return False
    try:
        attrs = json.loads(meta.read_text()).get("attributes", {})
    except (OSError, ValueError):
        return False
    return attrs.get("title") == "mechgrok analysis"


@app.command()
def figures(
    run_dir: Annotated[Path, typer.Argument(help="A run directory (or anything `mechgrok analyze` accepts), or an analysis.zarr.")],
    out_dir: Annotated[Optional[Path], typer.Option("--out", help="Folder for the pack (default: RUN_DIR/figures).")] = None,
    animations: Annotated[bool, typer.Option("--animations/--no-animations", help="Also write the GIF animations.")] = True,
    frames: Annotated[int, typer.Option(min=2, max=400, help="At most this many frames per animation.")] = 40,
    dpi: Annotated[int, typer.Option(min=50, max=600, help="Resolution of the PNG files (the figures are 7 in wide).")] = 200,
    explorer: Annotated[bool, typer.Option("--explorer/--no-explorer", help="Also write explorer.html, the interactive page (offline, plotly).")] = True,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Write the figure pack: PNG + SVG of every figure, GIF animations, index.html and the interactive explorer.html.

    Uses RUN_DIR/analysis.zarr when it exists; otherwise runs `mechgrok analyze RUN_DIR` first (which writes
    analysis.zarr, report.md and report.json there).
    """
    import mechgrok
    from mechgrok.figures.pack import write_figure_pack

    if not run_dir.exists():
        fail(f"{run_dir}: no such file or directory")
    trajectory = None
    if _is_analysis_store(run_dir):
        store, base = run_dir, run_dir.parent
    else:
        base = default_out_dir(run_dir)
        store = base / "analysis.zarr"
        if not store.exists():
            # what `mechgrok analyze RUN_DIR` does with its defaults (all analyses but llc, progress bar)
            out.print(f"no [bold]{store}[/]: running the analysis first", highlight=False)
            trajectory = run_guarded(mechgrok.open_run, run_dir)
            write_analysis_outputs(run_analysis(trajectory), base, title=f"mechgrok report: {run_dir}")
            out.print(f"wrote [bold]{store}[/], [bold]{base / 'report.md'}[/], [bold]{base / 'report.json'}[/]")
    tree = run_guarded(mechgrok.open_analysis, store)
    if trajectory is None and not _is_analysis_store(run_dir):
        try:
            trajectory = mechgrok.open_run(run_dir)
        except mechgrok.MechgrokError as e:
            err.print(f"[yellow]note:[/] loss curves from the analysis checkpoints (cannot open the run: {e})",
                      highlight=False, soft_wrap=True)
    target = out_dir or (base / "figures")
    t0 = time.perf_counter()
    if quiet:
        index = run_guarded(write_figure_pack, tree, target, trajectory=trajectory, animations=animations,
                            max_frames=frames, dpi=dpi)
    else:
        from mechgrok.progress_bar import rich_bar

        with rich_bar() as progress:
            index = run_guarded(write_figure_pack, tree, target, trajectory=trajectory, animations=animations,
                                max_frames=frames, dpi=dpi, progress=progress)
    n_png = len(list(target.glob("[0-9][0-9]_*.png")))
    n_gif = len(list(target.glob("[0-9][0-9]_*.gif")))
    out.print(f"wrote {n_png} figures (PNG + SVG) and {n_gif} animations in {time.perf_counter() - t0:.1f} s: "
              f"[bold]{index}[/]", highlight=False)
    if explorer:
        from mechgrok.explorer import write_explorer

        page = run_guarded(write_explorer, tree, target / "explorer.html", trajectory=trajectory,
                           title=f"mechgrok explorer: {run_dir}")
        out.print(f"wrote the interactive explorer (offline): [bold]{page}[/]", highlight=False)
