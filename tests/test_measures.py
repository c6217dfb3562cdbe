"""Weight measures (mechgrok.analyses.measures): Gini coefficient and sum of squared weights."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import xarray as xr

from mechgrok.config import Config
from mechgrok.errors import AnalysisError
from mechgrok.analyses.modular.fourier_gini import fourier_gini, weight_measures
from mechgrok.analyses.measures import gini, sum_squared_weights
from mechgrok.models.transformer import init_params
from mechgrok.store.schema import build_dataset

from planted import planted_trajectory
from dense import dense_basis


def dense_gini(c) -> float:
    """The classical Gini as the mean absolute difference, sum_i sum_j |c_i - c_j| / (2 N sum c), a plain loop.

    For non-negative vectors it equals Hurley & Rickard's sorted form; the two are written independently."""
    c = [float(x) for x in c]
    n, s = len(c), sum(c)
    return sum(abs(x - y) for x in c for y in c) / (2 * n * s)


def dense_norms(M: np.ndarray, F: np.ndarray) -> np.ndarray:
    """Norm over the other axis of each Fourier component of M (p, d) transformed along axis 0."""
    p = F.shape[0]
    out = np.zeros(p)
    for i in range(p):
        col = sum(F[i, x] * M[x].astype(np.float64) for x in range(p))
        out[i] = math.sqrt(float(np.sum(col**2)))
    return out


