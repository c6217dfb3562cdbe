"""Logit structure: alpha_k of cos(w_k (a + b - c)) and the share of the key frequencies (paper section 4.2)."""

from __future__ import annotations

import math
import tracemalloc

import numpy as np
import pytest
import torch
import xarray as xr

from mechgrok.analyses.modular.grid import grid_activations
from mechgrok.tasks.modular_arithmetic import grid_labels
from mechgrok.errors import AnalysisError
from mechgrok.analyses.modular.logits import cos_coefficients, logit_structure
from mechgrok.tasks.loss import accuracy, cross_entropy
from nanda import load_nanda_model
from planted import planted_trajectory, random_trajectory


def dense_alpha(L: np.ndarray) -> np.ndarray:
    """alpha_k = <C_k, L> with the normalised cube C_k[a, b, c] = cos(w_k (a + b - c)) built explicitly."""
    p = L.shape[0]
    out = []
    for k in range(1, (p - 1) // 2 + 1):
        cube = np.zeros((p, p, p))
        for a in range(p):
            for b in range(p):
                for c in range(p):
                    cube[a, b, c] = math.cos(2 * math.pi * k * (a + b - c) / p)
        cube /= np.linalg.norm(cube)
        out.append((cube * L).sum())
    return np.array(out)


def test_alpha_matches_dense_cubes():
    ds = random_trajectory(p=7, n_checkpoints=2, seed=4)
    out = logit_structure(ds, key_freqs=[2, 3], chunk=1)
    L = grid_activations(ds, include=("logits",))["logits"].values.astype(np.float64)
    assert out["alpha"].dims == ("checkpoint", "freq")
    for i in range(2):
        ref = dense_alpha(L[i])
        np.testing.assert_allclose(out["alpha"].values[i], ref, rtol=1e-6, atol=1e-12)
        norm_sq = (L[i] ** 2).sum()
        var_sq = ((L[i] - L[i].mean()) ** 2).sum()
        np.testing.assert_allclose(out["cos_sim"].values[i], ref / math.sqrt(norm_sq), rtol=1e-6)
        assert float(out["frac_norm_key"][i]) == pytest.approx((ref[1] ** 2 + ref[2] ** 2) / norm_sq, rel=1e-6)
        assert float(out["frac_var_key"][i]) == pytest.approx((ref[1] ** 2 + ref[2] ** 2) / var_sq, rel=1e-6)
    assert out.attrs["key_freqs"] == [2, 3]


def test_planted_cube_is_recovered_exactly():
    p = 11
    a = np.arange(p)
    amp = {2: 3.0, 5: -1.5}
    L = sum(v * np.cos(2 * np.pi * k * (a[:, None, None] + a[None, :, None] - a[None, None, :]) / p) for k, v in amp.items())
    L = L + 7.0  # a constant does not change alpha, only the uncentred norm
    out = cos_coefficients(xr.DataArray(L[None], dims=("checkpoint", "a", "b", "c"), coords={"checkpoint": [0]}))
    norm = math.sqrt(p**3 / 2)
    expected = np.zeros((p - 1) // 2)
    for k, v in amp.items():
        expected[k - 1] = v * norm
    np.testing.assert_allclose(out["alpha"].values[0], expected, atol=1e-9)
    assert float(out["logit_var_sq"][0]) == pytest.approx((expected**2).sum(), rel=1e-12)


def test_no_frequency_cube_is_materialised():
    """The (freq, p^2, p) stack of cubes would take 26 * 53^3 * 8 B = 31 MB at p = 53; stay far below."""
    p = 53
    rng = np.random.default_rng(0)
    L = xr.DataArray(rng.normal(size=(1, p, p, p)), dims=("checkpoint", "a", "b", "c"))  # 1.2 MB
    tracemalloc.start()
    cos_coefficients(L)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 12e6


def test_planted_logits_are_key_frequency_cosines():
    p, freqs = 23, (3, 7, 10)
    out = logit_structure(planted_trajectory(p, freqs), key_freqs=freqs).isel(checkpoint=0)
    assert float(out["frac_var_key"]) > 0.9
    alpha = out["alpha"]
    assert np.abs(alpha.drop_sel(freq=list(freqs))).max() < 1e-3 * np.abs(alpha.sel(freq=list(freqs))).min()
    assert (alpha.sel(freq=list(freqs)) > 0).all()


def test_key_freqs_are_checked():
    ds = random_trajectory(p=7, n_checkpoints=1)
    with pytest.raises(AnalysisError, match="1..3"):
        logit_structure(ds, key_freqs=[4])


def test_released_no_wd_logits():
    """The paper: the key-frequency cosines explain 95% of the mainline's logit variance; the released
    no-weight-decay model gives 0.946 (measured), the low-precision one only 0.32 (0.05 of the uncentred
    norm): its logits carry large softmax-invariant offsets per (a, b) and per class."""
    out = logit_structure(load_nanda_model("mod_addition_no_wd.pth"), key_freqs=[36, 52]).isel(checkpoint=0)
    assert float(out["frac_var_key"]) > 0.93
    top2 = set(np.abs(out["alpha"]).sortby(np.abs(out["alpha"]), ascending=False)["freq"].values[:2].tolist())
    assert top2 == {36, 52}


@pytest.mark.parametrize(("p", "freqs", "max_loss"), [(23, (3, 7), 2e-3), (53, (5, 17, 22), 2e-3), (113, (14, 35, 41, 42, 52), 1e-7)])
def test_planted_model_classifies_the_whole_grid(p, freqs, max_loss):
    """The fixture of tests/planted.py implements the algorithm: accuracy 1.0 and a small float64 loss on all
    p^2 pairs; its stored curves are those of its weights (random at mix 0, grokked at mix 1)."""
    ds = planted_trajectory(p, freqs, mix=(0.0, 1.0))
    L = torch.from_numpy(grid_activations(ds, include=("logits",))["logits"].values.reshape(2, p * p, p))
    labels = grid_labels(p)
    assert float(accuracy(L[1], labels)) == 1.0
    assert float(cross_entropy(L[1], labels)) < max_loss
    assert float(accuracy(L[0], labels)) < 0.2
    assert ds["acc_train"].values.tolist()[-1] == 1.0 and ds["acc_test"].values.tolist()[-1] == 1.0
    assert ds["loss_test"].values[-1] < max_loss and ds["loss_train"].values[0] > 1.0
