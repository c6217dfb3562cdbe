"""Logit structure: the logits as a sum of cos(w (a + b - c)) terms (paper section 4.2, Fig. 4c; App. D).

The paper approximates the logits (``=`` class dropped), L[a, b, c], by sum_{k in K} alpha_k cos(w_k (a + b - c)).
As in the paper's code (``shared/reference/paper.md`` 3.5), the "cubes" C_w[a, b, c] = cos(w (a + b - c)),
w = 2 pi k / p, are normalised to unit Frobenius norm (|cos(w (a + b - c))|_F^2 = p^3 / 2 for odd p) and

    alpha_k = <C_k, L> = sum_{a,b,c} L[a, b, c] cos(w_k (a + b - c)) / sqrt(p^3 / 2),

which is the least-squares coefficient because the cubes are mutually orthogonal and orthogonal to every
function of (a, b) alone and to constants. ``cos_sim_k = alpha_k / |L|_F`` and, for a key set K,

* ``frac_norm_key = sum_{k in K} cos_sim_k^2``: the share of the **uncentred** |L|_F^2 (the paper's code);
* ``frac_var_key = sum_{k in K} alpha_k^2 / |L - mean(L)|_F^2``: the share of the variance around the grand
  mean (the paper's "95% of the variance").

The (frequency, p^2, p) stack of cubes (646 MB in float64 for p = 113) is never built: the cubes depend on (a, b)
only through s = (a + b) mod p, so alpha_k needs only the group sums G[s, c] = sum_{a + b = s} L[a, b, c]
(p^3 additions) and two (p-1)/2 x p products with G, O(p^3) per checkpoint.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import xarray as xr

from mechgrok.analyses.modular.fourier import check_odd_p, grid_p, residue_sums, trig
from mechgrok.analyses.modular.grid import grid_pass, grid_residue_sums, model_p
from mechgrok.engine import DEFAULT_CHUNK, Checkpoint, run
from mechgrok.errors import AnalysisError
from mechgrok.models.transformer import WEIGHT_NAMES

__all__ = [
    "logit_structure_from_coefficients",
    "cos_coefficients",
    "cos_coefficient_arrays",
    "LogitStructure",
    "logit_structure",
]


def cos_coefficients(logits: xr.DataArray) -> xr.Dataset:
    """alpha_k of cos(w_k (a + b - c)) for every k, and the norms of the logits.

    Parameters
    ----------
    logits : xarray.DataArray
        (checkpoint, a, b, c) logits without the ``=`` class (any dim order; odd p), e.g.
        ``grid_activations(ds, include=("logits",))["logits"]``.

    Returns
    -------
    xarray.Dataset
        ``alpha`` (checkpoint, freq) in logit units, ``cos_sim`` (checkpoint, freq) = alpha / |L|_F,
        ``logit_norm_sq`` (checkpoint) = |L|_F^2 and ``logit_var_sq`` (checkpoint) = |L - mean L|_F^2.

    Raises
    ------
    AnalysisError
        If a dim is missing or p is even.
    """
    need = ("checkpoint", "a", "b", "c")
    p = grid_p(logits, need, "logits")
    L = torch.from_numpy(np.asarray(logits.transpose(*need).values, dtype=np.float64))
    return _coefficients_dataset(cos_coefficient_arrays(L.reshape(L.shape[0], p * p, p), p), logits["checkpoint"].values)


def cos_coefficient_arrays(L: torch.Tensor, p: int, G: torch.Tensor | None = None,
                           norm_sq: torch.Tensor | None = None) -> dict[str, np.ndarray]:
    """alpha_k, cos_sim, |L|_F^2 and |L - mean L|_F^2 from logits (..., p*p, p), rows a * p + b (torch float64).

    alpha_k needs only the group sums G[s, c] = sum_{a + b = s mod p} L[a, b, c] (p^3 additions; given, or
    computed by :func:`~mechgrok.analyses.modular.fourier.residue_sums`):
    sum_{a,b,c} L cos(w (a + b - c)) = sum_{s,c} G[s, c] (cos ws cos wc + sin ws sin wc). ``norm_sq``: |L|_F^2
    (...), where already known.
    """
    L = L.to(torch.float64)
    K = (p - 1) // 2
    G = residue_sums(L, p) if G is None else G  # (..., s, c)
    cos, sin = trig(p, range(1, K + 1), device=L.device)  # (K, x)
    S = ((cos @ G) * cos).sum(-1) + ((sin @ G) * sin).sum(-1)  # (..., K): sum L cos(w_k (a + b - c))
    alpha = (S / math.sqrt(p**3 / 2)).cpu().numpy()
    norm_sq = torch.linalg.vector_norm(L, dim=(-2, -1)).square() if norm_sq is None else norm_sq
    var_sq = norm_sq - G.sum(dim=(-2, -1)).square() / p**3  # |L - mean L|^2 = |L|^2 - (sum L)^2 / p^3
    norm_sq, var_sq = norm_sq.cpu().numpy(), var_sq.cpu().numpy()
    cos_sim = np.divide(alpha, np.sqrt(norm_sq)[..., None], out=np.zeros_like(alpha), where=norm_sq[..., None] > 0)
    return {"alpha": alpha, "cos_sim": cos_sim, "logit_norm_sq": norm_sq, "logit_var_sq": var_sq}


def _coefficients_dataset(v: dict[str, np.ndarray], checkpoint: np.ndarray) -> xr.Dataset:
    alpha, cos_sim, norm_sq, var_sq = v["alpha"], v["cos_sim"], v["logit_norm_sq"], v["logit_var_sq"]
    k = np.arange(1, alpha.shape[-1] + 1)
    return xr.Dataset(
        {
            "alpha": (("checkpoint", "freq"), alpha, {"description": "<C_k, L>, C_k = cos(w_k (a+b-c)) / |.|_F", "units": "logits"}),
            "cos_sim": (("checkpoint", "freq"), cos_sim, {"description": "alpha / |L|_F", "units": "cosine"}),
            "logit_norm_sq": (("checkpoint",), norm_sq, {"description": "|L|_F^2 (uncentred)", "units": "logits^2"}),
            "logit_var_sq": (("checkpoint",), var_sq, {"description": "|L - mean(L)|_F^2", "units": "logits^2"}),
        },
        coords={"checkpoint": checkpoint, "freq": k},
    )


@dataclass
class LogitStructure:
    """Engine kernel (:mod:`mechgrok.engine`): the cos(w (a + b - c)) coefficients of one checkpoint's logits,
    from the shared grid pass; ``assemble`` adds the key frequencies' share."""

    key_freqs: list[int] | None = None
    name: str = "logits"
    weights: tuple[str, ...] | None = WEIGHT_NAMES
    needs: frozenset[str] = frozenset({"logit_sums"})

    def __call__(self, ck: Checkpoint) -> dict[str, np.ndarray]:
        g = grid_pass(ck)
        return cos_coefficient_arrays(g.logits, g.p, grid_residue_sums(ck),
                                      None if g.logit_sums is None else g.logit_sums["norm_sq"])

    def assemble(self, values: dict[str, np.ndarray], checkpoint: xr.DataArray) -> xr.Dataset:
        out = logit_structure_from_coefficients(_coefficients_dataset(values, np.asarray(checkpoint.values)),
                                                key_freqs=self.key_freqs)
        out["checkpoint"].attrs = dict(checkpoint.attrs)
        return out


