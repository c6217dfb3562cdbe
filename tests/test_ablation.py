"""Fourier-space ablations (mechgrok.analyses.modular.ablation) against dense references, a planted model and a released model."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import xarray as xr

from mechgrok.analyses.modular.ablation import (
    ablation_losses,
    block3x3_logits,
    check_key_freqs,
    excluded_logits,
    logit_ablations,
    restricted_logits,
    sum_projection,
)
from mechgrok.analyses.modular.grid import grid_activations
from mechgrok.config import Config
from mechgrok.tasks.modular_arithmetic import split_indices, train_mask
from mechgrok.errors import AnalysisError
from mechgrok.models.transformer import init_params
from mechgrok.store.schema import build_dataset

from dense import dense_basis
from nanda import load_nanda_model
from planted import planted_trajectory


# ------------------------------------------------------------------------------------------------------------
# dense references: plain numpy, written from the paper's definitions (paper.md 3.1, 3.7, 3.8; paper 4.4)
# ------------------------------------------------------------------------------------------------------------
def dense_uv(p: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """u_k, v_k in R^{p^2} from the 2D basis vectors: (B_{cc} - B_{ss}) / sqrt 2 and (B_{sc} + B_{cs}) / sqrt 2."""
    F = dense_basis(p)
    B = lambda f, g: np.outer(F[f], F[g]).reshape(-1)  # noqa: E731  B_{f,g}[a*p+b] = F_f(a) F_g(b)
    return (B(2 * k - 1, 2 * k - 1) - B(2 * k, 2 * k)) / math.sqrt(2), (B(2 * k, 2 * k - 1) + B(2 * k - 1, 2 * k)) / math.sqrt(2)


def dense_P(L: np.ndarray, p: int, freqs) -> np.ndarray:
    """sum_k (u u^T + v v^T) L for L of shape (p*p, p), column by column."""
    out = np.zeros_like(L)
    for k in freqs:
        u, v = dense_uv(p, k)
        for c in range(p):
            out[:, c] += u * (u @ L[:, c]) + v * (v @ L[:, c])
    return out


def dense_block3x3(L: np.ndarray, p: int, freqs) -> np.ndarray:
    F = dense_basis(p)
    kept = set()
    for k in freqs:
        I = (0, 2 * k - 1, 2 * k)
        kept |= {(f, g) for f in I for g in I}
    out = np.zeros_like(L)
    for f, g in kept:
        B = np.outer(F[f], F[g]).reshape(-1)
        for c in range(p):
            out[:, c] += B * (B @ L[:, c])
    return out


def dense_loss_acc(L: np.ndarray, p: int, mask: np.ndarray) -> tuple[float, float]:
    """Mean float64 cross-entropy and accuracy over the rows a*p+b with mask[a, b], labels (a + b) mod p."""
    losses, correct = [], []
    for a in range(p):
        for b in range(p):
            if not mask[a, b]:
                continue
            row = [float(x) for x in L[a * p + b]]
            c = (a + b) % p
            gaps = [x - row[c] for j, x in enumerate(row) if j != c]
            if max(gaps) < 700.0:  # log1p(sum_j exp(L_j - L_c)): exact for losses near 0 (no 1 - tiny rounding)
                losses.append(math.log1p(math.fsum(math.exp(g) for g in gaps)))
            else:
                m = max(row)
                losses.append(m + math.log(math.fsum(math.exp(x - m) for x in row)) - row[c])
            correct.append(float(np.argmax(row) == c))
    return math.fsum(losses) / len(losses), float(np.mean(correct))


def dense_measures(L: np.ndarray, p: int, is_train: np.ndarray, freqs, *, all_freqs: bool = False) -> dict[str, float]:
    splits = {"all": np.ones((p, p), bool), "train": is_train, "test": ~is_train}
    out: dict[str, float] = {}
    Lf = L.reshape(p * p, p).astype(np.float64)
    P = dense_P(Lf, p, freqs)
    Lr = P + (Lf - P).mean(axis=0, keepdims=True)
    L3 = dense_block3x3(Lf, p, freqs)
    for s, m in splits.items():
        out[f"loss_{s}"], out[f"acc_{s}"] = dense_loss_acc(Lf, p, m)
        out[f"restricted_loss_{s}"], out[f"restricted_acc_{s}"] = dense_loss_acc(Lr, p, m)
        out[f"block3x3_loss_{s}"], out[f"block3x3_acc_{s}"] = dense_loss_acc(L3, p, m)
    for k in freqs:
        out[f"excluded_loss[{k}]"], out[f"excluded_acc[{k}]"] = dense_loss_acc(Lf - dense_P(Lf, p, [k]), p, is_train)
    out["excluded_loss_full"], out["excluded_acc_full"] = dense_loss_acc(Lf - P, p, is_train)
    if all_freqs:
        every = [dense_loss_acc(Lf - dense_P(Lf, p, [k]), p, is_train)[0] for k in range(1, (p - 1) // 2 + 1)]
        for k, v in enumerate(every, start=1):
            out[f"excluded_loss_by_freq[{k}]"] = v
        out["excluded_loss_max"] = max(every)
    return out


def flat(ds: xr.Dataset, i: int) -> dict[str, float]:
    """The measures of checkpoint i in the naming of :func:`dense_measures`."""
    out: dict[str, float] = {}
    for name, da in ds.data_vars.items():
        row = da.isel(checkpoint=i)
        if row.ndim == 0:
            out[name] = float(row)
        else:
            dim = row.dims[0]
            for k, v in zip(row[dim].values, row.values):
                out[f"{name}[{int(k)}]"] = float(v)
    return out


def structured_logits(p: int, n_ck: int, freqs, seed: int = 0) -> np.ndarray:
    """(checkpoint, a, b, c) logits: a Fourier-algorithm part of growing strength plus Gaussian noise."""
    rng = np.random.default_rng(seed)
    a = np.arange(p)[:, None, None]
    b = np.arange(p)[None, :, None]
    c = np.arange(p)[None, None, :]
    clean = sum(np.cos(2 * np.pi * k * (a + b - c) / p) for k in freqs)
    return np.stack([(1.5 * i) * clean + rng.normal(size=(p, p, p)) * 1.5 for i in range(n_ck)]).astype(np.float32)


def logits_da(arr: np.ndarray, epochs=None) -> xr.DataArray:
    n, p = arr.shape[0], arr.shape[1]
    epochs = np.arange(n) * 10 if epochs is None else epochs
    return xr.DataArray(arr, dims=("checkpoint", "a", "b", "c"), coords={"checkpoint": epochs})


P_SMALL = 11
K_SMALL = [2, 5]


@pytest.fixture(scope="module")
def small_case():
    p = P_SMALL
    L = structured_logits(p, 3, K_SMALL)
    train, _ = split_indices(p, 0.4, 3)
    return L, train_mask(p, train)


# ------------------------------------------------------------------------------------------------------------
# against the dense reference
# ------------------------------------------------------------------------------------------------------------
def test_logit_ablations_match_dense_reference(small_case):
    L, is_train = small_case
    p = P_SMALL
    ds = logit_ablations(logits_da(L), is_train=is_train, key_freqs=[5, 2], all_freqs=True)
    assert ds.attrs["key_freqs"] == [2, 5]
    assert list(ds["key_freq"].values) == [2, 5]
    assert list(ds["checkpoint"].values) == [0, 10, 20]
    for i in range(L.shape[0]):
        ref = dense_measures(L[i], p, is_train, K_SMALL, all_freqs=True)
        got = flat(ds, i)
        assert set(ref) == set(got)
        for name, want in ref.items():
            assert got[name] == pytest.approx(want, rel=1e-9, abs=1e-12), (i, name)
    # the reference itself is not degenerate: structure grows, so the restricted loss falls across checkpoints
    r = ds["restricted_loss_all"].values
    assert r[2] < r[1] < r[0]
    assert ds["excluded_loss_full"].values[2] > 2 * ds["loss_train"].values[2]


def test_restricted_projection_uses_all_pairs_even_for_train_split(small_case):
    """The projection is fitted on the full grid (paper.md pitfall 8), not on the split's rows."""
    L, is_train = small_case
    p = P_SMALL
    ds = logit_ablations(logits_da(L), is_train=is_train, key_freqs=K_SMALL)
    Lf = L[1].reshape(p * p, p).astype(np.float64)
    # wrong variant: project only the training rows (the others zeroed)
    Lt = Lf * is_train.reshape(-1, 1)
    P = dense_P(Lt, p, K_SMALL)
    wrong = dense_loss_acc(P + (Lt - P).mean(0, keepdims=True), p, is_train)[0]
    right = dense_loss_acc(dense_P(Lf, p, K_SMALL) + (Lf - dense_P(Lf, p, K_SMALL)).mean(0, keepdims=True), p, is_train)[0]
    assert float(ds["restricted_loss_train"][1]) == pytest.approx(right, rel=1e-9)
    assert abs(wrong - right) > 1e-3 * right


