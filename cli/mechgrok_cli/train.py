"""``mechgrok train``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from mechgrok_cli.app import app, fail, out, run_guarded


@app.command()
def train(
    run_dir: Annotated[str, typer.Argument(help="Run directory to write (or to resume): a path or an fsspec URL (s3://bucket/run; docs/sweeps.md, Object storage).")],
    preset: Annotated[Optional[str], typer.Option(help="Configuration preset: 'quick' (the default, a minute or two on a CPU) or 'paper' (the paper's 40,000-epoch run); sequence tasks: 'digit_addition_{infinite,finite,quick}', 'repeated_subsequences_{infinite,finite,quick}'.")] = None,
    config: Annotated[Optional[Path], typer.Option(help="A config.json to use instead of a preset.")] = None,
    epochs: Annotated[Optional[int], typer.Option(help="Override the number of epochs (with --resume: extend the run to this many).")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Override the split seed.")] = None,
    model_seed: Annotated[Optional[int], typer.Option(help="Override the initialisation seed.")] = None,
    threads: Annotated[Optional[int], typer.Option(help="Override the torch threads of training (the bits do not depend on it; see docs/run-directory.md).")] = None,
    checkpoint_every: Annotated[Optional[int], typer.Option(help="Override the checkpoint cadence (epochs); the training itself does not depend on it.")] = None,
    loss_dtype: Annotated[Optional[str], typer.Option("--loss-dtype", help="dtype of the training log-softmax: 'float64' (default) or 'float32' (the released code's; gives slingshots, docs/slingshots.md).")] = None,
    frac_train: Annotated[Optional[float], typer.Option("--frac-train", help="Override the training fraction of the pairs (sub and div, not commutative, need more than add and mul).")] = None,
    operation: Annotated[Optional[str], typer.Option(help="The task: add, sub, mul or div (a / b, b = 1..p-1) mod p (mul and div need a prime p).")] = None,
    attn_coeff: Annotated[Optional[float], typer.Option("--attn-coeff", help="Attention rate alpha in [0, 1]: attention = alpha * softmax + (1 - alpha) (Zhong et al. 2023; 1 is the paper's, 0 constant attention).")] = None,
    equals_token: Annotated[Optional[bool], typer.Option("--equals-token/--no-equals-token", help="Inputs a, b, = read out at = (the paper's, default) or a, b read out at b (the Pizza models').")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue an interrupted run from its last checkpoint.")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing run directory.")] = False,
    zarr: Annotated[Optional[str], typer.Option("--zarr", help="Also append each checkpoint to this Zarr store (path or URL) as training goes.")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Train the paper's 1-layer transformer on (a + b) mod p (or a - b, a * b, a / b) and write a checkpoint trajectory.

    RUN_DIR may be a URL: the run is trained in a local working copy pushed there after every checkpoint, so
    --resume continues it from the URL.
    """
    from mechgrok.store.location import is_remote, normalise
    from mechgrok_cli.train_sequence import is_sequence_request, train_sequence_run

    if is_remote(run_dir) and is_sequence_request(preset, config):
        fail(f"{run_dir}: the sequence tasks train into a local run directory only; train there, then copy it")
    run_dir = normalise(run_dir)  # a local Path, or the URL (mechgrok.store.location)

    if is_sequence_request(preset, config, run_dir, resume):  # n-digit addition, repeated subsequences (mechgrok.sequence_train)
        return train_sequence_run(run_dir, preset=preset, config=config, resume=resume, overwrite=overwrite,
                                  quiet=quiet, num_epochs=epochs, seed=seed, model_seed=model_seed, threads=threads,
                                  checkpoint_every=checkpoint_every)
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
            cfg = get_preset(preset or "quick")
        overrides = {k: v for k, v in {"num_epochs": epochs, "seed": seed, "model_seed": model_seed, "threads": threads, "loss_dtype": loss_dtype, "checkpoint_every": checkpoint_every,
                                       "frac_train": frac_train, "operation": operation, "attn_coeff": attn_coeff, "equals_token": equals_token}.items() if v is not None}
        try:
            return cfg.replace(**overrides) if overrides else cfg
        except ConfigError as e:
            raise ConfigError(e.reason, path=config) from None

    if resume and overwrite:
        fail("--resume and --overwrite exclude each other")
    if resume:  # the saved config.json decides; only --epochs (more of them) can change it
        fixed = [name for name, v in (("--preset", preset), ("--config", config), ("--seed", seed),
                                      ("--model-seed", model_seed), ("--threads", threads),
                                      ("--frac-train", frac_train), ("--operation", operation), ("--attn-coeff", attn_coeff),
                                      ("--equals-token", equals_token), ("--loss-dtype", loss_dtype),
                                      ("--checkpoint-every", checkpoint_every)) if v is not None]
        if fixed:
            fail(f"{run_dir}: --resume continues the run with its saved config.json; {', '.join(fixed)} cannot "
                 "change it (only --epochs can extend it)")
    cfg = run_guarded(build)
    if preset is None and config is None and not resume:
        out.print(f"no --preset or --config: training the [bold]quick[/] preset (p = {cfg.p}, {cfg.num_epochs} epochs); "
                  "pass --preset paper for the paper's run (p = 113, 40,000 epochs)", highlight=False)
    on_checkpoint = None
    if zarr is not None:
        from mechgrok.store import TrajectoryWriter
        from mechgrok.store.location import exists

        if is_remote(run_dir):
            fail(f"--zarr: the run directory {run_dir} is a URL; train it, then `mechgrok ingest {run_dir} {zarr}`")
        zarr = normalise(zarr)
        if exists(zarr) and not (resume or overwrite):
            fail(f"{zarr}: already exists; pass --resume to continue it or --overwrite to replace it")

        on_checkpoint = run_guarded(TrajectoryWriter, zarr, run_dir=run_dir, overwrite=overwrite)
    extend = {"num_epochs": epochs} if resume and epochs is not None else {}
    if quiet:
        run_guarded(run_train, cfg, run_dir, resume=resume, overwrite=overwrite, on_checkpoint=on_checkpoint, **extend)
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
            if resume:  # the saved config's length (local or at a URL)
                from mechgrok.store.location import exists, join, read_text

                saved = join(run_dir, "config.json")
                if exists(saved):
                    saved_cfg = run_guarded(lambda: Config.from_json(read_text(saved), source=saved))
                    total = max(epochs or 0, saved_cfg.num_epochs)
            progress.update(task, total=total)
            run_guarded(run_train, cfg, run_dir, resume=resume, overwrite=overwrite, on_epoch=on_epoch,
                        on_checkpoint=on_checkpoint, **extend)
            progress.update(task, completed=total)
    out.print(f"wrote [bold]{run_dir}[/]" + (f" and [bold]{zarr}[/]" if zarr is not None else ""))
