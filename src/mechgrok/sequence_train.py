"""The trainer of the sequence tasks (n-digit addition, repeated subsequences), writing a run directory.

The run directory has the layout of a modular run (:mod:`mechgrok.rundir`): ``run.json`` (format
``mechgrok-run``), ``config.json`` (a :class:`~mechgrok.sequence_config.SequenceConfig`, with its ``task``),
``metrics.csv`` and ``checkpoints/epoch_XXXXXX.safetensors`` (TransformerLens state-dict keys, one key per layer:
``blocks.{l}.attn.W_Q``, ...). ``metrics.csv`` has the columns ``epoch, train_loss, test_loss`` and, for
addition, ``train_loss_pos{k}`` and ``test_loss_pos{k}`` for every answer position k (0 = the carry-out token);
the test columns are empty between test evaluations. It is read by :mod:`mechgrok.store.sequence_run`.

Recipe (the authors', tasks.md sections 1-2): AdamW with decoupled weight decay on every weight, learning rate
``lr * min(epoch / warmup_steps, 1)`` (the released ``LambdaLR`` is stepped once per epoch, so its state's
``last_epoch`` equals the number of epochs), float64 losses (:mod:`mechgrok.tasks.digit_addition`,
:mod:`mechgrok.tasks.repeated_subsequences`, the 85/84 factor kept). Metrics of epoch e: the train loss is the
mean loss of that epoch's batches, each taken before its optimiser step; the test loss is that of the weights at
the start of epoch e, which are the weights of checkpoint e. Training runs on ``cfg.threads`` threads with
deterministic algorithms (both restored afterwards). There is no resume: a run is short or restarted.
"""

from __future__ import annotations

import json
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from mechgrok import __version__
from mechgrok.errors import RunDirError
from mechgrok.models.causal_transformer import SequenceTransformer
from mechgrok.rundir import RUN_FORMAT, checkpoint_path, is_run_dir, save_safetensors_atomic, write_atomic
from mechgrok.sequence_config import SequenceConfig
from mechgrok.tasks import digit_addition as add
from mechgrok.tasks import repeated_subsequences as rep
from mechgrok.train import training_environment

__all__ = ["train_sequence", "metric_columns", "task_batch", "batch_loss"]


def metric_columns(cfg: SequenceConfig) -> list[str]:
    """The columns of ``metrics.csv`` for a configuration (module docstring)."""
    cols = ["epoch", "train_loss", "test_loss"]
    if cfg.task == "digit_addition":
        k = range(cfg.n_digits + 1)
        cols += [f"train_loss_pos{i}" for i in k] + [f"test_loss_pos{i}" for i in k]
    return cols


def task_batch(cfg: SequenceConfig, batch: int, *, seed: int | None = None, stream: Any = None) -> Any:
    """A batch of the task's data: :class:`~mechgrok.tasks.digit_addition.AdditionBatch` or
    :class:`~mechgrok.tasks.repeated_subsequences.InductionBatch`.

    ``stream`` is a ``torch.Generator`` (addition) or ``np.random.RandomState`` (induction) to continue; else a
    new one seeded with ``seed``.
    """
    if cfg.task == "digit_addition":
        return add.addition_batch(batch, cfg.n_digits, generator=stream, seed=seed)
    return rep.induction_batch(batch, seed=seed, rng=stream, seq_len=cfg.seq_len, subseq_len=cfg.subseq_len,
                               num_repeats=cfg.num_repeats, vocab_size=cfg.vocab_size)


