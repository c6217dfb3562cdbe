"""The paper's one-layer transformer, with TransformerLens names and orientation.

Architecture (Nanda et al. 2023, Appendix A; paper.md 2.1-2.2): token and learned positional embeddings, one
causal attention layer (no biases, scores scaled by 1/sqrt(d_head)), a ReLU MLP with biases, an untied
unembedding, no LayerNorm. Only the final (``=``) position is read out; in a one-layer model it depends on the
embeddings of all three positions, the keys and values of all three positions, and the query of the last one,
so computing just that position is exact.

Weights (TransformerLens orientation, input -> output):

============  ==========================  ==================
name          shape                       state-dict key
============  ==========================  ==================
``W_E``       (d_vocab, d_model)          ``embed.W_E``
``W_pos``     (n_ctx, d_model)            ``pos_embed.W_pos``
``W_Q``       (n_heads, d_model, d_head)  ``blocks.0.attn.W_Q``
``W_K``       (n_heads, d_model, d_head)  ``blocks.0.attn.W_K``
``W_V``       (n_heads, d_model, d_head)  ``blocks.0.attn.W_V``
``W_O``       (n_heads, d_head, d_model)  ``blocks.0.attn.W_O``
``W_in``      (d_model, d_mlp)            ``blocks.0.mlp.W_in``
``b_in``      (d_mlp,)                    ``blocks.0.mlp.b_in``
``W_out``     (d_mlp, d_model)            ``blocks.0.mlp.W_out``
``b_out``     (d_model,)                  ``blocks.0.mlp.b_out``
``W_U``       (d_model, d_vocab_out)      ``unembed.W_U``
============  ==========================  ==================

:func:`forward` is functional and accepts weights with any number of leading dims (e.g. a ``checkpoint`` dim),
so the analyses run one batched pass over many checkpoints with the very same code the trainer uses. The
re-arranged forward over the whole p x p input grid of modular arithmetic lives with modular arithmetic
(:func:`mechgrok.analyses.modular.grid.grid_forward`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

import torch
from torch import nn

from mechgrok.config import Config

__all__ = [
    "PARAM_KEYS",
    "WEIGHT_NAMES",
    "Transformer",
    "ForwardOutput",
    "forward",
    "init_params",
    "param_shapes",
]

#: TransformerLens short name -> state-dict key.
PARAM_KEYS: dict[str, str] = {
    "W_E": "embed.W_E",
    "W_pos": "pos_embed.W_pos",
    "W_Q": "blocks.0.attn.W_Q",
    "W_K": "blocks.0.attn.W_K",
    "W_V": "blocks.0.attn.W_V",
    "W_O": "blocks.0.attn.W_O",
    "W_in": "blocks.0.mlp.W_in",
    "b_in": "blocks.0.mlp.b_in",
    "W_out": "blocks.0.mlp.W_out",
    "b_out": "blocks.0.mlp.b_out",
    "W_U": "unembed.W_U",
}
#: The weight names in canonical order.
WEIGHT_NAMES: tuple[str, ...] = tuple(PARAM_KEYS)


def param_shapes(cfg: Config) -> dict[str, tuple[int, ...]]:
    """Shape of every weight for a config, keyed by TransformerLens name."""
    h, m, d, f = cfg.n_heads, cfg.d_model, cfg.d_head, cfg.d_mlp
    return {
        "W_E": (cfg.d_vocab, m),
        "W_pos": (cfg.n_ctx, m),
        "W_Q": (h, m, d),
        "W_K": (h, m, d),
        "W_V": (h, m, d),
        "W_O": (h, d, m),
        "W_in": (m, f),
        "b_in": (f,),
        "W_out": (f, m),
        "b_out": (m,),
        "W_U": (m, cfg.d_vocab_out),
    }


def init_params(cfg: Config, *, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """The paper's initialisation (released ``transformers.py``), float32.

    Every weight is normal with standard deviation 1/sqrt(d_model), except ``W_U`` with 1/sqrt(d_vocab)
    (d_vocab = p + 1); biases are zero.

    Parameters
    ----------
    cfg : Config
    generator : torch.Generator, optional
        Source of randomness; by default one seeded with ``cfg.model_seed``.

    Returns
    -------
    dict of str to torch.Tensor
        Keyed by TransformerLens name, shapes from :func:`param_shapes`.
    """
    if generator is None:
        generator = torch.Generator().manual_seed(cfg.model_seed)
    out: dict[str, torch.Tensor] = {}
    for name, shape in param_shapes(cfg).items():
        if name.startswith("b_"):
            out[name] = torch.zeros(shape)
            continue
        std = 1 / math.sqrt(cfg.d_vocab) if name == "W_U" else 1 / math.sqrt(cfg.d_model)
        out[name] = torch.randn(shape, generator=generator) * std
    return out


@dataclass
class ForwardOutput:
    """What :func:`forward` returns. Leading dims ``...`` are those of the weights (e.g. checkpoint).

    Attributes
    ----------
    logits : torch.Tensor
        (..., batch, d_vocab_out), at the final position.
    attn_pattern : torch.Tensor or None
        (..., batch, head, pos): attention from the final position to each position.
    mlp_post : torch.Tensor or None
        (..., batch, d_mlp): ReLU MLP activations at the final position (``blocks.0.mlp.hook_post``).
    resid_mid : torch.Tensor or None
        (..., batch, d_model): residual stream after attention at the final position.
    resid_post : torch.Tensor or None
        (..., batch, d_model): residual stream after the MLP at the final position.
    """

    logits: torch.Tensor
    attn_pattern: torch.Tensor | None = None
    mlp_post: torch.Tensor | None = None
    resid_mid: torch.Tensor | None = None
    resid_post: torch.Tensor | None = None


def forward(
    params: Mapping[str, torch.Tensor], tokens: torch.Tensor, *, cache: bool = False, attn_coeff: float = 1.0
) -> ForwardOutput:
    """Final-position forward pass of the paper's model (and of the Pizza family of Zhong et al. 2023).

    Parameters
    ----------
    params : mapping of str to torch.Tensor
        Weights by TransformerLens name (shapes of :func:`param_shapes`), optionally with the same leading dims
        ``...`` on every weight (for example a checkpoint dim), which are carried through.
    tokens : torch.Tensor
        int64, (batch, n_ctx); the last position is the read-out position.
    cache : bool
        Also return the attention pattern, MLP post-activations and residual stream.
    attn_coeff : float
        The attention rate alpha (``Config.attn_coeff``): attention = alpha * softmax(scores) + (1 - alpha)
        (Zhong et al. 2023, section 5; 1, the default, is the paper's softmax attention).

    Returns
    -------
    ForwardOutput
        Logits (..., batch, d_vocab_out) and, with ``cache``, the activations.

    Notes
    -----
    The read-out is the last position, ``=`` in ``[a, b, =]`` or b in ``[a, b]`` (``Config.equals_token``). Its
    row of a causal mask is all ones, so with or without the mask (``Config.causal_mask``) the read-out is the
    same in a one-layer model; none is applied here.
    """
    W_E, W_pos = params["W_E"], params["W_pos"]
    d_head = params["W_Q"].shape[-1]
    n_ctx = tokens.shape[-1]
    d_vocab = W_E.shape[-2]
    # The residual stream before attention depends only on (position, token), so keys, values and the query are
    # computed once per (position, token) and gathered per example: far fewer FLOPs than per example whenever the
    # batch is larger than the vocabulary (training, the p x p grid); for a smaller batch, per example.
    if tokens[..., 0].numel() < d_vocab:  # fewer examples than tokens (e.g. a few triples): embed per example
        x = W_E[..., tokens, :] + W_pos[..., :n_ctx, :]  # (..., batch, pos, d_model)
        k = torch.einsum("...bpm,...hmd->...bphd", x, params["W_K"])  # (..., batch, pos, head, d_head)
        v = torch.einsum("...bpm,...hmd->...bphd", x, params["W_V"])
        q = torch.einsum("...bm,...hmd->...bhd", x[..., -1, :], params["W_Q"])  # (..., batch, head, d_head)
        resid_final = x[..., -1, :]  # (..., batch, d_model) at the last position
    else:
        embed = W_E[..., None, :, :] + W_pos[..., :n_ctx, None, :]  # (..., pos, vocab, d_model)
        flat = (torch.arange(n_ctx, device=tokens.device) * d_vocab + tokens).reshape(-1)  # (batch * pos,)
        k_tab = torch.einsum("...pvm,...hmd->...pvhd", embed, params["W_K"]).flatten(-4, -3)  # (..., pos*vocab, h, d)
        v_tab = torch.einsum("...pvm,...hmd->...pvhd", embed, params["W_V"]).flatten(-4, -3)
        q_tab = torch.einsum("...vm,...hmd->...vhd", embed[..., -1, :, :], params["W_Q"])  # (..., vocab, h, d)
        batch_shape = (*tokens.shape[:-1], n_ctx)
        k = k_tab[..., flat, :, :].unflatten(-3, batch_shape)  # (..., batch, pos, head, d_head)
        v = v_tab[..., flat, :, :].unflatten(-3, batch_shape)
        q = q_tab[..., tokens[:, -1], :, :]  # (..., batch, head, d_head)
        resid_final = embed.flatten(-3, -2)[..., flat[n_ctx - 1 :: n_ctx], :]  # (..., batch, d_model) at the last position
    # the last position attends to every position (causal mask is all ones on the last row)
    scores = torch.einsum("...bhd,...bphd->...bhp", q, k) / math.sqrt(d_head)
    pattern = scores.softmax(dim=-1)
    if attn_coeff != 1:
        pattern = attn_coeff * pattern + (1 - attn_coeff)
    z = torch.einsum("...bhp,...bphd->...bhd", pattern, v)
    attn_out = torch.einsum("...bhd,...hdm->...bm", z, params["W_O"])
    resid_mid = resid_final + attn_out
    pre = resid_mid @ params["W_in"] + params["b_in"][..., None, :]
    post = torch.relu(pre)
    resid_post = resid_mid + post @ params["W_out"] + params["b_out"][..., None, :]
    logits = resid_post @ params["W_U"]
    if not cache:
        return ForwardOutput(logits=logits)
    return ForwardOutput(logits=logits, attn_pattern=pattern, mlp_post=post, resid_mid=resid_mid, resid_post=resid_post)


class Transformer(nn.Module):
    """The paper's model as an ``nn.Module`` (parameters named as in :data:`PARAM_KEYS`).

    Parameters
    ----------
    cfg : Config
        Sizes; the weights are initialised by :func:`init_params` with ``cfg.model_seed``.

    Notes
    -----
    ``state_dict()`` keys are the TransformerLens ones (``embed.W_E``, ``blocks.0.attn.W_Q``, ...).
    """

    def __init__(self, cfg: Config):
        super().__init__()
        self.cfg = cfg
        init = init_params(cfg)
        self.embed = nn.Module()
        self.pos_embed = nn.Module()
        self.unembed = nn.Module()
        block = nn.Module()
        block.attn = nn.Module()
        block.mlp = nn.Module()
        self.blocks = nn.ModuleList([block])
        for name, key in PARAM_KEYS.items():
            *path, leaf = key.split(".")
            mod: nn.Module = self
            for part in path:
                mod = mod[int(part)] if part.isdigit() else getattr(mod, part)
            mod.register_parameter(leaf, nn.Parameter(init[name]))

    def params(self) -> dict[str, torch.Tensor]:
        """The weights keyed by TransformerLens short name (views, not copies)."""
        sd = dict(self.named_parameters())
        return {name: sd[key] for name, key in PARAM_KEYS.items()}

    def forward(self, tokens: torch.Tensor, *, cache: bool = False) -> ForwardOutput:
        """See :func:`forward` (with the config's ``attn_coeff``)."""
        return forward(self.params(), tokens, cache=cache, attn_coeff=self.cfg.attn_coeff)
