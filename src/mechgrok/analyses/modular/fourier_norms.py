"""Fourier norms of the embedding and of the neuron-logit map, at every checkpoint (paper section 4.1, Fig. 3).

With the orthonormal basis F of :mod:`mechgrok.analyses.modular.fourier` (rows in the paper's order **[const, cos 1, sin 1,
..., cos (p-1)/2, sin (p-1)/2]**; ``shared/reference/paper.md`` 3.1-3.2):

* embedding: drop the ``=`` row of ``W_E`` (vocab, d_model) and transform along the token axis,
  ``n_i = || (F W_E[:p])[i, :] ||_2`` over d_model (paper Fig. 3a, "fourier_embedding");
* neuron-logit map: ``W_logit = W_out W_U[:, :p]`` (d_mlp, c), transformed along the output (class) axis,
  ``m_i = || (W_logit F^T)[:, i] ||_2`` over neurons (paper Fig. 3b).

The per-frequency norm combines the cos and sin components, ``sqrt(n_{cos k}^2 + n_{sin k}^2)`` (mechgrok's,
not the paper's). The share of a frequency is its squared per-frequency norm over the sum of squared norms of
all non-constant components, so shares sum to 1 over ``freq``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import xarray as xr

from mechgrok.analyses.modular.fourier import check_odd_p, fourier_basis
from mechgrok.analyses.modular.grid import model_p
from mechgrok.engine import DEFAULT_CHUNK, Checkpoint, run
from mechgrok.errors import AnalysisError
from mechgrok.tasks.discrete_log import is_discrete_log

__all__ = ["fourier_norms", "per_frequency", "FourierNorms", "component_norms", "norms_dataset"]


def per_frequency(norm: xr.DataArray, *, dim: str = "fourier") -> xr.DataArray:
    """Combine cos and sin component norms into per-frequency norms sqrt(n_cos^2 + n_sin^2).

    Parameters
    ----------
    norm : xarray.DataArray
        Has ``dim`` of length p (odd) in the paper's order [const, cos 1, sin 1, ...].
    dim : str
        The Fourier component dim.

    Returns
    -------
    xarray.DataArray
        ``dim`` replaced by ``freq`` = 1..(p-1)/2 (the constant component is left out).

    Raises
    ------
    AnalysisError
        If ``dim`` has an even length.
    """
    p = check_odd_p(norm.sizes[dim])
    k = (p - 1) // 2
    arr = np.moveaxis(np.asarray(norm.values, dtype=np.float64), norm.get_axis_num(dim), -1)[..., 1:]
    out = np.sqrt((arr.reshape(*arr.shape[:-1], k, 2) ** 2).sum(-1))
    dims = [d for d in norm.dims if d != dim] + ["freq"]
    coords = {d: norm[d].values for d in dims[:-1] if d in norm.coords}
    coords["freq"] = np.arange(1, k + 1)
    return xr.DataArray(out, dims=dims, coords=coords, attrs={"units": norm.attrs.get("units", "")})


def _share(freq_norm: np.ndarray) -> np.ndarray:
    sq = freq_norm**2
    tot = sq.sum(-1, keepdims=True)
    return np.divide(sq, tot, out=np.zeros_like(sq), where=tot > 0)


def fourier_norms(
    ds: xr.Dataset, *, include: tuple[str, ...] = ("W_E", "W_logit"), chunk: int = DEFAULT_CHUNK
) -> xr.Dataset:
    """Norms of ``W_E`` and ``W_logit`` per Fourier component and per frequency at every checkpoint.

    Paper section 4.1 and Fig. 3 (paper.md 3.2); the Gini coefficient of these norms is a progress measure
    (paper section 5.1).

    Parameters
    ----------
    ds : xarray.Dataset
        Canonical one-layer trajectory with an odd ``attrs["p"]``.
    include : tuple of str
        ``"W_E"`` and/or ``"W_logit"``.
    chunk : int
        Checkpoints whose weights are read at once.

    Returns
    -------
    xarray.Dataset
        ``W_E_fourier_norm`` (checkpoint, fourier), ``W_E_freq_norm``, ``W_E_freq_share`` (checkpoint, freq),
        and the same three for ``W_logit``. ``fourier`` has labels "const", "cos 1", "sin 1", ... and a ``freq``
        coordinate (0 for const); the ``freq`` dim runs 1..(p-1)/2. Norms are in weight units (embedding units
        for W_E, logits per unit activation for W_logit); shares are fractions summing to 1 over ``freq``.

    Raises
    ------
    AnalysisError
        If p is missing or even, the model is multi-layer, or a weight is missing.
    """
    return run(ds, [FourierNorms.for_trajectory(ds, include=include)], chunk=chunk, device="cpu")["fourier_norms"]


@dataclass
class FourierNorms:
    """Engine kernel (:mod:`mechgrok.engine`): the Fourier norms of one checkpoint (weights only)."""

    p: int
    include: tuple[str, ...]
    name: str = "fourier_norms"
    weights: tuple[str, ...] | None = ()
    needs: frozenset[str] = frozenset()

    @classmethod
    def for_trajectory(cls, ds: xr.Dataset, *, include: tuple[str, ...] = ("W_E", "W_logit")) -> "FourierNorms":
        """The kernel for a trajectory.

        Raises
        ------
        AnalysisError
            If p is missing or even, the model is multi-layer, or ``include`` names an unknown input.
        """
        p = check_odd_p(model_p(ds), even_order=is_discrete_log(ds.attrs))
        bad = [n for n in include if n not in ("W_E", "W_logit")]
        if bad:
            raise AnalysisError(f"unknown Fourier-norm inputs {bad}; known: W_E, W_logit")
        need = tuple(sorted({"W_E"} & set(include) | ({"W_out", "W_U"} if "W_logit" in include else set())))
        return cls(p=p, include=tuple(include), weights=need)

    def __call__(self, ck: Checkpoint) -> dict[str, np.ndarray]:
        return ck.batched((self.name, self.include), lambda w: component_norms(w, self.p, self.include))

    def assemble(self, values: dict[str, np.ndarray], checkpoint: xr.DataArray) -> xr.Dataset:
        out = norms_dataset(values, np.asarray(checkpoint.values), self.p)
        out["checkpoint"].attrs = dict(checkpoint.attrs)
        return out


def component_norms(w: dict[str, torch.Tensor], p: int, include: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Norm of every Fourier component of W_E and/or W_logit for checkpoints ``ck``, float64 (ck, fourier).

    ``w`` holds ``W_E`` (ck, vocab, d_model) and/or ``W_out`` (ck, d_mlp, d_model), ``W_U`` (ck, d_model,
    vocab_out) as tensors or arrays of any float dtype. Plain BLAS matrix products (no einsum, no strided operands).
    """
    out: dict[str, np.ndarray] = {}
    Ft = torch.from_numpy(np.ascontiguousarray(fourier_basis(p, even_order=p % 2 == 0).values.T, dtype=np.float64))  # (x, fourier)
    if "W_E" in include:
        W_E = torch.as_tensor(w["W_E"][:, :p]).to("cpu", torch.float64)  # (ck, x, d_model)
        ck, _, d = W_E.shape
        hat = W_E.transpose(1, 2).reshape(ck * d, p) @ Ft  # (ck * d_model, fourier): one matrix product
        out["W_E"] = hat.view(ck, d, -1).square().sum(1).sqrt().numpy()  # norm over d_model of each component
    if "W_logit" in include:
        W_U = torch.as_tensor(w["W_U"][..., :p]).to("cpu", torch.float64)
        W_logit = torch.as_tensor(w["W_out"]).to("cpu", torch.float64) @ W_U  # (ck, d_mlp, c)
        ck, n, _ = W_logit.shape
        hat = W_logit.reshape(ck * n, p) @ Ft  # (ck * d_mlp, fourier)
        out["W_logit"] = hat.view(ck, n, -1).square().sum(1).sqrt().numpy()  # norm over neurons of each component
    return out


