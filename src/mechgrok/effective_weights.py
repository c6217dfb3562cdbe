"""Effective weights of the one-layer model: neuron-logit map, token-to-neuron map, attention scores.

Paper section 4 and appendix A.1 / C.1 (``shared/reference/paper.md`` 3.6, **row form**, TransformerLens
orientation, input -> output). The ``=`` row of ``W_E`` and the ``=`` column of ``W_U`` are dropped, so the
token and class dims run over the residues 0..p-1:

``W_logit = W_out W_U[:, :p]``, dims (checkpoint, d_mlp, c)
    The neuron-logit map ("W_L" of the paper, transposed): entry [n, c] is the logit of class c per unit of
    neuron n's activation (the path through the MLP output and the unembedding).
``W_neur[h] = W_E[:p] W_V[h] W_O[h] W_in``, dims (checkpoint, head, vocab, d_mlp)
    Direct contribution of token v, through head h's OV circuit, to the pre-activation of neuron n. Not
    weighted by the attention pattern; no positional embedding.
``W_attn[h] = x_= W_Q[h] W_K[h]^T W_E[:p]^T (/ sqrt(d_head))``, dims (checkpoint, head, vocab)
    Pre-softmax score from the ``=`` query (x_= = W_E[p] + W_pos[2], the residual at the last position) to a
    key holding token v (ignoring ``W_pos`` at the key positions). With ``scaled=True`` (the default, as
    TransformerLens, ARENA and the model's own forward pass) it is divided by sqrt(d_head); the paper's
    notebook does not divide (``scaled=False``), a factor sqrt(d_head) larger. ``attrs["scaled"]`` records it.
"""

from __future__ import annotations

import math

import numpy as np
import xarray as xr

from mechgrok.activations import iter_checkpoint_chunks, model_p
from mechgrok.errors import AnalysisError

__all__ = ["EFFECTIVE_WEIGHTS", "effective_weights"]

#: The effective weights :func:`effective_weights` can compute, and the trajectory weights each needs.
EFFECTIVE_WEIGHTS: dict[str, tuple[str, ...]] = {
    "W_logit": ("W_out", "W_U"),
    "W_neur": ("W_E", "W_V", "W_O", "W_in"),
    "W_attn": ("W_E", "W_pos", "W_Q", "W_K"),
}


def _weights64(sub: xr.Dataset, names: tuple[str, ...]) -> dict[str, np.ndarray]:
    return {n: np.asarray(sub[n].values, dtype=np.float64) for n in names}


def effective_weights(
    ds: xr.Dataset,
    *,
    include: tuple[str, ...] = ("W_logit", "W_neur", "W_attn"),
    scaled: bool = True,
    chunk: int = 64,
) -> xr.Dataset:
    """Effective weights ``W_logit``, ``W_neur``, ``W_attn`` at every checkpoint (paper.md 3.6, row form).

    Parameters
    ----------
    ds : xarray.Dataset
        Canonical one-layer trajectory with ``attrs["p"]`` (lazy variables are read chunk by chunk).
    include : tuple of str
        Which of ``"W_logit"``, ``"W_neur"``, ``"W_attn"`` to compute.
    scaled : bool
        Divide ``W_attn`` by sqrt(d_head) (default, TransformerLens / ARENA convention and what the model's
        softmax sees); ``False`` gives the paper notebook's unscaled scores.
    chunk : int
        Checkpoints per step (memory: about chunk * n_heads * p * d_mlp * 8 bytes for ``W_neur``).

    Returns
    -------
    xarray.Dataset
        float64; ``W_logit`` (checkpoint, d_mlp, c) in logits per unit activation, ``W_neur`` (checkpoint, head,
        vocab, d_mlp), ``W_attn`` (checkpoint, head, vocab) in score units; ``vocab`` and ``c`` run over
        the residues 0..p-1 (``=`` dropped). attrs ``scaled``, ``description``, ``p``.

    Raises
    ------
    AnalysisError
        If p is missing, the model is multi-layer, a name in ``include`` is unknown, or a weight is missing.
    """
    p = model_p(ds)
    unknown = [n for n in include if n not in EFFECTIVE_WEIGHTS]
    if unknown:
        raise AnalysisError(f"unknown effective weights {unknown}; known: {', '.join(EFFECTIVE_WEIGHTS)}")
    needed = tuple(sorted({w for n in include for w in EFFECTIVE_WEIGHTS[n]}))
    missing = [w for w in needed if w not in ds]
    if missing:
        raise AnalysisError(f"the trajectory lacks weights {missing} needed by {list(include)}")
    n_ck = ds.sizes["checkpoint"]
    n_heads = ds.sizes["head"] if "head" in ds.dims else 0
    shapes = {
        "W_logit": (n_ck, ds.sizes.get("d_mlp", 0), p),
        "W_neur": (n_ck, n_heads, p, ds.sizes.get("d_mlp", 0)),
        "W_attn": (n_ck, n_heads, p),
    }
    out = {n: np.empty(shapes[n]) for n in include}  # filled chunk by chunk (no concatenation copy)
    start = 0
    for sub in iter_checkpoint_chunks(ds[list(needed)], chunk):
        w = _weights64(sub, needed)
        sl = slice(start, start + sub.sizes["checkpoint"])
        start = sl.stop
        if "W_logit" in include:
            out["W_logit"][sl] = w["W_out"] @ w["W_U"][..., :p]
        if "W_neur" in include:
            ov = np.einsum("...hmd,...hdn->...hmn", w["W_V"], w["W_O"])  # (ck, head, d_model, d_model)
            ov_in = ov @ w["W_in"][:, None]  # (ck, head, d_model, d_mlp)
            out["W_neur"][sl] = np.einsum("...vm,...hmn->...hvn", w["W_E"][:, :p], ov_in)
        if "W_attn" in include:
            x_eq = w["W_E"][:, p] + w["W_pos"][:, -1]  # (ck, d_model): residual at '=' before attention
            q = np.einsum("...m,...hmd->...hd", x_eq, w["W_Q"])
            k = np.einsum("...vm,...hmd->...hvd", w["W_E"][:, :p], w["W_K"])
            score = np.einsum("...hd,...hvd->...hv", q, k)
            if scaled:
                score = score / math.sqrt(w["W_Q"].shape[-1])
            out["W_attn"][sl] = score
    dims = {
        "W_logit": ("checkpoint", "d_mlp", "c"),
        "W_neur": ("checkpoint", "head", "vocab", "d_mlp"),
        "W_attn": ("checkpoint", "head", "vocab"),
    }
    desc = {
        "W_logit": "neuron-logit map W_out W_U[:, :p] (logits per unit neuron activation)",
        "W_neur": "token-to-neuron map through each head's OV circuit, W_E[:p] W_V W_O W_in",
        "W_attn": "attention score from '=' to each token, x_= W_Q W_K^T W_E[:p]^T"
        + (" / sqrt(d_head)" if scaled else " (not divided by sqrt(d_head), as the paper's notebook)"),
    }
    data = {n: (dims[n], out[n], {"description": desc[n]}) for n in include}
    coords: dict[str, object] = {"checkpoint": ds["checkpoint"].values}
    if "W_neur" in include or "W_attn" in include:
        coords["vocab"] = np.arange(p)
    if "W_logit" in include:
        coords["c"] = np.arange(p)
    return xr.Dataset(
        data,
        coords=coords,
        attrs={
            "description": "effective weights (paper section 4 / appendix C.1; row form, '=' dropped)",
            "scaled": int(bool(scaled)),
            "p": p,
        },
    )
