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
so the analyses run one batched pass over many checkpoints with the very same code the trainer uses.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

import torch
from torch import nn

from mechgrok.config import Config
from mechgrok.errors import AnalysisError

__all__ = [
    "PARAM_KEYS",
    "WEIGHT_NAMES",
    "Transformer",
    "ForwardOutput",
    "forward",
    "grid_forward",
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


def forward(params: Mapping[str, torch.Tensor], tokens: torch.Tensor, *, cache: bool = False) -> ForwardOutput:
    """Final-position forward pass of the paper's model.

    Parameters
    ----------
    params : mapping of str to torch.Tensor
        Weights by TransformerLens name (shapes of :func:`param_shapes`), optionally with the same leading dims
        ``...`` on every weight (for example a checkpoint dim), which are carried through.
    tokens : torch.Tensor
        int64, (batch, n_ctx); the last position is the read-out position.
    cache : bool
        Also return the attention pattern, MLP post-activations and residual stream.

    Returns
    -------
    ForwardOutput
        Logits (..., batch, d_vocab_out) and, with ``cache``, the activations.
    """
    W_E, W_pos = params["W_E"], params["W_pos"]
    d_head = params["W_Q"].shape[-1]
    n_ctx = tokens.shape[-1]
    d_vocab = W_E.shape[-2]
    # The residual stream before attention depends only on (position, token), so keys, values and the query are
    # computed once per (position, token) and gathered per example: far fewer FLOPs than per example whenever the
    # batch is larger than the vocabulary (training, the p x p grid).
    embed = W_E[..., None, :, :] + W_pos[..., :n_ctx, None, :]  # (..., pos, vocab, d_model)
    flat = (torch.arange(n_ctx, device=tokens.device) * d_vocab + tokens).reshape(-1)  # (batch * pos,)
    k_tab = torch.einsum("...pvm,...hmd->...pvhd", embed, params["W_K"]).flatten(-4, -3)  # (..., pos*vocab, h, d)
    v_tab = torch.einsum("...pvm,...hmd->...pvhd", embed, params["W_V"]).flatten(-4, -3)
    q_tab = torch.einsum("...vm,...hmd->...vhd", embed[..., -1, :, :], params["W_Q"])  # (..., vocab, h, d)
    batch_shape = (*tokens.shape[:-1], n_ctx)
    k = k_tab[..., flat, :, :].unflatten(-3, batch_shape)  # (..., batch, pos, head, d_head)
    v = v_tab[..., flat, :, :].unflatten(-3, batch_shape)
    q = q_tab[..., tokens[:, -1], :, :]  # (..., batch, head, d_head)
    # the last position attends to every position (causal mask is all ones on the last row)
    scores = torch.einsum("...bhd,...bphd->...bhp", q, k) / math.sqrt(d_head)
    pattern = scores.softmax(dim=-1)
    z = torch.einsum("...bhp,...bphd->...bhd", pattern, v)
    resid_final = embed.flatten(-3, -2)[..., flat[n_ctx - 1 :: n_ctx], :]  # (..., batch, d_model) at the last position
    attn_out = torch.einsum("...bhd,...hdm->...bm", z, params["W_O"])
    resid_mid = resid_final + attn_out
    pre = resid_mid @ params["W_in"] + params["b_in"][..., None, :]
    post = torch.relu(pre)
    resid_post = resid_mid + post @ params["W_out"] + params["b_out"][..., None, :]
    logits = resid_post @ params["W_U"]
    if not cache:
        return ForwardOutput(logits=logits)
    return ForwardOutput(logits=logits, attn_pattern=pattern, mlp_post=post, resid_mid=resid_mid, resid_post=resid_post)


#: Rows of the p x p grid per block in :func:`grid_forward` (a block's MLP activations stay in cache).
_GRID_BLOCK_ROWS = 512


def grid_forward(
    params: Mapping[str, torch.Tensor],
    p: int,
    *,
    cache: bool = False,
    dtype: torch.dtype | None = None,
    out: torch.Tensor | None = None,
) -> ForwardOutput:
    """Final-position forward pass on the whole p x p input grid ``[a, b, =]``, from per-token tables.

    The same function as ``forward(params, grid_tokens(p))`` (up to rounding), arranged for the grid. In a
    one-layer model the residual at ``=`` after attention is

        resid_mid[a, b] = x_= + sum_h (A_h0(a, b) OV_h(x_0[a]) + A_h1(a, b) OV_h(x_1[b]) + A_h2(a, b) OV_h(x_=)),

    with x_i[t] = W_E[t] + W_pos[i], OV_h(x) = x W_V[h] W_O[h] and A the attention pattern from ``=``. It is
    linear in per-token tables, so the MLP input ``resid_mid W_in + b_in`` and the direct path
    ``(resid_mid + b_out) W_U`` are combinations of (token, head) tables already multiplied through ``W_in``
    and ``W_U``: 2 n_heads + 1 terms per example instead of a (d_model x d_mlp) product. The only full-size
    product left is ``mlp_post @ (W_out W_U)`` (d_mlp x d_vocab_out), so a checkpoint costs about
    2 p^2 d_mlp d_vocab_out FLOPs instead of 2 p^2 (d_model^2 + 2 d_model d_mlp + d_model d_vocab_out). The
    rearrangement is exact in real arithmetic; it is not the approximation of uniform attention.

    Parameters
    ----------
    params : mapping of str to torch.Tensor
        Weights by TransformerLens name (:func:`param_shapes`), optionally with the same leading dims ``...``
        on every weight (e.g. a checkpoint dim). ``W_U`` may be sliced to fewer output columns (e.g.
        ``W_U[..., :p]`` to skip the ``=`` class); the logits have as many columns.
    p : int
        The modulus; the vocabulary holds the residues 0..p-1 and ``=`` (id p), ``n_ctx`` is 3.
    cache : bool
        Also return the attention pattern, the MLP activations and ``resid_mid``.
    dtype : torch.dtype, optional
        Arithmetic precision of every step (default: that of ``params["W_E"]``). float64 gives logits exact
        to about 1e-15 relative; float32 is twice as fast and about 1e-7 relative.
    out : torch.Tensor, optional
        A contiguous tensor of ``dtype`` to hold the logits, reused from call to call to spare fresh memory
        (one checkpoint: at least p * p * n_out elements); by default one is allocated.

    Returns
    -------
    ForwardOutput
        ``logits`` (..., p*p, n_out), rows in the order a * p + b as :func:`mechgrok.data.grid_tokens`; with
        ``cache``: ``attn_pattern`` (..., p*p, head, pos), ``mlp_post`` (..., p*p, d_mlp), ``resid_mid``
        (..., p*p, d_model). ``resid_post`` is not computed (it would need the d_mlp x d_model product this
        function avoids); use :func:`forward` for it.

    Raises
    ------
    AnalysisError
        If ``out`` is given but is not a contiguous ``dtype`` tensor large enough for the logits.

    Notes
    -----
    For analysis only (in-place operations; no gradients): the trainer uses :func:`forward`. Checkpoints are
    computed one at a time in row blocks of about 512 pairs whose MLP activations stay in cache, so the results
    of a checkpoint do not depend on the other checkpoints passed with it.
    """
    lead = params["W_E"].shape[:-2]
    dtype = dtype or params["W_E"].dtype
    w = {k: params[k].reshape(-1, *params[k].shape[len(lead) :]) for k in WEIGHT_NAMES}
    C, h = w["W_Q"].shape[0], w["W_Q"].shape[1]
    m, f, n_out = w["W_E"].shape[-1], w["W_in"].shape[-1], w["W_U"].shape[-1]
    # each checkpoint's logits start on a 64-byte boundary: the matrix product's rounding can depend on the
    # alignment of its output, and the results must not depend on how checkpoints are batched
    n_el = p * p * n_out
    step = -(-n_el * dtype.itemsize // 64) * 64 // dtype.itemsize
    if out is None:
        out = torch.empty(C, step, dtype=dtype)
    if out.dtype != dtype or not out.is_contiguous() or out.numel() < (C - 1) * step + n_el:
        raise AnalysisError(f"out must be a contiguous {dtype} tensor of at least {(C - 1) * step + n_el} elements")
    logits = out.view(-1).as_strided((C, p, p, n_out), (step, p * n_out, n_out, 1))
    pattern = torch.empty(C, p, p, h, 3, dtype=dtype) if cache else None
    post_all = torch.empty(C, p, p, f, dtype=dtype) if cache else None
    mid_all = torch.empty(C, p, p, m, dtype=dtype) if cache else None
    na = max(1, _GRID_BLOCK_ROWS // p)  # values of a per block
    width = f + n_out + (m if cache else 0)
    bufs = (torch.empty(na, p, width, dtype=dtype), torch.empty(p, na, width, dtype=dtype),
            None if cache else torch.empty(na * p, f, dtype=dtype))
    # checkpoint by checkpoint, so that the results do not depend on how checkpoints are batched
    for c in range(C):
        # fresh (aligned) copies: vectorised kernels may round differently depending on the operands' alignment
        wc = {k: v[c].to(dtype, copy=True, memory_format=torch.contiguous_format) for k, v in w.items()}
        _grid_checkpoint(wc, p, na, bufs, logits[c], None if pattern is None else pattern[c],
                         None if post_all is None else post_all[c], None if mid_all is None else mid_all[c])
    res = ForwardOutput(logits=logits.flatten(1, 2).reshape(*lead, p * p, n_out))
    if cache:
        res.attn_pattern = pattern.reshape(*lead, p * p, h, 3)
        res.mlp_post = post_all.reshape(*lead, p * p, f)
        res.resid_mid = mid_all.reshape(*lead, p * p, m)
    return res


def _grid_checkpoint(w, p, na, bufs, logits, pattern, post_all, mid_all) -> None:
    """:func:`grid_forward` for one checkpoint's weights ``w``; fills logits (a, b, n_out) and the caches."""
    W_E, W_pos, W_Q, W_K, W_V, W_O, W_in, b_in, W_out, b_out, W_U = (w[k] for k in WEIGHT_NAMES)
    cache = post_all is not None
    dtype = W_E.dtype
    h, d_head = W_Q.shape[0], W_Q.shape[-1]
    m, f, n_out = W_E.shape[-1], W_in.shape[-1], W_U.shape[-1]
    x0 = W_E[:p] + W_pos[0]  # (p, d_model): token at position 0 (a); position 1 (b) adds W_pos[1] - W_pos[0]
    xe = W_E[p] + W_pos[2]  # (d_model,): '=' at position 2
    # attention scores from '=' to each (position, token); softmax over the 3 positions of every pair
    q = torch.einsum("m,hmd->hd", xe, W_Q)
    kq = torch.einsum("hmd,hd->mh", W_K, q) / math.sqrt(d_head)  # (d_model, head)
    s0, s1, se = x0 @ kq, (x0 + (W_pos[1] - W_pos[0])) @ kq, xe @ kq  # (p, head), (p, head), (head,)
    s0, s1 = s0[:, None], s1[None, :]  # broadcast to (a, b, head)
    top = torch.maximum(torch.maximum(s0, s1), se)
    e0, e1, e2 = torch.exp(s0 - top), torch.exp(s1 - top), torch.exp(se - top)
    z = e0 + e1 + e2
    A0 = e0.div_(z)  # (a, b, head): attention to a; to b batched over b; to '=' is 1 - A0 - A1
    A1 = e1.div_(z)
    if pattern is not None:
        pattern.copy_(torch.stack([A0, A1, e2.div_(z)], -1))  # (a, b, head, pos)
    A1t = A1.transpose(0, 1).contiguous()  # (b, a, head)
    # per-token OV tables, through W_in (MLP input), W_U (direct logits) and, with cache, as they are;
    # x_1[t] = x_0[t] + (W_pos[1] - W_pos[0]) and the tables are linear: one table of tokens plus two rows
    OV = (W_V @ W_O).transpose(0, 1).reshape(m, h * m)  # (d_model, head * d_model)
    rows = torch.cat([x0, (W_pos[1] - W_pos[0])[None], xe[None]])  # (p + 2, d_model)
    ov = (rows @ OV).reshape((p + 2) * h, m)
    outs = [W_in, W_U] + ([torch.eye(m, dtype=dtype)] if cache else [])
    width = f + n_out + (m if cache else 0)
    # columns [MLP pre-activation | direct logits | resid_mid] of each (token, head) table, with the '=' term
    # folded in through A_2 = 1 - A_0 - A_1: Y_i = table(x_i) - table(=), base = const + sum_h table(=)
    tab = torch.cat([ov @ W_ for W_ in outs], -1).view(p + 2, h, width)
    Y0 = tab[:p] - tab[p + 1]  # (p, head, width)
    Y1 = Y0 + tab[p]
    base = torch.cat([xe @ W_in + b_in, (xe + b_out) @ W_U] + ([xe] if cache else [])) + tab[p + 1].sum(0)
    W_logit = W_out @ W_U  # (d_mlp, n_out)
    buf, tb, post_buf = bufs
    # blocks of na values of a (all b): the block views are made up front, to keep the Python work per block small
    blocks = zip(A0.split(na), Y0.split(na), A1t.split(na, dim=1), logits.split(na),
                 post_all.split(na) if cache else [post_buf.view(na, p, f)] * p,
                 mid_all.split(na) if cache else [None] * p)
    for A0b, Y0b, A1b, lg, post, mid in blocks:
        n = A0b.shape[0]
        o, t = (buf, tb) if n == na else (buf[:n], tb[:, :n])
        o.copy_(base.expand(n, p, width))
        o.baddbmm_(A0b, Y0b)  # sum_h A_0(a, b) Y0[a, h]
        torch.bmm(A1b, Y1, out=t)  # sum_h A_1(a, b) Y1[b, h], as (b, a)
        o += t.transpose(0, 1)
        post = post[:n]
        torch.clamp_min(o[..., :f], 0.0, out=post)
        if mid is not None:
            mid.copy_(o[..., f + n_out :])
        direct = o[..., f : f + n_out].reshape(n * p, n_out)
        torch.addmm(direct, post.view(n * p, f), W_logit, out=lg.view(n * p, n_out))  # + mlp_post W_out W_U


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
        """See :func:`forward`."""
        return forward(self.params(), tokens, cache=cache)
