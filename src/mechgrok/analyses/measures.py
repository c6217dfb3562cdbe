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

  Fourier norms (from :func:`mechgrok.analyses.modular.fourier_norms.fourier_norms`; TransformerLens orientation, ``=``
  row/column dropped, F the orthonormal basis of :func:`mechgrok.analyses.modular.fourier.fourier_basis`):

  - ``W_E``: n_i = || (F W_E[:p])[i, :] ||_2, the norm over d_model of component i of the embedding
    (paper Fig. 3a, "fourier_embedding");
  - ``W_logit`` = ``W_out @ W_U[:, :p]`` (d_mlp, p): m_i = || (W_logit F^T)[:, i] ||_2, the norm over d_mlp of
    component i along the output (logit) axis (paper Fig. 3b; W_logit = W_L^T of the column orientation).
"""

from __future__ import annotations


from dataclasses import dataclass

import numpy as np
import xarray as xr

from mechgrok.engine import DEFAULT_CHUNK, Checkpoint, run
from mechgrok.errors import AnalysisError
from mechgrok.models.transformer import WEIGHT_NAMES

__all__ = ["gini", "gini_np", "sum_squared_weights", "SumSquaredWeights"]


# --------------------------------------------------------------------------------------------------------------
# Gini
# --------------------------------------------------------------------------------------------------------------
def gini_np(c: np.ndarray, axis: int) -> np.ndarray:
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
        out = xr.apply_ufunc(gini_np, values, input_core_dims=[[dim]], kwargs={"axis": -1})
        out.attrs = {"description": f"Gini coefficient (Hurley & Rickard 2009) over {dim}", "N": int(values.sizes[dim])}
        return out
    return gini_np(np.asarray(values), axis)


# --------------------------------------------------------------------------------------------------------------
# sum of squared weights
# --------------------------------------------------------------------------------------------------------------
@dataclass
class SumSquaredWeights:
    """Engine kernel (:mod:`mechgrok.engine`): ||theta||_F^2 of each named parameter of one checkpoint."""

    weights: tuple[str, ...]
    name: str = "sum_sq_weights"
    needs: frozenset[str] = frozenset()

    @classmethod
    def for_trajectory(cls, ds: xr.Dataset) -> "SumSquaredWeights":
        """Every weight variable present in ``ds``.

        Raises
        ------
        AnalysisError
            If the trajectory has no weights.
        """
        names = tuple(n for n in WEIGHT_NAMES if n in ds)
        if not names:
            raise AnalysisError("the trajectory has no weight variables")
        return cls(weights=names)

    def __call__(self, ck: Checkpoint) -> dict[str, np.ndarray]:
        return {"sum_sq": np.array([float(ck.weights[n].square().sum()) for n in self.weights])}

    def assemble(self, values: dict[str, np.ndarray], checkpoint: xr.DataArray) -> xr.Dataset:
        arr = values["sum_sq"]
        coords = {
            "checkpoint": ("checkpoint", np.asarray(checkpoint.values), dict(checkpoint.attrs)),
            "param": np.array(self.weights, dtype=object),
        }
        return xr.Dataset(
            {
                "sum_sq_weights": (
                    ("checkpoint", "param"),
                    arr,
                    {"description": "sum of squared entries of each parameter", "units": "weight^2",
                     "paper_section": "paper 5.1"},
                ),
                "sum_sq_weights_total": (
                    ("checkpoint",),
                    arr.sum(1),
                    {"description": "total sum of squared weights (all parameters)", "units": "weight^2",
                     "paper_section": "paper 5.1, Fig. 7"},
                ),
            },
            coords=coords,
            attrs={"title": "mechgrok sum of squared weights"},
        )


def sum_squared_weights(ds: xr.Dataset, *, chunk: int = DEFAULT_CHUNK) -> xr.Dataset:
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
        If the trajectory has no weights or no checkpoint is selected.

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> ds = xr.Dataset({"W_E": (("checkpoint", "vocab", "d_model"), np.full((2, 3, 2), 0.5))},
    ...                 coords={"checkpoint": [0, 100]})
    >>> sum_squared_weights(ds)["sum_sq_weights_total"].values.tolist()
    [1.5, 1.5]
    """
    return run(ds, [SumSquaredWeights.for_trajectory(ds)], chunk=chunk, device="cpu")["sum_sq_weights"]
