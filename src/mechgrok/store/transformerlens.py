"""Loaders for TransformerLens checkpoints (paper.md section 5.4).

``tl-demo``
    The layout TransformerLens' ``Grokking_Demo.ipynb`` saves: a dict with ``checkpoints`` (``HookedTransformer``
    state dicts), ``checkpoint_epochs``, ``train_losses``, ``test_losses``, ``train_indices``/``test_indices``
    (flat grid indices ``a * p + b``; the demo's split is a ``torch.randperm``, so it is read, never rebuilt),
    ``config`` and the final ``model``. The demo pickles ``config`` as a ``HookedTransformerConfig`` object,
    which needs a trusted load (``--trust-checkpoint``); a plain dict (``cfg.to_dict()``) loads safely. The
    final ``model`` is used only when ``checkpoints`` is empty (the demo's last checkpoint is the final model).
``tl-model``
    One ``HookedTransformer`` state dict, bare or under ``model``; also a ``.safetensors`` file.

TransformerLens' orientation is mechgrok's, so nothing is transposed; the zero attention and unembedding
biases and the ``mask``/``IGNORE`` buffers are dropped (a nonzero bias is refused: the paper's model has none).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
import xarray as xr

from mechgrok.errors import CheckpointError
from mechgrok.store.assemble import assemble, config_dict, epoch_list, loss_curves, require_key
from mechgrok.store.layouts import convert_state_dict
from mechgrok.store.paper import load_single_model

__all__ = ["load_tl_demo", "load_tl_model"]


def _indices(value: Any, *, name: str, path: Path) -> np.ndarray:
    try:
        arr = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{name} is not a list of grid indices ({e})", path=path) from None
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise CheckpointError(f"{name} has dtype {arr.dtype}, expected integer grid indices", path=path)
    return arr.astype(np.int64).reshape(-1)


def load_tl_demo(obj: Any, path: str | Path, *, seed: int | None = None, frac_train: float | None = None) -> xr.Dataset:
    """Load a TransformerLens grokking-demo trajectory (already unpickled as ``obj``).

    Parameters
    ----------
    obj : dict
        The file's content.
    path : str or Path
        The file.
    seed, frac_train : optional
        Only for files without ``train_indices`` (the split is then rebuilt with the paper's procedure).

    Returns
    -------
    xarray.Dataset
        The canonical trajectory (``source_format="tl-demo"``).

    Raises
    ------
    CheckpointError
        On missing keys, a length mismatch between ``checkpoints`` and ``checkpoint_epochs``, overlapping
        train/test indices, or a bad state dict (named by its index).
    """
    path = Path(path)
    ckpts = require_key(obj, "checkpoints", path=path, what="TransformerLens grokking-demo layout")
    if not isinstance(ckpts, (list, tuple)):
        raise CheckpointError(f"checkpoints is a {type(ckpts).__name__}, not a list of state dicts", path=path)
    cfg = config_dict(obj.get("config"), path=path) if obj.get("config") is not None else None
    curves, rule = loss_curves(obj.get("train_losses"), obj.get("test_losses"), path=path)
    if ckpts:
        epochs = epoch_list(require_key(obj, "checkpoint_epochs", path=path, what="TransformerLens grokking-demo layout"),
                           name="checkpoint_epochs", path=path)
        if len(epochs) != len(ckpts):
            raise CheckpointError(f"{len(ckpts)} checkpoints but {len(epochs)} checkpoint_epochs", path=path)
        models = [convert_state_dict(sd, layout="transformerlens", path=path, label=f"checkpoints[{i}]")
                  for i, sd in enumerate(ckpts)]
        labels = [(path, f"checkpoints[{i}]") for i in range(len(ckpts))]
    elif obj.get("model") is not None:
        epochs = [int(curves["loss_train"][0][-1]) if "loss_train" in curves else 0]
        models = [convert_state_dict(obj["model"], layout="transformerlens", path=path, label="model")]
        labels = [(path, "model")]
    else:
        raise CheckpointError("checkpoints is empty and there is no final model", path=path)
    stored_train = None
    where = ""
    if obj.get("train_indices") is not None:
        stored_train = _indices(obj["train_indices"], name="train_indices", path=path)
        where = "train_indices"
        if obj.get("test_indices") is not None:
            test = _indices(obj["test_indices"], name="test_indices", path=path)
            if np.intersect1d(stored_train, test).size:
                raise CheckpointError("train_indices and test_indices overlap", path=path)
    return assemble(
        models, epochs, labels=labels, path=path, source_format="tl-demo", source_layout="transformerlens",
        source_files=[path], source_config=cfg, curves=curves, curve_rule=rule, stored_train=stored_train,
        stored_split_where=where, seed=seed, frac_train=frac_train,
    )


def load_tl_model(obj: Any, path: str | Path, *, seed: int | None = None, frac_train: float | None = None) -> xr.Dataset:
    """Load one ``HookedTransformer`` state dict (bare, under ``model``, or a ``.safetensors`` file).

    See :func:`mechgrok.store.paper.load_single_model`; ``source_format="tl-model"``.
    """
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"expected a state dict or a dict with 'model', got a {type(obj).__name__}", path=path)
    return load_single_model(obj, path, layout="transformerlens", source_format="tl-model", seed=seed, frac_train=frac_train)
