"""The authors' causal transformer read out at every position: the 1-layer MLP model of n-digit addition and
the 2-layer attention-only model of the induction-head runs, with TransformerLens names and orientation.

Architecture (the authors' ``Transformer`` class of the phase-change notebook, tasks.md sections 1-2):
token and learned positional embeddings, ``n_layers`` blocks of causal attention (no biases, scores scaled by
1/sqrt(d_head), masked with a lower-triangular mask) optionally followed by a ReLU MLP with biases, an untied
unembedding, no LayerNorm. The paper's modular model (:mod:`mechgrok.models.transformer`) is the same
architecture read out at its last position only; this module computes every position, which the sequence
tasks need.

**The doubled residual (induction model).** The attention-only blocks of the released induction-head runs
compute ``x <- x + (x + attn(x))``: the residual stream is doubled at every layer (the authors' block adds the
attention output to ``x`` and the result is added to ``x`` again). The released weights depend on it (without it
the finite model's test loss is 1.746 instead of 1.2306), so :class:`SequenceModelSizes` has
``doubled_residual`` (True for the induction presets, False for addition) and :func:`forward` honours it.

Weights (TransformerLens orientation; block weights get a leading ``layer`` axis when ``n_layers > 1``):
``W_E`` (d_vocab, d_model), ``W_pos`` (n_ctx, d_model), ``W_Q``/``W_K``/``W_V`` ([layer,] head, d_model, d_head),
``W_O`` ([layer,] head, d_head, d_model), ``W_in`` ([layer,] d_model, d_mlp), ``b_in``, ``W_out``, ``b_out`` (no MLP
weights in attention-only models), ``W_U`` (d_model, d_vocab_out). State-dict keys are TransformerLens'
(``blocks.{l}.attn.W_Q``, ...), so a run's checkpoints load with the existing readers.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Mapping

import torch
from torch import nn

from mechgrok.errors import ConfigError

__all__ = ["SequenceModelSizes", "SequenceOutput", "param_shapes", "state_dict_keys", "init_params", "forward",
           "SequenceTransformer"]


@dataclass(frozen=True)
class SequenceModelSizes:
    """Sizes of a causal sequence model.

    Attributes
    ----------
    n_layers, d_model, n_heads, d_head : int
    d_mlp : int or None
        None for an attention-only model.
    n_ctx, d_vocab, d_vocab_out : int
    doubled_residual : bool
        ``x <- x + (x + attn(x))`` in every block (the released induction model's quirk, module docstring).
    """

    n_layers: int
    d_model: int
    n_heads: int
    d_head: int
    d_mlp: int | None
    n_ctx: int
    d_vocab: int
    d_vocab_out: int
    doubled_residual: bool = False

    def __post_init__(self) -> None:
        for name in ("n_layers", "d_model", "n_heads", "d_head", "n_ctx", "d_vocab", "d_vocab_out"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ConfigError(f"{name} must be a positive integer, got {v!r}")
        if self.d_mlp is not None and (not isinstance(self.d_mlp, int) or self.d_mlp < 1):
            raise ConfigError(f"d_mlp must be a positive integer or None, got {self.d_mlp!r}")

    def to_dict(self) -> dict[str, Any]:
        """The sizes as a plain dict."""
        return asdict(self)


@dataclass
class SequenceOutput:
    """What :func:`forward` returns (leading dims ``...`` are those of the weights, e.g. checkpoint).

    Attributes
    ----------
    logits : torch.Tensor
        (..., batch, pos, d_vocab_out) at every position.
    attn_pattern : torch.Tensor or None
        With ``cache``: (..., layer, batch, head, query_pos, key_pos), the attention of every layer (a ``layer``
        axis of size 1 for one-layer models).
    """

    logits: torch.Tensor
    attn_pattern: torch.Tensor | None = None


def param_shapes(sizes: SequenceModelSizes) -> dict[str, tuple[int, ...]]:
    """Shape of every weight, by TransformerLens name (a leading layer axis on block weights when n_layers > 1).

    Examples
    --------
    >>> s = SequenceModelSizes(2, 48, 4, 12, None, 85, 128, 128, True)
    >>> param_shapes(s)["W_Q"], "W_in" in param_shapes(s)
    ((2, 4, 48, 12), False)
    """
    L = (sizes.n_layers,) if sizes.n_layers > 1 else ()
    h, m, d = sizes.n_heads, sizes.d_model, sizes.d_head
    out: dict[str, tuple[int, ...]] = {
        "W_E": (sizes.d_vocab, m), "W_pos": (sizes.n_ctx, m),
        "W_Q": (*L, h, m, d), "W_K": (*L, h, m, d), "W_V": (*L, h, m, d), "W_O": (*L, h, d, m),
    }
    if sizes.d_mlp is not None:
        f = sizes.d_mlp
        out.update({"W_in": (*L, m, f), "b_in": (*L, f), "W_out": (*L, f, m), "b_out": (*L, m)})
    out["W_U"] = (m, sizes.d_vocab_out)
    return out


def state_dict_keys(sizes: SequenceModelSizes) -> dict[str, list[str]]:
    """TransformerLens state-dict keys of each weight: one key, or one per layer for block weights."""
    top = {"W_E": "embed.W_E", "W_pos": "pos_embed.W_pos", "W_U": "unembed.W_U"}
    out: dict[str, list[str]] = {}
    for name in param_shapes(sizes):
        if name in top:
            out[name] = [top[name]]
        else:
            part = "attn" if name.startswith("W_") and name[2] in "QKVO" else "mlp"
            out[name] = [f"blocks.{l}.{part}.{name}" for l in range(sizes.n_layers)]
    return out


def init_params(sizes: SequenceModelSizes, *, seed: int = 0) -> dict[str, torch.Tensor]:
    """The authors' initialisation, float32: normal with std 1/sqrt(d_model), ``W_U`` 1/sqrt(d_vocab_out),
    zero biases (the notebook's ``Embed``, ``Attention``, ``MLP``, ``Unembed``).

    Examples
    --------
    >>> p = init_params(SequenceModelSizes(1, 8, 2, 4, 16, 9, 12, 10), seed=0)
    >>> tuple(p["W_O"].shape), float(p["b_in"].abs().sum())
    ((2, 4, 8), 0.0)
    """
    g = torch.Generator().manual_seed(int(seed))
    out = {}
    for name, shape in param_shapes(sizes).items():
        if name.startswith("b_"):
            out[name] = torch.zeros(shape)
        else:
            std = 1 / math.sqrt(sizes.d_vocab_out) if name == "W_U" else 1 / math.sqrt(sizes.d_model)
            out[name] = torch.randn(shape, generator=g) * std
    return out


def _layer(w: torch.Tensor, l: int, n_layers: int, ndim: int) -> torch.Tensor:
    """Layer ``l`` of a block weight whose own dims are the last ``ndim`` (no layer axis when n_layers == 1)."""
    return w if n_layers == 1 else w.select(-ndim - 1, l)


def forward(params: Mapping[str, torch.Tensor], tokens: torch.Tensor, *, n_layers: int,
            doubled_residual: bool = False, cache: bool = False) -> SequenceOutput:
    """Logits at every position of a causal transformer (module docstring).

    Parameters
    ----------
    params : mapping of str to torch.Tensor
        Weights by TransformerLens name (shapes of :func:`param_shapes`), optionally all with the same leading
        dims ``...`` (e.g. a checkpoint dim of size 1). No ``W_in`` means attention-only.
    tokens : torch.Tensor
        int64, (batch, pos) with pos <= n_ctx.
    n_layers : int
        Number of blocks (block weights have a layer axis when it is more than 1).
    doubled_residual : bool
        ``x <- x + (x + attn(x))`` (the induction model); else ``x <- x + attn(x)``.
    cache : bool
        Also return the attention patterns.

    Returns
    -------
    SequenceOutput
        ``logits`` (..., batch, pos, d_vocab_out), in the weights' dtype.

    Examples
    --------
    >>> s = SequenceModelSizes(2, 8, 2, 4, None, 6, 5, 5, True)
    >>> out = forward(init_params(s), torch.tensor([[0, 1, 2, 3]]), n_layers=2, doubled_residual=True, cache=True)
    >>> tuple(out.logits.shape), tuple(out.attn_pattern.shape)
    ((1, 4, 5), (2, 1, 2, 4, 4))
    """
    W_E = params["W_E"]
    n = tokens.shape[-1]
    x = W_E[..., tokens, :] + params["W_pos"][..., None, :n, :]  # (..., batch, pos, d_model)
    causal = torch.ones(n, n, dtype=torch.bool, device=tokens.device).tril()
    patterns = []
    for l in range(n_layers):
        W_Q = _layer(params["W_Q"], l, n_layers, 3)
        W_K = _layer(params["W_K"], l, n_layers, 3)
        W_V = _layer(params["W_V"], l, n_layers, 3)
        W_O = _layer(params["W_O"], l, n_layers, 3)
        q = torch.einsum("...bpm,...hmd->...bhpd", x, W_Q)
        k = torch.einsum("...bpm,...hmd->...bhpd", x, W_K)
        v = torch.einsum("...bpm,...hmd->...bhpd", x, W_V)
        scores = torch.einsum("...bhqd,...bhkd->...bhqk", q, k) / math.sqrt(W_Q.shape[-1])
        pattern = scores.masked_fill(~causal, float("-inf")).softmax(dim=-1)
        z = torch.einsum("...bhqk,...bhkd->...bhqd", pattern, v)
        attn_out = torch.einsum("...bhqd,...hdm->...bqm", z, W_O)
        x = x + (x + attn_out) if doubled_residual else x + attn_out
        if "W_in" in params:
            W_in = _layer(params["W_in"], l, n_layers, 2)
            b_in = _layer(params["b_in"], l, n_layers, 1)
            W_out = _layer(params["W_out"], l, n_layers, 2)
            b_out = _layer(params["b_out"], l, n_layers, 1)
            post = torch.relu(x @ W_in[..., None, :, :] + b_in[..., None, None, :])
            x = x + post @ W_out[..., None, :, :] + b_out[..., None, None, :]
        if cache:
            patterns.append(pattern)
    logits = x @ params["W_U"][..., None, :, :]
    return SequenceOutput(logits=logits, attn_pattern=torch.stack(patterns, dim=-5) if cache else None)


class SequenceTransformer(nn.Module):
    """:func:`forward` as an ``nn.Module`` for training; parameters by TransformerLens name.

    Parameters
    ----------
    sizes : SequenceModelSizes
    seed : int
        Initialisation seed (:func:`init_params`).
    """

    def __init__(self, sizes: SequenceModelSizes, *, seed: int = 0):
        super().__init__()
        self.sizes = sizes
        self.weights = nn.ParameterDict({k: nn.Parameter(v) for k, v in init_params(sizes, seed=seed).items()})

    def params(self) -> dict[str, torch.Tensor]:
        """The weights by TransformerLens name (the parameters themselves)."""
        return dict(self.weights)

    def state_dict_tl(self) -> dict[str, torch.Tensor]:
        """Detached copies of the weights under TransformerLens state-dict keys (one key per layer)."""
        out = {}
        for name, keys in state_dict_keys(self.sizes).items():
            w = self.weights[name].detach()
            for l, key in enumerate(keys):
                out[key] = (w if len(keys) == 1 else w[l]).clone()
        return out

    def forward(self, tokens: torch.Tensor, *, cache: bool = False) -> SequenceOutput:
        """See :func:`forward`."""
        return forward(self.params(), tokens, n_layers=self.sizes.n_layers,
                       doubled_residual=self.sizes.doubled_residual, cache=cache)
