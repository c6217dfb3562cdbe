"""The one-pass progress-measure suite (mechgrok.analyses.modular.progress), the grid forward pass and the fast loss measures,
against dense references written here, a planted model and a released model."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import xarray as xr

from mechgrok.analyses.modular.ablation import ablation_losses, split_masks
from mechgrok.analyses.modular.ablation_kernels import ablation_measures, measures_direct
from mechgrok.tasks.modular_arithmetic import grid_tokens, split_indices, train_mask
from mechgrok.errors import AnalysisError
from mechgrok.analyses.modular.fourier_norms import fourier_norms
from mechgrok.analyses.modular.fourier_gini import weight_measures
from mechgrok.models.transformer import WEIGHT_NAMES, forward
from mechgrok.analyses.modular.grid import grid_forward
from mechgrok.analyses.modular.fourier import residue_sums
from mechgrok.analyses.modular.progress import progress_measures

from dense import dense_basis
from nanda import load_nanda_model
from planted import planted_trajectory, random_trajectory

P = 11
KEY = [2, 5]


# ------------------------------------------------------------------------------------------------------------
# dense reference: one plain float64 loop per metric, from the paper's definitions (paper.md 2.1, 3.1-3.10)
# ------------------------------------------------------------------------------------------------------------
def dense_logits(w: dict[str, np.ndarray], p: int) -> np.ndarray:
    """Logits (p*p, p) of the paper's model on every [a, b, =], one example at a time, all positions computed."""
    n_heads, _, d_head = w["W_Q"].shape
    out = np.zeros((p * p, p))
    for a in range(p):
        for b in range(p):
            x = np.array([w["W_E"][t] + w["W_pos"][i] for i, t in enumerate((a, b, p))])  # (pos, d_model)
            attn = np.zeros_like(x)
            for h in range(n_heads):
                q, k, v = x @ w["W_Q"][h], x @ w["W_K"][h], x @ w["W_V"][h]
                for i in range(3):
                    s = np.array([q[i] @ k[j] / math.sqrt(d_head) for j in range(i + 1)])
                    e = np.exp(s - s.max())
                    attn[i] += (e / e.sum()) @ v[: i + 1] @ w["W_O"][h]
            x = x + attn
            x = x + np.maximum(x @ w["W_in"] + w["b_in"], 0.0) @ w["W_out"] + w["b_out"]
            out[a * p + b] = (x[2] @ w["W_U"])[:p]
    return out


def dense_projection(L: np.ndarray, p: int, freqs) -> np.ndarray:
    """sum_k (u_k u_k^T + v_k v_k^T) L with u_k, v_k the unit vectors cos/sin(w_k(a + b)) of R^{p^2}."""
    out = np.zeros_like(L)
    for k in freqs:
        u = np.array([math.cos(2 * math.pi * k * (a + b) / p) for a in range(p) for b in range(p)])
        v = np.array([math.sin(2 * math.pi * k * (a + b) / p) for a in range(p) for b in range(p)])
        for vec in (u / np.linalg.norm(u), v / np.linalg.norm(v)):
            out += np.outer(vec, vec @ L)
    return out


def dense_loss_acc(L: np.ndarray, p: int, rows: np.ndarray) -> tuple[float, float]:
    losses, hits = [], []
    for r in np.flatnonzero(rows):
        a, b = divmod(int(r), p)
        c = (a + b) % p
        m = L[r].max()
        losses.append(m + math.log(sum(math.exp(x - m) for x in L[r])) - L[r, c])
        hits.append(float(int(np.argmax(L[r])) == c))
    return float(np.mean(losses)), float(np.mean(hits))


def dense_gini(c: np.ndarray) -> float:
    c = sorted(float(x) for x in c)
    n, l1 = len(c), sum(c)
    return 1.0 - 2.0 * sum(c[i - 1] / l1 * (n - i + 0.5) / n for i in range(1, n + 1))