def logit_structure(
    ds: xr.Dataset,
    *,
    key_freqs: Sequence[int] | None = None,
    chunk: int = DEFAULT_CHUNK,
    device: str | torch.device | None = "cpu",
) -> xr.Dataset:
    """Coefficients alpha_k of cos(w_k (a + b - c)) in the logits, and the share the key frequencies explain.

    Paper section 4.2 ("explains 95% of the variance") and the notebook's ``cos_coeffs`` / ``cos_sim``
    (paper Fig. 14); formulas in the module docstring. The logits come from the float64 grid pass of each
    checkpoint through :func:`mechgrok.engine.run`.

    Parameters
    ----------
    ds : xarray.Dataset
        Canonical one-layer trajectory with an odd ``attrs["p"]``, selected along ``checkpoint`` by the caller.
    key_freqs : sequence of int, optional
        The key set K (e.g. ``key_frequencies(ds)["key_freqs"].values``); without it only the per-frequency
        quantities are returned.
    chunk : int
        Checkpoints whose weights are read at once.
    device : str, torch.device or None
        Where the forward pass runs (None: CUDA when available).

    Returns
    -------
    xarray.Dataset
        ``alpha``, ``cos_sim`` (checkpoint, freq), ``logit_norm_sq``, ``logit_var_sq`` (checkpoint) and, with
        ``key_freqs``: ``frac_norm_key`` (checkpoint; share of the uncentred |L|_F^2, as the paper's code) and
        ``frac_var_key`` (checkpoint; share of the variance around the grand mean), fractions. attrs
        ``key_freqs`` (list of int), ``description``.

    Raises
    ------
    AnalysisError
        If p is missing or even, the model is multi-layer, no checkpoint is selected, or a key frequency is
        outside 1..(p-1)/2.
    """
    p = check_odd_p(model_p(ds))
    K = (p - 1) // 2
    if key_freqs is not None:
        key_freqs = sorted(int(k) for k in np.atleast_1d(np.asarray(key_freqs)))
        bad = [k for k in key_freqs if not 1 <= k <= K]
        if bad:
            raise AnalysisError(f"key frequencies must lie in 1..{K}, got {bad}")
    return run(ds, [LogitStructure(key_freqs=key_freqs)], chunk=chunk, device=device)["logits"]


