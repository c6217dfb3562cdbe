"""The minimal trainer: the paper's recipe, writing a checkpoint trajectory into a run directory.

Full-batch AdamW with the paper's linear warm-up (lr * min(step / warmup_steps, 1), so the very first step has
lr 0, as with the released ``LambdaLR``), float64 cross-entropy over all ``d_vocab_out`` classes (the training
loss of the released code; the analyses use 113 classes, paper.md 2.1). Resumable: the weights and AdamW
moments are saved at every checkpoint, and ``resume=True`` continues from the last one with bit-identical results.

Reproducibility (docs/run-directory.md, "Reproducibility"): while training, torch runs on ``cfg.threads``
threads with ``torch.use_deterministic_algorithms(True)`` (both restored afterwards). Without the latter, the
backward pass of the embedding-table gathers accumulates with atomic adds on 2 or more threads, and two runs on
the same machine differ from the first steps. With both, the same config, torch build and CPU code path give
bit-identical runs; ``run.json`` records the environment (:func:`training_environment`), and a resume in a
different one warns (:class:`ReproducibilityWarning`).
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from mechgrok import __version__
from mechgrok.config import Config
from mechgrok.tasks.modular_arithmetic import grid_labels, grid_tokens, split_indices
from mechgrok.errors import ConfigError, MechgrokError, RunDirError
from mechgrok.tasks.loss import accuracy, cross_entropy, cross_entropy_float32
from mechgrok.models.transformer import PARAM_KEYS, Transformer
from mechgrok.store.lock import hold
from mechgrok.rundir import (
    METRIC_COLUMNS,
    PUSH_LAST,
    RUN_FORMAT,
    checkpoint_path,
    is_run_dir,
    read_checkpoint,
    read_config,
    read_run_info,
    read_text,
    save_safetensors_atomic,
    write_atomic,
)

__all__ = ["train", "EpochMetrics", "ReproducibilityWarning", "training_environment", "check_environment", "remove_temp_files",
           "unfinished_start", "write_run_json", "prepare_run_dir", "extend_config", "truncate_metrics"]


class ReproducibilityWarning(UserWarning):
    """A resumed run continues in another numerical environment than the one it started in (another torch
    build, CPU code path or CPU), or one that was not recorded: its weights after the resume will in general not
    be bit-identical to those of an uninterrupted run."""


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def training_environment(threads: int) -> dict[str, Any]:
    """What decides the bits of a CPU training run besides the config: recorded in ``run.json``.

    Parameters
    ----------
    threads : int
        The intra-op thread count training runs with (``Config.threads``).

    Returns
    -------
    dict
        ``torch`` (version) and ``torch_git`` (commit of the build), ``cpu_capability`` (the vectorised code
        path of torch's own kernels, ``torch.backends.cpu.get_cpu_capability()``: ``DEFAULT``, ``AVX2``,
        ``AVX512``, ...; ``ATEN_CPU_CAPABILITY`` can force a lower one), ``machine`` and ``cpu`` (the matrix
        products go to MKL, whose code path depends on the CPU itself), ``mkl_cbwr`` (the ``MKL_CBWR``
        environment variable, which changes MKL's code path; None when unset), ``threads`` and
        ``deterministic_algorithms`` (always True: training turns them on).
    """
    return {
        "torch": torch.__version__,
        "torch_git": torch.version.git_version,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "machine": platform.machine(),
        "cpu": _cpu_model(),
        "mkl_cbwr": os.environ.get("MKL_CBWR"),
        "threads": int(threads),
        "deterministic_algorithms": True,
    }


@contextmanager
def _pinned_numerics(threads: int) -> Iterator[None]:
    """Run on ``threads`` intra-op threads with deterministic algorithms; restore both afterwards."""
    before = torch.get_num_threads()
    det, warn_only = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(det, warn_only=warn_only)
        torch.set_num_threads(before)


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


#: What a run directory holds before its run.json is written (a run killed that early has nothing else).
_START_FILES = ("config.json", "split.json", "metrics.csv", "run.json")


def _is_temp_file(name: str) -> bool:
    """A temporary file of :func:`mechgrok.rundir.write_atomic` (``.NAME.XXXX.tmp``), left by a killed write."""
    return name.startswith(".") and name.endswith(".tmp")


def unfinished_start(run_dir: Path) -> bool:
    """Whether ``run_dir`` is a run killed before its ``run.json`` existed: nothing but the first files
    (:data:`_START_FILES`) and temporary files."""
    return (run_dir.is_dir() and not is_run_dir(run_dir)
            and all(f.name in _START_FILES or _is_temp_file(f.name) for f in run_dir.iterdir() if f.is_file())
            and all(f.is_file() for f in run_dir.iterdir()))


def remove_temp_files(run_dir: Path) -> None:
    """Delete the temporary files a killed write left in ``run_dir`` and its ``checkpoints/`` (before a resume)."""
    for folder in (run_dir, run_dir / "checkpoints"):
        if folder.is_dir():
            for f in folder.iterdir():
                if _is_temp_file(f.name) and f.is_file():
                    f.unlink(missing_ok=True)


def prepare_run_dir(run_dir: Path, cfg: Any, *, resume: bool, overwrite: bool, num_epochs: int | None,
                    read_saved: Callable[[Path], Any] = read_config,
                    check_saved: Callable[[Path], None] | None = None) -> tuple[Any, bool]:
    """Get ``run_dir`` ready for a trainer: the config to train with and whether to resume.

    With ``resume``: the saved config (``read_saved(run_dir)``, extended to ``num_epochs`` where given), after
    ``check_saved(run_dir)`` (e.g. that the run is of the trainer's task) and the removal of killed writes' temporary
    files; a run killed before it wrote ``run.json`` starts again from its saved config (False). Without: a new
    folder, ``overwrite`` replacing a run directory (never another folder). Shared by the modular and the
    sequence-task trainers; ``cfg`` is a :class:`~mechgrok.config.Config` or a
    :class:`~mechgrok.sequence_config.SequenceConfig`.

    Raises
    ------
    RunDirError
        If there is nothing to resume, the folder exists without ``overwrite``, or it is not a run directory.
    ConfigError
        If ``num_epochs`` would shorten the saved run.
    """
    if resume:
        if unfinished_start(run_dir):
            if not (run_dir / "config.json").is_file():
                raise RunDirError("cannot resume: the run was stopped before it wrote config.json; start it again "
                                  "with --overwrite", path=run_dir)
            saved = extend_config(read_saved(run_dir), num_epochs, run_dir)
            shutil.rmtree(run_dir)  # nothing but the first files: start again with the saved config
            run_dir.mkdir(parents=True)
            return saved, False
        if not is_run_dir(run_dir):
            raise RunDirError("cannot resume: not a mechgrok run directory", path=run_dir)
        if check_saved is not None:
            check_saved(run_dir)
        remove_temp_files(run_dir)
        saved = read_saved(run_dir)
        extended = extend_config(saved, num_epochs, run_dir)
        if extended != saved:
            write_atomic(run_dir / "config.json", json.dumps(extended.to_dict(), indent=2, sort_keys=True))
        return extended, True
    if cfg is None:
        raise RunDirError("no config to train with (and nothing to resume)", path=run_dir)
    if run_dir.exists():
        if not overwrite:
            raise RunDirError("already exists; pass --resume to continue it or --overwrite to replace it", path=run_dir)
        if run_dir.is_dir() and (is_run_dir(run_dir) or not any(run_dir.iterdir()) or unfinished_start(run_dir)):
            shutil.rmtree(run_dir)
        else:
            raise RunDirError("--overwrite refused: the folder is not a mechgrok run directory", path=run_dir)
    run_dir.mkdir(parents=True)
    return cfg, False


def extend_config(saved: Any, num_epochs: int | None, run_dir: Path) -> Any:
    """The saved config, with ``num_epochs`` raised to ``num_epochs`` where given (a resume that extends a run).

    Raises
    ------
    ConfigError
        If ``num_epochs`` is below the saved number (a run is never shortened).
    """
    if num_epochs is None or num_epochs == saved.num_epochs:
        return saved
    if num_epochs < saved.num_epochs:
        raise ConfigError(f"cannot shorten the run on resume: it is set to {saved.num_epochs} epochs, asked "
                          f"{num_epochs}; only more epochs can be added", path=run_dir / "config.json")
    return saved.replace(num_epochs=int(num_epochs))


def write_run_json(run_dir: Path, info: dict[str, Any], *, complete: bool) -> None:
    """Write ``run.json`` atomically: the format, mechgrok's version, ``complete`` and the rest of ``info``."""
    rest = {k: v for k, v in info.items() if k not in ("format", "version", "complete")}
    doc = {"format": RUN_FORMAT, "version": __version__, "complete": complete, **rest}
    write_atomic(run_dir / "run.json", json.dumps(doc, indent=2))


def check_environment(run_dir: Path, recorded: dict[str, Any] | None, current: dict[str, Any], epoch: int) -> None:
    """Warn when a resume continues in another environment than the run started in."""
    if recorded is None:
        warnings.warn(
            f"{run_dir}: run.json records no training environment (trained by an older mechgrok, with torch's "
            f"default thread count and without deterministic algorithms); the run resumed at epoch {epoch} "
            "will not be bit-identical to an uninterrupted one",
            ReproducibilityWarning, stacklevel=4,
        )
        return
    differ = [k for k in sorted(set(recorded) | set(current)) if recorded.get(k) != current.get(k)]
    if differ:
        what = ", ".join(f"{k} {recorded.get(k)!r} -> {current.get(k)!r}" for k in differ)
        warnings.warn(
            f"{run_dir}: resuming at epoch {epoch} in another environment than the run started in ({what}); the "
            "weights from here on will in general not be bit-identical to an uninterrupted run's "
            "(docs/run-directory.md, Reproducibility)",
            ReproducibilityWarning, stacklevel=4,
        )


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
    num_epochs: int | None = None,
) -> Path | str:
    """Train the paper's model and write a run directory.

    Parameters
    ----------
    cfg : Config
        The run configuration (ignored with ``resume=True``: the saved one is used).
    run_dir : str or Path
        Output folder (layout in :mod:`mechgrok.rundir`): a local path, or an fsspec URL (``s3://bucket/run``,
        ``memory://...``; :mod:`mechgrok.store.location`). A run at a URL is trained in a local working copy that
        is pushed to the URL after every checkpoint (new checkpoint, ``metrics.csv``, then the resume state,
        ``run.json`` last; :class:`mechgrok.store.location.Mirror`), so ``resume=True`` continues an interrupted
        run from its last pushed checkpoint, bit-identical as locally. There is no lock on object stores: one
        ``train`` per URL at a time is the caller's duty.
    resume : bool
        Continue an interrupted run from its last checkpoint; the final weights are identical to an
        uninterrupted run. A run killed before it wrote ``run.json`` starts again from its saved config.
    overwrite : bool
        Replace an existing run directory (only a mechgrok run directory or an empty folder is removed).
    on_epoch : callable, optional
        Called with the :class:`EpochMetrics` of every epoch (for progress display).
    on_checkpoint : callable, optional
        Called with ``(epoch, weights by TransformerLens name)`` after each checkpoint is written.
    num_epochs : int, optional
        With ``resume=True``: train on to this many epochs (more than the saved config's; ``config.json`` is
        updated). The weights equal those of an uninterrupted run of that length.

    Returns
    -------
    Path or str
        The run directory (the URL for a URL).

    Raises
    ------
    RunDirError
        If ``run_dir`` exists without ``resume``/``overwrite``, ``resume`` is asked of a non-run folder, or a
        resumed run's ``metrics.csv`` is missing or unreadable.
    StoreError
        If a run at a URL cannot be downloaded or pushed.
    ConfigError
        If ``num_epochs`` is less than the saved config's.

    Warns
    -----
    ReproducibilityWarning
        With ``resume=True``, if the run started in another environment (:func:`training_environment`: torch
        build, CPU capability, CPU, ``MKL_CBWR``) or its ``run.json`` records none.

    Notes
    -----
    Training runs on ``cfg.threads`` threads with ``torch.use_deterministic_algorithms(True)``; both settings
    are restored on return. ``run.json`` records the environment the run started in and every resume's.
    """
    from mechgrok.store.location import normalise

    target = normalise(run_dir)
    if isinstance(target, str):  # an object-store URL: a local working copy, pushed at every checkpoint
        return _train_remote(cfg, target, resume=resume, overwrite=overwrite, on_epoch=on_epoch,
                             on_checkpoint=on_checkpoint, num_epochs=num_epochs)
    run_dir = target
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    with hold(run_dir, kind="train", timeout=0, error=RunDirError,
              busy="another mechgrok train is writing this run directory"):
        cfg, resume = prepare_run_dir(run_dir, cfg, resume=resume, overwrite=overwrite, num_epochs=num_epochs)
        with _pinned_numerics(cfg.threads):
            _train(cfg, run_dir, resume=resume, on_epoch=on_epoch, on_checkpoint=on_checkpoint)
    return run_dir


def _at_url(e: MechgrokError, local: Path, url: str) -> MechgrokError:
    """``e`` naming the file at the URL instead of its local working copy."""
    if e.path is None or not isinstance(e.path, Path):
        return e
    try:
        rel = e.path.relative_to(local)
    except ValueError:
        return e
    try:
        return type(e)(e.reason, path=url if rel == Path(".") else f"{url}/{rel.as_posix()}")
    except TypeError:  # a subclass with another signature
        return e


def _train_remote(cfg: Config, url: str, *, resume: bool, overwrite: bool,
                  on_epoch: Callable[[EpochMetrics], None] | None,
                  on_checkpoint: Callable[[int, dict[str, torch.Tensor]], None] | None,
                  num_epochs: int | None) -> str:
    """:func:`train` into a run directory at a URL (see its ``run_dir``)."""
    import tempfile

    from mechgrok.store.location import Mirror, exists, is_dir, name_of

    if exists(url):
        if not is_dir(url):
            raise RunDirError("exists and is not a folder", path=url)
        if not (resume or overwrite):
            raise RunDirError("already exists; pass --resume to continue it or --overwrite to replace it", path=url)
    with tempfile.TemporaryDirectory(prefix="mechgrok-train-") as tmp:
        mirror = Mirror(url, Path(tmp) / (name_of(url) or "run"))
        try:
            if mirror.pull() and overwrite:  # checked and cleared as locally, and at the URL before training starts
                prepare_run_dir(mirror.local, cfg, resume=False, overwrite=True, num_epochs=num_epochs)
                mirror.push()

            def pushed(epoch: int, weights: dict[str, torch.Tensor]) -> None:
                mirror.push(last=PUSH_LAST)
                if on_checkpoint is not None:
                    on_checkpoint(epoch, weights)

            train(cfg, mirror.local, resume=resume, overwrite=overwrite, on_epoch=on_epoch, on_checkpoint=pushed,
                  num_epochs=num_epochs)
            mirror.push(last=PUSH_LAST)  # run.json says complete only once everything else is there
        except MechgrokError as e:
            raise _at_url(e, mirror.local, url) from None
    return url


def _train(
    cfg: Config,
    run_dir: Path,
    *,
    resume: bool,
    on_epoch: Callable[[EpochMetrics], None] | None,
    on_checkpoint: Callable[[int, dict[str, torch.Tensor]], None] | None,
) -> None:
    env = training_environment(cfg.threads)
    p = cfg.p
    train_idx, test_idx = split_indices(p, cfg.frac_train, cfg.seed, cfg.operation)
    if not resume:
        write_atomic(run_dir / "config.json", json.dumps(cfg.to_dict(), indent=2, sort_keys=True))
        split = {"p": p, "seed": cfg.seed, "frac_train": cfg.frac_train,
                 "train": train_idx.tolist(), "test": test_idx.tolist()}
        write_atomic(run_dir / "split.json", json.dumps(split))
        write_atomic(run_dir / "metrics.csv", ",".join(METRIC_COLUMNS) + "\n")
        info: dict[str, Any] = {"environment": env, "resumes": []}
        write_run_json(run_dir, info, complete=False)

    tokens, labels = grid_tokens(p, equals_token=cfg.equals_token), grid_labels(p, cfg.operation)
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
        truncate_metrics(run_dir / "metrics.csv", start, ",".join(METRIC_COLUMNS) + "\n")
    elif resume:
        # killed before the first checkpoint: start again from scratch
        truncate_metrics(run_dir / "metrics.csv", 0, ",".join(METRIC_COLUMNS) + "\n")
    if resume:
        info = read_run_info(run_dir)
        check_environment(run_dir, info.get("environment"), env, start)
        if "environment" not in info:
            info["environment"] = None
        info["resumes"] = [*info.get("resumes", []), {"epoch": start, "environment": env}]
        write_run_json(run_dir, info, complete=False)

    loss_fn = cross_entropy_float32 if cfg.loss_dtype == "float32" else cross_entropy  # float32: slingshot studies
    pending: list[str] = []
    for epoch in range(start, cfg.num_epochs + 1):
        logits = model(x_train).logits
        loss = loss_fn(logits, y_train)
        with torch.no_grad():
            test_logits = model(x_test).logits
            m = EpochMetrics(
                epoch=epoch,
                train_loss=loss.item(),
                test_loss=loss_fn(test_logits, y_test).item(),
                train_acc=accuracy(logits, y_train).item(),
                test_acc=accuracy(test_logits, y_test).item(),
            )
        pending.append(m.row())
        if epoch % cfg.checkpoint_every == 0 or epoch == cfg.num_epochs:
            weights = {key: t.detach().clone() for key, t in model.state_dict().items()}
            with hold(run_dir, error=RunDirError, busy="a mechgrok process is reading this run directory"):
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
    write_run_json(run_dir, info, complete=True)


def truncate_metrics(path: Path, epoch: int, header: str, *, blank_cells: bool = False) -> None:
    """Keep the header and the rows of epochs before ``epoch`` of a run's ``metrics.csv`` (those from it on are
    written again by a resumed trainer).

    A row cut short by a killed append can only come after the last checkpoint, so it is dropped like the other
    rows from ``epoch`` on; the rows kept must be whole and run from epoch 0 to ``epoch - 1``. ``header`` is the
    file's first line (with its newline); ``blank_cells`` allows empty cells (the sequence tasks' test columns,
    written every ``test_every`` epochs). Shared by the modular and the sequence-task trainers.

    Raises
    ------
    RunDirError
        If ``metrics.csv`` is missing (with rows to keep), has another header, or its rows before ``epoch`` are
        not those of epochs 0 .. epoch - 1, whole.
    """
    if epoch == 0 and not path.exists():
        write_atomic(path, header)
        return
    if not path.exists():
        raise RunDirError(f"cannot resume at epoch {epoch}: metrics.csv is missing, so the curves of the epochs "
                          "before it are lost; start the run again with --overwrite", path=path.parent)
    lines = read_text(path).splitlines()
    if not lines or lines[0] != header.strip():
        raise RunDirError(f"metrics.csv must start with the header {header.strip()}", path=path)
    ncol = header.count(",") + 1
    kept = []
    for n, line in enumerate(lines[1:], start=2):
        fields = line.split(",")
        try:
            row_epoch = int(fields[0])
            [float(v) for v in fields[1:] if v or not blank_cells]
        except ValueError:
            row_epoch = None
        if row_epoch is not None and row_epoch >= epoch:
            break
        if row_epoch is None or len(fields) != ncol or row_epoch != len(kept):
            raise RunDirError(f"cannot resume at epoch {epoch}: line {n} of metrics.csv is not the row of epoch "
                              f"{len(kept)}", path=path)
        kept.append(line + "\n")
    if len(kept) != epoch:
        raise RunDirError(f"cannot resume at epoch {epoch}: metrics.csv lacks the rows from epoch {len(kept)} on",
                          path=path)
    write_atomic(path, header + "".join(kept))
