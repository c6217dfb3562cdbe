"""Gini coefficients of the Fourier norms of ``W_E`` and ``W_logit`` (Nanda et al. 2023, section 5.1, Fig. 7).

The Gini coefficient (Hurley & Rickard 2009; :func:`mechgrok.analyses.measures.gini`) of the norms of the Fourier
components measures how sparse the model is in the Fourier basis; it rises sharply during cleanup. The paper does
not say over which vector it is taken, so both variants are given and recorded in the attrs:

- *per component* (N = p): the norms of const, cos 1, sin 1, ..., cos (p-1)/2, sin (p-1)/2;
- *per frequency* (N = (p-1)/2): sqrt(n_cos k^2 + n_sin k^2) for k = 1..(p-1)/2, the constant excluded.

The norms are those of :func:`mechgrok.analyses.modular.fourier_norms.fourier_norms`.
"""

from __future__ import annotations

from typing import Any

import xarray as xr

from mechgrok.analyses.measures import SumSquaredWeights, gini_np
from mechgrok.analyses.modular.fourier_norms import FourierNorms, fourier_norms
from mechgrok.engine import DEFAULT_CHUNK, run

__all__ = ["gini_variables", "gini_dataset", "fourier_gini", "weight_measures"]


def gini_variables(norms: xr.Dataset, which: str, p: int) -> dict[str, xr.DataArray]:
    ck = norms["checkpoint"].values
    comp = xr.DataArray(gini_np(norms[f"{which}_fourier_norm"].values, -1), dims=("checkpoint",), coords={"checkpoint": ck})
    comp.attrs = {
        "description": f"Gini coefficient of the Fourier-component norms of {which} (const, cos k, sin k separate)",
        "variant": "component",
        "N": int(p),
        "units": "dimensionless, 0 (flat) .. 1 - 1/N (one component)",
        "paper_section": "paper 5.1, Fig. 7",
    }
    freq = xr.DataArray(gini_np(norms[f"{which}_freq_norm"].values, -1), dims=("checkpoint",), coords={"checkpoint": ck})
    freq.attrs = {
        "description": f"Gini coefficient of the per-frequency Fourier norms sqrt(cos^2 + sin^2) of {which}, const excluded",
        "variant": "frequency",
        "N": int((p - 1) // 2),
        "units": "dimensionless, 0 (flat) .. 1 - 1/N (one frequency)",
        "paper_section": "paper 5.1, Fig. 7",
    }
    return {f"gini_{which}_component": comp, f"gini_{which}_freq": freq}


def gini_dataset(norms: xr.Dataset) -> xr.Dataset:
    """The Gini coefficients of :func:`fourier_gini` from a Dataset of Fourier norms.

    Parameters
    ----------
    norms : xarray.Dataset
        Output of :func:`mechgrok.analyses.modular.fourier_norms.fourier_norms` with both ``W_E`` and ``W_logit``.

    Returns
    -------
    xarray.Dataset
        As :func:`fourier_gini`.
    """
    p = int(norms.attrs["p"])
    out = xr.Dataset({**gini_variables(norms, "W_E", p), **gini_variables(norms, "W_logit", p)})
    out["checkpoint"].attrs = dict(norms["checkpoint"].attrs)
    out.attrs = {
        "title": "mechgrok Gini coefficients of Fourier norms",
        "p": p,
        "gini_rule": "Hurley & Rickard (2009) G = 1 - 2 sum_i (c_(i)/||c||_1)((N - i + 1/2)/N), c sorted ascending",
        "gini_variants": "component: N = p norms incl. const; freq: N = (p-1)/2 norms sqrt(cos^2+sin^2), const excluded",
        "W_logit": "W_out @ W_U[:, :p] (d_mlp, p), Fourier along the output axis",
    }
    return out


def fourier_gini(ds: xr.Dataset, *, chunk: int = DEFAULT_CHUNK) -> xr.Dataset:
    """Gini coefficients of the Fourier norms of ``W_E`` and ``W_logit`` per checkpoint (paper 5.1, Fig. 7).

    The norms come from :func:`mechgrok.analyses.modular.fourier_norms.fourier_norms` (``W_E[:p]`` transformed
    along the token axis, norm over d_model; ``W_logit = W_out W_U[:, :p]`` transformed along the class axis,
    norm over d_mlp).

    Parameters
    ----------
    ds : xarray.Dataset
        Canonical one-layer trajectory with ``W_E``, ``W_out``, ``W_U`` and an odd ``attrs["p"]``.
    chunk : int
        Checkpoints read at once.

    Returns
    -------
    xarray.Dataset
        float64 over ``checkpoint`` (epochs):

        ``gini_W_E_component``, ``gini_W_logit_component``
            Over the p component norms, const included (N = p).
        ``gini_W_E_freq``, ``gini_W_logit_freq``
            Over the (p-1)/2 per-frequency norms sqrt(n_cos k^2 + n_sin k^2), const excluded (N = (p-1)/2).

        Each variable's attrs give ``variant`` and ``N``; dimensionless, in [0, 1 - 1/N].

    Raises
    ------
    AnalysisError
        If the trajectory has no (odd) p, is multi-layer or lacks a weight.
    """
    return gini_dataset(fourier_norms(ds, chunk=chunk))


def weight_measures(ds: xr.Dataset, *, chunk: int = DEFAULT_CHUNK) -> xr.Dataset:
    """The weight-based progress measures in one pass: :func:`fourier_gini` with
    :func:`mechgrok.analyses.measures.sum_squared_weights`.

    Parameters
    ----------
    ds : xarray.Dataset
        Canonical one-layer modular-arithmetic trajectory.
    chunk : int
        Checkpoints read at once.

    Returns
    -------
    xarray.Dataset
        Over ``checkpoint``: ``gini_*``, ``sum_sq_weights`` (checkpoint, param), ``sum_sq_weights_total``.

    Raises
    ------
    AnalysisError
        As the two functions.
    """
    res = run(ds, [FourierNorms.for_trajectory(ds), SumSquaredWeights.for_trajectory(ds)], chunk=chunk, device="cpu")
    g = gini_dataset(res["fourier_norms"])
    out = xr.merge([g, res["sum_sq_weights"]], combine_attrs="drop")
    attrs: dict[str, Any] = dict(g.attrs)
    attrs["title"] = "mechgrok weight measures (Gini of Fourier norms, sum of squared weights)"
    out.attrs = attrs
    return out
