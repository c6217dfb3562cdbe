"""The canonical trajectory Dataset: one schema for every source format.

Dims
----
``checkpoint``
    One entry per saved model. Its index coordinate holds the **epoch** of each checkpoint (int64, strictly
    increasing, units: epochs), so ``ds.sel(checkpoint=4000)`` is the model after 4000 epochs. (The name
    ``epoch`` is the dim of the loss curves, which have their own cadence; see ``docs/store.md``.)
``epoch``
    The loss and accuracy curves, int64 epochs. A curve without a value at an epoch holds NaN (nothing is
    interpolated). Curves loaded from the paper's or TransformerLens' files carry ``attrs["log_every"]``, the
    spacing of their logged epochs (:func:`mechgrok.store.assemble.loss_curves`).
``vocab``, ``pos``, ``head``, ``d_model``, ``d_head``, ``d_mlp``, ``vocab_out``, ``layer``
    TransformerLens dim names. ``layer`` appears only for models with more than one layer.
``a``, ``b``
    The p x p input grid (split membership).

Variables (TransformerLens names and orientation, float32)
----------------------------------------------------------
``W_E`` (checkpoint, vocab, d_model), ``W_pos`` (checkpoint, pos, d_model),
``W_Q``/``W_K``/``W_V`` (checkpoint, [layer,] head, d_model, d_head), ``W_O`` (checkpoint, [layer,] head, d_head,
d_model), ``W_in`` (checkpoint, [layer,] d_model, d_mlp), ``b_in`` (checkpoint, [layer,] d_mlp),
``W_out`` (checkpoint, [layer,] d_mlp, d_model), ``b_out`` (checkpoint, [layer,] d_model),
``W_U`` (checkpoint, d_model, vocab_out). Attention-only models have no MLP variables.

``loss_train``, ``loss_test`` (epoch; float64, nats), ``acc_train``, ``acc_test`` (epoch; float64, fraction),
where the source has them. ``is_train`` (a, b; bool), where the split is known or can be rebuilt.

Attrs
-----
``config_json`` (the run config as one JSON string), ``p`` (int, or absent for non-modular models),
``n_layers``, ``source_format``, ``source_files`` (JSON list of strings), ``mechgrok_version``,
``title`` ("mechgrok trajectory").
"""

from __future__ import annotations

import json
from typing import Any, Mapping, Sequence

import numpy as np
import xarray as xr

from mechgrok import __version__
from mechgrok.errors import CheckpointError

__all__ = ["WEIGHT_DIMS", "BLOCK_WEIGHTS", "CURVE_NAMES", "METRIC_OF_CURVE", "build_dataset"]

#: Dims of each weight (without ``checkpoint`` and ``layer``).
WEIGHT_DIMS: dict[str, tuple[str, ...]] = {
    "W_E": ("vocab", "d_model"),
    "W_pos": ("pos", "d_model"),
    "W_Q": ("head", "d_model", "d_head"),
    "W_K": ("head", "d_model", "d_head"),
    "W_V": ("head", "d_model", "d_head"),
    "W_O": ("head", "d_head", "d_model"),
    "W_in": ("d_model", "d_mlp"),
    "b_in": ("d_mlp",),
    "W_out": ("d_mlp", "d_model"),
    "b_out": ("d_model",),
    "W_U": ("d_model", "vocab_out"),
}
#: Weights that belong to a transformer block (get a ``layer`` dim in multi-layer models).
BLOCK_WEIGHTS = ("W_Q", "W_K", "W_V", "W_O", "W_in", "b_in", "W_out", "b_out")
#: Curve variables on the ``epoch`` dim.
CURVE_NAMES = ("loss_train", "loss_test", "acc_train", "acc_test")
#: The column of a run directory's metrics.csv (and of the paper's per-epoch files) that holds each curve.
METRIC_OF_CURVE = {"loss_train": "train_loss", "loss_test": "test_loss", "acc_train": "train_acc", "acc_test": "test_acc"}


