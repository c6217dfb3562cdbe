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

from dataclasses import dataclass

import numpy as np
import torch
import xarray as xr

from mechgrok.analyses.modular.fourier import check_odd_p, grid_p, residues, trig
from mechgrok.analyses.modular.grid import grid_pass, model_p
from mechgrok.engine import DEFAULT_CHUNK, Checkpoint, run
from mechgrok.errors import AnalysisError
from mechgrok.tasks.discrete_log import is_discrete_log
from mechgrok.models.transformer import WEIGHT_NAMES

__all__ = [
    "PAPER_FVE_THRESHOLD",
    "fve_by_frequency",
    "fve_from_sums",
    "frequency_fve",
    "NeuronClusters",
    "neuron_clusters",
    "clusters_from_fve",
]

#: The paper's clustering threshold on a neuron's FVE (section 4.3).
PAPER_FVE_THRESHOLD = 0.85


def fve_by_frequency(X: torch.Tensor, p: int) -> torch.Tensor:
    """The FVE of each neuron by each frequency from its activations on the grid (torch, float64).

    Parameters
    ----------
    X : torch.Tensor
        (..., p*p, n) activations, rows a * p + b (any device).
    p : int
        Odd modulus.

    Returns
    -------
    torch.Tensor
        (..., n, (p-1)/2) float64 fractions in [0, 1]; 0 for a neuron with no variance over the grid.
    """
    X = X.to(torch.float64)
    grid = X.unflatten(-2, (p, p))  # (..., a, b, n)
    s_plus, s_minus = residues(p, device=X.device), residues(p, sign=-1, device=X.device)  # a + b, a - b mod p
    zeros = X.new_zeros((*X.shape[:-2], p, X.shape[-1]))
    return fve_from_sums(
        plus=zeros.index_add(-2, s_plus, X), minus=zeros.index_add(-2, s_minus, X), rows=grid.sum(-2),
        cols=grid.sum(-3), energy=torch.linalg.vector_norm(X, dim=-2).square(), p=p,
    )


def fve_from_sums(
    *, plus: torch.Tensor, minus: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, energy: torch.Tensor, p: int
) -> torch.Tensor:
    """The FVE of each neuron by each frequency from four level-set sums of its activations (module docstring).

    Parameters
    ----------
    plus, minus, rows, cols : torch.Tensor
        (..., x, n): sums of the activations over the pairs with a + b = x, a - b = x (mod p), over b (x = a)
        and over a (x = b).
    energy : torch.Tensor
        (..., n): sum of the squared activations.
    p : int
        Odd modulus.

    Returns
    -------
    torch.Tensor
        (..., n, (p-1)/2) float64 fractions in [0, 1]; 0 for a neuron with no variance over the grid.

    Notes
    -----
    Centring over the grid changes only the constant component: each level-set sum drops by p * mean, a constant
    over x, whose transform at k >= 1 is 0. So the sums are of the raw activations and the variance is
    sum X^2 - p^2 mean^2; a variance within the rounding of that difference (64 ulps of the energy) is a constant
    neuron, FVE 0.
    """
    mean = rows.sum(dim=-2) / p**2  # (..., n)
    total = energy - p**2 * mean.square()
    total = torch.where(total > 64 * torch.finfo(torch.float64).eps * energy, total, torch.zeros_like(total))
    V = torch.stack([plus, minus, rows, cols], dim=-3)  # (..., 4, x, n)
    K = (p - 1) // 2
    cos, sin = trig(p, range(1, K + 1), device=V.device)  # (K, x)
    power = (cos @ V).square() + (sin @ V).square()  # (..., 4, K, n)
    block = (2 / p**2) * power.sum(dim=-3).transpose(-1, -2)  # (..., n, K); the constant is 0 after centring
    return torch.where(total[..., None] > 0, block / total[..., None].clamp_min(1e-300), torch.zeros_like(block))


