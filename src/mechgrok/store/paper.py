"""Loaders for the paper's original checkpoint formats (paper.md section 5; the released ``transformers.py``).

``paper-full-run``
    ``full_run_data.pth``: a dict with ``state_dicts`` (one per checkpoint), ``epochs`` (their epochs; also
    accepted: ``checkpoint_epochs``, or ``config["save_every"]`` times the index), ``train_losses`` (every
    epoch), ``test_losses`` (every 10 epochs in the mainline run) and ``config`` (a plain dict).
``paper-epochs``
    A folder of ``{epoch}.pth`` files, each ``{"model", "train_loss", "test_loss", "epoch"}``. Optional
    companions: ``init.pth`` (``train_data``: the training triples, so the split is known) and ``final.pth``
    (``model``, ``epoch``, ``train_losses``, ``test_losses``: the curves, and the final model if its epoch has no
    file of its own).
``paper-model``
    One model: a dict with ``model`` (and optionally ``epoch``, ``train_losses``, ``test_losses``, ``config``,
    ``model_config``, ``data_config``, ``optim_config``), like the files in the paper's ``saved_runs/``; or a bare
    state dict. The checkpoint's epoch is the file's ``epoch``, else the last index of ``train_losses``, else 0.

All three hold state dicts in the original ("column") layout, transposed once on load
(:mod:`mechgrok.store.layouts`). Epochs are the source's own numbers: the released code saves the loop index
of the epoch whose optimiser step produced the weights (see ``docs/store.md``).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
import xarray as xr

from mechgrok.errors import CheckpointError
from mechgrok.store.assemble import as_epoch, assemble, config_dict, epoch_list, loss_curves, require_key
from mechgrok.store.layouts import ConvertedModel, Layout, convert_state_dict, is_state_dict
from mechgrok.store.safe_load import load_checkpoint_file

__all__ = ["EPOCH_FILE_RE", "load_paper_full_run", "load_paper_epochs", "load_single_model"]

#: Names of the per-epoch files of ``transformers.py``.
EPOCH_FILE_RE = re.compile(r"^(\d+)\.pth$")


def _source_config(obj: Mapping[str, Any], *, path: Path) -> dict[str, Any] | None:
    """``config`` merged with ``model_config`` (flat, for the size checks); data/optim configs nested."""
    cfg: dict[str, Any] = {}
    found = False
    if obj.get("model_config") is not None:
        cfg.update(config_dict(obj["model_config"], path=path, what="model_config"))
        found = True
    if obj.get("config") is not None:
        cfg.update(config_dict(obj["config"], path=path, what="config"))
        found = True
    for key in ("data_config", "optim_config"):
        if obj.get(key) is not None:
            cfg[key] = config_dict(obj[key], path=path, what=key)
            found = True
    return cfg if found else None


def load_paper_full_run(obj: Any, path: str | Path, *, seed: int | None = None, frac_train: float | None = None) -> xr.Dataset:
    """Load a ``full_run_data.pth`` trajectory (already unpickled as ``obj``).

    Parameters
    ----------
    obj : dict
        The file's content.
    path : str or Path
        The file (provenance and error messages).
    seed, frac_train : optional
        Override the split rebuild (default: the config's ``seed``/``frac_train``, else 0 / 0.3).

    Returns
    -------
    xarray.Dataset
        The canonical trajectory (``source_format="paper-full-run"``).

    Raises
    ------
    CheckpointError
        On missing keys (``state_dicts``, the checkpoint epochs), a length mismatch, or any bad state dict
        (:func:`~mechgrok.store.layouts.convert_state_dict`), named by its index.
    """
    path = Path(path)
    sds = require_key(obj, "state_dicts", path=path, what="paper full-run layout")
    if not isinstance(sds, (list, tuple)):
        raise CheckpointError(f"state_dicts is a {type(sds).__name__}, not a list", path=path)
    if not sds:
        raise CheckpointError("state_dicts is empty: no checkpoints", path=path)
    cfg = _source_config(obj, path=path) or {}
    if obj.get("epochs") is not None:
        epochs = epoch_list(obj["epochs"], name="epochs", path=path)
    elif obj.get("checkpoint_epochs") is not None:
        epochs = epoch_list(obj["checkpoint_epochs"], name="checkpoint_epochs", path=path)
    elif isinstance(cfg.get("save_every"), int):
        epochs = [i * cfg["save_every"] for i in range(len(sds))]
    else:
        raise CheckpointError("missing key 'epochs' (the checkpoint epochs) and no config save_every", path=path)
    if len(epochs) != len(sds):
        raise CheckpointError(f"{len(sds)} state dicts but {len(epochs)} epochs", path=path)
    models = [convert_state_dict(sd, layout="original", path=path, label=f"state_dicts[{i}]") for i, sd in enumerate(sds)]
    curves, rule = loss_curves(obj.get("train_losses"), obj.get("test_losses"), path=path)
    return assemble(
        models, epochs, labels=[(path, f"state_dicts[{i}]") for i in range(len(sds))], path=path,
        source_format="paper-full-run", source_layout="original", source_files=[path], source_config=cfg,
        curves=curves, curve_rule=rule, seed=seed, frac_train=frac_train,
    )


def load_single_model(
    obj: Any,
    path: str | Path,
    *,
    layout: Layout,
    source_format: str,
    seed: int | None = None,
    frac_train: float | None = None,
) -> xr.Dataset:
    """Load a one-checkpoint file: a dict with ``model`` (plus curves and configs) or a bare state dict.

    Parameters
    ----------
    obj : dict
        The file's content.
    path : str or Path
        The file.
    layout : {"original", "transformerlens"}
        The state-dict layout.
    source_format : str
        ``"paper-model"`` or ``"tl-model"`` (stored in attrs).
    seed, frac_train : optional
        Override the split rebuild.

    Returns
    -------
    xarray.Dataset
        A one-checkpoint trajectory; ``attrs["checkpoint_epoch_rule"]`` says where its epoch came from.

    Raises
    ------
    CheckpointError
        If the file holds no model, or the state dict is bad.
    """
    path = Path(path)
    if is_state_dict(obj):
        sd, meta = obj, {}
    elif isinstance(obj, Mapping) and "model" in obj:
        sd, meta = obj["model"], obj
    else:
        keys = ", ".join(sorted(map(str, obj))[:8]) if isinstance(obj, Mapping) else type(obj).__name__
        raise CheckpointError(f"no model weights in the file (found: {keys})", path=path)
    model = convert_state_dict(sd, layout=layout, path=path, label="model" if meta else "")
    curves, rule = loss_curves(meta.get("train_losses"), meta.get("test_losses"), path=path)
    if meta.get("epoch") is not None:
        epoch, why = as_epoch(meta["epoch"], name="epoch", path=path), "the file's 'epoch'"
    elif "loss_train" in curves:
        epoch, why = int(curves["loss_train"][0][-1]), "the last index of the file's train_losses"
    else:
        epoch, why = 0, "none stored: 0"
    cfg = _source_config(meta, path=path) if meta else None
    return assemble(
        [model], [epoch], labels=[(path, "")], path=path, source_format=source_format, source_layout=layout,
        source_files=[path], source_config=cfg, curves=curves, curve_rule=rule, seed=seed, frac_train=frac_train,
        extra_attrs={"checkpoint_epoch_rule": why},
    )


def _epoch_files(folder: Path) -> list[tuple[int, Path]]:
    out = []
    for f in folder.iterdir():
        m = EPOCH_FILE_RE.match(f.name)
        if m and f.is_file():
            out.append((int(m.group(1)), f))
    return sorted(out)


def _model_of(obj: Any, f: Path) -> Any:
    if is_state_dict(obj):
        return obj
    return require_key(obj, "model", path=f, what="per-epoch checkpoint")


def load_paper_epochs(
    folder: str | Path, *, trusted: bool = False, seed: int | None = None, frac_train: float | None = None
) -> xr.Dataset:
    """Load a folder of the released code's per-epoch files ``{epoch}.pth``.

    Parameters
    ----------
    folder : str or Path
        The run folder.
    trusted : bool
        Allow full unpickling (see :func:`~mechgrok.store.safe_load.load_checkpoint_file`).
    seed, frac_train : optional
        Override the split rebuild (not allowed when ``init.pth`` stores the training pairs).

    Returns
    -------
    xarray.Dataset
        The canonical trajectory (``source_format="paper-epochs"``).

    Raises
    ------
    CheckpointError
        If the folder has no ``{epoch}.pth`` files, a file is unreadable or bad, or a file's ``epoch`` disagrees
        with its name. UnsafeCheckpointError for files that need a full unpickle without ``trusted``.
    """
    folder = Path(folder)
    files = _epoch_files(folder)
    if not files:
        raise CheckpointError("no {epoch}.pth checkpoint files in the folder", path=folder)
    models: list[ConvertedModel] = []
    epochs: list[int] = []
    labels: list[tuple[Any, str]] = []
    used: list[Path] = []
    point_losses: dict[str, list[tuple[int, float]]] = {"loss_train": [], "loss_test": []}
    for epoch, f in files:
        obj = load_checkpoint_file(f, trusted=trusted)
        if isinstance(obj, Mapping) and obj.get("epoch") is not None:
            stored = as_epoch(obj["epoch"], name="epoch", path=f)
            if stored != epoch:
                raise CheckpointError(f"the file's 'epoch' is {stored} but its name says {epoch}", path=f)
        models.append(convert_state_dict(_model_of(obj, f), layout="original", path=f))
        epochs.append(epoch)
        labels.append((f, ""))
        used.append(f)
        if isinstance(obj, Mapping):  # the files' keys train_loss / test_loss are the curves loss_train / loss_test
            for name, key in (("loss_train", "train_loss"), ("loss_test", "test_loss")):
                if obj.get(key) is not None:
                    point_losses[name].append((epoch, _loss_value(obj[key], name=key, path=f)))
    curves: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    rule = ""
    final = folder / "final.pth"
    if final.is_file():
        fobj = load_checkpoint_file(final, trusted=trusted)
        used.append(final)
        curves, rule = loss_curves(fobj.get("train_losses"), fobj.get("test_losses"), path=final) if isinstance(fobj, Mapping) else ({}, "")
        if isinstance(fobj, Mapping) and fobj.get("model") is not None and fobj.get("epoch") is not None:
            fe = as_epoch(fobj["epoch"], name="epoch", path=final)
            if fe not in epochs:
                models.append(convert_state_dict(fobj["model"], layout="original", path=final, label="model"))
                epochs.append(fe)
                labels.append((final, "model"))
        if rule:
            rule += " (from final.pth)"
    if not curves:
        for name, pts in point_losses.items():
            if len(pts) == len(files):
                curves[name] = (np.array([e for e, _ in pts], dtype=np.int64), np.array([v for _, v in pts]))
        if curves:
            rule = "the per-epoch files' train_loss/test_loss, at the checkpoint epochs"
    stored_train = None
    where = ""
    init = folder / "init.pth"
    if init.is_file():
        iobj = load_checkpoint_file(init, trusted=trusted)
        used.append(init)
        if isinstance(iobj, Mapping) and iobj.get("train_data") is not None:
            stored_train = _pairs(iobj["train_data"], path=init)
            where = "init.pth train_data"
    return assemble(
        models, epochs, labels=labels, path=folder, source_format="paper-epochs", source_layout="original",
        source_files=[folder], curves=curves, curve_rule=rule, stored_train=stored_train,
        stored_split_where=where, seed=seed, frac_train=frac_train,
        extra_attrs={"source_file_count": len(used)},
    )


def _loss_value(value: Any, *, name: str, path: Path) -> float:
    """One loss (a float, or a one-element tensor) of a per-epoch file."""
    try:
        return float(value.item() if isinstance(value, torch.Tensor) and value.numel() == 1 else value)
    except (TypeError, ValueError, RuntimeError):
        raise CheckpointError(f"{name} is a {type(value).__name__}, not a number", path=path) from None


def _pairs(data: Any, *, path: Path) -> np.ndarray:
    """Training triples/pairs ``(a, b[, =])`` as an (n, 2) int64 array."""
    try:
        arr = data.detach().cpu().numpy() if isinstance(data, torch.Tensor) else np.asarray(data)
        if arr.dtype.kind not in "iub":  # floats, strings, objects: only whole numbers are residues
            raise TypeError(f"dtype {arr.dtype}")
        arr = np.asarray(arr, dtype=np.int64)
    except (TypeError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"train_data is not a list of (a, b, =) integer triples ({str(e)[:80]})", path=path) from None
    if arr.ndim != 2 or arr.shape[1] < 2:
        raise CheckpointError(f"train_data has shape {arr.shape}, expected (n, 3) triples (a, b, =)", path=path)
    return arr[:, :2]
