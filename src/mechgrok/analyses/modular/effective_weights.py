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

from dataclasses import dataclass

from mechgrok.analyses.modular.grid import model_p
from mechgrok.engine import DEFAULT_CHUNK, Checkpoint, run
from mechgrok.errors import AnalysisError

__all__ = ["EFFECTIVE_WEIGHTS", "effective_weights", "EffectiveWeights"]

#: The effective weights :func:`effective_weights` can compute, and the trajectory weights each needs.
EFFECTIVE_WEIGHTS: dict[str, tuple[str, ...]] = {
    "W_logit": ("W_out", "W_U"),
    "W_neur": ("W_E", "W_V", "W_O", "W_in"),
    "W_attn": ("W_E", "W_pos", "W_Q", "W_K"),
}


def effective_weights(
    ds: xr.Dataset,
    *,
    include: tuple[str, ...] = ("W_logit", "W_neur", "W_attn"),
    scaled: bool = True,
    chunk: int = DEFAULT_CHUNK,
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
        Checkpoints whose weights are read at once.

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
    if "W_attn" in include and ds.sizes.get("pos", 3) == 2:
        raise AnalysisError("W_attn is the score from the '=' query; a model on [a, b] without '=' (the Pizza "
                            "models) reads out at b, whose query depends on b")
    res = run(ds, [EffectiveWeights(p=p, include=tuple(include), scaled=scaled, weights=needed)], chunk=chunk,
              device="cpu")["effective_weights"]
    res["checkpoint"].attrs = dict(ds["checkpoint"].attrs)
    return res


@dataclass
class EffectiveWeights:
    """Engine kernel (:mod:`mechgrok.engine`): the effective weights of one checkpoint (weights only, float64)."""

    p: int
    include: tuple[str, ...]
    scaled: bool
    weights: tuple[str, ...] | None
    name: str = "effective_weights"
    needs: frozenset[str] = frozenset()

    def __call__(self, ck: Checkpoint) -> dict[str, np.ndarray]:
        p = self.p
        w = {n: v[0].cpu().numpy() for n, v in ck.weights.items()}
        out: dict[str, np.ndarray] = {}
        if "W_logit" in self.include:
            out["W_logit"] = w["W_out"] @ w["W_U"][..., :p]
        if "W_neur" in self.include:
            ov = np.einsum("hmd,hdn->hmn", w["W_V"], w["W_O"])  # (head, d_model, d_model)
            out["W_neur"] = np.einsum("vm,hmn->hvn", w["W_E"][:p], ov @ w["W_in"])
        if "W_attn" in self.include:
            x_eq = w["W_E"][p] + w["W_pos"][-1]  # (d_model,): residual at '=' before attention
            q = np.einsum("m,hmd->hd", x_eq, w["W_Q"])
            k = np.einsum("vm,hmd->hvd", w["W_E"][:p], w["W_K"])
            score = np.einsum("hd,hvd->hv", q, k)
            out["W_attn"] = score / math.sqrt(w["W_Q"].shape[-1]) if self.scaled else score
        return out

    def assemble(self, out: dict[str, np.ndarray], checkpoint: xr.DataArray) -> xr.Dataset:
        p, include, scaled = self.p, self.include, self.scaled
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
        coords: dict[str, object] = {"checkpoint": checkpoint.values}
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