def dense_suite(w: dict[str, np.ndarray], p: int, is_train: np.ndarray, key, *, all_freqs: bool) -> dict[str, float]:
    L = dense_logits(w, p)
    tr = is_train.reshape(-1)
    splits = {"all": np.ones(p * p, bool), "train": tr, "test": ~tr}
    out: dict[str, float] = {}
    P_key = dense_projection(L, p, key)
    Lr = P_key + (L - P_key).mean(0, keepdims=True)
    for s, rows in splits.items():
        out[f"loss_{s}"], out[f"acc_{s}"] = dense_loss_acc(L, p, rows)
        out[f"restricted_loss_{s}"], out[f"restricted_acc_{s}"] = dense_loss_acc(Lr, p, rows)
    for k in key:
        out[f"excluded_loss[{k}]"], out[f"excluded_acc[{k}]"] = dense_loss_acc(L - dense_projection(L, p, [k]), p, tr)
    out["excluded_loss_full"], out["excluded_acc_full"] = dense_loss_acc(L - P_key, p, tr)
    if all_freqs:
        every = [dense_loss_acc(L - dense_projection(L, p, [k]), p, tr)[0] for k in range(1, (p - 1) // 2 + 1)]
        out.update({f"excluded_loss_by_freq[{k}]": v for k, v in enumerate(every, start=1)})
        out["excluded_loss_max"] = max(every)
    F = dense_basis(p)
    norms = {"W_E": np.linalg.norm(F @ w["W_E"][:p], axis=1),
             "W_logit": np.linalg.norm((w["W_out"] @ w["W_U"][:, :p]) @ F.T, axis=0)}
    for name, n in norms.items():
        per_freq = np.sqrt(n[1::2] ** 2 + n[2::2] ** 2)
        out[f"gini_{name}_component"], out[f"gini_{name}_freq"] = dense_gini(n), dense_gini(per_freq)
        out.update({f"{name}_fourier_norm[{i}]": float(x) for i, x in enumerate(n)})
        out.update({f"{name}_freq_norm[{k}]": float(x) for k, x in enumerate(per_freq, start=1)})
    sq = {n: float(np.sum(w[n] ** 2)) for n in WEIGHT_NAMES}
    out.update({f"sum_sq_weights[{n}]": v for n, v in sq.items()})
    out["sum_sq_weights_total"] = sum(sq.values())
    return out


def flat(ds: xr.Dataset, i: int, names) -> dict[str, float]:
    out: dict[str, float] = {}
    for name in names:
        row = ds[name].isel(checkpoint=i)
        if row.ndim == 0:
            out[name] = float(row)
        else:
            dim = row.dims[0]
            labels = range(row.sizes[dim]) if dim == "fourier" else row[dim].values
            for k, v in zip(labels, row.values):
                out[f"{name}[{k}]"] = float(v)
    return out


@pytest.fixture(scope="module")
def traj():
    return random_trajectory(p=P, n_checkpoints=3, d_model=12, n_heads=2, d_head=6, d_mlp=20, seed=5, std=2.0)


# ------------------------------------------------------------------------------------------------------------
# progress_measures against the dense reference
# ------------------------------------------------------------------------------------------------------------
def test_progress_measures_match_dense_reference(traj):
    got = progress_measures(traj, key_freqs=[5, 2], all_freqs=True, chunk=2, reference_checkpoint=20)
    assert got.attrs["key_freqs"] == KEY and got.attrs["reference_checkpoint"] == 20
    np.testing.assert_array_equal(got["checkpoint"].values, traj["checkpoint"].values)
    assert got["checkpoint"].attrs.get("units") == "epochs"
    names = [n for n in got.data_vars if not n.endswith("_freq_share")]
    for i in range(traj.sizes["checkpoint"]):
        w = {n: traj[n].values[i].astype(np.float64) for n in WEIGHT_NAMES}
        ref = dense_suite(w, P, traj["is_train"].values, KEY, all_freqs=True)
        have = flat(got, i, names)
        assert set(ref) == set(have)
        for name, want in ref.items():
            assert have[name] == pytest.approx(want, rel=1e-9, abs=1e-12), (i, name)
    # the random models are not degenerate: some losses are far from ln p and the accuracies differ
    assert len(set(np.round(got["acc_all"].values, 6))) > 1


def test_progress_measures_equal_the_separate_analyses(traj):
    """The same numbers as ablation_losses (float32 logits: close), weight_measures and fourier_norms (equal)."""
    got = progress_measures(traj, key_freqs=KEY, chunk=3)
    ab = ablation_losses(traj, key_freqs=KEY)
    for name in ("loss_all", "loss_test", "restricted_loss_train", "excluded_loss", "excluded_loss_full"):
        np.testing.assert_allclose(got[name].values, ab[name].values, rtol=1e-5, err_msg=name)
    for name in ("acc_all", "restricted_acc_all", "excluded_acc", "excluded_acc_full"):
        np.testing.assert_allclose(got[name].values, ab[name].values, atol=1.5 / P**2, err_msg=name)
    wm = weight_measures(traj)
    for name in wm.data_vars:
        np.testing.assert_allclose(got[name].values, wm[name].values, rtol=1e-12, err_msg=name)
    fn = fourier_norms(traj)
    for name in fn.data_vars:
        np.testing.assert_allclose(got[name].values, fn[name].values, rtol=1e-12, err_msg=name)
    assert "block3x3_loss_all" not in got and "excluded_loss_by_freq" not in got
    with3 = progress_measures(traj.isel(checkpoint=[1]), key_freqs=KEY, block3x3=True)
    np.testing.assert_allclose(with3["block3x3_loss_all"].values, ab["block3x3_loss_all"].values[[1]], rtol=1e-5)


def test_chunking_workers_and_selection_do_not_change_results(traj):
    one = progress_measures(traj, key_freqs=KEY, chunk=1)
    many = progress_measures(traj, key_freqs=KEY, chunk=3)
    xr.testing.assert_identical(one, many)  # checkpoint by checkpoint inside: bit for bit
    threads = torch.get_num_threads()
    xr.testing.assert_identical(one, progress_measures(traj, key_freqs=KEY, workers=2))
    assert torch.get_num_threads() == threads  # restored
    sel = progress_measures(traj.isel(checkpoint=[2, 0]), key_freqs=KEY)
    np.testing.assert_array_equal(sel["checkpoint"].values, [20, 0])
    np.testing.assert_array_equal(sel["loss_train"].values, one["loss_train"].values[[2, 0]])


# ------------------------------------------------------------------------------------------------------------
# grid_forward
# ------------------------------------------------------------------------------------------------------------
def test_grid_forward_equals_forward(traj):
    w = {n: torch.from_numpy(traj[n].values.astype(np.float64)) for n in WEIGHT_NAMES}
    w2 = {n: v.reshape(1, *v.shape) for n, v in w.items()}  # two leading dims
    ref = forward(w2, grid_tokens(P), cache=True)
    got = grid_forward(w2, P, cache=True)
    for name in ("logits", "attn_pattern", "mlp_post", "resid_mid"):
        a, b = getattr(got, name), getattr(ref, name)
        assert a.shape == b.shape, name
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-12, atol=1e-12, err_msg=name)
    assert got.resid_post is None
    # fewer output columns, float32 arithmetic on float64 weights, no cache
    short = grid_forward({**w, "W_U": w["W_U"][..., :P]}, P, dtype=torch.float32)
    assert short.logits.dtype == torch.float32 and short.attn_pattern is None
    np.testing.assert_allclose(short.logits.numpy(), ref.logits[0, ..., :P].numpy(), rtol=1e-4, atol=1e-5)
    # each checkpoint's result does not depend on the others in the batch
    alone = grid_forward({n: v[1:2] for n, v in w.items()}, P)
    np.testing.assert_array_equal(alone.logits[0].numpy(), grid_forward(w, P).logits[1].numpy())
    # a reused output buffer
    buf = torch.full((P * P * (P + 1),), float("nan"), dtype=torch.float64)
    again = grid_forward({n: v[1:2] for n, v in w.items()}, P, out=buf)
    np.testing.assert_array_equal(again.logits.numpy(), alone.logits.numpy())
    assert again.logits.data_ptr() == buf.data_ptr()
    with pytest.raises(AnalysisError, match="out must be"):
        grid_forward(w, P, out=buf)  # room for one checkpoint, not three


def test_grid_forward_logit_sums_equal_a_loop(traj):
    """The residue sums and squared norm accumulated inside the grid pass, against plain loops over the pairs,
    and bit for bit against fourier.residue_sums (the same additions in the same order)."""
    w = {n: torch.from_numpy(traj[n].values[-1:].astype(np.float64)) for n in WEIGHT_NAMES}
    sums: dict = {}
    L = grid_forward(w, P, logit_sums=sums).logits[0]  # (p*p, vocab_out)
    ref = np.zeros((P, L.shape[-1]))
    for a in range(P):
        for b in range(P):
            ref[(a + b) % P] += L[a * P + b].numpy()
    np.testing.assert_allclose(sums["residue_sums"].numpy(), ref, rtol=1e-13, atol=1e-12)
    np.testing.assert_array_equal(sums["residue_sums"].numpy(), residue_sums(L, P).numpy())
    assert float(sums["norm_sq"]) == pytest.approx(sum(float(x) ** 2 for x in L.reshape(-1)), rel=1e-13)
    with pytest.raises(AnalysisError, match="one checkpoint at a time"):
        grid_forward({n: torch.cat([v, v]) for n, v in w.items()}, P, logit_sums={})


# ------------------------------------------------------------------------------------------------------------
# the fast loss measures against the direct ones, where they are delicate
# ------------------------------------------------------------------------------------------------------------
def _masks(p: int, frac: float = 0.4) -> dict[str, np.ndarray]:
    train, _ = split_indices(p, frac, 0)
    return split_masks(train_mask(p, train), p)


@pytest.mark.parametrize(
    "case",
    ["ties", "constant", "confident", "huge"],
)
def test_fast_measures_equal_direct_ones(case, monkeypatch):
    """Ties (accuracy as torch.argmax: the first maximum), small losses, and logits whose exponentials would
    overflow (the checkpoint falls back to the direct computation)."""
    import mechgrok.analyses.modular.ablation_kernels as ablation

    fallbacks = []
    monkeypatch.setattr(ablation, "measures_direct", lambda *a, **k: fallbacks.append(1) or measures_direct(*a, **k))
    p = 13
    gen = torch.Generator().manual_seed(1)
    if case == "ties":
        L = torch.randint(0, 3, (2, p * p, p), generator=gen).double()
    elif case == "constant":
        L = torch.zeros(2, p * p, p, dtype=torch.float64)
    else:
        s = ((torch.arange(p)[:, None] + torch.arange(p)[None, :]) % p).reshape(-1)
        a = torch.arange(p * p) // p
        clean = torch.cos(2 * math.pi * 3 * (s[:, None] - torch.arange(p)[None, :]) / p)
        noise = torch.cos(2 * math.pi * 2 * (a[:, None] - torch.arange(p)[None, :]) / p)
        scale = 140.0 if case == "confident" else 900.0  # margins of ~16 and ~100 nats
        L = torch.stack([scale * clean + 0.5 * noise, -scale * clean + noise]).double()
    masks = _masks(p)
    fast = ablation_measures(L, masks, [3, 5], all_freqs=True, block3x3=True)
    slow = measures_direct(L, masks, [3, 5], all_freqs=True, block3x3=True)
    assert list(fast) == list(slow)
    for name in slow:
        np.testing.assert_allclose(fast[name], slow[name], rtol=1e-9, atol=1e-300, err_msg=name)
    assert len(fallbacks) == (2 if case == "huge" else 0)  # one per checkpoint, only where exp would overflow
    if case == "confident":
        assert 0 < slow["loss_all"][0] < 1e-6 < slow["loss_all"][1]
    if case == "constant":
        np.testing.assert_allclose(fast["acc_all"], [1 / p, 1 / p])  # argmax of a tie is class 0


def test_fast_measures_with_an_empty_training_split():
    p = 7
    masks = split_masks(np.zeros((p, p), dtype=bool), p)
    L = torch.randn(1, p * p, p, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    out = ablation_measures(L, masks, [1], all_freqs=True)
    assert np.isnan(out["loss_train"][0]) and np.isnan(out["excluded_loss_full"][0])
    assert np.isnan(out["excluded_loss_by_freq"]).all()
    np.testing.assert_allclose(out["loss_all"], measures_direct(L, masks, [1], all_freqs=False)["loss_all"])


# ------------------------------------------------------------------------------------------------------------
# planted and released models
# ------------------------------------------------------------------------------------------------------------
def test_planted_model_story():
    freqs = [3, 7]
    ds = planted_trajectory(23, freqs, mix=(0.0, 0.5, 1.0))
    out = progress_measures(ds, key_freqs=freqs, all_freqs=True)
    end, start = out.isel(checkpoint=-1), out.isel(checkpoint=0)
    assert float(end["acc_all"]) == 1.0 and float(start["restricted_acc_all"]) < 0.5
    assert float(end["restricted_loss_all"]) <= float(end["loss_all"])  # the circuit alone does as well
    assert float(end["excluded_loss_full"]) > 1.0 > 100 * float(end["loss_train"])  # and without it, nothing
    others = end["excluded_loss_by_freq"].drop_sel(freq=freqs).values
    assert np.all(others < 1.5 * float(end["loss_train"]))
    # the planted embedding lives at the key frequencies only: Gini near its maximum 1 - 2/N for 2 of N freqs
    n = (23 - 1) // 2
    assert float(end["gini_W_E_freq"]) == pytest.approx(1 - 2 / n, abs=1e-6)
    assert float(end["gini_W_E_freq"]) > float(start["gini_W_E_freq"])


def test_released_model_reference_values():
    """low_precision_mod_addition.pth: all-pairs loss 2.89e-3 and accuracy 0.99945 (7 errors; shared README)."""
    ds = load_nanda_model("low_precision_mod_addition.pth")
    out = progress_measures(ds, key_freqs=[6, 23, 39]).isel(checkpoint=0)
    assert float(out["loss_all"]) == pytest.approx(2.89e-3, rel=0.01)
    assert float(out["acc_all"]) == pytest.approx(1 - 7 / 113**2, abs=1e-12)
    assert float(out["excluded_loss_full"]) > 1.0


# ------------------------------------------------------------------------------------------------------------
# errors
# ------------------------------------------------------------------------------------------------------------
def test_errors(traj):
    with pytest.raises(AnalysisError, match="is_train"):
        progress_measures(traj.drop_vars("is_train"), key_freqs=KEY)
    with pytest.raises(AnalysisError, match="outside"):
        progress_measures(traj, key_freqs=[6])
    with pytest.raises(AnalysisError, match="no checkpoints"):
        progress_measures(traj.isel(checkpoint=[]), key_freqs=KEY)
    with pytest.raises(AnalysisError, match="lacks weights"):
        progress_measures(traj.drop_vars("W_in"), key_freqs=KEY)
    bad = traj.copy()
    del bad.attrs["p"]
    with pytest.raises(AnalysisError, match="modulus"):
        progress_measures(bad, key_freqs=KEY)