def build_dataset(
    weights: Mapping[str, np.ndarray],
    checkpoint_epochs: Sequence[int],
    *,
    config: Mapping[str, Any],
    n_layers: int = 1,
    curves: Mapping[str, tuple[np.ndarray, np.ndarray]] | None = None,
    is_train: np.ndarray | None = None,
    source_format: str,
    source_files: Sequence[str] = (),
    p: int | None = None,
    attrs: Mapping[str, Any] | None = None,
    var_attrs: Mapping[str, Mapping[str, Any]] | None = None,
) -> xr.Dataset:
    """Assemble the canonical Dataset from arrays already in TransformerLens orientation.

    Parameters
    ----------
    weights : mapping of str to numpy.ndarray
        By TransformerLens name; each has a leading checkpoint axis, then (for block weights of a
        multi-layer model) a layer axis, then the dims of :data:`WEIGHT_DIMS`.
    checkpoint_epochs : sequence of int
        Epoch of each checkpoint, strictly increasing.
    config : mapping
        The run configuration (stored as ``attrs["config_json"]``).
    n_layers : int
        Number of transformer blocks; a ``layer`` dim is added when it is more than 1.
    curves : mapping of str to (epochs, values), optional
        Loss/accuracy curves by name (:data:`CURVE_NAMES`), each with its own epochs; they are aligned on the
        union of epochs, NaN where a curve has no value.
    is_train : numpy.ndarray, optional
        (p, p) bool membership of the training split.
    source_format, source_files
        Provenance, stored in attrs.
    p : int, optional
        The modulus (stored in attrs; needed by the analyses).
    attrs : mapping, optional
        More Dataset attrs (JSON-safe values), e.g. how the split was obtained (``split``, ``split_seed``,
        ``split_frac_train``, ``split_rule``) or the source layout (``source_layout``).
    var_attrs : mapping of str to mapping, optional
        Attrs of individual weight or curve variables, e.g. ``{"W_E": {"source_key": "embed.W_E"}}`` or
        ``{"test_loss": {"log_every": 10}}``.

    Returns
    -------
    xarray.Dataset
        See the module docstring for the schema.

    Raises
    ------
    CheckpointError
        If the epochs are not strictly increasing or the arrays disagree on shapes.
    """
    epochs = np.asarray(checkpoint_epochs, dtype=np.int64)
    if epochs.ndim != 1 or (epochs.size > 1 and np.any(np.diff(epochs) <= 0)):
        raise CheckpointError(f"checkpoint epochs must be strictly increasing, got {epochs.tolist()[:10]}...")
    data_vars: dict[str, Any] = {}
    for name, arr in weights.items():
        if name not in WEIGHT_DIMS:
            raise CheckpointError(f"unknown weight name {name!r}")
        dims = WEIGHT_DIMS[name]
        if n_layers > 1 and name in BLOCK_WEIGHTS:
            dims = ("layer", *dims)
        arr = np.asarray(arr, dtype=np.float32)
        if arr.ndim != len(dims) + 1 or arr.shape[0] != len(epochs):
            raise CheckpointError(f"{name} has shape {arr.shape}, expected (checkpoint={len(epochs)}, {', '.join(dims)})")
        data_vars[name] = (("checkpoint", *dims), arr, dict((var_attrs or {}).get(name, {})))
    coords: dict[str, Any] = {"checkpoint": ("checkpoint", epochs, {"units": "epochs", "long_name": "epoch of checkpoint"})}
    if curves:
        all_epochs = np.unique(np.concatenate([np.asarray(e, dtype=np.int64) for e, _ in curves.values()]))
        coords["epoch"] = ("epoch", all_epochs, {"units": "epochs"})
        for name, (e, v) in curves.items():
            full = np.full(all_epochs.shape, np.nan)
            full[np.searchsorted(all_epochs, np.asarray(e, dtype=np.int64))] = np.asarray(v, dtype=np.float64)
            units = "nats" if name.endswith("loss") else "fraction"
            data_vars[name] = (("epoch",), full, {"units": units, **dict((var_attrs or {}).get(name, {}))})
    if is_train is not None:
        is_train = np.asarray(is_train, dtype=bool)
        data_vars["is_train"] = (("a", "b"), is_train, {"long_name": "pair (a, b) is in the training split"})
        coords["a"] = ("a", np.arange(is_train.shape[0]))
        coords["b"] = ("b", np.arange(is_train.shape[1]))
    ds_attrs: dict[str, Any] = {
        "title": "mechgrok trajectory",
        "config_json": json.dumps(dict(config), sort_keys=True, default=str),
        "n_layers": int(n_layers),
        "source_format": source_format,
        "source_files": json.dumps([str(f) for f in source_files]),
        "mechgrok_version": __version__,
    }
    if p is not None:
        ds_attrs["p"] = int(p)
    ds_attrs.update(attrs or {})
    try:
        return xr.Dataset(data_vars, coords=coords, attrs=ds_attrs)
    except ValueError as e:
        raise CheckpointError(f"inconsistent shapes across weights ({e})") from None
