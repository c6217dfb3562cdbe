"""Attention heads as periodic functions of the inputs (paper appendix C.1.3, Table 2).

With attention from ``=`` to itself negligible, head h's attention from ``=`` to the position of a is about

    attn_to_a(a, b) ~ 0.5 + C (cos(w (a + theta)) - cos(w (b + theta))),   w = 2 pi k / p

(``shared/reference/paper.md`` 3.11). For every frequency k this is a linear least-squares fit in the
regressors X_cos = cos(w a) - cos(w b) and X_sin = sin(w a) - sin(w b) (with C cos(w theta) and
-C sin(w theta) as coefficients) plus a constant. Over the full grid the three regressors are orthogonal,
with |X_cos|^2 = |X_sin|^2 = p^2, so the fit is analytic for all k at once: with the marginal difference
d(x) = sum_b y(x, b) - sum_a y(a, x),

    C cos(w theta) = sum_x d(x) cos(w x) / p^2,      -C sin(w theta) = sum_x d(x) sin(w x) / p^2,

the constant is the grid mean of y (0.5 when self-attention is nil; mechgrok fits it rather than fixing 0.5,
and reports it as ``offset``) and

    FVE(k) = p^2 C^2 / sum_{a,b} (y - mean y)^2,

the fraction of the attention's variance over the grid that the fit explains. Conventions: C >= 0 and
theta in [0, p / k) residues (theta is the phase in units of a; the phase in radians is w theta).
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from dataclasses import dataclass

import torch

from mechgrok.analyses.modular.fourier import check_odd_p, grid_p
from mechgrok.analyses.modular.grid import grid_pass, model_p
from mechgrok.engine import DEFAULT_CHUNK, Checkpoint, run
from mechgrok.models.transformer import WEIGHT_NAMES

__all__ = ["attention_fit", "attention_fit_from_pattern", "fit_arrays", "AttentionFit"]


def attention_fit_from_pattern(attn_to_a: xr.DataArray) -> xr.Dataset:
    """Fit 0.5 + C (cos w(a + theta) - cos w(b + theta)) to attention patterns for every frequency.

    Parameters
    ----------
    attn_to_a : xarray.DataArray
        (checkpoint, head, a, b) attention from ``=`` to the position of a (any dim order; odd p), e.g.
        ``grid_activations(ds, include=("attn",))["attn_to_a"]``.

    Returns
    -------
    xarray.Dataset
        See :func:`attention_fit`.

    Raises
    ------
    AnalysisError
        If a dim is missing or p is even.
    """
    need = ("checkpoint", "head", "a", "b")
    grid_p(attn_to_a, need, "attn_to_a")
    heads = attn_to_a["head"].values if "head" in attn_to_a.coords else None
    return _fit_dataset(fit_arrays(np.asarray(attn_to_a.transpose(*need).values, dtype=np.float64)),
                        attn_to_a["checkpoint"].values, heads)


def fit_arrays(y: np.ndarray) -> dict[str, np.ndarray]:
    """The fit of every frequency to attention patterns ``y`` (..., head, a, b), float64 numpy (see the module
    docstring); returns the variables of :func:`attention_fit` as arrays with the same leading dims."""
    p = y.shape[-1]
    K = (p - 1) // 2
    mean = y.mean(axis=(-2, -1))
    total = ((y - mean[..., None, None]) ** 2).sum(axis=(-2, -1))
    # constant attention: an RMS deviation within 64 float64 ulps of the pattern's scale is rounding, not signal
    noise = p**2 * (64 * np.finfo(np.float64).eps * np.abs(y).max(axis=(-2, -1))) ** 2
    total = np.where(total > noise, total, 0.0)
    d = y.sum(axis=-1) - y.sum(axis=-2)  # (ck, head, x): sum_b y(x, b) - sum_a y(a, x)
    k = np.arange(1, K + 1)
    w = 2 * np.pi * k / p
    x = np.arange(p)
    a_cos = d @ np.cos(np.outer(x, w)) / p**2  # C cos(w theta)
    a_sin = d @ np.sin(np.outer(x, w)) / p**2  # -C sin(w theta)
    amp = np.hypot(a_cos, a_sin)
    fve = np.divide(p**2 * amp**2, total[..., None], out=np.full_like(amp, np.nan), where=total[..., None] > 0)
    theta = np.mod(np.arctan2(-a_sin, a_cos) / w, p / k)
    filled = np.where(np.isnan(fve), -np.inf, fve)
    best = filled.argmax(axis=-1)
    defined = total > 0

    def pick(arr: np.ndarray) -> np.ndarray:
        return np.take_along_axis(arr, best[..., None], axis=-1)[..., 0]

    return {
        "fve": fve,
        "amplitude": amp,
        "theta": theta,
        "head_freq": np.where(defined, k[best], -1),
        "head_fve": np.where(defined, pick(fve), np.nan),
        "head_amplitude": np.where(defined, pick(amp), np.nan),
        "head_theta": np.where(defined, pick(theta), np.nan),
        "offset": mean,
    }


def _fit_dataset(v: dict[str, np.ndarray], checkpoint: np.ndarray, heads: np.ndarray | None) -> xr.Dataset:
    k = np.arange(1, v["fve"].shape[-1] + 1)
    coords = {"checkpoint": checkpoint, "freq": k}
    if heads is not None:
        coords["head"] = heads
    model = "attn_to_a(a, b) = offset + C (cos(w (a + theta)) - cos(w (b + theta))), w = 2 pi k / p"
    return xr.Dataset(
        {
            "fve": (("checkpoint", "head", "freq"), v["fve"], {"description": "FVE of the fit at each frequency", "units": "fraction"}),
            "amplitude": (("checkpoint", "head", "freq"), v["amplitude"], {"description": "C >= 0 at each frequency", "units": "attention probability"}),
            "theta": (("checkpoint", "head", "freq"), v["theta"], {"description": "theta in [0, p/k) at each frequency", "units": "residues"}),
            "head_freq": (("checkpoint", "head"), v["head_freq"], {"description": "frequency of the best fit (-1: constant attention)"}),
            "head_fve": (("checkpoint", "head"), v["head_fve"], {"description": "FVE of the best fit", "units": "fraction"}),
            "head_amplitude": (("checkpoint", "head"), v["head_amplitude"], {"description": "C of the best fit", "units": "attention probability"}),
            "head_theta": (("checkpoint", "head"), v["head_theta"], {"description": "theta of the best fit", "units": "residues"}),
            "offset": (("checkpoint", "head"), v["offset"], {"description": "fitted constant = grid mean of attn_to_a (0.5 with no self-attention)", "units": "attention probability"}),
        },
        coords=coords,
        attrs={
            "description": "per-head fit of the attention from '=' to a (paper appendix C.1.3, Table 2)",
            "model": model,
            "rule": "least squares for every k = 1..(p-1)/2; head_freq = argmax_k FVE(k)",
        },
    )


@dataclass
class AttentionFit:
    """Engine kernel (:mod:`mechgrok.engine`): the fit of :func:`attention_fit` at one checkpoint, from the shared
    grid pass."""

    name: str = "attention"
    weights: tuple[str, ...] | None = WEIGHT_NAMES
    needs: frozenset[str] = frozenset({"attn"})

    def __call__(self, ck: Checkpoint) -> dict[str, np.ndarray]:
        g = grid_pass(ck)
        p = g.p
        # (head, a, b), contiguous: the reductions over (a, b) run 5x faster than on the strided view
        y = g.attn_pattern[..., 0].reshape(p, p, -1).permute(2, 0, 1).contiguous().cpu().numpy()
        return {k: v[0] for k, v in fit_arrays(y[None]).items()}

    def assemble(self, values: dict[str, np.ndarray], checkpoint: xr.DataArray) -> xr.Dataset:
        out = _fit_dataset(values, np.asarray(checkpoint.values), None)
        out["checkpoint"].attrs = dict(checkpoint.attrs)
        return out


def attention_fit(
    ds: xr.Dataset, *, chunk: int = DEFAULT_CHUNK, device: str | torch.device | None = "cpu"
) -> xr.Dataset:
    """Per head and checkpoint: frequency, FVE, amplitude C and phase theta of the attention fit (paper Table 2).

    Paper appendix C.1.3 (paper.md 3.11); the fit is solved analytically for all frequencies at once (module
    docstring). The attention patterns come from the float64 grid pass of each checkpoint through
    :func:`mechgrok.engine.run`.

    Parameters
    ----------
    ds : xarray.Dataset
        Canonical one-layer trajectory with an odd ``attrs["p"]``, selected along ``checkpoint`` by the caller.
    chunk : int
        Checkpoints whose weights are read at once.
    device : str, torch.device or None
        Where the forward pass runs (None: CUDA when available).

    Returns
    -------
    xarray.Dataset
        Per frequency: ``fve``, ``amplitude`` (C), ``theta`` (residues) (checkpoint, head, freq). Best fit:
        ``head_freq`` (int; -1 where the attention is constant over the grid), ``head_fve``,
        ``head_amplitude``, ``head_theta`` (checkpoint, head; NaN where constant); ``offset`` (checkpoint,
        head): the fitted constant. attrs ``model``, ``rule``.

    Raises
    ------
    AnalysisError
        If p is missing or even, the model is multi-layer, or no checkpoint is selected.
    """
    check_odd_p(model_p(ds))
    return run(ds, [AttentionFit()], chunk=chunk, device=device)["attention"]
