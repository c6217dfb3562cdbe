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

The (frequency, p^2, p) stack of cubes (646 MB in float64 for p = 113) is never built: with the 3D discrete
Fourier transform, sum_{a,b,c} L cos(w (a + b - c)) = Re sum_{a,b,c} L e^{-i w (a + b - c)} is the entry
(k, k, -k) of ``numpy.fft.fftn(L)``; it is read off a transform along a, the diagonal of a transform along b,
and a transform along c, O(p^3 log p) per checkpoint.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import xarray as xr

from mechgrok.activations import select_checkpoints, grid_activations, iter_checkpoint_chunks, model_p
from mechgrok.errors import AnalysisError
from mechgrok.fourier import check_odd_p, grid_p

__all__ = ["logit_structure_from_coefficients", "cos_coefficients", "logit_structure"]


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
    K = (p - 1) // 2
    L = np.asarray(logits.transpose(*need).values, dtype=np.float64)
    k = np.arange(1, K + 1)
    A = np.fft.fft(L, axis=1)[:, 1 : K + 1]  # (ck, k, b, c): sum_a L e^{-i w_k a}
    phase_b = np.exp(-2j * np.pi * np.outer(k, np.arange(p)) / p)  # (k, b)
    Ab = np.einsum("ckbz,kb->ckz", A, phase_b)  # (ck, k, c): sum_{a,b} L e^{-i w_k (a + b)}
    phase_c = np.exp(2j * np.pi * np.outer(k, np.arange(p)) / p)  # (k, c)
    S = np.einsum("ckz,kz->ck", Ab, phase_c).real  # sum L cos(w_k (a + b - c))
    alpha = S / np.sqrt(p**3 / 2)
    norm_sq = (L**2).sum(axis=(1, 2, 3))
    var_sq = ((L - L.mean(axis=(1, 2, 3), keepdims=True)) ** 2).sum(axis=(1, 2, 3))
    cos_sim = np.divide(alpha, np.sqrt(norm_sq)[:, None], out=np.zeros_like(alpha), where=norm_sq[:, None] > 0)
    return xr.Dataset(
        {
            "alpha": (("checkpoint", "freq"), alpha, {"description": "<C_k, L>, C_k = cos(w_k (a+b-c)) / |.|_F", "units": "logits"}),
            "cos_sim": (("checkpoint", "freq"), cos_sim, {"description": "alpha / |L|_F"}),
            "logit_norm_sq": (("checkpoint",), norm_sq, {"description": "|L|_F^2 (uncentred)", "units": "logits^2"}),
            "logit_var_sq": (("checkpoint",), var_sq, {"description": "|L - mean(L)|_F^2", "units": "logits^2"}),
        },
        coords={"checkpoint": logits["checkpoint"].values, "freq": k},
    )


def logit_structure(
    ds: xr.Dataset,
    *,
    key_freqs: Sequence[int] | None = None,
    checkpoints: slice | list | None = None,
    chunk: int = 4,
) -> xr.Dataset:
    """Coefficients alpha_k of cos(w_k (a + b - c)) in the logits, and the share the key frequencies explain.

    Paper section 4.2 ("explains 95% of the variance") and the notebook's ``cos_coeffs`` / ``cos_sim``
    (paper Fig. 14); formulas in the module docstring.

    Parameters
    ----------
    ds : xarray.Dataset
        Canonical one-layer trajectory with an odd ``attrs["p"]``.
    key_freqs : sequence of int, optional
        The key set K (e.g. ``key_frequencies(ds)["key_freqs"].values``); without it only the per-frequency
        quantities are returned.
    checkpoints : slice or list, optional
        ``isel`` selection along ``checkpoint``; default all.
    chunk : int
        Checkpoints per forward pass (memory about chunk * p^3 * 40 bytes: 0.23 GB per checkpoint at p = 113).

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
        If p is missing or even, the model is multi-layer, or a key frequency is outside 1..(p-1)/2.
    """
    p = check_odd_p(model_p(ds))
    K = (p - 1) // 2
    if key_freqs is not None:
        key_freqs = sorted(int(k) for k in np.atleast_1d(np.asarray(key_freqs)))
        bad = [k for k in key_freqs if not 1 <= k <= K]
        if bad:
            raise AnalysisError(f"key frequencies must lie in 1..{K}, got {bad}")
    ds = select_checkpoints(ds, checkpoints)
    parts = [
        cos_coefficients(grid_activations(sub, chunk=chunk, include=("logits",))["logits"])
        for sub in iter_checkpoint_chunks(ds, chunk)
    ]
    return logit_structure_from_coefficients(xr.concat(parts, dim="checkpoint"), key_freqs=key_freqs)


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
