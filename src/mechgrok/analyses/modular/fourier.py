"""The Fourier basis over Z_p and transforms in it (paper section 4.1; paper.md 3.1).

Rows are ordered as in the paper's code: **[const, cos 1, sin 1, cos 2, sin 2, ..., cos (p-1)/2, sin (p-1)/2]**
(the TransformerLens demo lineage orders sin before cos; mechgrok follows the paper). With w_k = 2 pi k / p:

    F[0, x] = 1 / sqrt(p),  F[2k-1, x] = sqrt(2/p) cos(w_k x),  F[2k, x] = sqrt(2/p) sin(w_k x)

so F is orthonormal (F F^T = I). Only odd p is supported (an even p would need an extra alternating row),
except with ``even_order=True``: the order p - 1 of the multiplicative group in the discrete-log coordinates of
multiplication and division (:mod:`mechgrok.tasks.discrete_log`). The basis then has the p - 1 rows above and
leaves out the Nyquist frequency p/2 (the alternating row (-1)^x, for mul the Legendre symbol): its energy
counts in totals (FVE denominators) but it is never a candidate frequency.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
import xarray as xr

from mechgrok.errors import AnalysisError

__all__ = [
    "fourier_basis",
    "fourier_labels",
    "freq_of_component",
    "fft1d",
    "fft2d",
    "check_odd_p",
    "grid_p",
    "residues",
    "residue_sums",
    "fold_mod_p",
    "trig",
]


def check_odd_p(p: int, *, even_order: bool = False) -> int:
    """Return ``p`` if it is an odd integer >= 3 (or, with ``even_order``, any integer >= 3).

    Raises
    ------
    AnalysisError
        For an even (unless ``even_order``) or too small p.
    """
    if int(p) != p or p < 3 or (p % 2 == 0 and not even_order):
        raise AnalysisError(f"the Fourier basis needs an odd p >= 3, got p={p}")
    return int(p)


def grid_p(da: xr.DataArray, need: tuple[str, ...], name: str, *, even_order: bool = False) -> int:
    """The modulus of an array over the input grid: check that ``da`` has the dims ``need`` and return its odd p.

    Parameters
    ----------
    da : xarray.DataArray
        An array with an ``a`` dim of length p among ``need``.
    need : tuple of str
        The dims ``da`` must have.
    name : str
        What ``da`` is called in the error message.

    Raises
    ------
    AnalysisError
        If a dim is missing or p is even or below 3.
    """
    if any(d not in da.dims for d in need):
        raise AnalysisError(f"{name} needs dims {need}, has {da.dims}")
    return check_odd_p(da.sizes["a"], even_order=even_order)


def fourier_labels(p: int, *, even_order: bool = False) -> list[str]:
    """Component labels ``["const", "cos 1", "sin 1", ...]``, length p (p - 1 for an even order)."""
    check_odd_p(p, even_order=even_order)
    labels = ["const"]
    for k in range(1, (p - 1) // 2 + 1):
        labels += [f"cos {k}", f"sin {k}"]
    return labels


def freq_of_component(p: int, *, even_order: bool = False) -> np.ndarray:
    """Frequency of each Fourier component (0 for const), int64 shape (p,) ((p - 1,) for an even order)."""
    check_odd_p(p, even_order=even_order)
    return np.concatenate([[0], np.repeat(np.arange(1, (p - 1) // 2 + 1), 2)]).astype(np.int64)


def fourier_basis(p: int, *, dtype: type = np.float64, even_order: bool = False) -> xr.DataArray:
    """The orthonormal real Fourier basis F, dims (fourier, x), shape (p, p).

    Parameters
    ----------
    p : int
        Odd modulus.
    dtype : numpy dtype
        float64 by default.
    even_order : bool
        Accept an even p (a group order in discrete-log coordinates): rows for k = 1..p/2 - 1, the Nyquist
        frequency left out (module docstring).

    Returns
    -------
    xarray.DataArray
        ``F[fourier, x]`` with coords ``fourier`` (labels), ``freq`` (on ``fourier``) and ``x``.

    Raises
    ------
    AnalysisError
        If p is even (without ``even_order``).
    """
    check_odd_p(p, even_order=even_order)
    x = np.arange(p)
    rows = [np.full(p, 1 / np.sqrt(p))]
    for k in range(1, (p - 1) // 2 + 1):
        w = 2 * np.pi * k / p
        rows.append(np.sqrt(2 / p) * np.cos(w * x))
        rows.append(np.sqrt(2 / p) * np.sin(w * x))
    F = np.stack(rows).astype(dtype)
    return xr.DataArray(
        F,
        dims=("fourier", "x"),
        coords={"fourier": np.array(fourier_labels(p, even_order=even_order), dtype=object),
                "freq": ("fourier", freq_of_component(p, even_order=even_order)), "x": x},
        attrs={"description": "orthonormal real Fourier basis, rows [const, cos k, sin k] (paper's order)"},
    )


def fft1d(da: xr.DataArray, dim: str, *, out_dim: str = "fourier", even_order: bool = False) -> xr.DataArray:
    """Project ``da`` along ``dim`` (length p, odd) onto the Fourier basis: x_hat = F x.

    Parameters
    ----------
    da : xarray.DataArray
        Any dims including ``dim``.
    dim : str
        The dim indexed by residues 0..p-1.
    out_dim : str
        Name of the new dim (labels ``const``, ``cos k``, ``sin k``).

    Returns
    -------
    xarray.DataArray
        ``dim`` replaced by ``out_dim`` (with a ``freq`` coordinate), float64.
    """
    p = da.sizes[dim]
    F = fourier_basis(p, even_order=even_order).rename(fourier=out_dim, x=dim)
    F = F.assign_coords({dim: da[dim].values}) if dim in da.coords else F.drop_vars(dim)
    return xr.dot(F, da.astype(np.float64), dim=dim)


def fft2d(da: xr.DataArray, dims: tuple[str, str] = ("a", "b"), out_dims: tuple[str, str] = ("fa", "fb"), *,
          even_order: bool = False) -> xr.DataArray:
    """2D Fourier transform over two residue dims: M_hat[f, g] = sum_{a,b} F[f, a] F[g, b] M[a, b].

    Parameters
    ----------
    da : xarray.DataArray
        Has both ``dims`` (each of length p, odd).
    dims : (str, str)
        The residue dims, default (a, b).
    out_dims : (str, str)
        Names of the Fourier dims for ``dims[0]`` and ``dims[1]``, default (fa, fb).

    Returns
    -------
    xarray.DataArray
        float64, ``dims`` replaced by ``out_dims`` (paper.md 3.1, ``fft2d``).
    """
    out = fft1d(da, dims[0], out_dim=out_dims[0], even_order=even_order).rename(freq=f"freq_{out_dims[0]}")
    out = fft1d(out, dims[1], out_dim=out_dims[1], even_order=even_order).rename(freq=f"freq_{out_dims[1]}")
    return out


def residues(p: int, *, sign: int = 1, device: str | torch.device = "cpu") -> torch.Tensor:
    """(a + b) mod p (``sign=1``) or (a - b) mod p (``sign=-1``) of the flattened grid row a * p + b, int64 (p*p,).

    The sum directions cos/sin(w (a + b)) of the paper depend on (a, b) only through it, so sums over its level
    sets (``index_add``) replace p^2 x p^2 products.
    """
    ar = torch.arange(p, device=device)
    return ((ar[:, None] + sign * ar[None, :]) % p).reshape(-1)


def residue_sums(L: torch.Tensor, p: int) -> torch.Tensor:
    """G[..., s, c] = sum over the pairs with (a + b) mod p = s of L[..., a * p + b, c]: the level-set sums of
    :func:`residues`, from logits (..., p*p, n) in grid order (any strides).

    Row a of the grid adds to residues a..a+p-1 in order, so each row is added as one contiguous slice of a
    (2p - 1)-row table, folded mod p at the end (``index_add`` by residue, row by row, is about 4 times slower).

    Examples
    --------
    >>> L = torch.arange(9, dtype=torch.float64).reshape(9, 1)  # p = 3, L[a * 3 + b] = 3a + b
    >>> residue_sums(L, 3)[:, 0].tolist()  # s = 0: (0,0), (1,2), (2,1); s = 1: (0,1), (1,0), (2,2); ...
    [12.0, 12.0, 12.0]
    """
    rows = L.unflatten(-2, (p, p))  # (..., a, b, n)
    G2 = L.new_zeros(*L.shape[:-2], 2 * p - 1, L.shape[-1])
    for a in range(p):
        G2[..., a : a + p, :] += rows[..., a, :, :]
    return fold_mod_p(G2, p)


def fold_mod_p(T: torch.Tensor, p: int) -> torch.Tensor:
    """Rows x = 0..n-1 (p <= n <= 2p) of a table of level-set sums folded onto x mod p: out[x] = T[x] + T[x + p].

    The last step of :func:`residue_sums` and of the grid pass's level-set sums, whose tables are indexed by an
    unreduced a + b (0..2p-2). ``T`` is (..., n, width); returns (..., p, width).

    Examples
    --------
    >>> fold_mod_p(torch.arange(5.0)[:, None], 3)[:, 0].tolist()  # [0 + 3, 1 + 4, 2]
    [3.0, 5.0, 2.0]
    """
    out = T[..., :p, :].clone()
    out[..., : T.shape[-2] - p, :] += T[..., p:, :]
    return out


def trig(p: int, freqs: Sequence[int], *, device: str | torch.device = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """cos(w_k x), sin(w_k x) for x = 0..p-1 and k in ``freqs``, w_k = 2 pi k / p; float64 (K, p) each."""
    ang = 2 * math.pi * torch.outer(torch.tensor(list(freqs), dtype=torch.float64), torch.arange(p, dtype=torch.float64)) / p
    return torch.cos(ang).to(device), torch.sin(ang).to(device)
