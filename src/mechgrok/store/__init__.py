"""Trajectory store: any checkpoint trajectory into one labelled xarray Dataset, stored as Zarr v3.

Entry points: :func:`open_run` (any source to the canonical Dataset, :mod:`.schema`), :func:`ingest` (to a
Zarr store), :class:`TrajectoryWriter` (the trainer's ``on_checkpoint`` callback, appending to a store).
Formats are listed in :mod:`.detect`; the schema and store policy are written down in ``docs/store.md``.
"""

from __future__ import annotations

from pathlib import Path

import xarray as xr

from mechgrok.errors import CheckpointError, ConfigError
from mechgrok.store.assemble import CurveCadenceError
from mechgrok.store.detect import FORMATS, check_format, detect_folder_format, detect_object_format
from mechgrok.tasks.identify import record_task
from mechgrok.store.curves import curves_dataset, is_curve_only, load_loss_curves
from mechgrok.store.ingest import ingest
from mechgrok.store.sequence_run import is_sequence_run, load_sequence_run
from mechgrok.store.location import local_copy, normalise
from mechgrok.store.own import load_run_dir
from mechgrok.store.paper import load_paper_epochs, load_paper_full_run, load_single_model
from mechgrok.store.pizza import load_pizza_model, pizza_config_path
from mechgrok.store.safe_load import load_checkpoint_file
from mechgrok.store.schema import build_dataset
from mechgrok.store.transformerlens import load_tl_demo, load_tl_model
from mechgrok.store.writer import TrajectoryWriter
from mechgrok.store.zarr_io import append_checkpoints, append_curves, is_store, open_store, repair_store, write_store

__all__ = [
    "FORMATS",
    "open_run",
    "load_loss_curves",
    "ingest",
    "TrajectoryWriter",
    "build_dataset",
    "open_store",
    "write_store",
    "append_checkpoints",
    "append_curves",
    "repair_store",
    "CurveCadenceError",
]


