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
deterministic algorithms (both restored afterwards).

Resume (as the modular trainer, :func:`mechgrok.train.train`): at every checkpoint, after the checkpoint and the
metric rows before it, ``state.safetensors`` is written with the weights (``weights.<name>``), the AdamW moments
(``adam.<name>.exp_avg``, ``adam.<name>.exp_avg_sq``, ``adam.<name>.step``), the state of the data stream
(``rng.*``: the ``np.random.RandomState`` of the induction data or the ``torch.Generator`` of the addition data,
as it stands before the checkpoint's epoch draws its batch; ``shuffle.torch_state``: the batch order of finite
data) and ``epoch``. ``train_sequence(cfg, run, resume=True)`` reloads it, drops the metric rows from that epoch
on and continues with the saved ``config.json``: checkpoints, ``metrics.csv`` and the final state are bit-identical
to an uninterrupted run in the same environment (a resume in another one warns,
:class:`mechgrok.train.ReproducibilityWarning`). ``num_epochs`` may only extend the run; ``run.json`` lists every
resume under ``resumes``.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from mechgrok.errors import ConfigError, RunDirError
from mechgrok.models.causal_transformer import SequenceTransformer
from mechgrok.rundir import (checkpoint_path, read_checkpoint, read_run_info,
                             save_safetensors_atomic, write_atomic)
from mechgrok.sequence_config import SequenceConfig
from mechgrok.store.lock import hold
from mechgrok.store.sequence_run import is_sequence_run, read_sequence_config
from mechgrok.tasks import digit_addition as add
from mechgrok.tasks import repeated_subsequences as rep
from mechgrok.train import (check_environment, prepare_run_dir, truncate_metrics, write_run_json,
                            training_environment)

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
    cfg: SequenceConfig | None,
    run_dir: str | Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    on_epoch: Callable[[int, float, float | None], None] | None = None,
    num_epochs: int | None = None,
) -> Path:
    """Train a sequence-task model and write a run directory (module docstring).

    Parameters
    ----------
    cfg : SequenceConfig or None
        The run's configuration (ignored with ``resume=True``: the saved ``config.json`` is used; may be None).
    run_dir : str or Path
    resume : bool
        Continue an interrupted run from its last checkpoint (``state.safetensors``); the checkpoints and
        ``metrics.csv`` are bit-identical to an uninterrupted run's in the same environment. A run killed before
        it wrote ``run.json`` starts again from its saved config.
    overwrite : bool
        Replace an existing run directory (only a mechgrok run directory or an empty folder is removed).
    on_epoch : callable, optional
        ``on_epoch(epoch, train_loss, test_loss or None)`` after every epoch (progress display).
    num_epochs : int, optional
        With ``resume=True``: train on to this many epochs (at least the saved config's; ``config.json`` is
        updated). The run then equals an uninterrupted run of that length.

    Returns
    -------
    Path
        The run directory.

    Raises
    ------
    RunDirError
        If ``run_dir`` exists without ``resume``/``overwrite``, ``resume`` is asked of a folder that is not a
        sequence-task run directory, or a resumed run's ``metrics.csv`` is missing or does not hold the rows before
        its last checkpoint; if another ``train`` is writing the run.
    ConfigError
        If ``num_epochs`` is less than the saved config's, or the saved config is invalid.

    Warns
    -----
    ReproducibilityWarning
        With ``resume=True``, if the run started in another environment (:func:`mechgrok.train.
        training_environment`) or its ``run.json`` records none.

    Examples
    --------
    >>> import tempfile
    >>> from mechgrok.sequence_config import sequence_preset
    >>> cfg = sequence_preset("digit_addition_quick", n_digits=2, d_model=8, d_head=2, d_mlp=16, num_epochs=3,
    ...                       checkpoint_every=2, test_size=8, test_every=1)
    >>> run = train_sequence(cfg, tempfile.mkdtemp() + "/run")
    >>> sorted(p.name for p in (run / "checkpoints").iterdir())
    ['epoch_000000.safetensors', 'epoch_000002.safetensors', 'epoch_000003.safetensors']
    >>> run = train_sequence(None, run, resume=True, num_epochs=4)  # extend it by one epoch
    >>> from mechgrok.rundir import read_run_info
    >>> read_run_info(run)["resumes"][0]["epoch"], read_run_info(run)["complete"]
    (3, True)
    """
    run_dir = Path(run_dir)
    if not resume and cfg is None:
        raise ConfigError("a new sequence-task run needs a SequenceConfig", path=run_dir)
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    with hold(run_dir, kind="train", timeout=0, error=RunDirError,
              busy="another mechgrok train is writing this run directory"):
        cfg, resume = prepare_run_dir(run_dir, cfg, resume=resume, overwrite=overwrite, num_epochs=num_epochs,
                                      read_saved=read_sequence_config, check_saved=_check_sequence_run)
        with _numerics(cfg.threads):
            _train(cfg, run_dir, resume, on_epoch)
    return run_dir