def test_operators_match_dense_reference(small_case):
    L, _ = small_case
    p = P_SMALL
    da = logits_da(L)
    for i in range(L.shape[0]):
        Lf = L[i].reshape(p * p, p).astype(np.float64)
        P = dense_P(Lf, p, K_SMALL)
        r = restricted_logits(da, key_freqs=K_SMALL).isel(checkpoint=i).values.reshape(p * p, p)
        np.testing.assert_allclose(r, P + (Lf - P).mean(0, keepdims=True), rtol=1e-9, atol=1e-9)
        e = excluded_logits(da, key_freqs=K_SMALL).isel(checkpoint=i).values.reshape(p * p, p)
        np.testing.assert_allclose(e, Lf - P, rtol=1e-9, atol=1e-9)
        s = sum_projection(da, freq=5).isel(checkpoint=i).values.reshape(p * p, p)
        np.testing.assert_allclose(s, dense_P(Lf, p, [5]), rtol=1e-9, atol=1e-9)
        b3 = block3x3_logits(da, key_freqs=K_SMALL).isel(checkpoint=i).values.reshape(p * p, p)
        np.testing.assert_allclose(b3, dense_block3x3(Lf, p, K_SMALL), rtol=1e-9, atol=1e-9)


def test_operators_keep_dims_order_and_coords(small_case):
    L, _ = small_case
    da = logits_da(L).transpose("c", "checkpoint", "b", "a")
    out = restricted_logits(da, key_freqs=K_SMALL)
    assert out.dims == da.dims
    np.testing.assert_array_equal(out["checkpoint"].values, da["checkpoint"].values)
    ref = restricted_logits(logits_da(L), key_freqs=K_SMALL).transpose(*da.dims)
    np.testing.assert_allclose(out.values, ref.values, rtol=1e-12)
    # without a leading dim
    single = restricted_logits(logits_da(L).isel(checkpoint=0), key_freqs=K_SMALL)
    np.testing.assert_allclose(single.values, ref.transpose("checkpoint", "a", "b", "c").values[0], rtol=1e-12)