def batch_loss(cfg: SequenceConfig, logits: torch.Tensor, data: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The task's float64 loss on a batch and, for addition, the per-token losses (n + 1,)."""
    if cfg.task == "digit_addition":
        per_token = add.per_token_loss(logits, data.tokens)
        return per_token.mean(), per_token
    return rep.induction_loss(logits, data), None


def _rows(data: Any, idx: torch.Tensor) -> Any:
    """The examples ``idx`` of a batch."""
    if isinstance(data, add.AdditionBatch):
        return add.AdditionBatch(tokens=data.tokens[idx], carries=data.carries[idx])
    return rep.InductionBatch(tokens=data.tokens[idx], starts=data.starts[idx], mask=data.mask[idx],
                              subseq_len=data.subseq_len)


@contextmanager
def _numerics(threads: int) -> Iterator[None]:
    before, det = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(det)
        torch.set_num_threads(before)


def _fmt(v: float | None) -> str:
    return "" if v is None else repr(float(v))


def train_sequence(
    cfg: SequenceConfig,
    run_dir: str | Path,
    *,
    overwrite: bool = False,
    on_epoch: Callable[[int, float, float | None], None] | None = None,
) -> Path:
    """Train a sequence-task model and write a run directory (module docstring).

    Parameters
    ----------
    cfg : SequenceConfig
    run_dir : str or Path
    overwrite : bool
        Replace an existing run directory (only a mechgrok run directory or an empty folder is removed).
    on_epoch : callable, optional
        ``on_epoch(epoch, train_loss, test_loss or None)`` after every epoch (progress display).

    Returns
    -------
    Path
        The run directory.

    Raises
    ------
    RunDirError
        If ``run_dir`` exists without ``overwrite``, or is not a run directory.

    Examples
    --------
    >>> import tempfile
    >>> from mechgrok.sequence_config import sequence_preset
    >>> cfg = sequence_preset("digit_addition_quick", n_digits=2, d_model=8, d_head=2, d_mlp=16, num_epochs=3,
    ...                       checkpoint_every=2, test_size=8, test_every=1)
    >>> run = train_sequence(cfg, tempfile.mkdtemp() + "/run")
    >>> sorted(p.name for p in (run / "checkpoints").iterdir())
    ['epoch_000000.safetensors', 'epoch_000002.safetensors', 'epoch_000003.safetensors']
    """
    run_dir = Path(run_dir)
    if run_dir.exists():
        if not overwrite:
            raise RunDirError("already exists; pass --overwrite to replace it", path=run_dir)
        if run_dir.is_dir() and (is_run_dir(run_dir) or not any(run_dir.iterdir())):
            shutil.rmtree(run_dir)
        else:
            raise RunDirError("--overwrite refused: the folder is not a mechgrok run directory", path=run_dir)
    run_dir.mkdir(parents=True)
    env = training_environment(cfg.threads)
    info = {"format": RUN_FORMAT, "version": __version__, "task": cfg.task, "environment": env, "resumes": []}
    write_atomic(run_dir / "config.json", json.dumps(cfg.to_dict(), indent=2, sort_keys=True))
    write_atomic(run_dir / "run.json", json.dumps({**info, "complete": False}, indent=2))
    with _numerics(cfg.threads):
        _train(cfg, run_dir, on_epoch)
    write_atomic(run_dir / "run.json", json.dumps({**info, "complete": True}, indent=2))
    return run_dir


def _train(cfg: SequenceConfig, run_dir: Path, on_epoch: Callable[[int, float, float | None], None] | None) -> None:
    model = SequenceTransformer(cfg.sizes(), seed=cfg.model_seed)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    test = task_batch(cfg, cfg.test_size, seed=cfg.seed + 1)
    if cfg.task == "digit_addition":
        stream: Any = torch.Generator().manual_seed(cfg.seed)
    else:
        stream = np.random.RandomState(cfg.seed)
    train_set = task_batch(cfg, cfg.n_train, stream=stream) if cfg.finite else None
    shuffle = torch.Generator().manual_seed(cfg.seed)
    metrics = run_dir / "metrics.csv"
    write_atomic(metrics, ",".join(metric_columns(cfg)) + "\n")
    pending: list[str] = []
    for epoch in range(cfg.num_epochs + 1):
        test_loss, test_tok = None, None
        if epoch % cfg.test_every == 0 or epoch == cfg.num_epochs:
            with torch.no_grad():
                tl, tt = batch_loss(cfg, model(test.tokens).logits, test)
                test_loss, test_tok = float(tl), tt
        if epoch % cfg.checkpoint_every == 0 or epoch == cfg.num_epochs:
            save_safetensors_atomic(checkpoint_path(run_dir, epoch), model.state_dict_tl(),
                                    metadata={"epoch": str(epoch)})
        if epoch == cfg.num_epochs:  # the final weights are measured, not trained further
            with torch.no_grad():
                data = train_set if cfg.finite else task_batch(cfg, cfg.batch_size, stream=stream)
                loss, tok = batch_loss(cfg, model(data.tokens).logits, data)
            pending.append(_row(cfg, epoch, [float(loss)], [tok], test_loss, test_tok))
            break
        for group in opt.param_groups:
            group["lr"] = cfg.lr * (min(epoch / cfg.warmup_steps, 1.0) if cfg.warmup_steps else 1.0)
        if cfg.finite:
            order = torch.randperm(cfg.n_train, generator=shuffle)
            batches = [_rows(train_set, order[i : i + cfg.batch_size]) for i in range(0, cfg.n_train, cfg.batch_size)]
        else:
            batches = [task_batch(cfg, cfg.batch_size, stream=stream)]
        losses, toks = [], []
        for data in batches:
            loss, tok = batch_loss(cfg, model(data.tokens).logits, data)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
            toks.append(None if tok is None else tok.detach())
        pending.append(_row(cfg, epoch, losses, toks, test_loss, test_tok))
        if on_epoch is not None:
            on_epoch(epoch, float(np.mean(losses)), test_loss)
        if (epoch + 1) % cfg.checkpoint_every == 0 or len(pending) >= 1000:
            with open(metrics, "a") as f:
                f.writelines(pending)
            pending.clear()
    with open(metrics, "a") as f:
        f.writelines(pending)


def _row(cfg: SequenceConfig, epoch: int, losses: list[float], toks: list[Any], test_loss: float | None,
         test_tok: torch.Tensor | None) -> str:
    cells = [str(epoch), _fmt(float(np.mean(losses))), _fmt(test_loss)]
    if cfg.task == "digit_addition":
        train_tok = torch.stack(toks).mean(0).tolist()
        cells += [_fmt(v) for v in train_tok]
        cells += [_fmt(v) for v in test_tok.tolist()] if test_tok is not None else [""] * (cfg.n_digits + 1)
    return ",".join(cells) + "\n"
