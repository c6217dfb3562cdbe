"""``mechgrok train``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from mechgrok_cli.app import app, fail, out, run_guarded


@app.command()
def train(
    run_dir: Annotated[Path, typer.Argument(help="Run directory to write (or to resume).")],
    preset: Annotated[str, typer.Option(help="Configuration preset: 'paper' or 'quick'.")] = "paper",
    config: Annotated[Optional[Path], typer.Option(help="A config.json to use instead of a preset.")] = None,
    epochs: Annotated[Optional[int], typer.Option(help="Override the number of epochs.")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Override the split seed.")] = None,
    model_seed: Annotated[Optional[int], typer.Option(help="Override the initialisation seed.")] = None,
    threads: Annotated[Optional[int], typer.Option(help="Override the torch threads of training (the bits do not depend on it; see docs/run-directory.md).")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue an interrupted run from its last checkpoint.")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing run directory.")] = False,
    zarr: Annotated[Optional[Path], typer.Option("--zarr", help="Also append each checkpoint to this Zarr store as training goes.")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Train the paper's 1-layer transformer on (a + b) mod p and write a checkpoint trajectory."""
    from mechgrok.config import Config
    from mechgrok.config import preset as get_preset
    from mechgrok.errors import ConfigError
    from mechgrok.train import train as run_train

    def build() -> Config:
        if config is not None:
            if not config.is_file():
                raise ConfigError("config file not found", path=config)
            cfg = Config.from_json(config.read_text(), source=config)
        else:
            cfg = get_preset(preset)
        overrides = {k: v for k, v in {"num_epochs": epochs, "seed": seed, "model_seed": model_seed, "threads": threads}.items() if v is not None}
        try:
            return cfg.replace(**overrides) if overrides else cfg
        except ConfigError as e:
            raise ConfigError(e.reason, path=config) from None

    cfg = run_guarded(build)
    if resume and overwrite:
        fail("--resume and --overwrite exclude each other")
    on_checkpoint = None
    if zarr is not None:
        from mechgrok.store import TrajectoryWriter

        if zarr.exists() and not (resume or overwrite):
            fail(f"{zarr}: already exists; pass --resume to continue it or --overwrite to replace it")

        on_checkpoint = run_guarded(TrajectoryWriter, zarr, run_dir=run_dir, overwrite=overwrite)
    if quiet:
        run_guarded(run_train, cfg, run_dir, resume=resume, overwrite=overwrite, on_checkpoint=on_checkpoint)
    else:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        with Progress(
            TextColumn("[bold]train[/]"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[stats]}"),
            TimeElapsedColumn(), TimeRemainingColumn(), transient=False,
        ) as progress:
            task = progress.add_task("train", total=None, stats="")

            def on_epoch(m) -> None:
                if m.epoch % 10 == 0 or progress.tasks[task].total == m.epoch:
                    stats = f"train {m.train_loss:.3g} / test {m.test_loss:.3g}  acc {m.train_acc:.3f} / {m.test_acc:.3f}"
                    progress.update(task, completed=m.epoch, stats=stats)

            total = cfg.num_epochs
            if resume:
                from mechgrok.rundir import read_config, is_run_dir
                if is_run_dir(run_dir):
                    total = run_guarded(read_config, run_dir).num_epochs
            progress.update(task, total=total)
            run_guarded(run_train, cfg, run_dir, resume=resume, overwrite=overwrite, on_epoch=on_epoch,
                        on_checkpoint=on_checkpoint)
            progress.update(task, completed=total)
    out.print(f"wrote [bold]{run_dir}[/]" + (f" and [bold]{zarr}[/]" if zarr is not None else ""))