def _check_sequence_run(run_dir: Path) -> None:
    if not is_sequence_run(run_dir):
        raise RunDirError("cannot resume: config.json names no sequence task (a modular run resumes through "
                          "mechgrok.train.train)", path=run_dir)


def _stream_state(stream: Any, shuffle: torch.Generator) -> dict[str, torch.Tensor]:
    """The data stream's and the batch order's generator states as tensors (module docstring)."""
    out = {"shuffle.torch_state": shuffle.get_state()}
    if isinstance(stream, torch.Generator):
        out["rng.torch_state"] = stream.get_state()
    else:
        name, keys, pos, has_gauss, gauss = stream.get_state()
        out.update({"rng.mt19937_keys": torch.from_numpy(keys.astype(np.int64)),
                    "rng.pos_has_gauss": torch.tensor([pos, has_gauss], dtype=torch.int64),
                    "rng.cached_gaussian": torch.tensor([gauss], dtype=torch.float64)})
    return out


def _set_stream_state(stream: Any, shuffle: torch.Generator, state: dict[str, torch.Tensor], path: Path) -> None:
    try:
        shuffle.set_state(state["shuffle.torch_state"])
        if isinstance(stream, torch.Generator):
            stream.set_state(state["rng.torch_state"])
        else:
            pos, has_gauss = (int(v) for v in state["rng.pos_has_gauss"])
            stream.set_state(("MT19937", state["rng.mt19937_keys"].numpy().astype(np.uint32), pos, has_gauss,
                              float(state["rng.cached_gaussian"][0])))
    except (KeyError, ValueError, RuntimeError, TypeError) as e:
        raise RunDirError(f"the resume state has no valid data-stream state ({e}); start the run again with "
                          "--overwrite", path=path) from None


def _optimizer_tensors(opt: torch.optim.Optimizer, model: SequenceTransformer) -> dict[str, torch.Tensor]:
    out = {}
    for name, param in model.weights.items():
        st = opt.state.get(param)
        if st:
            out[f"adam.{name}.exp_avg"] = st["exp_avg"]
            out[f"adam.{name}.exp_avg_sq"] = st["exp_avg_sq"]
            out[f"adam.{name}.step"] = torch.as_tensor(st["step"], dtype=torch.float32).reshape(1)
    return out


def _load_state(model: SequenceTransformer, opt: torch.optim.Optimizer, state: dict[str, torch.Tensor],
                path: Path) -> None:
    try:
        with torch.no_grad():
            for name, param in model.weights.items():
                param.copy_(state[f"weights.{name}"])
        for name, param in model.weights.items():
            if f"adam.{name}.exp_avg" in state:
                opt.state[param] = {"step": state[f"adam.{name}.step"].reshape(()).clone(),
                                    "exp_avg": state[f"adam.{name}.exp_avg"].clone(),
                                    "exp_avg_sq": state[f"adam.{name}.exp_avg_sq"].clone()}
    except (KeyError, RuntimeError) as e:
        raise RunDirError(f"the resume state does not fit the config ({e}); start the run again with --overwrite",
                          path=path) from None


