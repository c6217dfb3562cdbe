"""Neuron FVE by frequency and the paper's clusters (paper section 4.3; paper.md 3.3(c))."""

from __future__ import annotations


import numpy as np
import pytest
import xarray as xr

from mechgrok.analyses.modular.grid import grid_activations
from mechgrok.errors import AnalysisError
from mechgrok.analyses.modular.neurons import clusters_from_fve, frequency_fve, neuron_clusters
from mechgrok.store import open_run
from nanda import load_nanda_model
from planted import planted_trajectory, random_trajectory
from dense import dense_basis

FIXTURE = __import__("pathlib").Path(__file__).resolve().parents[1] / "fixtures" / "quick-run"


def dense_fve(A: np.ndarray) -> np.ndarray:
    """FVE[n, k-1] with the real basis and explicit loops over neurons and frequencies; A is (p, p, n)."""
    p, _, n_neurons = A.shape
    F = dense_basis(p)
    out = np.zeros((n_neurons, (p - 1) // 2))
    for n in range(n_neurons):
        M = A[:, :, n] - A[:, :, n].mean()
        Mh = F @ M @ F.T
        total = (Mh**2).sum()
        for k in range(1, (p - 1) // 2 + 1):
            idx = [0, 2 * k - 1, 2 * k]
            out[n, k - 1] = sum(Mh[f, g] ** 2 for f in idx for g in idx) / total if total > 0 else 0.0
    return out


def test_fve_matches_dense_reference():
    ds = random_trajectory(p=11, n_checkpoints=2, d_model=8, n_heads=2, d_head=4, d_mlp=7, seed=5)
    act = grid_activations(ds, include=("mlp_post",))["mlp_post"]
    fve = frequency_fve(act)
    assert fve.dims == ("checkpoint", "d_mlp", "freq")
    np.testing.assert_array_equal(fve["freq"].values, np.arange(1, 6))
    # the engine's kernel takes the same sums inside the grid pass, never storing the activations
    fused = neuron_clusters(ds)["fve"]
    for i in range(2):
        ref = dense_fve(act.values[i].astype(np.float64))
        np.testing.assert_allclose(fve.values[i], ref, rtol=1e-10, atol=1e-14)
        np.testing.assert_allclose(fused.values[i], ref, rtol=1e-10, atol=1e-14)


def test_clusters_match_a_plain_loop():
    rng = np.random.default_rng(0)
    arr = rng.dirichlet(np.ones(6) * 0.3, size=(2, 40))  # (checkpoint, d_mlp, freq), rows sum to 1
    fve = xr.DataArray(arr, dims=("checkpoint", "d_mlp", "freq"), coords={"checkpoint": [0, 5], "freq": np.arange(1, 7)})
    out = clusters_from_fve(fve, threshold=0.6)
    for i in range(2):
        sizes = {c: 0 for c in [-1, 1, 2, 3, 4, 5, 6]}
        for n in range(40):
            best = max(range(6), key=lambda j: arr[i, n, j])
            assert out["neuron_freq"].values[i, n] == best + 1
            assert out["frac_explained"].values[i, n] == arr[i, n, best]
            c = best + 1 if arr[i, n, best] >= 0.6 else -1
            assert out["cluster"].values[i, n] == c
            sizes[c] += 1
        assert dict(zip(out["cluster_freq"].values.tolist(), out["cluster_sizes"].values[i].tolist())) == sizes
        assert out["frac_above_threshold"].values[i] == pytest.approx(1 - sizes[-1] / 40)
    assert out.attrs["threshold"] == 0.6 and "0.6" in out.attrs["rule"]


def test_constant_neuron_is_unexplained():
    p = 5
    A = np.zeros((1, p, p, 2))
    A[0, :, :, 1] = np.cos(2 * np.pi * 2 * np.arange(p) / p)[:, None]  # a pure "cos 2" of a
    da = xr.DataArray(A, dims=("checkpoint", "a", "b", "d_mlp"), coords={"checkpoint": [0]})
    out = clusters_from_fve(frequency_fve(da))
    assert out["neuron_freq"].values.tolist() == [[-1, 2]]
    assert out["cluster"].values.tolist() == [[-1, 2]]
    assert out["fve"].values[0, 0].max() == 0.0
    assert out["frac_explained"].values[0, 1] == pytest.approx(1.0)


def test_planted_neurons_cluster_at_their_frequency():
    p, freqs = 31, (2, 9, 15)  # 15 = (p-1)/2: the released code's range(1, p//2) would miss it
    ds = planted_trajectory(p, freqs, n_phases=8)
    out = neuron_clusters(ds).isel(checkpoint=0)
    planted = np.repeat(freqs, 2 * 8)  # neurons are grouped by frequency, then bias group, then phase
    np.testing.assert_array_equal(out["neuron_freq"].values, planted)
    np.testing.assert_array_equal(out["cluster"].values, planted)
    assert out["frac_explained"].values.min() > 0.95
    sizes = dict(zip(out["cluster_freq"].values.tolist(), out["cluster_sizes"].values.tolist()))
    assert {k: v for k, v in sizes.items() if v} == {2: 16, 9: 16, 15: 16}
    assert float(out["frac_above_threshold"]) == 1.0


def test_neuron_clusters_errors():
    ds = random_trajectory(p=7, n_checkpoints=1)
    with pytest.raises(AnalysisError, match="threshold"):
        neuron_clusters(ds, threshold=1.5)
    ds.attrs["p"] = 8
    with pytest.raises(AnalysisError, match="odd p"):
        neuron_clusters(ds)


def test_quick_fixture_clusters_grow_during_grokking():
    ds = open_run(FIXTURE)
    out = neuron_clusters(ds.isel(checkpoint=[10, 30, 60]))  # epochs 500, 1500, 3000
    np.testing.assert_array_equal(out["checkpoint"].values, [500, 1500, 3000])
    frac = out["frac_above_threshold"].values
    assert frac[0] == 0.0 and frac[0] <= frac[1] < frac[2]
    assert frac[2] > 0.5
    last = out["cluster_sizes"].isel(checkpoint=-1)
    assert {int(k) for k in last["cluster_freq"].values[last.values > 0]} - {-1} == {9, 17, 25}


def test_released_low_precision_clusters():
    """Reference values of shared/data/nanda-saved-runs/README.md section 3."""
    out = neuron_clusters(load_nanda_model("low_precision_mod_addition.pth")).isel(checkpoint=0)
    sizes = {int(k): int(v) for k, v in zip(out["cluster_freq"].values, out["cluster_sizes"].values) if v}
    assert sizes == {23: 194, 6: 106, 39: 105, -1: 107}
    assert float(out["frac_above_threshold"]) == pytest.approx(0.791, abs=5e-4)
    assert sorted(set(out["neuron_freq"].values.tolist())) == [3, 6, 23, 39]  # the paper code's literal set


def test_released_no_wd_clusters():
    out = neuron_clusters(load_nanda_model("mod_addition_no_wd.pth")).isel(checkpoint=0)
    sizes = {int(k): int(v) for k, v in zip(out["cluster_freq"].values, out["cluster_sizes"].values) if v}
    assert sizes == {36: 181, 52: 139, -1: 192}
    assert float(out["frac_above_threshold"]) == pytest.approx(320 / 512)
