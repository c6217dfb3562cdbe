"""Weight-based progress measures: sum of squared weights and the Gini coefficient of Fourier norms.

Nanda et al. (2023), section 5.1 and Fig. 7 (bottom row; paper.md 3.9, 3.10):

* **Sum of squared weights** S_theta = ||theta||_F^2 of each named parameter and their total (the "l2 norm of
  the weights"; ``sum_sq_weights`` of the released code). The trajectory holds only parameters, so the
  attention ``mask`` buffer is never counted.
* **Gini coefficient** (Hurley & Rickard 2009) of the norms of the Fourier components of ``W_E`` and of the
  neuron-logit map ``W_logit``. It measures how sparse the model is in the Fourier basis and rises sharply
  during cleanup. The paper does not say over which vector it is taken, so both variants are given and
  recorded in the attrs:

  - *per component* (N = p): the norms of const, cos 1, sin 1, ..., cos (p-1)/2, sin (p-1)/2;
  - *per frequency* (N = (p-1)/2): sqrt(n_cos k^2 + n_sin k^2) for k = 1..(p-1)/2, the constant excluded.

  Fourier norms (from :func:`mechgrok.fourier_norms.fourier_norms`; TransformerLens orientation, ``=``
  row/column dropped, F the orthonormal basis of :func:`mechgrok.fourier.fourier_basis`):

  - ``W_E``: n_i = || (F W_E[:p])[i, :] ||_2, the norm over d_model of component i of the embedding
    (paper Fig. 3a, "fourier_embedding");
  - ``W_logit`` = ``W_out @ W_U[:, :p]`` (d_mlp, p): m_i = || (W_logit F^T)[:, i] ||_2, the norm over d_mlp of
    component i along the output (logit) axis (paper Fig. 3b; W_logit = W_L^T of the column orientation).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import xarray as xr

from mechgrok.activations import iter_checkpoint_chunks, model_p
from mechgrok.errors import AnalysisError
from mechgrok.model import WEIGHT_NAMES

__all__ = ["gini", "fourier_gini", "sum_squared_weights", "weight_measures"]


# --------------------------------------------------------------------------------------------------------------
# Gini
# --------------------------------------------------------------------------------------------------------------
def _gini_np(c: np.ndarray, axis: int) -> np.ndarray:
    c = np.moveaxis(np.asarray(c, dtype=np.float64), axis, -1)
    n = c.shape[-1]
    if n == 0:
        raise AnalysisError("the Gini coefficient of an empty vector is undefined")
    if np.any(c < 0):
        raise AnalysisError("the Gini coefficient needs non-negative values (norms), got a negative entry")
    srt = np.sort(c, axis=-1)
    l1 = srt.sum(-1, keepdims=True)
    weights = (n - np.arange(1, n + 1) + 0.5) / n
    with np.errstate(invalid="ignore", divide="ignore"):
        return 1.0 - 2.0 * np.sum(srt / l1 * weights, axis=-1)


def gini(values: xr.DataArray | np.ndarray, *, dim: str | None = None, axis: int = -1) -> xr.DataArray | np.ndarray:
    """Gini coefficient of non-negative vectors (Hurley & Rickard 2009), as in paper section 5.1.

    For c of length N sorted ascending, c_(1) <= ... <= c_(N):

        G(c) = 1 - 2 sum_{i=1}^{N} (c_(i) / ||c||_1) ((N - i + 1/2) / N)

    G = 0 for a constant vector, 1 - 1/N for a one-hot vector; it is scale invariant. An all-zero vector gives
    NaN.

    Parameters
    ----------
    values : xarray.DataArray or numpy.ndarray
        Non-negative values (e.g. Fourier-component norms). NaNs propagate.
    dim : str, optional
        For a DataArray: the dim the Gini is taken over (required).
    axis : int
        For a numpy array: the axis the Gini is taken over (default the last).

    Returns
    -------
    xarray.DataArray or numpy.ndarray
        float64 with ``dim`` / ``axis`` removed; a DataArray keeps its other coords.

    Raises
    ------
    AnalysisError
        For a negative entry, an empty vector, or a DataArray without ``dim``.
    """
    if isinstance(values, xr.DataArray):
        if dim is None or dim not in values.dims:
            raise AnalysisError(f"gini of a DataArray needs dim= one of {values.dims}, got {dim!r}")
        out = xr.apply_ufunc(_gini_np, values, input_core_dims=[[dim]], kwargs={"axis": -1})
        out.attrs = {"description": f"Gini coefficient (Hurley & Rickard 2009) over {dim}", "N": int(values.sizes[dim])}
        return out
    return _gini_np(np.asarray(values), axis)


def _gini_vars(norms: xr.Dataset, which: str, p: int) -> dict[str, xr.DataArray]:
    ck = norms["checkpoint"].values
    comp = xr.DataArray(_gini_np(norms[f"{which}_fourier_norm"].values, -1), dims=("checkpoint",), coords={"checkpoint": ck})
    comp.attrs = {
        "description": f"Gini coefficient of the Fourier-component norms of {which} (const, cos k, sin k separate)",
        "variant": "component",
        "N": int(p),
        "units": "dimensionless, 0 (flat) .. 1 - 1/N (one component)",
        "paper_section": "paper 5.1, Fig. 7; paper.md 3.9",
    }
    freq = xr.DataArray(_gini_np(norms[f"{which}_freq_norm"].values, -1), dims=("checkpoint",), coords={"checkpoint": ck})
    freq.attrs = {
        "description": f"Gini coefficient of the per-frequency Fourier norms sqrt(cos^2 + sin^2) of {which}, const excluded",
        "variant": "frequency",
        "N": int((p - 1) // 2),
        "units": "dimensionless, 0 (flat) .. 1 - 1/N (one frequency)",
        "paper_section": "paper 5.1, Fig. 7; paper.md 3.9",
    }
    return {f"gini_{which}_component": comp, f"gini_{which}_freq": freq}


def fourier_gini(ds: xr.Dataset, *, chunk: int = 64) -> xr.Dataset:
    """Gini coefficients of the Fourier norms of ``W_E`` and ``W_logit`` per checkpoint (paper 5.1, Fig. 7).

    The norms come from :func:`mechgrok.fourier_norms.fourier_norms` (``W_E[:p]`` transformed along the token
    axis, norm over d_model; ``W_logit = W_out W_U[:, :p]`` transformed along the class axis, norm over d_mlp).

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
    from mechgrok.fourier_norms import fourier_norms

    p = model_p(ds)
    norms = fourier_norms(ds, chunk=chunk, include=("W_E", "W_logit"))
    data = {**_gini_vars(norms, "W_E", p), **_gini_vars(norms, "W_logit", p)}
    out = xr.Dataset(data)
    out["checkpoint"].attrs = dict(ds["checkpoint"].attrs)
    out.attrs = {
        "title": "mechgrok Gini coefficients of Fourier norms",
        "p": int(p),
        "gini_rule": "Hurley & Rickard (2009) G = 1 - 2 sum_i (c_(i)/||c||_1)((N - i + 1/2)/N), c sorted ascending",
        "gini_variants": "component: N = p norms incl. const; freq: N = (p-1)/2 norms sqrt(cos^2+sin^2), const excluded",
        "W_logit": "W_out @ W_U[:, :p] (d_mlp, p), Fourier along the output axis",
    }
    return out