def _train(cfg: SequenceConfig, run_dir: Path, resume: bool,
           on_epoch: Callable[[int, float, float | None], None] | None) -> None:
    env = training_environment(cfg.threads)
    metrics = run_dir / "metrics.csv"
    header = ",".join(metric_columns(cfg)) + "\n"
    if not resume:
        write_atomic(run_dir / "config.json", json.dumps(cfg.to_dict(), indent=2, sort_keys=True))
        info: dict[str, Any] = {"task": cfg.task, "environment": env, "resumes": []}
        write_run_json(run_dir, info, complete=False)
        write_atomic(metrics, header)
    model = SequenceTransformer(cfg.sizes(), seed=cfg.model_seed)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    test = task_batch(cfg, cfg.test_size, seed=cfg.seed + 1)
    if cfg.task == "digit_addition":
        stream: Any = torch.Generator().manual_seed(cfg.seed)
    else:
        stream = np.random.RandomState(cfg.seed)
    train_set = task_batch(cfg, cfg.n_train, stream=stream) if cfg.finite else None
    shuffle = torch.Generator().manual_seed(cfg.seed)
    start = 0
    state_file = run_dir / "state.safetensors"
    if resume:
        if state_file.is_file():
            state = read_checkpoint(state_file)
            try:
                start = int(state.pop("epoch").item())
            except (KeyError, RuntimeError, ValueError):
                raise RunDirError("the resume state has no epoch; start the run again with --overwrite",
                                  path=state_file) from None
            _load_state(model, opt, state, state_file)
            _set_stream_state(stream, shuffle, state, state_file)
        truncate_metrics(metrics, start, header, blank_cells=True)  # killed before the first checkpoint: from scratch
        info = read_run_info(run_dir)
        check_environment(run_dir, info.get("environment"), env, start)
        info.setdefault("environment", None)
        info["resumes"] = [*info.get("resumes", []), {"epoch": start, "environment": env}]
        write_run_json(run_dir, info, complete=False)
    pending: list[str] = []

    def flush() -> None:
        with open(metrics, "a") as f:
            f.writelines(pending)
        pending.clear()

    for epoch in range(start, cfg.num_epochs + 1):
        test_loss, test_tok = None, None
        if epoch % cfg.test_every == 0 or epoch == cfg.num_epochs:
            with torch.no_grad():
                tl, tt = batch_loss(cfg, model(test.tokens).logits, test)
                test_loss, test_tok = float(tl), tt
        if epoch % cfg.checkpoint_every == 0 or epoch == cfg.num_epochs:
            with hold(run_dir, error=RunDirError, busy="a mechgrok process is reading this run directory"):
                save_safetensors_atomic(checkpoint_path(run_dir, epoch), model.state_dict_tl(),
                                        metadata={"epoch": str(epoch)})
                flush()  # the rows of the epochs before this checkpoint
                state = {**{f"weights.{k}": v.detach().clone() for k, v in model.weights.items()},
                         **_optimizer_tensors(opt, model), **_stream_state(stream, shuffle),
                         "epoch": torch.tensor([epoch], dtype=torch.int64)}
                save_safetensors_atomic(state_file, state)
        if epoch == cfg.num_epochs:  # the final weights are measured, not trained further
            with torch.no_grad():
                data = train_set if cfg.finite else task_batch(cfg, cfg.batch_size, stream=stream)
                loss, tok = batch_loss(cfg, model(data.tokens).logits, data)
            pending.append(_row(cfg, epoch, [float(loss)], [tok], test_loss, test_tok))
            break
        for group in opt.param_groups:
            group["lr"] = cfg.lr * (min(epoch / cfg.warmup_steps, 1.0) if cfg.warmup_steps else 1.0)
        if cfg.finite:  # one step per epoch on batch_size examples of a fresh shuffle (the released finite run's
            # optimizer made 285,820 steps in 285,820 epochs, on noisy per-epoch losses: not 4 steps, not full batch)
            order = torch.randperm(cfg.n_train, generator=shuffle)
            batches = [_rows(train_set, order[: cfg.batch_size])]
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
        if len(pending) >= 1000:
            flush()
    flush()
    write_run_json(run_dir, info, complete=True)


def _row(cfg: SequenceConfig, epoch: int, losses: list[float], toks: list[Any], test_loss: float | None,
         test_tok: torch.Tensor | None) -> str:
    cells = [str(epoch), _fmt(float(np.mean(losses))), _fmt(test_loss)]
    if cfg.task == "digit_addition":
        train_tok = torch.stack(toks).mean(0).tolist()
        cells += [_fmt(v) for v in train_tok]
        cells += [_fmt(v) for v in test_tok.tolist()] if test_tok is not None else [""] * (cfg.n_digits + 1)
    return ",".join(cells) + "\n"
