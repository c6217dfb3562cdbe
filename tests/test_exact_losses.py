"""Every loss-type number of ``mechgrok.analyze`` against a float64 dense reference (issue: one exact engine).

The reference is written here from the paper's definitions and shares no code with mechgrok's engine:

* the logits come from a plain numpy float64 forward pass of the paper's model over all p^2 sequences
  ``[a, b, =]`` (all three positions, causal attention, ReLU MLP; paper Appendix A), not from the rearranged
  grid forward that mechgrok uses;
* the projections onto u_k, v_k in R^{p^2} are built from an explicit Fourier basis (``dense.dense_basis``) and
  the losses are log-sum-exp per row in Python floats (``test_ablation.dense_measures``).

``analyze`` must match it within 1e-9 relative on the authors' released mod-113 models (skipped where
``../shared`` is absent) and on the committed fixture run, and so must the numbers it writes to report.json.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import xarray as xr

import mechgrok
from mechgrok.report import summarise

from nanda import load_nanda_model
import test_ablation
from test_ablation import dense_measures

REL = 1e-9

#: test_ablation's plain-loop loss and accuracy, taken before the fixture below swaps in the vectorised one.
_LOOP_LOSS_ACC = test_ablation.dense_loss_acc


def numpy_forward(ds: xr.Dataset, i: int) -> np.ndarray:
    """Logits (p*p, p) at ``=`` of checkpoint i, '=' class dropped: a plain float64 full-sequence forward pass."""
    p = int(ds.attrs["p"])
    w = {k: np.asarray(ds[k].values[i], dtype=np.float64) for k in
         ("W_E", "W_pos", "W_Q", "W_K", "W_V", "W_O", "W_in", "b_in", "W_out", "b_out", "W_U")}
    a, b = np.meshgrid(np.arange(p), np.arange(p), indexing="ij")
    tokens = np.stack([a.reshape(-1), b.reshape(-1), np.full(p * p, p)], axis=1)  # (batch, pos)
    x = w["W_E"][tokens] + w["W_pos"][None, :3]  # (batch, pos, d_model)
    q = np.einsum("bpm,hmd->bhpd", x, w["W_Q"])
    k = np.einsum("bpm,hmd->bhpd", x, w["W_K"])
    v = np.einsum("bpm,hmd->bhpd", x, w["W_V"])
    scores = np.einsum("bhqd,bhkd->bhqk", q, k) / math.sqrt(q.shape[-1])
    scores = np.where(np.tril(np.ones((3, 3), bool)), scores, -np.inf)
    pattern = np.exp(scores - scores.max(-1, keepdims=True))
    pattern /= pattern.sum(-1, keepdims=True)
    z = np.einsum("bhqk,bhkd->bhqd", pattern, v)
    resid = x + np.einsum("bhqd,hdm->bqm", z, w["W_O"])
    post = np.maximum(resid @ w["W_in"] + w["b_in"], 0.0)
    resid = resid + post @ w["W_out"] + w["b_out"]
    return (resid[:, -1] @ w["W_U"])[:, :p]


def vector_loss_acc(L: np.ndarray, p: int, mask: np.ndarray) -> tuple[float, float]:
    """As ``test_ablation.dense_loss_acc`` (log1p of the label-relative exponentials, fsum of the rows), in numpy
    over the rows: the per-row Python loop takes minutes at p = 113."""
    rows = np.flatnonzero(mask.reshape(-1))
    a, b = np.divmod(rows, p)
    Lm = L[rows].astype(np.float64)
    lab = (a + b) % p
    gaps = Lm - Lm[np.arange(rows.size), lab][:, None]
    gaps[np.arange(rows.size), lab] = -np.inf
    m = np.maximum(gaps.max(1), 0.0)
    loss = m + np.log1p(np.exp(gaps - m[:, None]).sum(1) + np.expm1(-m))
    return math.fsum(loss) / rows.size, float(np.mean(Lm.argmax(1) == lab))


@pytest.fixture(autouse=True)
def _vectorised_reference(monkeypatch):
    monkeypatch.setattr(test_ablation, "dense_loss_acc", vector_loss_acc)


def test_vectorised_reference_equals_loop():
    rng = np.random.default_rng(0)
    L = rng.normal(scale=20.0, size=(49, 7))
    L[5, 2] = 800.0  # row (a, b) = (0, 5), label 5: a wrong class 800 nats up takes the loop's other branch
    L[12, (1 + 5) % 7] = 60.0  # row (1, 5): a confident right answer, loss ~ e^-40
    mask = rng.random((7, 7)) < 0.5
    mask[0, 5] = mask[1, 5] = True
    loss, acc = vector_loss_acc(L, 7, mask)
    ref_loss, ref_acc = _LOOP_LOSS_ACC(L, 7, mask)
    assert loss == pytest.approx(ref_loss, rel=1e-13)
    assert acc == ref_acc and 0 < acc < 1
    assert ref_loss > 800 / mask.sum()  # the 800-nat row is in the mean


def check_against_dense(ds: xr.Dataset) -> None:
    tree = mechgrok.analyze(ds, analyses=["ablation"])
    ab = tree["ablation"].to_dataset()
    p = int(ds.attrs["p"])
    ks = [int(k) for k in ab["key_freq"].values]
    is_train = ds["is_train"].values
    report = summarise(tree)["losses"]
    for i in range(ds.sizes["checkpoint"]):
        want = dense_measures(numpy_forward(ds, i), p, is_train, ks)
        for name, ref in want.items():
            base, _, key = name.partition("[")
            da = ab[base].isel(checkpoint=i)
            got = float(da.sel(key_freq=int(key[:-1]))) if key else float(da)
            assert got == pytest.approx(ref, rel=REL, abs=1e-300), (i, name, got, ref)
    last = ds.sizes["checkpoint"] - 1
    want = dense_measures(numpy_forward(ds, last), p, is_train, ks)
    for name in ("loss_train", "loss_test", "restricted_loss_all", "excluded_loss_full", "block3x3_loss_all"):
        assert report["final"][name] == pytest.approx(want[name], rel=REL), name


@pytest.mark.slow
@pytest.mark.parametrize("name", ["mod_addition_no_wd.pth", "low_precision_mod_addition.pth"])
def test_released_models_losses_exact(name):
    check_against_dense(load_nanda_model(name))


def test_fixture_losses_exact(fixture_trajectory):
    ds = fixture_trajectory.isel(checkpoint=[3, 20, -1])
    check_against_dense(ds)


def test_float32_forward_is_measurably_off():
    """The float32 option exists to study its rounding: on the no-weight-decay model (train loss ~1e-7) its losses
    leave the 1e-9 band that the float64 pass keeps, so the exactness test above can fail."""
    ds = load_nanda_model("mod_addition_no_wd.pth")
    import torch

    from mechgrok.analyses.modular.ablation import logit_ablations
    from mechgrok.analyses.modular.grid import grid_forward
    from mechgrok.engine import checkpoint_weights

    p = int(ds.attrs["p"])
    ref = dense_measures(numpy_forward(ds, 0), p, ds["is_train"].values, [14])
    w = checkpoint_weights(ds.isel(checkpoint=[0]), dtype=torch.float32)
    out = grid_forward({**w, "W_U": w["W_U"][..., :p]}, p).logits.reshape(1, p, p, p)
    lg = xr.DataArray(out.numpy(), dims=("checkpoint", "a", "b", "c"), coords={"checkpoint": ds["checkpoint"].values[:1]})
    got = logit_ablations(lg, is_train=ds["is_train"], key_freqs=[14])
    rel = abs(float(got["loss_train"][0]) - ref["loss_train"]) / ref["loss_train"]
    assert rel > REL