def open_run(
    path: str | Path,
    *,
    format: str | None = None,
    trusted: bool = False,
    seed: int | None = None,
    frac_train: float | None = None,
) -> xr.Dataset:
    """Load a checkpoint trajectory from any supported source into the canonical Dataset.

    Parameters
    ----------
    path : str or Path
        Local, or an fsspec URL (``s3://``, ``gs://``, ``memory://``; a Zarr store is read in place, anything
        else through a temporary local copy). A mechgrok run directory; a Zarr trajectory store (opened lazily); a ``.pth``/``.pt`` file in one of the
        paper's layouts (``full_run_data.pth``, a final-model file such as those in the paper's ``saved_runs/``)
        or TransformerLens' (the grokking demo's trajectory file, a ``HookedTransformer`` state dict); a
        ``.safetensors`` state dict; or a folder of the paper's ``{epoch}.pth`` files.
    format : str, optional
        Override the detection; one of :data:`FORMATS` (``mechgrok-run``, ``zarr``, ``paper-epochs``,
        ``paper-full-run``, ``paper-model``, ``tl-demo``, ``tl-model``; see :mod:`mechgrok.store.detect`).
    trusted : bool
        Allow a full unpickle of ``.pth`` files the safe loader refuses (``--trust-checkpoint``). Only for
        files from a trusted source.
    seed, frac_train : optional
        For modular models whose source does not store the split: rebuild it with these (the paper's
        procedure, :func:`mechgrok.tasks.modular_arithmetic.split_indices`) instead of the source config's values or the paper's
        defaults 0 and 0.3. Refused for sources that store their split.

    Returns
    -------
    xarray.Dataset
        Dims ``checkpoint`` (index coordinate: the epoch of each checkpoint, int64, units epochs), ``epoch``
        (curves), ``vocab``, ``pos``, ``head``, ``d_model``, ``d_head``, ``d_mlp``, ``vocab_out``, ``layer`` (multi-layer
        models only), ``a``, ``b``. Weights ``W_E`` (checkpoint, vocab, d_model), ``W_pos``, ``W_Q``/``W_K``/``W_V``
        (checkpoint, [layer,] head, d_model, d_head), ``W_O``, ``W_in``, ``b_in``, ``W_out``, ``b_out``, ``W_U``
        (checkpoint, d_model, vocab_out), float32, TransformerLens orientation; curves ``loss_train``/``loss_test``
        (nats, float64) and ``acc_train``/``acc_test`` where stored; ``is_train`` (a, b) for modular models.
        Attrs: ``config_json``, ``p`` (modular models), ``n_layers``, ``source_format``, ``source_files``,
        ``source_layout``, ``mechgrok_version`` and how the split was obtained (``split``, ``split_rule``,
        ``split_seed``, ``split_frac_train``). In memory, except for a Zarr store, which is lazy.

    Raises
    ------
    CheckpointError
        Missing path, empty or unrecognised folder, unreadable or truncated file, missing keys, wrong shapes,
        mixed configs across checkpoints, NaN/Inf weights, a p that does not match the vocabulary.
    CurveCadenceError
        A :class:`CheckpointError` for loss lists whose lengths fix no single logging stride (``docs/store.md``,
        "Curves").
    UnsafeCheckpointError
        A file that needs a full unpickle, without ``trusted=True``.
    ConfigError
        An unknown ``format``, or ``seed``/``frac_train`` where they cannot apply.
    RunDirError, StoreError
        A broken run directory or Zarr store.

    Notes
    -----
    Weight orientation is fixed once, here: the paper's column layout is transposed to TransformerLens'
    (paper.md 5.4). The split rule is the paper's (paper.md 2.1, ``gen_train_test``).
    """
    path = normalise(path)
    if isinstance(path, str):  # an fsspec URL (mechgrok.store.location): Zarr read in place, the rest via a copy
        if format in (None, "zarr") and is_store(path) and seed is None and frac_train is None:
            return open_store(path)
        with local_copy(path) as local:
            ds = open_run(local, format=format, trusted=trusted, seed=seed, frac_train=frac_train).load()
        if isinstance(ds.attrs.get("source_files"), str):  # the URL, not the temporary copy that was read
            ds.attrs["source_files"] = ds.attrs["source_files"].replace(str(local), path)
        return ds
    if not path.exists():
        raise CheckpointError("no such file or folder", path=path)
    check_format(format, path)
    if path.is_dir():
        fmt = format or detect_folder_format(path)
        if fmt == "mechgrok-run" and is_sequence_run(path):  # n-digit addition, repeated subsequences
            return load_sequence_run(path)
        if fmt == "mechgrok-run":
            return load_run_dir(path, seed=seed, frac_train=frac_train)
        if fmt == "zarr":
            if seed is not None or frac_train is not None:
                raise ConfigError("seed/frac_train cannot be set when opening a Zarr store", path=path)
            return open_store(path)
        return load_paper_epochs(path, trusted=trusted, seed=seed, frac_train=frac_train)
    if format == "pizza-model" or (format is None and pizza_config_path(path) is not None):
        return load_pizza_model(path, trusted=trusted, seed=seed, frac_train=frac_train)
    obj = load_checkpoint_file(path, trusted=trusted)
    if format is None and is_curve_only(obj):  # loss curves without a model (mechgrok.store.curves)
        return curves_dataset(obj, path)
    fmt = format or detect_object_format(obj, path)
    if fmt == "paper-full-run":
        return load_paper_full_run(obj, path, seed=seed, frac_train=frac_train)
    if fmt == "tl-demo":
        return load_tl_demo(obj, path, seed=seed, frac_train=frac_train)
    if fmt == "tl-model":
        return load_tl_model(obj, path, seed=seed, frac_train=frac_train)
    ds = load_single_model(obj, path, layout="original", source_format="paper-model", seed=seed, frac_train=frac_train)
    return record_task(ds)  # the authors' addition and induction models: attrs["task"]
