"""``mechgrok train`` for the sequence tasks (n-digit addition, repeated subsequences): a preset of
:data:`mechgrok.sequence_config.SEQUENCE_PRESETS`, or a ``--config`` file with a ``task`` key, goes here from
:func:`mechgrok_cli.train.train`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mechgrok_cli.app import fail, out, run_guarded

__all__ = ["is_sequence_request", "train_sequence_run"]


def is_sequence_request(preset: str | None, config: Path | None, run_dir: Path | None = None,
                        resume: bool = False) -> bool:
    """Whether ``mechgrok train`` was asked for a sequence task: its preset, a config file with a ``task``, or
    (``--resume`` without either) a run directory whose ``config.json`` names a sequence task."""
    from mechgrok.sequence_config import SEQUENCE_PRESETS, SEQUENCE_TASKS
    from mechgrok.store.sequence_run import is_sequence_run

    if resume and preset is None and config is None and run_dir is not None:
        return is_sequence_run(run_dir)
    if config is None:
        return preset in SEQUENCE_PRESETS
    try:
        return json.loads(config.read_text()).get("task") in SEQUENCE_TASKS
    except (OSError, ValueError, AttributeError):
        return False


def train_sequence_run(run_dir: Path, *, preset: str | None, config: Path | None, resume: bool, overwrite: bool,
                       quiet: bool, **overrides: Any) -> None:
    """Build the :class:`~mechgrok.sequence_config.SequenceConfig` (preset or file, then ``overrides`` that are
    not None: ``num_epochs``, ``seed``, ``model_seed``, ``threads``, ``checkpoint_every``) and train it; with
    ``resume``, continue the run with its saved ``config.json`` (only ``num_epochs``, more of them, may be given)."""
    from mechgrok.sequence_config import SequenceConfig, sequence_preset
    from mechgrok.sequence_train import train_sequence
    from mechgrok.store.sequence_run import read_sequence_config

    given = {k: v for k, v in overrides.items() if v is not None}
    if resume and overwrite:
        fail("--resume and --overwrite exclude each other")
    if resume:  # the saved config.json decides; only --epochs (more of them) can change it
        names = {"seed": "--seed", "model_seed": "--model-seed", "threads": "--threads",
                 "checkpoint_every": "--checkpoint-every"}
        fixed = [n for n, v in (("--preset", preset), ("--config", config)) if v is not None]
        fixed += [names.get(k, k) for k in given if k != "num_epochs"]
        if fixed:
            fail(f"{run_dir}: --resume continues the run with its saved config.json; {', '.join(fixed)} cannot "
                 "change it (only --epochs can extend it)")

    def build() -> SequenceConfig:
        if resume:
            saved = read_sequence_config(run_dir)
            return saved.replace(num_epochs=max(saved.num_epochs, given.get("num_epochs", 0)))
        if config is not None:
            cfg = SequenceConfig.from_dict(json.loads(config.read_text()), source=config)
            return cfg.replace(**given) if given else cfg
        return sequence_preset(preset, **given)

    cfg = run_guarded(build)  # with resume: the progress bar's length (train_sequence checks --epochs itself)
    kwargs: dict[str, Any] = {"resume": resume, "overwrite": overwrite}
    if resume:
        kwargs["num_epochs"] = given.get("num_epochs")
    if quiet:
        run_guarded(train_sequence, cfg, run_dir, **kwargs)
    else:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        with Progress(TextColumn(f"[bold]train {cfg.task}[/]"), BarColumn(), MofNCompleteColumn(),
                      TextColumn("{task.fields[stats]}"), TimeElapsedColumn()) as progress:
            task = progress.add_task("train", total=cfg.num_epochs, stats="")

            def on_epoch(epoch: int, train_loss: float, test_loss: float | None) -> None:
                if test_loss is not None:
                    progress.update(task, completed=epoch, stats=f"train {train_loss:.3g} / test {test_loss:.3g}")

            run_guarded(train_sequence, cfg, run_dir, on_epoch=on_epoch, **kwargs)
            progress.update(task, completed=cfg.num_epochs)
    out.print(f"wrote [bold]{run_dir}[/]")
