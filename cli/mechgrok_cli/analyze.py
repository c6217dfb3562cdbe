"""``mechgrok analyze``."""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path
from typing import Annotated, Optional

import typer

from mechgrok_cli.app import app, fail, out, run_guarded
from mechgrok_cli.outputs import default_out_dir, run_analysis, write_analysis_outputs


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


def _parse_only(text: str | None) -> list[str] | None:
    """'ablation,measures' -> analysis names, each one of :data:`mechgrok.pipeline.ANALYSES`."""
    if text is None:
        return None
    from mechgrok.pipeline import ANALYSES

    analyses = [a.strip() for a in text.split(",") if a.strip()]
    unknown = sorted(set(analyses) - set(ANALYSES))
    if unknown:
        fail(f"--only: unknown analyses {', '.join(unknown)}; known: {', '.join(ANALYSES)}")
    return analyses


@app.command()
def analyze(
    run_dir: Annotated[str, typer.Argument(help="A run directory or any trajectory `mechgrok ingest` accepts: a path or an fsspec URL (s3://bucket/run).")],
    out_dir: Annotated[Optional[str], typer.Option("--out", help="Where to write analysis.zarr and the reports, a path or URL (default: RUN_DIR, or beside a file).")] = None,
    reference: Annotated[Optional[int], typer.Option(help="Epoch of the reference checkpoint for the key frequencies (default: the last).")] = None,
    checkpoints: Annotated[Optional[str], typer.Option(help="Epochs to analyse: '0,100,200' or '0:4000:500' (default: all).")] = None,
    only: Annotated[Optional[str], typer.Option(help="Comma-separated analyses to run (default: all but llc).")] = None,
    chunk: Annotated[int, typer.Option(min=1, help="Checkpoints whose weights are read at once.")] = 16,
    device: Annotated[Optional[str], typer.Option(help="'cpu' or 'cuda' (default: CUDA when available, else CPU).")] = None,
    llc: Annotated[bool, typer.Option("--llc", help="Also estimate the local learning coefficient.")] = False,
    llc_every: Annotated[int, typer.Option(min=1, help="With --llc: every N-th checkpoint.")] = 10,
    figures: Annotated[bool, typer.Option("--figures", help="Also write the figure pack (RUN_DIR/figures).")] = False,
    fmt: Annotated[Optional[str], typer.Option("--format", help="Source format (default: detected).")] = None,
    trust_checkpoint: Annotated[bool, typer.Option("--trust-checkpoint", help="Allow a full unpickle of .pth files (can run arbitrary code: trusted files only).")] = False,
    seed: Annotated[Optional[int], typer.Option(help="Split seed, for formats that do not store the split.")] = None,
    frac_train: Annotated[Optional[float], typer.Option(help="Training fraction, for formats that do not store the split.")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Run every analysis of the paper over a trajectory; write analysis.zarr, report.md and report.json.

    One analyze at a time writes to a local output folder: a second one fails at once with a clear error (object
    stores have no locks). RUN_DIR and --out may be URLs: a run there is read through a local copy, and the
    outputs are uploaded (the figures drawn locally first).
    """
    from mechgrok.store.location import normalise
    from mechgrok.store.lock import hold

    analyses = _parse_only(only)
    epochs = _parse_epochs(checkpoints)
    run_dir = normalise(run_dir)
    target = normalise(out_dir) if out_dir is not None else run_guarded(default_out_dir, run_dir)
    # one analyze per output folder: a second one fails at once (mechgrok.store.lock)
    with ExitStack() as held:
        run_guarded(held.enter_context, hold(target, kind="analyze", timeout=0,
                                             busy="another mechgrok analyze is writing to this folder"))
        _analyze(run_dir, target, analyses=analyses, epochs=epochs, reference=reference, chunk=chunk, device=device,
                 llc=llc, llc_every=llc_every, figures=figures, fmt=fmt, trust_checkpoint=trust_checkpoint, seed=seed,
                 frac_train=frac_train, quiet=quiet)


def _analyze(run_dir: Path | str, target: Path | str, *, analyses, epochs, reference, chunk, device, llc, llc_every,
             figures, fmt, trust_checkpoint, seed, frac_train, quiet) -> None:
    import mechgrok
    from mechgrok.store.location import join

    ds = run_guarded(mechgrok.open_run, run_dir, format=fmt, trusted=trust_checkpoint, seed=seed,
                     frac_train=frac_train)
    if epochs is not None and "checkpoint" not in ds.dims:
        fail(f"{run_dir}: --checkpoints: the file holds loss curves only, no checkpoints")
    if epochs is not None:  # the reference checkpoint is always analysed
        ref = int(ds["checkpoint"].values[-1]) if reference is None else reference
        ds = run_guarded(mechgrok.select_epochs, ds, sorted(set(epochs) | {ref}))
    tree = run_analysis(ds, quiet=quiet, reference=reference, analyses=analyses, chunk=chunk, device=device,
                        llc=llc, llc_every=llc_every)
    write_analysis_outputs(tree, target, title=f"mechgrok report: {run_dir}")
    if figures:
        from mechgrok.explorer import write_explorer
        from mechgrok.figures.pack import write_figure_pack
        from mechgrok.store.location import local_folder

        folder = join(target, "figures")

        def draw() -> None:
            with local_folder(folder) as local:  # at a URL: drawn into a local folder, uploaded at the end
                write_figure_pack(tree, local, trajectory=ds)
                write_explorer(tree, local / "explorer.html", trajectory=ds, title=f"mechgrok explorer: {run_dir}")

        run_guarded(draw)
        out.print(f"figures: [bold]{join(folder, 'index.html')}[/], interactive: [bold]{join(folder, 'explorer.html')}[/]")
    out.print(f"wrote [bold]{join(target, 'analysis.zarr')}[/], [bold]{join(target, 'report.md')}[/], "
              f"[bold]{join(target, 'report.json')}[/]")
