"""Neuron clustering by frequency: fraction of variance explained (FVE) from each neuron's 2D Fourier spectrum.

Paper section 4.3 and Fig. 5a (``shared/reference/paper.md`` 3.3(c), 3.5). For neuron n with post-ReLU
activations A[a, b, n] at the ``=`` position over the p x p grid:

1. centre over the grid, Ã = A - mean_{a,b} A;
2. 2D Fourier transform Â = F Ã F^T (basis rows in the paper's order [const, cos 1, sin 1, ...]);
3. for each frequency k = 1..(p-1)/2, with I_k = {const, cos k, sin k},

       FVE_n(k) = sum_{f in I_k} sum_{g in I_k} Â[f, g, n]^2 / sum_{f, g} Â[f, g, n]^2

   (the 3 x 3 block of constant, linear and product terms of frequency k);
4. ``neuron_freq`` = argmax_k FVE_n(k), ``frac_explained`` = max_k FVE_n(k);
5. ``cluster`` = neuron_freq where frac_explained >= threshold (paper: 0.85), else -1 ("unexplained").

Every k = 1..(p-1)/2 is searched (the released ``transformers.py`` stops at (p-1)/2 - 1, missing k = 56 for
p = 113). A neuron constant over the grid (e.g. dead) has no variance: its FVE is 0 at every k, its
``neuron_freq`` is -1 and it is unexplained.

Computation. The real 2D transform is never formed. With the complex DFT Z[u, v] = sum_{a,b} Ã[a, b]
e^{-2 pi i (u a + v b) / p}, the 3 x 3 block of frequency k has energy

    (2 / p^2) (|Z[k, k]|^2 + |Z[k, -k]|^2 + |Z[k, 0]|^2 + |Z[0, k]|^2) + Z[0, 0]^2 / p^2

(the directions cos/sin w(a + b), cos/sin w(a - b), cos/sin w a, cos/sin w b and the constant), and each of
these entries is a 1D DFT of a length-p sum of Ã: over a + b = s, over a - b = s, over b and over a. So the
cost is O(p^2) per neuron (four sums and four p x (p-1)/2 products) instead of a 2D transform; the
denominator is sum Ã^2 (Parseval).
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from mechgrok.activations import select_checkpoints, grid_activations, iter_checkpoint_chunks, model_p
from mechgrok.errors import AnalysisError
from mechgrok.fourier import check_odd_p, grid_p

__all__ = ["PAPER_FVE_THRESHOLD", "frequency_fve", "neuron_clusters", "clusters_from_fve"]

#: The paper's clustering threshold on a neuron's FVE (section 4.3).
PAPER_FVE_THRESHOLD = 0.85


def frequency_fve(mlp_post: xr.DataArray) -> xr.DataArray:
    """FVE of each neuron by each frequency's 3 x 3 Fourier block (vectorised over checkpoints and neurons).

    Parameters
    ----------
    mlp_post : xarray.DataArray
        (checkpoint, a, b, d_mlp) activations over the whole grid (as from
        :func:`mechgrok.activations.grid_activations`); any dim order, odd p.

    Returns
    -------
    xarray.DataArray
        ``fve`` (checkpoint, d_mlp, freq), float64 fractions in [0, 1], freq = 1..(p-1)/2; 0 for a neuron with
        no variance over the grid.

    Raises
    ------
    AnalysisError
        If a dim is missing or p is even.
    """
    need = ("checkpoint", "a", "b", "d_mlp")
    p = grid_p(mlp_post, need, "mlp_post")
    K = (p - 1) // 2
    X = np.asarray(mlp_post.transpose("checkpoint", "a", "b", "d_mlp").values, dtype=np.float64)
    X = X - X.mean(axis=(1, 2), keepdims=True)
    total = (X**2).sum(axis=(1, 2))  # (ck, n); Parseval: the sum of all squared 2D Fourier coefficients
    # The 3x3 block of frequency k from four length-p sums (see the module docstring).
    x = np.arange(p)
    # rows a * p + b of the pairs with a + b = s (a - b = s) for each (s, a): whole-row gathers (fast)
    Xf = X.reshape(X.shape[0], p * p, X.shape[-1])
    plus = Xf[:, x[None, :] * p + (x[:, None] - x[None, :]) % p].sum(axis=2)  # (ck, s, n): sum over a + b = s
    minus = Xf[:, x[None, :] * p + (x[None, :] - x[:, None]) % p].sum(axis=2)  # sum over a - b = s
    V = np.stack([plus, minus, X.sum(axis=2), X.sum(axis=1)], axis=1)  # (ck, 4, x, n)
    w = 2 * np.pi * np.outer(np.arange(1, K + 1), x) / p  # (K, x)
    power = np.einsum("kx,cvxn->cvkn", np.cos(w), V) ** 2 + np.einsum("kx,cvxn->cvkn", np.sin(w), V) ** 2
    block = (2 / p**2) * power.sum(axis=1).transpose(0, 2, 1)  # (ck, n, K)
    block = block + (X.sum(axis=(1, 2)) ** 2 / p**2)[..., None]
    fve = np.divide(block, total[..., None], out=np.zeros_like(block), where=total[..., None] > 0)
    return xr.DataArray(
        fve,
        dims=("checkpoint", "d_mlp", "freq"),
        coords={"checkpoint": mlp_post["checkpoint"].values, "freq": np.arange(1, K + 1)},
        attrs={"description": "fraction of each neuron's grid variance in the 3x3 Fourier block of frequency k", "units": "fraction"},
    )


def neuron_clusters(
    ds: xr.Dataset,
    *,
    threshold: float = PAPER_FVE_THRESHOLD,
    checkpoints: slice | list | None = None,
    chunk: int = 4,
) -> xr.Dataset:
    """Each neuron's FVE per frequency, best frequency, and the paper's clusters, at every checkpoint.

    Paper section 4.3 / Fig. 5 (paper.md 3.3(c)). Activations come from one batched forward pass per chunk of
    checkpoints (:func:`mechgrok.activations.grid_activations` with ``include=("mlp_post",)``).

    Parameters
    ----------
    ds : xarray.Dataset
        Canonical one-layer trajectory with an odd ``attrs["p"]``.
    threshold : float
        Minimum FVE for a neuron to join its frequency's cluster (paper: 0.85).
    checkpoints : slice or list, optional
        ``isel`` selection along ``checkpoint``; default all.
    chunk : int
        Checkpoints per forward pass and transform (memory about chunk * d_mlp * p^2 * 24 bytes; 4 keeps a
        p = 113, d_mlp = 512 model near 0.6 GB).

    Returns
    -------
    xarray.Dataset
        ``fve`` (checkpoint, d_mlp, freq): FVE per frequency; ``neuron_freq`` (checkpoint, d_mlp): int, the
        argmax frequency (-1 for a constant neuron); ``frac_explained`` (checkpoint, d_mlp): its FVE;
        ``cluster`` (checkpoint, d_mlp): neuron_freq, or -1 below ``threshold``; ``cluster_sizes``
        (checkpoint, cluster_freq): neurons per cluster, ``cluster_freq`` = -1 (unexplained), 1..(p-1)/2;
        ``frac_above_threshold`` (checkpoint): share of neurons with FVE >= threshold. attrs ``threshold``,
        ``rule``.

    Raises
    ------
    AnalysisError
        If p is missing or even, the model is multi-layer, or the threshold is outside (0, 1].
    """
    p = check_odd_p(model_p(ds))
    if not 0 < threshold <= 1:
        raise AnalysisError(f"the FVE threshold must lie in (0, 1], got {threshold}")
    ds = select_checkpoints(ds, checkpoints)
    fves = [
        frequency_fve(grid_activations(sub, chunk=chunk, include=("mlp_post",))["mlp_post"])
        for sub in iter_checkpoint_chunks(ds, chunk)
    ]
    fve = xr.concat(fves, dim="checkpoint")
    return clusters_from_fve(fve, threshold=threshold)


def clusters_from_fve(fve: xr.DataArray, *, threshold: float = PAPER_FVE_THRESHOLD) -> xr.Dataset:
    """Best frequency, FVE and cluster of each neuron from its FVE per frequency (see :func:`neuron_clusters`).

    Parameters
    ----------
    fve : xarray.DataArray
        (checkpoint, d_mlp, freq) from :func:`frequency_fve`.
    threshold : float
        Cluster threshold (paper: 0.85).

    Returns
    -------
    xarray.Dataset
        As :func:`neuron_clusters`.
    """
    freqs = fve["freq"].values
    arr = fve.transpose("checkpoint", "d_mlp", "freq").values
    best = arr.argmax(axis=-1)
    frac = np.take_along_axis(arr, best[..., None], axis=-1)[..., 0]
    alive = arr.max(axis=-1) > 0
    neuron_freq = np.where(alive, freqs[best], -1).astype(np.int64)
    cluster = np.where(alive & (frac >= threshold), neuron_freq, -1).astype(np.int64)
    labels = np.concatenate([[-1], freqs]).astype(np.int64)
    sizes = (cluster[..., None] == labels).sum(axis=1).astype(np.int64)
    n = arr.shape[1]
    coords = {"checkpoint": fve["checkpoint"].values, "freq": freqs, "cluster_freq": labels}
    rule = f"neuron n in cluster k = argmax_k FVE_n(k) if max_k FVE_n(k) >= {threshold}, else -1"
    return xr.Dataset(
        {
            "fve": fve.transpose("checkpoint", "d_mlp", "freq"),
            "neuron_freq": (("checkpoint", "d_mlp"), neuron_freq, {"description": "argmax_k FVE (-1: constant neuron)"}),
            "frac_explained": (("checkpoint", "d_mlp"), frac, {"description": "max_k FVE", "units": "fraction"}),
            "cluster": (("checkpoint", "d_mlp"), cluster, {"description": rule}),
            "cluster_sizes": (("checkpoint", "cluster_freq"), sizes, {"description": "neurons per cluster (-1: unexplained)"}),
            "frac_above_threshold": (
                ("checkpoint",),
                (frac >= threshold).sum(axis=1) / n,
                {"description": f"share of neurons with FVE >= {threshold}", "units": "fraction"},
            ),
        },
        coords=coords,
        attrs={
            "description": "neuron clusters by frequency from the 2D Fourier spectrum of each neuron (paper section 4.3)",
            "threshold": float(threshold),
            "rule": rule,
            "fve_definition": "share of the grid-centred variance in the 3x3 block {const, cos k, sin k}^2",
        },
    )
