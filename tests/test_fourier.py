"""Fourier basis, 1D/2D transforms and the Fourier norms of W_E and W_logit (paper section 4.1)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import xarray as xr

from mechgrok.errors import AnalysisError
from mechgrok.analyses.modular.fourier import fft1d, fft2d, fourier_basis, fourier_labels, freq_of_component
from mechgrok.analyses.modular.fourier_norms import fourier_norms, per_frequency
from nanda import load_nanda_model
from planted import planted_trajectory, random_trajectory
from dense import dense_basis


@pytest.mark.parametrize("p", [3, 7, 13, 53])
def test_basis_is_orthonormal_in_paper_order(p):
    F = fourier_basis(p)
    assert F.dims == ("fourier", "x")
    np.testing.assert_allclose(F.values, dense_basis(p), atol=1e-13)
    np.testing.assert_allclose(F.values @ F.values.T, np.eye(p), atol=1e-12)
    labels = fourier_labels(p)
    assert labels[:3] == ["const", "cos 1", "sin 1"] and labels[-1] == f"sin {(p - 1) // 2}"
    assert list(F["fourier"].values) == labels
    np.testing.assert_array_equal(F["freq"].values, freq_of_component(p))


@pytest.mark.parametrize("p", [2, 4, 114, 1])
def test_even_p_is_refused(p):
    with pytest.raises(AnalysisError, match="odd p"):
        fourier_basis(p)
    with pytest.raises(AnalysisError, match="odd p"):
        fourier_labels(p)


def test_fft1d_and_fft2d_match_dense_sums():
    rng = np.random.default_rng(0)
    p = 7
    M = rng.normal(size=(p, p, 3))
    da = xr.DataArray(M, dims=("a", "b", "z"), coords={"a": np.arange(p), "b": np.arange(p)})
    F = dense_basis(p)
    ref1 = np.zeros((p, p, 3))
    ref2 = np.zeros((p, p, 3))
    for f in range(p):
        for b in range(p):
            for z in range(3):
                ref1[f, b, z] = sum(F[f, a] * M[a, b, z] for a in range(p))
    for f in range(p):
        for g in range(p):
            for z in range(3):
                ref2[f, g, z] = sum(F[f, a] * F[g, b] * M[a, b, z] for a in range(p) for b in range(p))
    out1 = fft1d(da, "a").transpose("fourier", "b", "z")
    np.testing.assert_allclose(out1.values, ref1, rtol=1e-10, atol=1e-12)
    out2 = fft2d(da, ("a", "b")).transpose("fa", "fb", "z")
    np.testing.assert_allclose(out2.values, ref2, rtol=1e-10, atol=1e-12)
    with pytest.raises(AnalysisError, match="odd p"):
        fft1d(xr.DataArray(np.zeros((4, 2)), dims=("a", "z")), "a")


def test_fourier_norms_match_dense_reference():
    ds = random_trajectory(p=7, n_checkpoints=3, d_model=8, n_heads=2, d_head=4, d_mlp=6, seed=1)
    out = fourier_norms(ds, chunk=2)
    p = 7
    F = dense_basis(p)
    for i in range(3):
        W_E = ds["W_E"].values[i].astype(np.float64)[:p]  # '=' row dropped
        W_logit = ds["W_out"].values[i].astype(np.float64) @ ds["W_U"].values[i].astype(np.float64)[:, :p]
        for f in range(p):
            n_e = math.sqrt(sum(sum(F[f, x] * W_E[x, m] for x in range(p)) ** 2 for m in range(W_E.shape[1])))
            n_l = math.sqrt(sum(sum(W_logit[n, c] * F[f, c] for c in range(p)) ** 2 for n in range(W_logit.shape[0])))
            assert out["W_E_fourier_norm"].values[i, f] == pytest.approx(n_e, rel=1e-6)
            assert out["W_logit_fourier_norm"].values[i, f] == pytest.approx(n_l, rel=1e-6)
        for k in range(1, (p - 1) // 2 + 1):
            ref = math.hypot(out["W_E_fourier_norm"].values[i, 2 * k - 1], out["W_E_fourier_norm"].values[i, 2 * k])
            assert out["W_E_freq_norm"].values[i, k - 1] == pytest.approx(ref, rel=1e-12)
    np.testing.assert_allclose(out["W_E_freq_share"].sum("freq").values, 1.0, rtol=1e-12)
    assert out["W_E_fourier_norm"].dims == ("checkpoint", "fourier")
    assert out["W_logit_freq_norm"].dims == ("checkpoint", "freq")
    assert list(out["fourier"].values[:3]) == ["const", "cos 1", "sin 1"]
    np.testing.assert_array_equal(out["freq"].values, [1, 2, 3])
    # the per_frequency helper agrees
    np.testing.assert_allclose(per_frequency(out["W_E_fourier_norm"]).values, out["W_E_freq_norm"].values, rtol=1e-12)


def test_fourier_norms_of_planted_model_sit_at_planted_frequencies():
    p, freqs = 23, (3, 7, 10)
    out = fourier_norms(planted_trajectory(p, freqs)).isel(checkpoint=-1)
    k = out["freq"].values
    planted = np.isin(k, freqs)
    # W_E rows are (cos w x, sin w x): each component has norm sqrt(p / 2) exactly there, 0 elsewhere
    np.testing.assert_allclose(out["W_E_freq_norm"].values[planted], math.sqrt(p), rtol=1e-6)
    assert np.abs(out["W_E_freq_norm"].values[~planted]).max() < 1e-5
    assert out["W_logit_freq_share"].values[~planted].max() < 1e-10
    np.testing.assert_allclose(out["W_logit_freq_share"].values[planted].sum(), 1.0, rtol=1e-10)


def test_fourier_norms_refuse_even_p():
    ds = random_trajectory(p=7, n_checkpoints=1)
    ds.attrs["p"] = 6
    with pytest.raises(AnalysisError, match="odd p"):
        fourier_norms(ds)


def test_embedding_norms_of_released_low_precision_model():
    """Reference values of shared/data/nanda-saved-runs/README.md section 3 (top embedding frequencies)."""
    out = fourier_norms(load_nanda_model("low_precision_mod_addition.pth")).isel(checkpoint=0)
    norm = out["W_E_freq_norm"]
    top = [int(k) for k in norm.sortby(norm, ascending=False)["freq"].values[:6]]
    assert top == [23, 6, 39, 3, 35, 9]
    np.testing.assert_allclose(norm.sel(freq=top).values, [7.81, 6.41, 6.21, 4.00, 3.61, 1.24], atol=0.006)
    assert float(out["W_E_fourier_norm"].sel(fourier="const")) == pytest.approx(0.47, abs=0.006)


def test_embedding_norms_of_released_no_wd_model():
    out = fourier_norms(load_nanda_model("mod_addition_no_wd.pth")).isel(checkpoint=0)
    norm = out["W_E_freq_norm"]
    top = [int(k) for k in norm.sortby(norm, ascending=False)["freq"].values[:6]]
    assert top == [36, 52, 41, 26, 9, 53]


@pytest.mark.parametrize("p", [5, 13])
def test_residue_sums_match_a_plain_loop_on_padded_rows(p):
    import torch

    from mechgrok.analyses.modular.fourier import residue_sums

    rng = np.random.default_rng(p)
    wide = torch.from_numpy(rng.normal(size=(2, p * p, p + 3)))  # rows of a wider array, as the grid pass's
    L = wide[..., :p]
    want = np.zeros((2, p, p))
    for c in range(2):
        for a in range(p):
            for b in range(p):
                want[c, (a + b) % p] += L[c, a * p + b].numpy()
    np.testing.assert_allclose(residue_sums(L, p).numpy(), want, rtol=1e-13, atol=1e-13)
