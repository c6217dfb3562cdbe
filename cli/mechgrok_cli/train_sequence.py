"""``mechgrok train`` for the sequence tasks (n-digit addition, repeated subsequences): a preset of
:data:`mechgrok.sequence_config.SEQUENCE_PRESETS`, or a ``--config`` file with a ``task`` key, goes here from
:func:`mechgrok_cli.train.train`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mechgrok_cli.app import fail, out, run_guarded

__all__ = ["is_sequence_request", "train_sequence_run"]


def is_sequence_request(preset: str | None, config: Path | None) -> bool:
    """Whether ``mechgrok train`` was asked for a sequence task (its preset, or a config file with a ``task``)."""
    from mechgrok.sequence_config import SEQUENCE_PRESETS, SEQUENCE_TASKS

    if config is None:
        return preset in SEQUENCE_PRESETS
    try:
        return json.loads(config.read_text()).get("task") in SEQUENCE_TASKS
    except (OSError, ValueError, AttributeError):
        return False


def train_sequence_run(run_dir: Path, *, preset: str | None, config: Path | None, resume: bool, overwrite: bool,
                       quiet: bool, **overrides: Any) -> None:
    """Build the :class:`~mechgrok.sequence_config.SequenceConfig` (preset or file, then ``overrides`` that are
    not None: ``num_epochs``, ``seed``, ``model_seed``, ``threads``, ``checkpoint_every``) and train it."""
    from mechgrok.sequence_config import SequenceConfig, sequence_preset
    from mechgrok.sequence_train import train_sequence

    if resume:
        fail(f"{run_dir}: the sequence-task trainer does not resume; train again with --overwrite")
    given = {k: v for k, v in overrides.items() if v is not None}

    def build() -> SequenceConfig:
        if config is not None:
            cfg = SequenceConfig.from_dict(json.loads(config.read_text()), source=config)
            return cfg.replace(**given) if given else cfg
        return sequence_preset(preset, **given)

    cfg = run_guarded(build)
    if quiet:
        run_guarded(train_sequence, cfg, run_dir, overwrite=overwrite)
    else:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        with Progress(TextColumn(f"[bold]train {cfg.task}[/]"), BarColumn(), MofNCompleteColumn(),
                      TextColumn("{task.fields[stats]}"), TimeElapsedColumn()) as progress:
            task = progress.add_task("train", total=cfg.num_epochs, stats="")

            def on_epoch(epoch: int, train_loss: float, test_loss: float | None) -> None:
                if test_loss is not None:
                    progress.update(task, completed=epoch, stats=f"train {train_loss:.3g} / test {test_loss:.3g}")

            run_guarded(train_sequence, cfg, run_dir, overwrite=overwrite, on_epoch=on_epoch)
            progress.update(task, completed=cfg.num_epochs)
    out.print(f"wrote [bold]{run_dir}[/]")
