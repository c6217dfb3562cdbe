"""The TransformerLens round trip: any checkpoint of a trajectory as a ``HookedTransformer``, and
``HookedTransformer`` models (or their state dicts over training) as a trajectory.

Needs the optional extra ``pip install "mechgrok[tl]"`` (the real ``transformer-lens`` package, 2.x or 3.x:
TransformerLens 4.0 removed ``HookedTransformer`` in favour of ``TransformerBridge``); without it
:func:`to_hooked_transformer` and :func:`hooked_config` raise :class:`~mechgrok.errors.ConfigError` saying so.
The import side (:func:`from_hooked_transformers`) reads plain state dicts and needs TransformerLens only for
``HookedTransformer`` objects.

mechgrok keeps TransformerLens' names and orientation (``W_E`` (vocab, d_model), ``W_Q`` (head, d_model, d_head),
...), so no weight is transposed either way. What the export adds (the conversion of the paper's weights to
TransformerLens, as in TransformerLens' grokking demo, run in reverse):

- the biases the paper's model does not have (``b_Q``, ``b_K``, ``b_V`` (head, d_head), ``b_O`` (d_model),
  ``b_U`` (d_vocab_out)) as zeros; ``b_in`` and ``b_out`` are the trajectory's;
- no LayerNorm (``normalization_type=None``), ReLU, learned positional embeddings, attention scores scaled by
  1/sqrt(d_head), TransformerLens' own causal mask;
- the ``=`` token keeps its id (p) and its row of ``W_E``; ``W_U`` keeps all its columns, so a mechgrok run
  exports with ``d_vocab_out = p + 1`` (the ``=`` class it was trained against) and a run imported from the
  TransformerLens demo (``d_vocab_out = p``) exports with p. The read-out is the last position of
  ``[a, b, =]`` (``[a, b]`` for models without ``=``), as in :func:`mechgrok.models.transformer.forward`.

The causal mask changes nothing at the read-out position (its row is all ones), so models trained without one
(``causal_mask=False``) export with the same final-position logits; earlier positions then differ. The Pizza
attention rate (``attn_coeff`` below 1, Zhong et al. 2023) has no TransformerLens counterpart and is refused.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import xarray as xr

from mechgrok.errors import CheckpointError, ConfigError
from mechgrok.models.transformer import PARAM_KEYS
from mechgrok.store.schema import BLOCK_WEIGHTS
from mechgrok.store.transformerlens import load_tl_demo

__all__ = ["hooked_config", "to_hooked_transformer", "from_hooked_transformers"]

#: Where the weights go in a ``HookedTransformer`` state dict (``{layer}`` for block weights): the keys of
#: :data:`mechgrok.models.transformer.PARAM_KEYS`, every block's.
STATE_DICT_KEYS: dict[str, str] = {name: key.replace("blocks.0.", "blocks.{layer}.") for name, key in PARAM_KEYS.items()}
_EXTRA = 'TransformerLens is not installed; install the extra: pip install "mechgrok[tl]"'


def _transformer_lens() -> Any:
    try:
        import transformer_lens
    except ImportError:
        raise ConfigError(_EXTRA) from None
    try:  # TransformerLens 4.0 removed the class (its module __getattr__ raises ImportError)
        transformer_lens.HookedTransformer
    except (ImportError, AttributeError):
        version = getattr(transformer_lens, "__version__", "this version")
        raise ConfigError(f"TransformerLens {version} has no HookedTransformer (removed in 4.0); "
                          'install the extra: pip install "mechgrok[tl]" (transformer-lens>=2.0,<4)') from None
    return transformer_lens


def _model_config(ds: xr.Dataset) -> dict[str, Any]:
    try:
        cfg = json.loads(ds.attrs.get("config_json") or "{}")
    except ValueError:
        return {}
    return cfg if isinstance(cfg, dict) else {}


def hooked_config(ds: xr.Dataset, *, dtype: torch.dtype = torch.float32) -> Any:
    """The ``HookedTransformerConfig`` of a trajectory's model (sizes read from its weights).

    Parameters
    ----------
    ds : xarray.Dataset
        A canonical trajectory (:func:`mechgrok.open_run`): ``W_E`` (checkpoint, vocab, d_model), ``W_pos``,
        ``W_Q`` (checkpoint, [layer,] head, d_model, d_head), ``W_U`` (checkpoint, d_model, vocab_out) and, unless
        attention-only, ``W_in`` (checkpoint, [layer,] d_model, d_mlp).
    dtype : torch.dtype
        The model's dtype: float32 (default, the stored weights' own) or float64 (to compare without rounding).

    Returns
    -------
    transformer_lens.HookedTransformerConfig
        ``n_layers``, ``d_model``, ``n_heads``, ``d_head``, ``d_mlp`` (None and ``attn_only`` for attention-only
        models), ``d_vocab`` (p + 1 with the ``=`` token), ``d_vocab_out``, ``n_ctx``; ``act_fn="relu"``,
        ``normalization_type=None``, ``positional_embedding_type="standard"``, ``default_prepend_bos=False``.

    Raises
    ------
    ConfigError
        If TransformerLens is not installed, or the model has no TransformerLens counterpart: the Pizza attention
        rate (``attn_coeff < 1``), the doubled residual of the induction-head models (``doubled_residual``).
    CheckpointError
        If the trajectory lacks ``W_E``, ``W_pos``, ``W_Q`` or ``W_U``.

    Examples
    --------
    >>> import mechgrok, pytest
    >>> _ = pytest.importorskip("transformer_lens")
    >>> cfg = hooked_config(mechgrok.open_run("fixtures/quick-run"))
    >>> cfg.d_vocab, cfg.d_vocab_out, cfg.n_ctx, cfg.n_heads, cfg.d_head, cfg.d_mlp
    (54, 54, 3, 4, 12, 192)
    """
    tl = _transformer_lens()
    missing = [n for n in ("W_E", "W_pos", "W_Q", "W_U") if n not in ds]
    if missing:
        raise CheckpointError(f"the trajectory lacks {', '.join(missing)}; it cannot become a HookedTransformer")
    cfg = _model_config(ds)
    coeff = cfg.get("attn_coeff", 1.0)
    if isinstance(coeff, (int, float)) and coeff != 1:
        raise ConfigError(f"attn_coeff = {coeff}: the Pizza attention rate has no TransformerLens counterpart")
    attn_only = "W_in" not in ds
    # the released induction-head models add the residual twice, x + (x + attn(x)); so does mechgrok's model of
    # them, and the induction analysis assumes it where the config does not say (mechgrok.analyses.induction)
    if cfg.get("doubled_residual", attn_only and "layer" in ds.dims):
        raise ConfigError("the residual x + (x + attn(x)) of the induction-head models (doubled_residual) has no "
                          "TransformerLens counterpart")
    return tl.HookedTransformerConfig(
        n_layers=int(ds.sizes.get("layer", 1)),
        d_model=int(ds.sizes["d_model"]),
        n_heads=int(ds.sizes["head"]),
        d_head=int(ds.sizes["d_head"]),
        d_mlp=None if attn_only else int(ds.sizes["d_mlp"]),
        attn_only=attn_only,
        d_vocab=int(ds.sizes["vocab"]),
        d_vocab_out=int(ds.sizes["vocab_out"]),
        n_ctx=int(ds.sizes["pos"]),
        act_fn="relu",
        normalization_type=None,
        positional_embedding_type="standard",
        default_prepend_bos=False,
        init_weights=False,
        device="cpu",
        dtype=dtype,
    )


def to_hooked_transformer(ds: xr.Dataset, checkpoint: int | None = None, *, dtype: torch.dtype = torch.float32) -> Any:
    """One checkpoint of a trajectory as a TransformerLens ``HookedTransformer`` (CPU, eval mode).

    Parameters
    ----------
    ds : xarray.Dataset
        A canonical trajectory (:func:`mechgrok.open_run`; weights in TransformerLens orientation).
    checkpoint : int, optional
        Epoch of the checkpoint (default: the last).
    dtype : torch.dtype
        float32 (default) or float64 (the float32 weights widened exactly).

    Returns
    -------
    transformer_lens.HookedTransformer
        With :func:`hooked_config`; ``model.run_with_cache(tokens)`` on ``[a, b, =]`` gives at the last position
        the logits of :func:`mechgrok.models.transformer.forward` with the same dtype: to float32 rounding in
        float32 (the two sum in different orders: measured on the fixture run, at most 3.8e-5 for logits up to
        93, i.e. 5e-7 relative, about as far as each is from the float64 logits), to about 1e-13 in float64.

    Raises
    ------
    ConfigError
        If TransformerLens is not installed or the model cannot be expressed in it (see :func:`hooked_config`).
    AnalysisError
        If no checkpoint has that epoch.

    Examples
    --------
    >>> import mechgrok, pytest, torch
    >>> _ = pytest.importorskip("transformer_lens")
    >>> model = to_hooked_transformer(mechgrok.open_run("fixtures/quick-run"))
    >>> logits, cache = model.run_with_cache(torch.tensor([[3, 5, 53]]))
    >>> int(logits[0, -1, :53].argmax())  # (3 + 5) mod 53
    8
    """
    from mechgrok.engine import select_epochs

    cfg = hooked_config(ds, dtype=dtype)
    one = ds.isel(checkpoint=-1) if checkpoint is None else select_epochs(ds, [checkpoint]).isel(checkpoint=0)
    tl = _transformer_lens()
    with warnings.catch_warnings():  # TransformerLens 3.x deprecates the class it was asked for
        warnings.filterwarnings("ignore", message="HookedTransformer is deprecated", category=DeprecationWarning)
        model = tl.HookedTransformer(cfg)
    state = model.state_dict()
    for key in state:  # every bias the paper's model lacks (b_Q, b_K, b_V, b_O, b_U) is zero
        if key.rsplit(".", 1)[-1].startswith("b_"):
            state[key] = torch.zeros_like(state[key])
    for name, key in STATE_DICT_KEYS.items():
        if name not in one:
            continue
        values = torch.from_numpy(np.asarray(one[name].values, dtype=np.float32)).to(dtype)
        if name in BLOCK_WEIGHTS:
            layers = values if "layer" in one[name].dims else values[None]
            for layer, w in enumerate(layers):
                state[key.format(layer=layer)] = w.clone()
        else:
            state[key] = values.clone()
    model.load_state_dict(state, strict=True)
    return model.eval()


def from_hooked_transformers(
    models: Sequence[Any],
    epochs: Sequence[int],
    *,
    train_indices: Any = None,
    config: Mapping[str, Any] | Any = None,
    seed: int | None = None,
    frac_train: float | None = None,
) -> xr.Dataset:
    """``HookedTransformer`` models, or their state dicts over training, as a canonical trajectory.

    This is the in-memory form of the TransformerLens grokking demo's saved file (``checkpoints``,
    ``checkpoint_epochs``, ``train_indices``, ``config``; :func:`mechgrok.store.transformerlens.load_tl_demo`).

    Parameters
    ----------
    models : sequence of HookedTransformer or mapping
        One per checkpoint: a ``HookedTransformer`` or its ``state_dict()`` (one-layer models of modular
        addition: no LayerNorm, zero attention and unembedding biases).
    epochs : sequence of int
        Epoch of each checkpoint.
    train_indices : array-like of int, optional
        The training pairs as flat grid indices ``a * p + b`` (the demo's ``train_indices``). Without it the
        split is rebuilt with the paper's procedure from ``seed`` and ``frac_train``.
    config : mapping or HookedTransformerConfig, optional
        Stored in ``attrs["config_json"]`` (default: the first model's ``cfg`` where it has one). A ``p`` in it
        fixes the modulus; otherwise p is the vocabulary size less the ``=`` token.
    seed, frac_train : optional
        For the rebuilt split only (defaults 0 and 0.3).

    Returns
    -------
    xarray.Dataset
        The canonical trajectory over ``checkpoint`` (epochs), ``source_format="tl-demo"``.

    Raises
    ------
    CheckpointError
        On an empty list, a length mismatch, a bad state dict (nonzero attention bias, LayerNorm weights, wrong
        shapes), duplicate epochs, or overlapping train indices.

    Examples
    --------
    >>> import mechgrok, pytest
    >>> _ = pytest.importorskip("transformer_lens")
    >>> ds = mechgrok.open_run("fixtures/quick-run").isel(checkpoint=[0, -1])
    >>> sds = [to_hooked_transformer(ds, int(e)).state_dict() for e in ds["checkpoint"].values]
    >>> back = from_hooked_transformers(sds, [0, 3000], train_indices=ds["is_train"].values.ravel().nonzero()[0])
    >>> bool((back["W_in"] == ds["W_in"]).all()), bool((back["is_train"] == ds["is_train"]).all())
    (True, True)
    """
    if not models:
        raise CheckpointError("no models given")
    if config is None:
        config = getattr(models[0], "cfg", None)
    state_dicts = [m.state_dict() if hasattr(m, "state_dict") else m for m in models]
    obj: dict[str, Any] = {"checkpoints": state_dicts, "checkpoint_epochs": [int(e) for e in epochs]}
    if config is not None:
        obj["config"] = _plain_config(config)
    if train_indices is not None:
        obj["train_indices"] = train_indices
    return load_tl_demo(obj, Path("<HookedTransformer state dicts>"), seed=seed, frac_train=frac_train)


def _plain_config(config: Any) -> dict[str, Any]:
    """A config (dict or ``HookedTransformerConfig``) with JSON values (numpy scalars as numbers; dtypes, devices
    and other objects as strings)."""
    d = dict(config) if isinstance(config, Mapping) else dict(config.to_dict())
    return json.loads(json.dumps(d, default=lambda v: v.item() if isinstance(v, np.generic) else str(v)))