def frequency_fve(mlp_post: xr.DataArray, *, even_order: bool = False) -> xr.DataArray:
    """FVE of each neuron by each frequency's 3 x 3 Fourier block (vectorised over checkpoints and neurons).

    Parameters
    ----------
    mlp_post : xarray.DataArray
        (checkpoint, a, b, d_mlp) activations over the whole grid (as from
        :func:`mechgrok.analyses.modular.grid.grid_activations`); any dim order, odd p.
    even_order : bool
        Accept an even p (the discrete-log coordinates of mul and div, :mod:`mechgrok.tasks.discrete_log`).

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
    p = grid_p(mlp_post, need, "mlp_post", even_order=even_order)
    X = torch.from_numpy(np.asarray(mlp_post.transpose(*need).values, dtype=np.float64))
    fve = fve_by_frequency(X.reshape(X.shape[0], p * p, X.shape[-1]), p).numpy()
    return _fve_array(fve, mlp_post["checkpoint"].values)


def _fve_array(fve: np.ndarray, checkpoint: np.ndarray) -> xr.DataArray:
    return xr.DataArray(
        fve,
        dims=("checkpoint", "d_mlp", "freq"),
        coords={"checkpoint": checkpoint, "freq": np.arange(1, fve.shape[-1] + 1)},
        attrs={"description": "fraction of each neuron's grid variance in the 3x3 Fourier block of frequency k", "units": "fraction"},
    )


@dataclass
class NeuronClusters:
    """Engine kernel (:mod:`mechgrok.engine`): each neuron's FVE per frequency at one checkpoint, from the shared
    grid pass; ``assemble`` clusters them (:func:`clusters_from_fve`)."""

    threshold: float = PAPER_FVE_THRESHOLD
    keep_fve: bool = True
    name: str = "neurons"
    weights: tuple[str, ...] | None = WEIGHT_NAMES
    needs: frozenset[str] = frozenset({"neuron_sums"})

    def __post_init__(self) -> None:
        if not 0 < self.threshold <= 1:
            raise AnalysisError(f"the FVE threshold must lie in (0, 1], got {self.threshold}")

    def __call__(self, ck: Checkpoint) -> dict[str, np.ndarray]:
        g = grid_pass(ck)  # the level-set sums are taken inside the pass: the activations are never stored
        return {"fve": fve_from_sums(**g.neuron_sums, p=g.p).cpu().numpy()}

    def assemble(self, values: dict[str, np.ndarray], checkpoint: xr.DataArray) -> xr.Dataset:
        out = clusters_from_fve(_fve_array(values["fve"], np.asarray(checkpoint.values)), threshold=self.threshold)
        out["checkpoint"].attrs = dict(checkpoint.attrs)
        return out if self.keep_fve else out.drop_vars("fve")


def neuron_clusters(
    ds: xr.Dataset,
    *,
    threshold: float = PAPER_FVE_THRESHOLD,
    chunk: int = DEFAULT_CHUNK,
    device: str | torch.device | None = "cpu",
) -> xr.Dataset:
    """Each neuron's FVE per frequency, best frequency, and the paper's clusters, at every checkpoint.

    Paper section 4.3 / Fig. 5 (paper.md 3.3(c)). The activations come from the float64 grid pass of each
    checkpoint (:func:`mechgrok.analyses.modular.grid.grid_pass`) through :func:`mechgrok.engine.run`.

    Parameters
    ----------
    ds : xarray.Dataset
        Canonical one-layer trajectory with an odd ``attrs["p"]``, selected along ``checkpoint`` by the caller.
    threshold : float
        Minimum FVE for a neuron to join its frequency's cluster (paper: 0.85).
    chunk : int
        Checkpoints whose weights are read at once.
    device : str, torch.device or None
        Where the forward pass and the transform run (None: CUDA when available).

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
        If p is missing or even, the model is multi-layer, no checkpoint is selected, or the threshold is
        outside (0, 1].

    Examples
    --------
    >>> import mechgrok
    >>> ds = mechgrok.open_run("fixtures/quick-run")
    >>> cl = mechgrok.neuron_clusters(ds.isel(checkpoint=[-1]))
    >>> sorted(set(cl["cluster"].values.ravel().tolist()) - {-1})
    [9, 17, 25]
    """
    check_odd_p(model_p(ds), even_order=is_discrete_log(ds.attrs))
    return run(ds, [NeuronClusters(threshold=threshold)], chunk=chunk, device=device)["neurons"]


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
