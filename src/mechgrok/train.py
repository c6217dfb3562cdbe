"""The minimal trainer: the paper's recipe, writing a checkpoint trajectory into a run directory.

Full-batch AdamW with the paper's linear warm-up (lr * min(step / warmup_steps, 1), so the very first step has
lr 0, as with the released ``LambdaLR``), float64 cross-entropy over all ``d_vocab_out`` classes (the training
loss of the released code; the analyses use 113 classes, paper.md 2.1). Deterministic for a given config on
CPU. Resumable: the weights and AdamW moments are saved at every checkpoint, and ``resume=True`` continues from
the last one with bit-identical results.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from mechgrok import __version__
from mechgrok.config import Config
from mechgrok.data import grid_labels, grid_tokens, split_indices
from mechgrok.errors import RunDirError
from mechgrok.loss import accuracy, cross_entropy
from mechgrok.model import PARAM_KEYS, Transformer
from mechgrok.rundir import (
    METRIC_COLUMNS,
    RUN_FORMAT,
    checkpoint_path,
    is_run_dir,
    read_checkpoint,
    read_config,
    save_safetensors_atomic,
    write_atomic,
)

__all__ = ["train", "EpochMetrics"]


@dataclass(frozen=True)
class EpochMetrics:
    """Metrics of the weights after ``epoch`` optimiser steps (losses in nats, float64)."""

    epoch: int
    train_loss: float
    test_loss: float
    train_acc: float
    test_acc: float

    def row(self) -> str:
        return f"{self.epoch},{self.train_loss!r},{self.test_loss!r},{self.train_acc!r},{self.test_acc!r}\n"


def _prepare_dir(run_dir: Path, cfg: Config, *, resume: bool, overwrite: bool) -> Config:
    if resume:
        if not is_run_dir(run_dir):
            raise RunDirError("cannot resume: not a mechgrok run directory", path=run_dir)
        saved = read_config(run_dir)
        return saved
    if run_dir.exists():
        if not overwrite:
            raise RunDirError("already exists; pass --resume to continue it or --overwrite to replace it", path=run_dir)
        if run_dir.is_dir() and (is_run_dir(run_dir) or not any(run_dir.iterdir())):
            shutil.rmtree(run_dir)
        else:
            raise RunDirError("--overwrite refused: the folder is not a mechgrok run directory", path=run_dir)
    run_dir.mkdir(parents=True)
    return cfg


def _write_run_json(run_dir: Path, *, complete: bool) -> None:
    write_atomic(run_dir / "run.json", json.dumps({"format": RUN_FORMAT, "version": __version__, "complete": complete}))


def _optimizer_tensors(opt: torch.optim.Optimizer, model: Transformer) -> dict[str, torch.Tensor]:
    out = {}
    for key, param in model.named_parameters():
        st = opt.state.get(param)
        if not st:
            continue
        out[f"adam.{key}.exp_avg"] = st["exp_avg"]
        out[f"adam.{key}.exp_avg_sq"] = st["exp_avg_sq"]
        out[f"adam.{key}.step"] = torch.as_tensor(st["step"], dtype=torch.float32).reshape(1)
    return out


def _load_optimizer_tensors(opt: torch.optim.Optimizer, model: Transformer, tensors: dict[str, torch.Tensor]) -> None:
    for key, param in model.named_parameters():
        if f"adam.{key}.exp_avg" not in tensors:
            continue
        opt.state[param] = {
            "step": tensors[f"adam.{key}.step"].reshape(()).clone(),
            "exp_avg": tensors[f"adam.{key}.exp_avg"].clone(),
            "exp_avg_sq": tensors[f"adam.{key}.exp_avg_sq"].clone(),
        }


def train(
    cfg: Config,
    run_dir: str | Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    on_epoch: Callable[[EpochMetrics], None] | None = None,
    on_checkpoint: Callable[[int, dict[str, torch.Tensor]], None] | None = None,
) -> Path:
    """Train the paper's model and write a run directory.

    Parameters
    ----------
    cfg : Config
        The run configuration (ignored with ``resume=True``: the saved one is used).
    run_dir : str or Path
        Output folder (layout in :mod:`mechgrok.rundir`).
    resume : bool
        Continue an interrupted run from its last checkpoint; the final weights are identical to an
        uninterrupted run.
    overwrite : bool
        Replace an existing run directory (only a mechgrok run directory or an empty folder is removed).
    on_epoch : callable, optional
        Called with the :class:`EpochMetrics` of every epoch (for progress display).
    on_checkpoint : callable, optional
        Called with ``(epoch, weights by TransformerLens name)`` after each checkpoint is written.

    Returns
    -------
    Path
        The run directory.

    Raises
    ------
    RunDirError
        If ``run_dir`` exists without ``resume``/``overwrite``, or ``resume`` is asked of a non-run folder.
    """
    run_dir = Path(run_dir)
    cfg = _prepare_dir(run_dir, cfg, resume=resume, overwrite=overwrite)
    p = cfg.p
    train_idx, test_idx = split_indices(p, cfg.frac_train, cfg.seed)
    if not resume:
        write_atomic(run_dir / "config.json", json.dumps(cfg.to_dict(), indent=2, sort_keys=True))
        split = {"p": p, "seed": cfg.seed, "frac_train": cfg.frac_train,
                 "train": train_idx.tolist(), "test": test_idx.tolist()}
        write_atomic(run_dir / "split.json", json.dumps(split))
        write_atomic(run_dir / "metrics.csv", ",".join(METRIC_COLUMNS) + "\n")
        _write_run_json(run_dir, complete=False)

    tokens, labels = grid_tokens(p), grid_labels(p, cfg.operation)
    tr_idx, te_idx = torch.from_numpy(train_idx), torch.from_numpy(test_idx)
    x_train, y_train = tokens[tr_idx], labels[tr_idx]
    x_test, y_test = tokens[te_idx], labels[te_idx]

    model = Transformer(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    start = 0
    state_file = run_dir / "state.safetensors"
    if resume and state_file.is_file():
        state = read_checkpoint(state_file)
        start = int(state.pop("epoch").item())
        with torch.no_grad():
            for key, param in model.named_parameters():
                param.copy_(state[key])
        _load_optimizer_tensors(opt, model, state)
        _truncate_metrics(run_dir / "metrics.csv", start)
    elif resume:
        # killed before the first checkpoint: start again from scratch
        _truncate_metrics(run_dir / "metrics.csv", 0)

    pending: list[str] = []
    for epoch in range(start, cfg.num_epochs + 1):
        logits = model(x_train).logits
        loss = cross_entropy(logits, y_train)
        with torch.no_grad():
            test_logits = model(x_test).logits
            m = EpochMetrics(
                epoch=epoch,
                train_loss=loss.item(),
                test_loss=cross_entropy(test_logits, y_test).item(),
                train_acc=accuracy(logits, y_train).item(),
                test_acc=accuracy(test_logits, y_test).item(),
            )
        pending.append(m.row())
        if epoch % cfg.checkpoint_every == 0 or epoch == cfg.num_epochs:
            weights = {key: t.detach().clone() for key, t in model.state_dict().items()}
            save_safetensors_atomic(checkpoint_path(run_dir, epoch), weights, metadata={"epoch": str(epoch)})
            with open(run_dir / "metrics.csv", "a") as f:
                f.writelines(pending)
            pending.clear()
            state = {**weights, **_optimizer_tensors(opt, model), "epoch": torch.tensor([epoch], dtype=torch.int64)}
            save_safetensors_atomic(state_file, state)
            if on_checkpoint is not None:
                on_checkpoint(epoch, {name: weights[key] for name, key in PARAM_KEYS.items()})
        if on_epoch is not None:
            on_epoch(m)
        if epoch == cfg.num_epochs:
            break
        for group in opt.param_groups:
            group["lr"] = cfg.lr * (min(epoch / cfg.warmup_steps, 1.0) if cfg.warmup_steps else 1.0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    # checkpoints beyond the end (from an earlier, longer run with the same name) cannot exist: fresh dir or resume
    _write_run_json(run_dir, complete=True)
    return run_dir


def _truncate_metrics(path: Path, epoch: int) -> None:
    """Keep the header and rows of epochs before ``epoch``."""
    lines = path.read_text().splitlines(keepends=True)
    kept = [lines[0]] + [ln for ln in lines[1:] if ln.strip() and int(ln.split(",", 1)[0]) < epoch]
    write_atomic(path, "".join(kept))
