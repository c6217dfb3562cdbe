"""``mechgrok figures``."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from mechgrok_cli.app import app, err, fail, out, run_guarded
from mechgrok_cli.outputs import default_out_dir, run_analysis, write_analysis_outputs


def _is_analysis_store(path: Path | str) -> bool:
    """Whether ``path`` (local or URL) is an ``analysis.zarr`` written by ``mechgrok analyze`` (root attr title)."""
    import json

    from mechgrok.errors import MechgrokError
    from mechgrok.store.location import exists, join, read_text

    meta = join(path, "zarr.json")
    try:
        if not exists(meta):
            return False
        attrs = json.loads(read_text(meta)).get("attributes", {})
    except (OSError, ValueError, AttributeError, MechgrokError):
        return False
    return attrs.get("title") == "mechgrok analysis"


@app.command()
def figures(
    run_dir: Annotated[str, typer.Argument(help="A run directory (or anything `mechgrok analyze` accepts), or an analysis.zarr: a path or an fsspec URL (s3://bucket/run).")],
    out_dir: Annotated[Optional[str], typer.Option("--out", help="Folder for the pack, a path or URL (default: RUN_DIR/figures).")] = None,
    animations: Annotated[bool, typer.Option("--animations/--no-animations", help="Also write the GIF animations.")] = True,
    frames: Annotated[int, typer.Option(min=2, max=400, help="At most this many frames per animation.")] = 40,
    dpi: Annotated[int, typer.Option(min=50, max=600, help="Resolution of the PNG files (the figures are 7 in wide).")] = 200,
    explorer: Annotated[bool, typer.Option("--explorer/--no-explorer", help="Also write explorer.html, the interactive page (offline, plotly).")] = True,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Write the figure pack: PNG + SVG of every figure, GIF animations, index.html and the interactive explorer.html.

    Uses RUN_DIR/analysis.zarr when it exists; otherwise runs `mechgrok analyze RUN_DIR` first (which writes
    analysis.zarr, report.md and report.json there). At a URL the pack is drawn into a local folder and uploaded
    when it is complete (index.html last).
    """
    import mechgrok
    from mechgrok.figures.pack import write_figure_pack
    from mechgrok.store.location import exists, join, local_folder, normalise, parent_of

    run_dir = normalise(run_dir)
    if not run_guarded(exists, run_dir):
        fail(f"{run_dir}: no such file or directory")
    trajectory = None
    if _is_analysis_store(run_dir):
        store, base = run_dir, parent_of(run_dir)
    else:
        base = run_guarded(default_out_dir, run_dir)
        store = join(base, "analysis.zarr")
        if not run_guarded(exists, store):
            # what `mechgrok analyze RUN_DIR` does with its defaults (all analyses but llc, progress bar)
            out.print(f"no [bold]{store}[/]: running the analysis first", highlight=False)
            trajectory = run_guarded(mechgrok.open_run, run_dir)
            write_analysis_outputs(run_analysis(trajectory), base, title=f"mechgrok report: {run_dir}")
            out.print(f"wrote [bold]{store}[/], [bold]{join(base, 'report.md')}[/], [bold]{join(base, 'report.json')}[/]")
    tree = run_guarded(mechgrok.open_analysis, store)
    if trajectory is None and not _is_analysis_store(run_dir):
        try:
            trajectory = mechgrok.open_run(run_dir)
        except mechgrok.MechgrokError as e:
            err.print(f"[yellow]note:[/] loss curves from the analysis checkpoints (cannot open the run: {e})",
                      highlight=False, soft_wrap=True)
    target = normalise(out_dir) if out_dir is not None else join(base, "figures")
    t0 = time.perf_counter()
    counts: dict[str, float] = {}

    def draw() -> None:
        with local_folder(target) as local:  # at a URL: drawn into a local folder, uploaded at the end
            if quiet:
                write_figure_pack(tree, local, trajectory=trajectory, animations=animations, max_frames=frames, dpi=dpi)
            else:
                from mechgrok.progress_bar import rich_bar

                with rich_bar() as progress:
                    write_figure_pack(tree, local, trajectory=trajectory, animations=animations, max_frames=frames,
                                      dpi=dpi, progress=progress)
            counts["png"] = len(list(local.glob("[0-9][0-9]_*.png")))
            counts["gif"] = len(list(local.glob("[0-9][0-9]_*.gif")))
            counts["seconds"] = time.perf_counter() - t0
            if explorer:
                from mechgrok.explorer import write_explorer

                write_explorer(tree, local / "explorer.html", trajectory=trajectory,
                               title=f"mechgrok explorer: {run_dir}")

    run_guarded(draw)
    out.print(f"wrote {counts['png']} figures (PNG + SVG) and {counts['gif']} animations in {counts['seconds']:.1f} s: "
              f"[bold]{join(target, 'index.html')}[/]", highlight=False)
    if explorer:
        out.print(f"wrote the interactive explorer (offline): [bold]{join(target, 'explorer.html')}[/]", highlight=False)