def test_projection_algebra(small_case):
    """P_k is an orthogonal projection: idempotent; restricted + excluded = original + mean correction."""
    L, _ = small_case
    da = logits_da(L).isel(checkpoint=[1])
    P1 = sum_projection(da, freq=2)
    np.testing.assert_allclose(sum_projection(P1, freq=2).values, P1.values, atol=1e-10)
    assert np.abs(sum_projection(P1, freq=5).values).max() < 1e-10
    r = restricted_logits(da, key_freqs=K_SMALL)
    e = excluded_logits(da, key_freqs=K_SMALL)
    mean_ex = e.mean(("a", "b"))
    np.testing.assert_allclose((r + e - mean_ex).values, da.values.astype(np.float64), atol=1e-9)


def test_pure_fourier_logits_are_kept_exactly():
    """Logits sum_k cos(w_k(a+b-c)) + const live in the kept directions: restricted = 3x3 = original."""
    p, ks = 13, [3, 4]
    a = np.arange(p)[:, None, None]
    b = np.arange(p)[None, :, None]
    c = np.arange(p)[None, None, :]
    L = 4.0 * sum(np.cos(2 * np.pi * k * (a + b - c) / p) for k in ks) + 0.3 * np.cos(2 * np.pi * c / p)
    da = logits_da(L[None])
    np.testing.assert_allclose(restricted_logits(da, key_freqs=ks).values, L[None], atol=1e-10)
    np.testing.assert_allclose(block3x3_logits(da, key_freqs=ks).values, L[None], atol=1e-10)
    # removing both frequencies leaves only the c-dependent constant: excluded loss near ln p
    train, _ = split_indices(p, 0.5, 0)
    ds = logit_ablations(da, is_train=train_mask(p, train), key_freqs=ks).isel(checkpoint=0)
    assert float(ds["restricted_loss_all"]) == pytest.approx(float(ds["loss_all"]), rel=1e-9)
    assert float(ds["excluded_loss_full"]) == pytest.approx(math.log(p), rel=0.05)