def logit_structure_from_coefficients(coeffs: xr.Dataset, *, key_freqs: Sequence[int] | None = None) -> xr.Dataset:
    """Add the key frequencies' share of the logits to :func:`cos_coefficients` output (paper section 4.2).

    Parameters
    ----------
    coeffs : xarray.Dataset
        ``alpha`` (checkpoint, freq), ``logit_norm_sq`` and ``logit_var_sq`` (checkpoint).
    key_freqs : sequence of int, optional
        The key set K; without it ``coeffs`` is returned with attrs only.

    Returns
    -------
    xarray.Dataset
        ``coeffs`` plus ``frac_norm_key`` (share of the uncentred |L|_F^2, as the paper's code) and
        ``frac_var_key`` (share of the variance around the grand mean), fractions; attrs ``key_freqs``.

    Raises
    ------
    AnalysisError
        If a key frequency is not among ``coeffs["freq"]``.
    """
    out = coeffs.copy()
    attrs = {
        "description": "logits as sum_k alpha_k cos(w_k (a + b - c)) (paper section 4.2); '=' class dropped",
        "cube_normalisation": "C_k = cos(w_k (a+b-c)) / sqrt(p^3/2), unit Frobenius norm",
    }
    if key_freqs is not None:
        key_freqs = sorted(int(k) for k in np.atleast_1d(np.asarray(key_freqs)))
        bad = [k for k in key_freqs if k not in set(out["freq"].values.tolist())]
        if bad:
            raise AnalysisError(f"key frequencies must lie in 1..{int(out['freq'].max())}, got {bad}")
        alpha_key_sq = (out["alpha"].sel(freq=key_freqs) ** 2).sum("freq")
        out["frac_norm_key"] = (alpha_key_sq / out["logit_norm_sq"]).assign_attrs(
            description="sum_{k in K} alpha_k^2 / |L|_F^2 (uncentred, as the paper's code)", units="fraction"
        )
        out["frac_var_key"] = (alpha_key_sq / out["logit_var_sq"]).assign_attrs(
            description="sum_{k in K} alpha_k^2 / |L - mean(L)|_F^2", units="fraction"
        )
        attrs["key_freqs"] = key_freqs
    out.attrs = attrs
    return out