def per_freq(n: np.ndarray) -> np.ndarray:
    return np.array([math.hypot(n[2 * k - 1], n[2 * k]) for k in range(1, (len(n) - 1) // 2 + 1)])


def random_trajectory(p: int = 13, n: int = 4) -> xr.Dataset:
    cfg = Config(p=p, d_model=16, n_heads=2, d_head=8, d_mlp=24, frac_train=0.5)
    ws = [init_params(cfg, generator=torch.Generator().manual_seed(10 + s)) for s in range(n)]
    weights = {k: np.stack([w[k].numpy() for w in ws]) for k in ws[0]}
    weights["b_in"] = weights["b_in"] + 0.1  # non-zero biases count too
    return build_dataset(weights, [0, 10, 30, 100][:n], config=cfg.to_dict(), source_format="test", p=p)


# ------------------------------------------------------------------------------------------------------------
# gini
# ------------------------------------------------------------------------------------------------------------
def test_gini_matches_mean_absolute_difference():
    rng = np.random.default_rng(0)
    X = rng.exponential(size=(6, 17)) ** 3
    got = gini(X, axis=1)
    for row, g in zip(X, got):
        assert g == pytest.approx(dense_gini(row), rel=1e-12)
    np.testing.assert_allclose(gini(X.T, axis=0), got, rtol=1e-14)


@pytest.mark.parametrize("n, m", [(5, 1), (53, 1), (53, 6), (26, 3)])
def test_gini_known_values(n, m):
    # m equal non-zero entries of n: G = 1 - m/n; a flat vector: 0; scale invariant
    c = np.zeros(n)
    c[np.random.default_rng(n + m).choice(n, m, replace=False)] = 2.5
    assert float(gini(c)) == pytest.approx(1 - m / n, abs=1e-14)
    assert float(gini(7 * c)) == pytest.approx(1 - m / n, abs=1e-14)
    assert float(gini(np.full(n, 0.3))) == pytest.approx(0.0, abs=1e-14)


def test_gini_dataarray_and_errors():
    da = xr.DataArray(np.abs(np.random.default_rng(1).normal(size=(3, 9))), dims=("checkpoint", "fourier"), coords={"checkpoint": [0, 5, 9]})
    g = gini(da, dim="fourier")
    assert g.dims == ("checkpoint",) and list(g["checkpoint"].values) == [0, 5, 9] and g.attrs["N"] == 9
    np.testing.assert_allclose(g.values, [dense_gini(r) for r in da.values], rtol=1e-12)
    assert np.isnan(gini(np.zeros(4)))
    with pytest.raises(AnalysisError, match="non-negative"):
        gini(np.array([1.0, -0.1, 2.0]))
    with pytest.raises(AnalysisError, match="dim"):
        gini(da)
    with pytest.raises(AnalysisError, match="empty"):
        gini(np.zeros((3, 0)))


def test_fourier_gini_matches_dense_reference():
    ds = random_trajectory()
    p = 13
    F = dense_basis(p)
    out = fourier_gini(ds, chunk=3)
    assert out["gini_W_E_component"].attrs["N"] == p and out["gini_W_E_freq"].attrs["N"] == (p - 1) // 2
    assert out["gini_W_logit_component"].attrs["variant"] == "component"
    np.testing.assert_array_equal(out["checkpoint"].values, ds["checkpoint"].values)
    for i in range(ds.sizes["checkpoint"]):
        W_E = ds["W_E"].values[i][:p]  # (p, d_model): the '=' row dropped
        W_logit = ds["W_out"].values[i].astype(np.float64) @ ds["W_U"].values[i][:, :p].astype(np.float64)  # (d_mlp, p)
        nE = dense_norms(W_E, F)
        nL = dense_norms(W_logit.T, F)  # transform along the class axis
        assert float(out["gini_W_E_component"][i]) == pytest.approx(dense_gini(nE), rel=1e-9)
        assert float(out["gini_W_E_freq"][i]) == pytest.approx(dense_gini(per_freq(nE)), rel=1e-9)
        assert float(out["gini_W_logit_component"][i]) == pytest.approx(dense_gini(nL), rel=1e-9)
        assert float(out["gini_W_logit_freq"][i]) == pytest.approx(dense_gini(per_freq(nL)), rel=1e-9)


@pytest.mark.parametrize("p, freqs", [(23, [3, 7]), (31, [2, 9, 13])])
def test_fourier_gini_planted(p, freqs):
    """The planted W_E and W_logit have equal norms at cos k / sin k of the planted k and zero elsewhere, so
    G = 1 - 2|K|/p per component and 1 - |K|/((p-1)/2) per frequency; the random start is far less sparse."""
    ds = planted_trajectory(p, freqs, mix=(0.0, 1.0))
    out = fourier_gini(ds)
    m = len(freqs)
    for w in ("W_E", "W_logit"):
        assert float(out[f"gini_{w}_component"][-1]) == pytest.approx(1 - 2 * m / p, abs=1e-5)
        assert float(out[f"gini_{w}_freq"][-1]) == pytest.approx(1 - m / ((p - 1) / 2), abs=1e-5)
        assert float(out[f"gini_{w}_component"][0]) < 0.5 * float(out[f"gini_{w}_component"][-1])


# ------------------------------------------------------------------------------------------------------------
# sum of squared weights
# ------------------------------------------------------------------------------------------------------------
def test_sum_squared_weights_matches_dense_loop():
    ds = random_trajectory()
    out = sum_squared_weights(ds, chunk=3)
    names = list(out["param"].values)
    assert names == ["W_E", "W_pos", "W_Q", "W_K", "W_V", "W_O", "W_in", "b_in", "W_out", "b_out", "W_U"]
    for i in range(ds.sizes["checkpoint"]):
        total = 0.0
        for n in names:
            s = 0.0
            for x in ds[n].values[i].reshape(-1):
                s += float(x) ** 2
            total += s
            assert float(out["sum_sq_weights"].sel(param=n)[i]) == pytest.approx(s, rel=1e-10), n
        assert float(out["sum_sq_weights_total"][i]) == pytest.approx(total, rel=1e-10)
    assert out["checkpoint"].attrs["units"] == "epochs"


def test_weight_measures_merges_and_errors():
    ds = random_trajectory(n=2)
    out = weight_measures(ds)
    for v in ("gini_W_E_component", "gini_W_E_freq", "gini_W_logit_component", "gini_W_logit_freq", "sum_sq_weights", "sum_sq_weights_total"):
        assert v in out and out[v].sizes["checkpoint"] == 2
    with pytest.raises(AnalysisError):
        fourier_gini(ds.drop_vars("W_out"))
    with pytest.raises(AnalysisError):
        sum_squared_weights(ds[["is_train"]] if "is_train" in ds else ds.drop_vars(list(ds.data_vars)))
    even = ds.copy()
    even.attrs["p"] = 12
    with pytest.raises(AnalysisError):
        fourier_gini(even)
