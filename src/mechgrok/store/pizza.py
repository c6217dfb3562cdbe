"""Loader for the Clock-and-Pizza models of Zhong et al. (2023), ``fjzzq2002/pizza`` (format ``pizza-model``).

Their ``code/save/`` holds pairs ``model_<runid>.pt`` (a torch state dict in the paper's original layout,
:mod:`mechgrok.store.layouts`) and ``config_<runid>.json``. The model differs from the paper's
(``shared/reference/tasks.md`` section 4): inputs ``[a, b]`` (no ``=`` token, vocabulary and classes p = ``C``),
no causal mask, attention = alpha * softmax + (1 - alpha) with alpha = ``attn_coeff``, logits read at the last
position. The loaded trajectory records these as ``attn_coeff``, ``equals_token`` (False) and ``causal_mask``
(False) in its config, which the grid pass and the algorithm metrics read.

The config's ``funcs`` is a Python lambda written as a string. It is **data and is never evaluated**: the
operation is recognised by matching the string against the three forms the authors' sweeps use
(``(x[0]+x[1])%C``, ``(x[0]-x[1])%C``, ``(x[0]*x[1])%C``, spaces ignored), and anything else is refused.

The authors split train and test with ``torch.utils.data.random_split`` without a seed, so their split is not
recoverable: the trajectory's split is rebuilt by mechgrok's rule (:func:`mechgrok.tasks.modular_arithmetic.
split_indices`, seed 0, their ``frac``) and says so in ``attrs["split_rule"]``. The algorithm metrics do not
depend on it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import xarray as xr

from mechgrok.errors import CheckpointError
from mechgrok.store.assemble import assemble
from mechgrok.store.layouts import convert_state_dict, is_state_dict
from mechgrok.store.safe_load import load_checkpoint_file

__all__ = ["PIZZA_MODEL_RE", "pizza_config_path", "load_pizza_model"]

#: Names of the authors' saved models.
PIZZA_MODEL_RE = re.compile(r"^model_([A-Za-z0-9]+)\.pt$")

_FUNCS = {"+": "add", "-": "sub", "*": "mul"}


def pizza_config_path(path: str | Path) -> Path | None:
    """The ``config_<runid>.json`` beside a ``model_<runid>.pt`` file, or None when the name or the file is not there.

    Examples
    --------
    >>> pizza_config_path("nowhere/model_abc.pt") is None
    True
    """
    path = Path(path)
    m = PIZZA_MODEL_RE.match(path.name)
    if m is None:
        return None
    cfg = path.with_name(f"config_{m.group(1)}.json")
    return cfg if cfg.is_file() else None


def _operation(funcs: Any, p: int, *, path: Path) -> str:
    """The operation named by the config's ``funcs`` string, by pattern (never evaluated)."""
    text = re.sub(r"\s+", "", str(funcs))
    m = re.fullmatch(r"lambdax:\(x\[0\]([+\-*])x\[1\]\)%(\d+)", text)
    if m is None or int(m.group(2)) != p:
        raise CheckpointError(f"funcs {str(funcs)[:60]!r} is not one of (x[0]+x[1])%C, (x[0]-x[1])%C, "
                              f"(x[0]*x[1])%C with C={p} (it is data and is never evaluated)", path=path)
    return _FUNCS[m.group(1)]


