"""Effective weights W_logit, W_neur, W_attn (paper.md 3.6, row form) against dense loops and the model."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mechgrok.tasks.modular_arithmetic import grid_tokens
from mechgrok.analyses.modular.effective_weights import effective_weights
from mechgrok.errors import AnalysisError
from mechgrok.models.transformer import forward
from planted import random_trajectory

P = 7


@pytest.fixture(scope="module")
def traj():
    return random_trajectory(p=P, n_checkpoints=3, d_model=6, n_heads=2, d_head=3, d_mlp=5, seed=2)


def test_effective_weights_match_dense_loops(traj):
    out = effective_weights(traj, chunk=2)
    unscaled = effective_weights(traj, include=("W_attn",), scaled=False)
    assert out["W_logit"].dims == ("checkpoint", "d_mlp", "c")
    assert out["W_neur"].dims == ("checkpoint", "head", "vocab", "d_mlp")
    assert out["W_attn"].dims == ("checkpoint", "head", "vocab")
    assert out.attrs["scaled"] == 1 and unscaled.attrs["scaled"] == 0
    n_ck, n_heads, d_model, d_head = traj["W_Q"].shape
    d_mlp = traj.sizes["d_mlp"]
    for i in range(n_ck):
        w = {k: traj[k].values[i].astype(np.float64) for k in traj.data_vars if k.startswith(("W_", "b_"))}
        x_eq = w["W_E"][P] + w["W_pos"][2]
        for n in range(d_mlp):
            for c in range(P):
                ref = sum(w["W_out"][n, m] * w["W_U"][m, c] for m in range(d_model))
                assert out["W_logit"].values[i, n, c] == pytest.approx(ref, rel=1e-6, abs=1e-12)
        for h in range(n_heads):
            for v in range(P):
                # token v -> value -> output -> MLP input, one product at a time
                ov = w["W_E"][v] @ w["W_V"][h] @ w["W_O"][h]
                for n in range(d_mlp):
                    ref = sum(ov[m] * w["W_in"][m, n] for m in range(d_model))
                    assert out["W_neur"].values[i, h, v, n] == pytest.approx(ref, rel=1e-6, abs=1e-12)
                q = [sum(x_eq[m] * w["W_Q"][h, m, d] for m in range(d_model)) for d in range(d_head)]
                k = [sum(w["W_E"][v, m] * w["W_K"][h, m, d] for m in range(d_model)) for d in range(d_head)]
                score = sum(q[d] * k[d] for d in range(d_head))
                assert unscaled["W_attn"].values[i, h, v] == pytest.approx(score, rel=1e-6)
                assert out["W_attn"].values[i, h, v] == pytest.approx(score / math.sqrt(d_head), rel=1e-6)


def test_scaled_W_attn_is_what_the_softmax_sees(traj):
    """With W_pos = 0, softmax([W_attn[a], W_attn[b], score(=)]) is the model's attention pattern."""
    ds = traj.copy(deep=True)
    ds["W_pos"][:] = 0.0
    W_attn = effective_weights(ds, include=("W_attn",))["W_attn"].values  # (ck, head, vocab)
    w = {k: torch.from_numpy(ds[k].values) for k in ("W_E", "W_pos", "W_Q", "W_K", "W_V", "W_O", "W_in", "b_in", "W_out", "b_out", "W_U")}
    pattern = forward(w, grid_tokens(P), cache=True).attn_pattern.double().numpy()  # (ck, batch, head, pos)
    a = np.repeat(np.arange(P), P)
    b = np.tile(np.arange(P), P)
    s_a = W_attn[:, :, a].transpose(0, 2, 1)
    s_b = W_attn[:, :, b].transpose(0, 2, 1)
    # ratio of attention to a and to b is exp(W_attn[a] - W_attn[b])
    np.testing.assert_allclose(np.log(pattern[..., 0] / pattern[..., 1]), s_a - s_b, rtol=1e-4, atol=1e-5)


def test_effective_weights_errors(traj):
    with pytest.raises(AnalysisError, match="unknown effective weights"):
        effective_weights(traj, include=("W_foo",))
    with pytest.raises(AnalysisError, match="lacks weights"):
        effective_weights(traj.drop_vars("W_U"), include=("W_logit",))
    bad = traj.copy()
    bad.attrs["n_layers"] = 2
    with pytest.raises(AnalysisError, match="one-layer"):
        effective_weights(bad)
