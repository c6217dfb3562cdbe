"""From converted checkpoints to the canonical Dataset: consistency checks, p, the split, curves, provenance.

Shared by every source format except mechgrok's own run directory (:mod:`mechgrok.store.own`).

The modulus p
    Taken from the source config (key ``p``) where there is one, and then checked: the vocabulary must be
    p + 1 (the residues and ``=``) and the output classes p + 1 or p (TransformerLens' demo drops ``=``), or
    both p for a 2-token context without ``=`` (the Pizza models, :mod:`mechgrok.store.pizza`), else a
    :class:`CheckpointError` names the file. Without a configured p, a model with a 3-token context whose
    output classes are d_vocab or d_vocab - 1 is taken as modular with p = d_vocab - 1. Other models (5-digit
    addition, induction heads) have no p: no ``attrs["p"]`` and no ``is_train``.

The split
    Stored where the source stores it (mechgrok's ``split.json``, TransformerLens' ``train_indices``, the
    paper's ``init.pth`` ``train_data``); otherwise rebuilt with the paper's procedure
    (:func:`mechgrok.tasks.modular_arithmetic.split_indices`: ``random.seed(seed)``, ``random.shuffle`` of the lexicographic
    ``(a, b, =)`` list, the first ``int(frac_train * p**2)`` pairs train). ``seed`` and ``frac_train`` are the
    caller's, else the source config's, else the paper's 0 and 0.3. The attrs say which (``split``,
    ``split_seed``, ``split_frac_train``, ``split_rule``).

Curves
    Loss lists are placed on epochs by their lengths (:func:`loss_curves`, :func:`infer_stride`). The longest
    list is the reference: its index i is epoch i, so it spans epochs 0 .. n - 1. A list of m entries is taken
    to be logged at epochs 0, k, 2k, ..., (m - 1) * k for one integer stride k >= 1: every epoch divisible by
    k inside that span, the first epoch included, as a training loop with ``if epoch % k == 0`` logs it. So
    m = ceil(n / k), i.e. (m - 1) * k <= n - 1 < m * k. The mainline run stores test losses at a stride of 10,
    the induction-head run at 4 (paper.md section 7, pitfall 12). The authors'
    ``wd_10-1_mod_addition_loss_curve.pth`` has n = 107,791 and m = 10,780: k = 10, and the last test loss is
    at epoch 107,790, the final epoch (its ``epoch``, and where its stopping threshold was crossed).
    If no integer k fits the lengths, or more than one does (a list of 2 entries beside 1,001), the load fails
    with :class:`CurveCadenceError` naming the file and the lengths; the epochs are never guessed. Lists of
    equal length all have k = 1. ``attrs["curve_epochs"]`` states the rule applied; each curve variable's
    ``attrs["log_every"]`` holds its stride (where its epochs are evenly spaced). Between logged epochs a
    curve is NaN on the shared ``epoch`` dim: nothing is interpolated.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import xarray as xr

from mechgrok.tasks.modular_arithmetic import split_indices, train_mask
from mechgrok.errors import CheckpointError, ConfigError
from mechgrok.store.layouts import ConvertedModel
from mechgrok.store.safe_load import MissingClass
from mechgrok.store.schema import build_dataset

__all__ = [
    "PAPER_SEED", "PAPER_FRAC_TRAIN", "json_safe", "config_dict", "require_key", "as_epoch", "epoch_list",
    "CurveCadenceError", "infer_stride", "loss_curves", "curve_log_every", "modulus", "assemble",
]

#: The paper's split seed and training fraction, used when a source stores neither (paper.md 2.1).
PAPER_SEED = 0
PAPER_FRAC_TRAIN = 0.3

_SYNONYMS = {"n_heads": ("n_heads", "num_heads"), "n_layers": ("n_layers", "num_layers"), "d_model": ("d_model",),
             "d_head": ("d_head",), "d_mlp": ("d_mlp",), "n_ctx": ("n_ctx",), "d_vocab": ("d_vocab",),
             "d_vocab_out": ("d_vocab_out",)}


def json_safe(obj: Any, _depth: int = 0) -> Any:
    """A JSON-encodable copy of a config-like object (NaN/Inf become None, tensors numbers or lists)."""
    if _depth > 20:
        return str(obj)
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, (np.bool_, np.integer, np.floating)):
        return json_safe(obj.item(), _depth + 1)
    if isinstance(obj, torch.Tensor):
        return json_safe(obj.item() if obj.numel() == 1 else obj.tolist(), _depth + 1) if obj.numel() <= 4096 else f"<tensor {tuple(obj.shape)}>"
    if isinstance(obj, np.ndarray):
        return json_safe(obj.tolist(), _depth + 1) if obj.size <= 4096 else f"<array {obj.shape}>"
    if isinstance(obj, Mapping):
        return {str(k): json_safe(v, _depth + 1) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v, _depth + 1) for v in obj]
    return str(obj)


def config_dict(obj: Any, *, path: Any = None, what: str = "config") -> dict[str, Any]:
    """A source config as a plain dict: a dict, an object with ``to_dict()``, a dataclass, or a pickled class
    whose module is missing (:class:`MissingClass`, trusted loads).

    Raises
    ------
    CheckpointError
        If the object is none of these.
    """
    if obj is None:
        return {}
    if isinstance(obj, Mapping):
        return dict(obj)
    if isinstance(obj, MissingClass):
        return obj.fields()
    to_dict = getattr(obj, "to_dict", None)
    if callable(to_dict):
        d = to_dict()
        if isinstance(d, Mapping):
            return dict(d)
    import dataclasses

    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
    if hasattr(obj, "__dict__"):
        return dict(vars(obj))
    raise CheckpointError(f"{what} is a {type(obj).__name__}, not a mapping", path=path)


def _float_array(values: Any, *, name: str, path: Any) -> np.ndarray:
    try:
        if isinstance(values, torch.Tensor):
            return values.detach().to("cpu", torch.float64).numpy().reshape(-1)
        return np.asarray([float(v) for v in values], dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{name} is not a list of numbers ({e})", path=path) from None


class CurveCadenceError(CheckpointError):
    """Loss lists whose lengths fix no single logging stride, so their epochs cannot be inferred.

    Raised instead of guessing (module docstring, "Curves"). The message names the file, the lists and their
    lengths; ``lengths`` holds them as ``{list name: length}``.
    """

    def __init__(self, message: str, *, path: Any = None, lengths: Mapping[str, int] | None = None):
        super().__init__(message, path=path)
        self.lengths = dict(lengths or {})


def infer_stride(
    n_ref: int, n: int, *, name: str = "list", ref_name: str = "the longest list", path: Any = None
) -> int:
    """The stride k at which a list of ``n`` entries was logged beside a per-epoch list of ``n_ref`` entries.

    The reference list spans epochs 0 .. n_ref - 1. The other list's entry j is epoch k * j for the one
    integer k >= 1 with ``n == ceil(n_ref / k)``, i.e. ``(n - 1) * k <= n_ref - 1 < n * k``: it was logged
    at every epoch divisible by k in that span, epoch 0 and (when divisible) the last epoch included.

    Parameters
    ----------
    n_ref : int
        Length of the reference (longest) list, >= 1.
    n : int
        Length of the other list, 1 <= n <= n_ref.
    name, ref_name : str
        The lists' names, for the error message (e.g. ``"test_losses"``, ``"train_losses"``).
    path : str or Path, optional
        The file, for the error message.

    Returns
    -------
    int
        The stride k (1 when the lengths are equal).

    Raises
    ------
    CurveCadenceError
        If no integer k fits the lengths (e.g. 300 entries beside 1,001), or more than one does (e.g. 2 entries
        beside 1,001: any k from 501 to 1000), or ``n`` is not in 1 .. n_ref.

    Examples
    --------
    >>> infer_stride(107_791, 10_780)
    10
    >>> infer_stride(50_000, 5_000)
    10
    >>> infer_stride(285_820, 71_455)
    4
    """
    n_ref, n = int(n_ref), int(n)
    lengths = {ref_name: n_ref, name: n}
    if not 1 <= n <= n_ref:
        raise CurveCadenceError(f"{name} has {n} entries, {ref_name} {n_ref}: expected 1 to {n_ref}",
                                path=path, lengths=lengths)
    if n == n_ref:
        return 1
    lo = (n_ref - 1) // n + 1  # the smallest k with n * k > n_ref - 1
    hi = (n_ref - 1) // (n - 1) if n > 1 else None  # the largest k with (n - 1) * k <= n_ref - 1 (none for n = 1)
    where = (f"{name} has {n} entr{'y' if n == 1 else 'ies'} and {ref_name} {n_ref} "
             f"(epochs 0..{n_ref - 1}, ratio {n_ref / n:.6g})")
    if hi is None or hi > lo:
        shown = f"any k >= {lo}" if hi is None else f"k = {lo} to {hi}"
        raise CurveCadenceError(
            f"{where}: the logging stride of {name} is ambiguous ({shown} puts its entries at epochs 0, k, 2k, ... "
            f"within the span); refusing to guess its epochs", path=path, lengths=lengths)
    if hi < lo:
        raise CurveCadenceError(
            f"{where}: no integer stride k puts {n} entries at epochs 0, k, 2k, ... within the span "
            f"(that needs {n} = ceil({n_ref} / k)); refusing to guess its epochs", path=path, lengths=lengths)
    return lo


def loss_curves(
    train_losses: Any = None, test_losses: Any = None, *, path: Any = None
) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], str]:
    """Place stored loss lists on epochs, inferring each list's logging stride (module docstring, "Curves").

    The longer list is per-epoch (index i is epoch i); the other one's entry j is epoch k * j, with the stride
    k from :func:`infer_stride`. Empty or absent lists are left out.

    Parameters
    ----------
    train_losses, test_losses : sequence of float or torch.Tensor, optional
        The stored lists (``train_losses``/``test_losses`` of the paper's and TransformerLens' files).
    path : str or Path, optional
        The file they come from, for error messages.

    Returns
    -------
    curves : dict of str to (epochs, values)
        ``loss_train`` and/or ``loss_test``: int64 epochs and float64 values (nats).
    rule : str
        A sentence saying which index went to which epoch and why (stored as ``attrs["curve_epochs"]``).

    Raises
    ------
    CheckpointError
        If a list is not a list of numbers.
    CurveCadenceError
        If the lengths fix no single stride (:func:`infer_stride`); the message names the file and the lengths.

    Examples
    --------
    >>> curves, rule = loss_curves([0.5] * 1001, [1.0] * 101)
    >>> curves["loss_test"][0][[0, 1, -1]].tolist()
    [0, 10, 1000]
    >>> for part in rule.split("; "):
    ...     print(part)
    loss_train[i] is epoch i (1001 entries: epochs 0..1000)
    loss_test[j] is epoch 10 * j (101 entries: epochs 0..1000, stride 10 inferred from the lengths: 101 = ceil(1001 / 10))
    """
    lists: dict[str, tuple[str, np.ndarray]] = {}
    given = (("loss_train", "train_losses", train_losses), ("loss_test", "test_losses", test_losses))
    for curve, stored, values in given:
        if values is not None:
            arr = _float_array(values, name=stored, path=path)
            if arr.size:
                lists[curve] = (stored, arr)
    if not lists:
        return {}, ""
    ref_curve = max(lists, key=lambda c: lists[c][1].size)  # the first of the longest on a tie
    ref_stored, ref = lists[ref_curve]
    curves: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    rules = []
    for curve, (stored, arr) in lists.items():
        k = infer_stride(ref.size, arr.size, name=stored, ref_name=ref_stored, path=path)
        epochs = np.arange(arr.size, dtype=np.int64) * k
        curves[curve] = (epochs, arr)
        idx = "i" if curve == ref_curve else "j"
        span = f"{arr.size} entries: epochs 0..{int(epochs[-1])}"
        if k == 1:
            rules.append(f"{curve}[{idx}] is epoch {idx} ({span})")
        else:
            rules.append(f"{curve}[{idx}] is epoch {k} * {idx} ({span}, stride {k} inferred from the lengths: "
                         f"{arr.size} = ceil({ref.size} / {k}))")
    return curves, "; ".join(rules)


def curve_log_every(epochs: Any) -> int | None:
    """The spacing of a curve's epochs (its ``attrs["log_every"]``); None for fewer than 2 epochs or uneven ones.

    Examples
    --------
    >>> curve_log_every([0, 10, 20]), curve_log_every([0, 5, 20]), curve_log_every([7])
    (10, None, None)
    """
    e = np.asarray(epochs, dtype=np.int64).reshape(-1)
    if e.size < 2:
        return None
    d = np.diff(e)
    return int(d[0]) if d[0] > 0 and np.all(d == d[0]) else None


def require_key(obj: Any, key: str, *, path: Path, what: str) -> Any:
    """``obj[key]``; a :class:`CheckpointError` naming the key (and the keys present) if it is missing."""
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"expected a dict ({what}), got a {type(obj).__name__}", path=path)
    if key not in obj:
        shown = ", ".join(sorted(map(str, obj))[:8])
        raise CheckpointError(f"missing key {key!r} ({what}; keys: {shown})", path=path)
    return obj[key]


def as_epoch(value: Any, *, name: str, path: Path) -> int:
    """An epoch number from an int, an integral float or a one-element tensor."""
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, (np.integer,)):
        value = int(value)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        shown = repr(value) if isinstance(value, (int, float, str, type(None))) else f"a {type(value).__name__}"
        raise CheckpointError(f"{name} is {shown[:60]}, not an integer epoch", path=path)
    if value < 0:
        raise CheckpointError(f"{name} is {value}, a negative epoch", path=path)
    return value


def epoch_list(values: Any, *, name: str, path: Path) -> list[int]:
    """A list of epoch numbers (see :func:`as_epoch`)."""
    if isinstance(values, torch.Tensor):
        values = values.tolist()
    if not isinstance(values, (list, tuple)):
        raise CheckpointError(f"{name} is a {type(values).__name__}, not a list of epochs", path=path)
    return [as_epoch(v, name=name, path=path) for v in values]


def _lookup(cfg: Mapping[str, Any], name: str) -> Any:
    for key in _SYNONYMS.get(name, (name,)):
        if key in cfg and cfg[key] is not None:
            return cfg[key]
    return None


def _check_config_sizes(model: ConvertedModel, cfg: Mapping[str, Any], *, path: Any) -> None:
    sizes = model.sizes()
    act = cfg.get("act_fn", cfg.get("act_type"))
    if sizes["d_mlp"] is not None and isinstance(act, str) and act.lower() != "relu":
        raise CheckpointError(f"the config's activation is {act!r}; mechgrok's model has the paper's ReLU MLP", path=path)
    if cfg.get("normalization_type") not in (None, "None"):
        raise CheckpointError(
            f"the config's normalization_type is {cfg['normalization_type']!r}; mechgrok's model has no LayerNorm", path=path)
    for name in _SYNONYMS:
        value = _lookup(cfg, name)
        if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if not math.isfinite(value) or value != int(value):
            raise CheckpointError(f"the config says {name}={value!r}, not a whole number", path=path)
        if name == "d_mlp" and sizes["d_mlp"] is None:
            continue  # the induction-head config records an unused d_mlp
        if name == "d_vocab_out" and int(value) == -1:
            continue  # TransformerLens' "same as d_vocab" sentinel
        if int(value) != sizes[name]:
            raise CheckpointError(f"the config says {name}={value} but the weights have {name}={sizes[name]}", path=path)


def modulus(model: ConvertedModel, cfg_p: Any, *, path: Any) -> int | None:
    """The modulus p of a model (module docstring), or None for a non-modular model.

    Raises
    ------
    CheckpointError
        If a configured p does not match the vocabulary.
    """
    V, O = model.d_vocab, model.d_vocab_out
    if cfg_p is not None:
        if isinstance(cfg_p, bool) or not isinstance(cfg_p, (int, np.integer)) or cfg_p < 2:
            raise CheckpointError(f"the config's p={cfg_p!r} is not an integer >= 2", path=path)
        p = int(cfg_p)
        if model.n_ctx == 2 and V == p and O == p:  # inputs [a, b] without '=' (the Pizza models)
            return p
        if V != p + 1 or O not in (p, p + 1):
            raise CheckpointError(
                f"p={p} does not match the vocabulary: W_E has {V} tokens and W_U {O} classes "
                f"(expected p+1 = {p + 1} tokens and p or p+1 classes)", path=path)
        return p
    if model.n_ctx == 3 and V >= 3 and O in (V, V - 1):
        return V - 1
    return None


def assemble(
    models: Sequence[ConvertedModel],
    epochs: Sequence[int],
    *,
    labels: Sequence[tuple[Any, str]],
    path: str | Path,
    source_format: str,
    source_layout: str,
    source_files: Sequence[str | Path],
    source_config: Mapping[str, Any] | None = None,
    curves: Mapping[str, tuple[np.ndarray, np.ndarray]] | None = None,
    curve_rule: str = "",
    stored_train: np.ndarray | None = None,
    stored_split_where: str = "",
    seed: int | None = None,
    frac_train: float | None = None,
    extra_attrs: Mapping[str, Any] | None = None,
) -> xr.Dataset:
    """Stack converted checkpoints into the canonical Dataset.

    Parameters
    ----------
    models : sequence of ConvertedModel
        One per checkpoint, in epoch order.
    epochs : sequence of int
        Epoch of each checkpoint (strictly increasing).
    labels : sequence of (path, str)
        Where each checkpoint came from (file and e.g. ``"state_dicts[3]"``), for error messages.
    path : str or Path
        The source, for error messages.
    source_format, source_layout, source_files
        Provenance stored in attrs.
    source_config : mapping, optional
        The source's config, stored under ``source_config`` in ``attrs["config_json"]`` and checked against the
        shapes (``d_model``, ``n_heads``/``num_heads``, ...). Its ``p``, ``seed`` and ``frac_train`` are used.
    curves, curve_rule
        Loss curves (see :func:`loss_curves`) and the sentence stored as ``attrs["curve_epochs"]``. A curve
        whose epochs are evenly spaced gets its spacing as ``attrs["log_every"]`` (:func:`curve_log_every`).
    stored_train : numpy.ndarray, optional
        The training pairs, where the source stores them: flat grid indices ``a * p + b`` (1-D), or an (n, 2)
        array of ``(a, b)``.
    stored_split_where : str
        Where the stored split came from (for ``attrs["split_rule"]``).
    seed, frac_train : optional
        Override the split rebuild (only for sources that do not store their split).
    extra_attrs : mapping, optional
        More attrs.

    Returns
    -------
    xarray.Dataset
        The canonical trajectory (:mod:`mechgrok.store.schema`).

    Raises
    ------
    CheckpointError
        On mixed configs across checkpoints, sizes that contradict the config, a p that does not match the
        vocabulary, or a stored split that is not a set of distinct grid indices.
    ConfigError
        If ``seed``/``frac_train`` are given for a source that stores its split or has no p x p grid, or
        ``frac_train`` is not in (0, 1).
    """
    if not models:
        raise CheckpointError("no checkpoints found", path=path)
    epochs = [int(e) for e in epochs]
    if len(epochs) != len(models):
        raise CheckpointError(f"{len(models)} checkpoints but {len(epochs)} checkpoint epochs", path=path)
    order = np.argsort(epochs, kind="stable")
    if np.any(np.diff(np.asarray(epochs)[order]) == 0):
        dup = sorted({e for e in epochs if epochs.count(e) > 1})
        raise CheckpointError(f"duplicate checkpoint epochs {dup[:5]}", path=path)
    models = [models[i] for i in order]
    labels = [labels[i] for i in order]
    epochs = [epochs[i] for i in order]

    first, (first_path, first_label) = models[0], labels[0]
    ref_shapes = {n: a.shape for n, a in first.weights.items()}
    for m, (f, lab) in zip(models[1:], labels[1:]):
        shapes = {n: a.shape for n, a in m.weights.items()}
        if shapes != ref_shapes:
            diff = sorted(set(shapes) ^ set(ref_shapes)) or [n for n in shapes if shapes[n] != ref_shapes[n]]
            n = diff[0]
            raise CheckpointError(
                f"{lab + ': ' if lab else ''}mixed configs across checkpoints: {n} has shape {shapes.get(n)} here but "
                f"{ref_shapes.get(n)} in {first_label or first_path}", path=f)

    cfg_src = config_dict(source_config, path=path) if source_config is not None else {}
    _check_config_sizes(first, cfg_src, path=path)
    p = modulus(first, cfg_src.get("p"), path=path)

    attrs: dict[str, Any] = {"source_layout": source_layout}
    if curve_rule:
        attrs["curve_epochs"] = curve_rule
    config: dict[str, Any] = {}
    if p is not None:
        config["p"] = p
    config.update(first.sizes())
    is_train = None
    if p is None:
        if seed is not None or frac_train is not None:
            raise ConfigError("seed/frac_train only apply to modular-arithmetic models (p x p grid); this one has none",
                              path=path)
    elif stored_train is not None:
        if seed is not None or frac_train is not None:
            raise ConfigError(f"seed/frac_train cannot be set: the source stores its split ({stored_split_where})",
                              path=path)
        idx = np.asarray(stored_train)
        if idx.ndim == 2:  # (a, b) pairs
            if idx.size and (idx.min() < 0 or idx.max() >= p):
                raise CheckpointError(f"the stored split ({stored_split_where}) holds residues outside 0..p-1 = {p - 1}", path=path)
            idx = idx[:, 0] * p + idx[:, 1]
        idx = idx.reshape(-1)
        if idx.size and (not np.issubdtype(idx.dtype, np.integer) or idx.min() < 0 or idx.max() >= p * p):
            raise CheckpointError(f"the stored split ({stored_split_where}) holds indices outside 0..p^2-1 = {p * p - 1}", path=path)
        if np.unique(idx).size != idx.size:
            raise CheckpointError(f"the stored split ({stored_split_where}) repeats pairs", path=path)
        is_train = train_mask(p, idx)
        attrs.update(split="stored", split_rule=f"stored: {stored_split_where}")
        config["frac_train"] = idx.size / (p * p)
    else:
        use_seed = seed if seed is not None else cfg_src.get("seed", PAPER_SEED)
        use_frac = frac_train if frac_train is not None else cfg_src.get("frac_train", PAPER_FRAC_TRAIN)
        if isinstance(use_seed, bool) or not isinstance(use_seed, (int, np.integer)):
            raise ConfigError(f"seed must be an integer, got {use_seed!r}", path=path)
        if isinstance(use_frac, bool) or not isinstance(use_frac, (int, float)) or not 0 < float(use_frac) < 1:
            raise ConfigError(f"frac_train must lie strictly between 0 and 1, got {use_frac!r}", path=path)
        origin = "given" if (seed is not None or frac_train is not None) else (
            "from the source config" if ("seed" in cfg_src or "frac_train" in cfg_src) else "the paper's defaults")
        train, _ = split_indices(p, float(use_frac), int(use_seed))
        is_train = train_mask(p, train)
        attrs.update(
            split="rebuilt", split_seed=int(use_seed), split_frac_train=float(use_frac),
            split_rule=(f"rebuilt ({origin}): random.seed({int(use_seed)}); random.shuffle of the lexicographic "
                        f"(a, b, =) list; the first int({float(use_frac)} * p^2) = {train.size} pairs are train"),
        )
        config["seed"] = int(use_seed)
        config["frac_train"] = float(use_frac)
    if cfg_src:
        config["source_config"] = json_safe(cfg_src)
    attrs.update(extra_attrs or {})

    weights = {name: np.stack([m.weights[name] for m in models]) for name in first.weights}
    curve_attrs: dict[str, dict[str, Any]] = {}
    for name, (e, _) in (curves or {}).items():
        k = curve_log_every(e)
        if k is not None:
            curve_attrs[name] = {"log_every": k}
    return build_dataset(
        weights,
        epochs,
        config=config,
        n_layers=first.n_layers,
        curves=dict(curves) if curves else None,
        is_train=is_train,
        source_format=source_format,
        source_files=[str(Path(f).resolve()) for f in source_files],
        p=p,
        attrs=attrs,
        var_attrs={**{name: {"source_key": key} for name, key in first.source_keys.items()}, **curve_attrs},
    )