# ------------------------------------------------------------------------------------------------------------
# from a trajectory: one forward pass per chunk
# ------------------------------------------------------------------------------------------------------------
def tiny_trajectory(p: int = 11, n: int = 5) -> xr.Dataset:
    cfg = Config(p=p, d_model=16, n_heads=2, d_head=8, d_mlp=32, frac_train=0.5)
    ws = [init_params(cfg, generator=torch.Generator().manual_seed(s)) for s in range(n)]
    weights = {k: np.stack([w[k].numpy() * (1 + 0.5 * i) for i, w in enumerate(ws)]) for k in ws[0]}
    train, _ = split_indices(p, 0.5, 1)
    return build_dataset(
        weights, [0, 7, 20, 50, 90][:n], config=cfg.to_dict(), is_train=train_mask(p, train), source_format="test", p=p
    )


def test_ablation_losses_equals_logit_ablations_and_dense():
    ds = tiny_trajectory()
    p = 11
    out = ablation_losses(ds, key_freqs=[1, 4], chunk=2, reference_checkpoint=90, key_freq_rule="test rule")
    assert out.attrs["reference_checkpoint"] == 90 and out.attrs["key_freq_rule"] == "test rule"
    np.testing.assert_array_equal(out["checkpoint"].values, [0, 7, 20, 50, 90])
    assert out["checkpoint"].attrs.get("units") == "epochs"
    logits = grid_activations(ds, include=("logits",))["logits"]
    ref = logit_ablations(logits, is_train=ds["is_train"], key_freqs=[1, 4])
    for name in ref.data_vars:
        np.testing.assert_allclose(out[name].values, ref[name].values, rtol=1e-12, err_msg=name)
    dense = dense_measures(logits.values[3], p, ds["is_train"].values, [1, 4])
    got = flat(out, 3)
    for name, want in dense.items():
        assert got[name] == pytest.approx(want, rel=1e-9), name
    # a selection of checkpoints
    sub = ablation_losses(ds.isel(checkpoint=slice(1, 3)), key_freqs=[1, 4])
    np.testing.assert_array_equal(sub["checkpoint"].values, [7, 20])
    np.testing.assert_allclose(sub["loss_all"].values, out["loss_all"].values[1:3], rtol=1e-12)