# --------------------------------------------------------------------------------------------------------------
# sum of squared weights
# --------------------------------------------------------------------------------------------------------------
def sum_squared_weights(ds: xr.Dataset, *, chunk: int = 64) -> xr.Dataset:
    """Sum of squared weights per parameter and in total, per checkpoint (paper 5.1, Fig. 7; paper.md 3.10).

    Parameters
    ----------
    ds : xarray.Dataset
        Canonical trajectory; every weight variable present (``W_E``, ``W_pos``, ``W_Q``, ``W_K``, ``W_V``,
        ``W_O``, ``W_in``, ``b_in``, ``W_out``, ``b_out``, ``W_U``) is counted whole, with a ``layer`` dim if any.
    chunk : int
        Checkpoints read at once.

    Returns
    -------
    xarray.Dataset
        ``sum_sq_weights`` (checkpoint, param): ||theta||_F^2 of each parameter, float64;
        ``sum_sq_weights_total`` (checkpoint): their sum. ``param`` holds TransformerLens names.

    Raises
    ------
    AnalysisError
        If the trajectory has no weights.
    """
    names = [n for n in WEIGHT_NAMES if n in ds]
    if not names:
        raise AnalysisError("the trajectory has no weight variables")
    parts = []
    for sub in iter_checkpoint_chunks(ds, chunk):
        cols = []
        for n in names:
            v = np.asarray(sub[n].values, dtype=np.float64)
            cols.append(np.sum(v.reshape(v.shape[0], -1) ** 2, axis=1))
        parts.append(np.stack(cols, axis=1))
    arr = np.concatenate(parts)
    ck = ds["checkpoint"]
    coords = {
        "checkpoint": ("checkpoint", np.asarray(ck.values), dict(ck.attrs)),
        "param": np.array(names, dtype=object),
    }
    return xr.Dataset(
        {
            "sum_sq_weights": (
                ("checkpoint", "param"),
                arr,
                {"description": "sum of squared entries of each parameter", "units": "weight^2", "paper_section": "paper.md 3.10"},
            ),
            "sum_sq_weights_total": (
                ("checkpoint",),
                arr.sum(1),
                {"description": "total sum of squared weights (all parameters)", "units": "weight^2", "paper_section": "paper 5.1, Fig. 7"},
            ),
        },
        coords=coords,
        attrs={"title": "mechgrok sum of squared weights"},
    )


def weight_measures(ds: xr.Dataset, *, chunk: int = 64) -> xr.Dataset:
    """The weight-based progress measures in one Dataset: :func:`fourier_gini` merged with :func:`sum_squared_weights`.

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
    g = fourier_gini(ds, chunk=chunk)
    s = sum_squared_weights(ds, chunk=chunk)
    out = xr.merge([g, s], combine_attrs="drop")
    attrs: dict[str, Any] = dict(g.attrs)
    attrs["title"] = "mechgrok weight measures (Gini of Fourier norms, sum of squared weights)"
    out.attrs = attrs
    return out