def norms_dataset(comps: dict[str, np.ndarray], checkpoint: np.ndarray, p: int) -> xr.Dataset:
    """The Dataset of :func:`fourier_norms` from the component norms (ck, fourier) of each input."""
    basis = fourier_basis(p, even_order=p % 2 == 0)  # even: an order in discrete-log coordinates
    coords = {
        "checkpoint": checkpoint,
        "fourier": basis["fourier"].values,
        "freq": np.arange(1, (p - 1) // 2 + 1),
    }
    data: dict[str, tuple] = {}
    comp_freq = basis["freq"].values
    for name, comp in comps.items():
        freq_norm = np.sqrt((comp[:, 1:].reshape(comp.shape[0], -1, 2) ** 2).sum(-1))
        what = "W_E[:p] along the token axis" if name == "W_E" else "W_logit along the class axis"
        data[f"{name}_fourier_norm"] = (("checkpoint", "fourier"), comp, {"description": f"norm of each Fourier component of {what}", "units": "weight"})
        data[f"{name}_freq_norm"] = (("checkpoint", "freq"), freq_norm, {"description": "sqrt(n_cos^2 + n_sin^2)", "units": "weight"})
        data[f"{name}_freq_share"] = (
            ("checkpoint", "freq"),
            _share(freq_norm),
            {"description": "squared frequency norm / sum over frequencies (const excluded)", "units": "fraction"},
        )
    out = xr.Dataset(data, coords=coords)
    out = out.assign_coords(fourier_freq=("fourier", comp_freq))
    out.attrs = {
        "description": "Fourier norms of W_E and of the neuron-logit map W_logit (paper section 4.1, Fig. 3)",
        "basis": "orthonormal, rows [const, cos 1, sin 1, ...] (paper order)",
        "p": p,
    }
    return out