def load_pizza_model(path: str | Path, *, trusted: bool = False, seed: int | None = None,
                     frac_train: float | None = None) -> xr.Dataset:
    """Load one of the authors' saved models with its config: a one-checkpoint trajectory.

    Parameters
    ----------
    path : str or Path
        ``model_<runid>.pt``; ``config_<runid>.json`` must be beside it.
    trusted : bool
        Allow a full unpickle (never needed for the released files, which are plain state dicts).
    seed, frac_train : optional
        Override the rebuilt split (default: seed 0 and the config's ``frac``).

    Returns
    -------
    xarray.Dataset
        The canonical trajectory (``source_format="pizza-model"``, checkpoint epoch = the config's ``epoch``),
        with ``p`` = ``C`` and the config (``attn_coeff``, ``equals_token`` False, ``causal_mask`` False,
        ``operation``, the authors' config under ``source_config``).

    Raises
    ------
    CheckpointError
        If the config is missing or malformed, the model is not the one-layer ReLU transformer on ``[a, b]``
        (``eqn_sign``, ``diff_vocab``, ``use_linear``, another activation or depth), ``funcs`` is not a
        recognised operation, or the state dict is bad.

    Examples
    --------
    >>> from pathlib import Path
    >>> f = Path("../shared/data/pizza/model_p99zdpze5l.pt")
    >>> if f.is_file():
    ...     ds = load_pizza_model(f)
    ...     print(ds.attrs["p"], ds.sizes["pos"], ds.attrs["attn_coeff"])
    ... else:
    ...     print(59, 2, 0.0)
    59 2 0.0
    """
    path = Path(path)
    cfg_path = pizza_config_path(path)
    if cfg_path is None:
        raise CheckpointError("a Pizza model needs its config_<runid>.json beside model_<runid>.pt", path=path)
    try:
        src = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"unreadable config ({e})", path=cfg_path) from None
    if not isinstance(src, dict):
        raise CheckpointError("the config is not a JSON object", path=cfg_path)
    for key in ("C", "attn_coeff", "funcs"):
        if key not in src:
            raise CheckpointError(f"the config has no {key!r}", path=cfg_path)
    p = src["C"]
    if isinstance(p, bool) or not isinstance(p, int) or p < 3:
        raise CheckpointError(f"C={p!r} is not a modulus", path=cfg_path)
    alpha = src["attn_coeff"]
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 <= alpha <= 1:
        raise CheckpointError(f"attn_coeff={alpha!r} is not in [0, 1]", path=cfg_path)
    for flag in ("eqn_sign", "diff_vocab", "use_linear"):
        if src.get(flag):
            raise CheckpointError(f"{flag} is set: only the one-layer transformer on [a, b] is supported", path=cfg_path)
    if src.get("n_layers", 1) != 1:
        raise CheckpointError(f"n_layers={src.get('n_layers')!r}: mechgrok's analyses take one-layer models", path=cfg_path)
    operation = _operation(src["funcs"], p, path=cfg_path)
    obj = load_checkpoint_file(path, trusted=trusted)
    sd = obj if is_state_dict(obj) else (obj.get("model") if isinstance(obj, dict) else None)
    if not is_state_dict(sd):
        raise CheckpointError("no state dict in the file", path=path)
    model = convert_state_dict(sd, layout="original", path=path)
    if model.n_ctx != 2:
        raise CheckpointError(f"W_pos has {model.n_ctx} positions; a Pizza model without '=' has 2", path=path)
    config = {"p": p, "operation": operation, "attn_coeff": float(alpha), "equals_token": False,
              "causal_mask": False, "act_fn": src.get("act_fn", "ReLU"), "d_model": src.get("d_model"),
              "n_heads": src.get("n_heads"), "n_layers": 1,
              "frac_train": float(src["frac"]) if isinstance(src.get("frac"), (int, float)) else None,
              "authors_config": src}
    config = {k: v for k, v in config.items() if v is not None}
    epoch = src.get("epoch", 0)
    epoch = epoch if isinstance(epoch, int) and not isinstance(epoch, bool) and epoch >= 0 else 0
    ds = assemble(
        [model], [epoch], labels=[(path, "")], path=path, source_format="pizza-model", source_layout="original",
        source_files=[path, cfg_path], source_config=config, seed=seed, frac_train=frac_train,
        extra_attrs={"checkpoint_epoch_rule": "the config's 'epoch' (the run's length)",
                     "split_note": "the authors split with an unseeded torch random_split; this split is rebuilt "
                                   "and differs from theirs",
                     "operation": operation, "attn_coeff": float(alpha), "equals_token": False,
                     "causal_mask": False},
    )
    return ds
