"""Grid activations (mechgrok.analyses.modular.grid) against a plain numpy forward pass, one example at a time."""

from __future__ import annotations

import numpy as np
import pytest

from mechgrok.analyses.modular.grid import grid_activations
from mechgrok.errors import AnalysisError
from planted import random_trajectory


def _relerr(x: np.ndarray, ref: np.ndarray) -> float:
    return float(np.linalg.norm(np.asarray(x, np.float64) - ref) / np.linalg.norm(ref))


def dense_forward(w: dict[str, np.ndarray], a: int, b: int, p: int) -> dict[str, np.ndarray]:
    """The paper's model (App. A; TransformerLens orientation) for the single input [a, b, =], in float64."""
    tokens = [a, b, p]
    resid = np.array([w["W_E"][t] + w["W_pos"][i] for i, t in enumerate(tokens)])  # (pos, d_model)
    n_heads, _, d_head = w["W_Q"].shape
    attn_out = np.zeros(resid.shape[1])
    pattern = np.zeros((n_heads, 3))
    for h in range(n_heads):
        q = resid[2] @ w["W_Q"][h]
        scores = np.array([q @ (resid[j] @ w["W_K"][h]) for j in range(3)]) / np.sqrt(d_head)
        e = np.exp(scores - scores.max())
        pattern[h] = e / e.sum()
        z = sum(pattern[h, j] * (resid[j] @ w["W_V"][h]) for j in range(3))
        attn_out += z @ w["W_O"][h]
    mid = resid[2] + attn_out
    post = np.maximum(mid @ w["W_in"] + w["b_in"], 0.0)
    logits = (mid + post @ w["W_out"] + w["b_out"]) @ w["W_U"]
    return {"logits": logits[:p], "attn": pattern, "mlp_post": post, "resid_mid": mid}


@pytest.fixture(scope="module")
def traj():
    return random_trajectory(p=5, n_checkpoints=3, d_model=8, n_heads=2, d_head=4, d_mlp=6, seed=3)


@pytest.fixture(scope="module")
def reference(traj):
    p = traj.attrs["p"]
    out = {"logits": [], "attn_a": [], "attn_b": [], "mlp_post": [], "resid_mid": []}
    for i in range(traj.sizes["checkpoint"]):
        w = {k: traj[k].values[i].astype(np.float64) for k in ("W_E", "W_pos", "W_Q", "W_K", "W_V", "W_O", "W_in", "b_in", "W_out", "b_out", "W_U")}
        per = [[dense_forward(w, a, b, p) for b in range(p)] for a in range(p)]
        out["logits"].append([[r["logits"] for r in row] for row in per])
        out["attn_a"].append(np.array([[r["attn"][:, 0] for r in row] for row in per]).transpose(2, 0, 1))
        out["attn_b"].append(np.array([[r["attn"][:, 1] for r in row] for row in per]).transpose(2, 0, 1))
        out["mlp_post"].append([[r["mlp_post"] for r in row] for row in per])
        out["resid_mid"].append([[r["resid_mid"] for r in row] for row in per])
    return {k: np.array(v) for k, v in out.items()}


def test_grid_activations_match_dense_forward(traj, reference):
    act = grid_activations(traj, include=("logits", "attn", "mlp_post", "resid_mid"))
    assert act["logits"].dims == ("checkpoint", "a", "b", "c")
    assert act["attn_to_a"].dims == ("checkpoint", "head", "a", "b")
    assert act["mlp_post"].dims == ("checkpoint", "a", "b", "d_mlp")
    assert act.sizes["c"] == traj.attrs["p"]  # the '=' class is dropped
    np.testing.assert_array_equal(act["checkpoint"].values, traj["checkpoint"].values)
    # the float64 grid pass against a float64 loop: relative error in norm (measured ~2e-16)
    assert _relerr(act["logits"].values, reference["logits"]) < 1e-13
    assert _relerr(act["attn_to_a"].values, reference["attn_a"]) < 1e-13
    assert _relerr(act["attn_to_b"].values, reference["attn_b"]) < 1e-13
    assert _relerr(act["mlp_post"].values, reference["mlp_post"]) < 1e-13
    assert _relerr(act["resid_mid"].values, reference["resid_mid"]) < 1e-13


def test_chunking_and_selection_do_not_change_results(traj):
    full = grid_activations(traj, chunk=3, include=("logits", "mlp_post"))
    one = grid_activations(traj, chunk=1, include=("logits", "mlp_post"))
    # the same numbers however checkpoints are chunked (each checkpoint is computed on its own)
    np.testing.assert_array_equal(full["logits"].values, one["logits"].values)
    sel = grid_activations(traj.isel(checkpoint=[2, 0]), include=("mlp_post",))
    np.testing.assert_array_equal(sel["checkpoint"].values, traj["checkpoint"].values[[2, 0]])
    np.testing.assert_array_equal(sel["mlp_post"].values, full["mlp_post"].values[[2, 0]])
    assert set(sel.data_vars) == {"mlp_post"}


def test_grid_activations_needs_p(traj):
    bad = traj.copy()
    del bad.attrs["p"]
    with pytest.raises(AnalysisError, match="modulus"):
        grid_activations(bad)