# ------------------------------------------------------------------------------------------------------------
# planted model (tests/planted.py): the Fourier algorithm at chosen frequencies
# ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("p, freqs", [(23, [3, 7]), (31, [2, 9, 13])])
def test_planted_model(p, freqs):
    ds = planted_trajectory(p, freqs, mix=(0.0, 1.0))
    out = ablation_losses(ds, key_freqs=freqs, all_freqs=True)
    end = out.isel(checkpoint=-1)
    assert float(end["acc_all"]) == 1.0
    for s in ("all", "train", "test"):
        # restricted and 3x3 ablations keep the algorithm and drop the rest: no higher than the original loss
        assert float(end[f"restricted_loss_{s}"]) <= float(end[f"loss_{s}"])
        assert float(end[f"restricted_acc_{s}"]) == 1.0
        assert float(end[f"block3x3_loss_{s}"]) <= 1.5 * float(end[f"loss_{s}"])
    # removing the key frequencies destroys performance: excluded loss far above the loss
    loss = float(end["loss_train"])
    assert float(end["excluded_loss_full"]) > 1.0 > 100 * loss
    assert float(end["excluded_acc_full"]) < 0.5
    assert np.all(end["excluded_loss"].values > 10 * loss)
    # removing any other single frequency changes little (only the small ReLU harmonics live there)
    others = end["excluded_loss_by_freq"].drop_sel(freq=freqs).values
    assert np.all(others < 1.5 * loss)
    np.testing.assert_allclose(end["excluded_loss_by_freq"].sel(freq=freqs).values, end["excluded_loss"].values, rtol=1e-12)
    assert float(end["excluded_loss_max"]) == pytest.approx(end["excluded_loss"].values.max(), rel=1e-12)
    # the random start has no such structure
    start = out.isel(checkpoint=0)
    assert float(start["restricted_acc_all"]) < 0.5


# ------------------------------------------------------------------------------------------------------------
# released model
# ------------------------------------------------------------------------------------------------------------
def test_released_no_wd_model():
    """mod_addition_no_wd.pth: all-pairs loss 1.11e-7, accuracy 1 (shared README); its two neuron-cluster
    frequencies {36, 52} (README) give a restricted loss no higher than the loss."""
    ds = load_nanda_model("mod_addition_no_wd.pth")
    train, _ = split_indices(113, 0.9, 0)  # the real split is not stored; only the all-pairs values are checked
    ds["is_train"] = (("a", "b"), train_mask(113, train))
    out = ablation_losses(ds, key_freqs=[36, 52]).isel(checkpoint=0)
    assert float(out["loss_all"]) == pytest.approx(1.11e-7, rel=0.01)
    assert float(out["acc_all"]) == 1.0
    assert float(out["restricted_loss_all"]) <= float(out["loss_all"])
    assert float(out["restricted_acc_all"]) == 1.0
    assert float(out["excluded_loss_full"]) > 10.0


# ------------------------------------------------------------------------------------------------------------
# errors
# ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("ks", [[], [0], [6], [2, 2], [1.5]])
def test_bad_key_freqs(ks):
    with pytest.raises(AnalysisError):
        check_key_freqs(ks, 11)


def test_bad_inputs(small_case):
    L, is_train = small_case
    da = logits_da(L)
    with pytest.raises(AnalysisError, match="dim 'c'"):
        restricted_logits(da.rename(c="out"), key_freqs=[1])
    with pytest.raises(AnalysisError, match="without the '=' class"):
        restricted_logits(logits_da(np.zeros((1, 11, 11, 12))), key_freqs=[1])
    with pytest.raises(AnalysisError, match="odd p"):
        restricted_logits(logits_da(np.zeros((1, 10, 10, 10))), key_freqs=[1])
    with pytest.raises(AnalysisError, match="is_train"):
        logit_ablations(da, is_train=is_train[:5], key_freqs=[1])
    ds = tiny_trajectory(n=2).drop_vars("is_train")
    with pytest.raises(AnalysisError, match="is_train"):
        ablation_losses(ds, key_freqs=[1])
    ds2 = tiny_trajectory(n=2)
    del ds2.attrs["p"]
    with pytest.raises(AnalysisError, match="modulus"):
        ablation_losses(ds2, key_freqs=[1])
