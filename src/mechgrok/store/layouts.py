"""State-dict layouts: the paper's original ("column") layout and TransformerLens', converted once, here.

Two layouts hold the same model (paper.md sections 3.0, 5.2 and 5.4):

=============  ==================================  ====================================
name           original (``transformers.py``)      TransformerLens (and mechgrok)
=============  ==================================  ====================================
``W_E``        (d_model, d_vocab)                  (d_vocab, d_model)
``W_pos``      (n_ctx, d_model)                    (n_ctx, d_model)
``W_Q/K/V``    (n_heads, d_head, d_model)          (n_heads, d_model, d_head)
``W_O``        (d_model, n_heads * d_head)         (n_heads, d_head, d_model)
``W_in``       (d_mlp, d_model)                    (d_model, d_mlp)
``W_out``      (d_model, d_mlp)                    (d_mlp, d_model)
``W_U``        (d_model, d_vocab_out)              (d_model, d_vocab_out)
=============  ==================================  ====================================

Conversion (the rule of ARENA's ``load_in_state_dict`` and TransformerLens): transpose the last two axes of
``W_E``, ``W_Q``, ``W_K``, ``W_V``, ``W_in``, ``W_out``; ``W_O``: ``TL[h, j, m] = orig[m, h * d_head + j]``; keep
``W_pos``, ``W_U``, ``b_in``, ``b_out``; drop the ``mask``/``IGNORE`` buffers. The layout of a state dict is told
apart by ``W_O``, which is 2-D in the original layout and 3-D in TransformerLens' (``W_E``'s shape is ambiguous
when d_vocab = d_model).

Block keys are ``blocks.{l}.attn.*`` / ``blocks.{l}.mlp.*``, or ``attn_blocks.{l}.attn.*`` in the paper's
attention-only models (the 2-layer induction-head model of paper.md 6.2). TransformerLens' attention and
unembedding biases (``b_Q``, ``b_K``, ``b_V``, ``b_O``, ``b_U``) must be zero, as in the grokking demo: the paper's
model has none, so a nonzero one is refused rather than dropped. LayerNorm weights are refused likewise.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Literal, Mapping

import numpy as np
import torch

from mechgrok.errors import CheckpointError

__all__ = ["LAYOUTS", "Layout", "ConvertedModel", "detect_layout", "convert_state_dict", "is_state_dict"]

Layout = Literal["original", "transformerlens"]
#: The layouts a state dict can be in.
LAYOUTS: tuple[str, ...] = ("original", "transformerlens")

_BLOCK_RE = re.compile(r"^(blocks|attn_blocks)\.(\d+)\.(.+)$")
_TOP = {"embed.W_E": "W_E", "pos_embed.W_pos": "W_pos", "unembed.W_U": "W_U"}
_ATTN = {"attn.W_Q": "W_Q", "attn.W_K": "W_K", "attn.W_V": "W_V", "attn.W_O": "W_O"}
_MLP = {"mlp.W_in": "W_in", "mlp.b_in": "b_in", "mlp.W_out": "W_out", "mlp.b_out": "b_out"}
_BUFFERS = {"attn.mask", "attn.IGNORE"}
_TL_ZERO_BLOCK = {"attn.b_Q": "b_Q", "attn.b_K": "b_K", "attn.b_V": "b_V", "attn.b_O": "b_O"}
_TL_ZERO_TOP = {"unembed.b_U": "b_U"}


@dataclass
class ConvertedModel:
    """One checkpoint's weights in TransformerLens orientation (numpy float32).

    Attributes
    ----------
    weights : dict of str to numpy.ndarray
        By TransformerLens name. Block weights have a leading ``layer`` axis when ``n_layers > 1``.
    n_layers, d_model, n_heads, d_head, n_ctx, d_vocab, d_vocab_out : int
        Sizes read from the shapes.
    d_mlp : int or None
        None for attention-only models.
    source_keys : dict of str to str
        The state-dict key of each weight (``{layer}`` stands for the layer index in multi-layer models).
    """

    weights: dict[str, np.ndarray]
    n_layers: int
    d_model: int
    n_heads: int
    d_head: int
    n_ctx: int
    d_vocab: int
    d_vocab_out: int
    d_mlp: int | None
    source_keys: dict[str, str] = field(default_factory=dict)

    def sizes(self) -> dict[str, Any]:
        """The sizes as a dict (the shape part of the stored config)."""
        return {
            "n_layers": self.n_layers, "d_model": self.d_model, "n_heads": self.n_heads, "d_head": self.d_head,
            "d_mlp": self.d_mlp, "n_ctx": self.n_ctx, "d_vocab": self.d_vocab, "d_vocab_out": self.d_vocab_out,
            "attn_only": self.d_mlp is None,
        }


def is_state_dict(obj: Any) -> bool:
    """Whether ``obj`` looks like a model state dict (a mapping with an ``embed.W_E`` tensor)."""
    return isinstance(obj, Mapping) and isinstance(obj.get("embed.W_E"), (torch.Tensor, np.ndarray))


def _where(label: str) -> str:
    return f"{label}: " if label else ""


def detect_layout(sd: Mapping[str, Any], *, path: Any = None, label: str = "") -> Layout:
    """Tell the original layout from TransformerLens' by the shapes.

    ``W_O`` of the first block is 2-D (d_model, n_heads * d_head) in the original layout and 3-D
    (n_heads, d_head, d_model) in TransformerLens'. Without ``W_O``, ``embed.W_E`` against ``pos_embed.W_pos``
    decides: (d_model, d_vocab) is original, (d_vocab, d_model) is TransformerLens.

    Raises
    ------
    CheckpointError
        If neither rule decides (the message suggests ``--format``).
    """
    for prefix in ("blocks", "attn_blocks"):
        w_o = sd.get(f"{prefix}.0.attn.W_O")
        if w_o is not None and hasattr(w_o, "ndim"):
            if w_o.ndim == 2:
                return "original"
            if w_o.ndim == 3:
                return "transformerlens"
    w_e, w_pos = sd.get("embed.W_E"), sd.get("pos_embed.W_pos")
    if w_e is not None and w_pos is not None and w_e.ndim == 2 and w_pos.ndim == 2:
        d_model = w_pos.shape[1]
        if w_e.shape[0] == d_model and w_e.shape[1] != d_model:
            return "original"
        if w_e.shape[1] == d_model and w_e.shape[0] != d_model:
            return "transformerlens"
    raise CheckpointError(f"{_where(label)}cannot tell the state-dict layout from its shapes; pass --format", path=path)


def _to_numpy(key: str, value: Any, *, path: Any, label: str) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        t = value.detach()
        if not t.is_floating_point():
            raise CheckpointError(f"{_where(label)}{key} has dtype {t.dtype}, expected a float tensor", path=path)
        return t.to(device="cpu", dtype=torch.float32).numpy()
    if isinstance(value, np.ndarray):
        if not np.issubdtype(value.dtype, np.floating):
            raise CheckpointError(f"{_where(label)}{key} has dtype {value.dtype}, expected floats", path=path)
        return value.astype(np.float32)
    raise CheckpointError(f"{_where(label)}{key} is a {type(value).__name__}, not a tensor", path=path)


def convert_state_dict(sd: Mapping[str, Any], *, layout: Layout, path: Any = None, label: str = "") -> ConvertedModel:
    """Validate a state dict and convert it to TransformerLens names and orientation.

    Parameters
    ----------
    sd : mapping of str to torch.Tensor
        The state dict (any device, float dtypes).
    layout : {"original", "transformerlens"}
        Its layout (see :func:`detect_layout`).
    path, label
        Where it came from, for error messages (the file, and e.g. ``"state_dicts[3]"``).

    Returns
    -------
    ConvertedModel
        float32 numpy weights in TransformerLens orientation.

    Raises
    ------
    CheckpointError
        On a missing or unexpected key, a wrong shape or ndim, a non-float tensor, NaN or Inf values, a
        nonzero attention/unembedding bias (TransformerLens layout) or LayerNorm weights.
    """
    where = _where(label)
    if not isinstance(sd, Mapping):
        raise CheckpointError(f"{where}expected a state dict, got a {type(sd).__name__}", path=path)
    if layout not in LAYOUTS:
        raise CheckpointError(f"unknown layout {layout!r}", path=path)
    try:
        found = detect_layout(sd, path=path, label=label)
    except CheckpointError:
        found = layout  # undecidable from the shapes: trust the caller, the shape checks below still apply
    if found != layout:
        raise CheckpointError(
            f"{where}the state dict is in the {found} layout (W_O is {'2' if found == 'original' else '3'}-D), but the "
            f"format expects the {layout} layout; check --format", path=path)
    top: dict[str, str] = {}
    blocks: dict[int, dict[str, str]] = {}
    prefixes: set[str] = set()
    zero_biases: list[str] = []
    unexpected: list[str] = []
    for key in sd:
        if not isinstance(key, str):
            raise CheckpointError(f"{where}state-dict key {key!r} is not a string", path=path)
        if key in _TOP:
            top[_TOP[key]] = key
            continue
        if layout == "transformerlens" and key in _TL_ZERO_TOP:
            zero_biases.append(key)
            continue
        m = _BLOCK_RE.match(key)
        if m is None:
            unexpected.append(key)
            continue
        prefix, layer, rest = m.group(1), int(m.group(2)), m.group(3)
        if rest in _BUFFERS:
            continue
        if rest in _ATTN or rest in _MLP:
            prefixes.add(prefix)
            blocks.setdefault(layer, {})[(_ATTN | _MLP)[rest]] = key
        elif layout == "transformerlens" and rest in _TL_ZERO_BLOCK:
            zero_biases.append(key)
        else:
            unexpected.append(key)
    if unexpected:
        shown = ", ".join(sorted(unexpected)[:4])
        raise CheckpointError(
            f"{where}unexpected state-dict keys ({shown}{', ...' if len(unexpected) > 4 else ''}): mechgrok's model has "
            "no such weights (no LayerNorm, no attention or unembedding biases)", path=path)
    for name, key in (("W_E", "embed.W_E"), ("W_pos", "pos_embed.W_pos"), ("W_U", "unembed.W_U")):
        if name not in top:
            raise CheckpointError(f"{where}missing key {key!r}", path=path)
    if not blocks:
        raise CheckpointError(f"{where}no transformer blocks (keys blocks.0.attn.W_Q, ...) in the state dict", path=path)
    if len(prefixes) > 1:
        raise CheckpointError(f"{where}mixes 'blocks.*' and 'attn_blocks.*' keys", path=path)
    prefix = prefixes.pop()
    n_layers = max(blocks) + 1
    has_mlp = any(n in blocks[min(blocks)] for n in _MLP.values())
    needed = list(_ATTN.values()) + (list(_MLP.values()) if has_mlp else [])
    rest_of = {v: k for k, v in (_ATTN | _MLP).items()}
    for layer in range(n_layers):
        for name in needed:
            if name not in blocks.get(layer, {}):
                raise CheckpointError(f"{where}missing key '{prefix}.{layer}.{rest_of[name]}'", path=path)
        extra = set(blocks[layer]) - set(needed)
        if extra:
            raise CheckpointError(
                f"{where}layer {layer} has MLP weights but layer {min(blocks)} has none (mixed block types)", path=path)

    arr = {k: _to_numpy(k, sd[k], path=path, label=label) for keys in (top.values(), *[b.values() for b in blocks.values()]) for k in keys}
    zeros = {k: _to_numpy(k, sd[k], path=path, label=label) for k in zero_biases}
    for k, a in {**arr, **zeros}.items():
        if not np.isfinite(a).all():
            raise CheckpointError(f"{where}{k} holds NaN or Inf values", path=path)

    w_pos = arr[top["W_pos"]]
    if w_pos.ndim != 2:
        raise CheckpointError(f"{where}pos_embed.W_pos has shape {w_pos.shape}, expected (n_ctx, d_model)", path=path)
    n_ctx, d_model = w_pos.shape
    w_q0 = arr[blocks[0]["W_Q"]]
    if w_q0.ndim != 3:
        raise CheckpointError(f"{where}{blocks[0]['W_Q']} has shape {w_q0.shape}, expected 3 dims (n_heads, ...)", path=path)
    if layout == "original":
        n_heads, d_head = w_q0.shape[0], w_q0.shape[1]
        d_vocab = arr[top["W_E"]].shape[1] if arr[top["W_E"]].ndim == 2 else -1
    else:
        n_heads, d_head = w_q0.shape[0], w_q0.shape[2]
        d_vocab = arr[top["W_E"]].shape[0] if arr[top["W_E"]].ndim == 2 else -1
    d_vocab_out = arr[top["W_U"]].shape[1] if arr[top["W_U"]].ndim == 2 else -1
    d_mlp = None
    if has_mlp:
        w_in0 = arr[blocks[0]["W_in"]]
        if w_in0.ndim == 2:
            d_mlp = w_in0.shape[0] if layout == "original" else w_in0.shape[1]
        else:
            d_mlp = -1

    H, D, M, F, V, O = n_heads, d_head, d_model, d_mlp, d_vocab, d_vocab_out
    if layout == "original":
        expect = {
            "W_E": ((M, V), "(d_model, d_vocab)"), "W_pos": ((n_ctx, M), "(n_ctx, d_model)"),
            "W_U": ((M, O), "(d_model, d_vocab_out)"),
            "W_Q": ((H, D, M), "(n_heads, d_head, d_model)"), "W_K": ((H, D, M), "(n_heads, d_head, d_model)"),
            "W_V": ((H, D, M), "(n_heads, d_head, d_model)"), "W_O": ((M, H * D), "(d_model, n_heads * d_head)"),
            "W_in": ((F, M), "(d_mlp, d_model)"), "b_in": ((F,), "(d_mlp,)"),
            "W_out": ((M, F), "(d_model, d_mlp)"), "b_out": ((M,), "(d_model,)"),
        }
    else:
        expect = {
            "W_E": ((V, M), "(d_vocab, d_model)"), "W_pos": ((n_ctx, M), "(n_ctx, d_model)"),
            "W_U": ((M, O), "(d_model, d_vocab_out)"),
            "W_Q": ((H, M, D), "(n_heads, d_model, d_head)"), "W_K": ((H, M, D), "(n_heads, d_model, d_head)"),
            "W_V": ((H, M, D), "(n_heads, d_model, d_head)"), "W_O": ((H, D, M), "(n_heads, d_head, d_model)"),
            "W_in": ((M, F), "(d_model, d_mlp)"), "b_in": ((F,), "(d_mlp,)"),
            "W_out": ((F, M), "(d_mlp, d_model)"), "b_out": ((M,), "(d_model,)"),
            "b_Q": ((H, D), "(n_heads, d_head)"), "b_K": ((H, D), "(n_heads, d_head)"),
            "b_V": ((H, D), "(n_heads, d_head)"), "b_O": ((M,), "(d_model,)"), "b_U": ((O,), "(d_vocab_out,)"),
        }

    def check(name: str, key: str, a: np.ndarray) -> None:
        shape, dims = expect[name]
        if a.shape != shape:
            raise CheckpointError(
                f"{where}{key} has shape {tuple(a.shape)}, expected {shape} = {dims} for the {layout} layout "
                f"(d_model={M}, n_heads={H}, d_head={D}{'' if F is None else f', d_mlp={F}'})", path=path)

    for name, key in top.items():
        check(name, key, arr[key])
    for layer, names in blocks.items():
        for name, key in names.items():
            check(name, key, arr[key])
    for key in zero_biases:
        rest = _BLOCK_RE.match(key).group(3) if _BLOCK_RE.match(key) else key
        name = _TL_ZERO_BLOCK.get(rest) or _TL_ZERO_TOP[key]
        check(name, key, zeros[key])
        if np.any(zeros[key] != 0):
            raise CheckpointError(
                f"{where}{key} is nonzero: the paper's model has no attention or unembedding biases, so this "
                "model cannot be represented faithfully", path=path)

    def tl(name: str, a: np.ndarray) -> np.ndarray:
        if layout == "transformerlens" or name in ("W_pos", "W_U", "b_in", "b_out"):
            return a
        if name == "W_O":
            return np.ascontiguousarray(a.T.reshape(H, D, M))
        return np.ascontiguousarray(np.swapaxes(a, -1, -2))

    weights: dict[str, np.ndarray] = {name: tl(name, arr[key]) for name, key in top.items()}
    source_keys = {name: key for name, key in top.items()}
    for name in needed:
        per_layer = [tl(name, arr[blocks[layer][name]]) for layer in range(n_layers)]
        weights[name] = per_layer[0] if n_layers == 1 else np.stack(per_layer)
        key = blocks[0][name]
        source_keys[name] = key if n_layers == 1 else key.replace(f"{prefix}.0.", f"{prefix}.{{layer}}.", 1)
    order = ["W_E", "W_pos", "W_Q", "W_K", "W_V", "W_O", "W_in", "b_in", "W_out", "b_out", "W_U"]
    weights = {n: weights[n] for n in order if n in weights}
    return ConvertedModel(
        weights=weights, n_layers=n_layers, d_model=M, n_heads=H, d_head=D, n_ctx=n_ctx, d_vocab=V,
        d_vocab_out=O, d_mlp=F, source_keys={n: source_keys[n] for n in weights},
    )
