"""The hand-written loss and gradient (mechgrok.analyses.modular.loss_gradient) against autograd through mechgrok.models.transformer.forward.

Float64 weights must give the float64 autograd value and gradient to rounding, for shared rows, per-chain rows
and logits whose wrong classes beat the label by more than float32 exp can hold. Float32 weights at a grokked
checkpoint of the fixture (train loss ~7e-8) must still give the float64 loss and gradient: the label's entry of
the logit gradient, 1 - p_label, is what a float32 softmax rounds to zero.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mechgrok.engine import checkpoint_weights
from mechgrok.config import Config
from mechgrok.tasks.modular_arithmetic import grid_labels, grid_tokens
from mechgrok.errors import AnalysisError
from mechgrok.tasks.loss import per_example_loss
from mechgrok.analyses.modular.loss_gradient import LossGradient
from mechgrok.models.transformer import forward, init_params
from mechgrok.store import open_run

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "quick-run"


def _weights(n_chains: int, seed: int, dtype=torch.float64) -> dict[str, torch.Tensor]:
    cfg = Config(p=11, frac_train=0.5, d_model=16, n_heads=2, d_head=8, d_mlp=24)
    gen = torch.Generator().manual_seed(seed)
    stacks = [init_params(cfg, generator=gen) for _ in range(n_chains)]
    params = {k: torch.stack([s[k] for s in stacks]).to(dtype) for k in stacks[0]}
    # non-zero biases and a livelier attention pattern than the initialisation's
    return {k: v + 0.3 * torch.randn(v.shape, generator=gen, dtype=dtype) for k, v in params.items()}


def _rows(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    a, b = torch.randint(0, 11, (n,), generator=gen), torch.randint(0, 11, (n,), generator=gen)
    return torch.stack([a, b, torch.full_like(a, 11)], dim=1), (a + b) % 11


def _autograd(params, tokens, labels, rows=None):
    leaves = {k: v.detach().clone().requires_grad_(True) for k, v in params.items()}
    if rows is None:
        loss = per_example_loss(forward(leaves, tokens).logits, labels).mean(-1)
    else:
        loss = torch.stack([
            per_example_loss(forward({k: v[c] for k, v in leaves.items()}, tokens[rows[c]]).logits,
                             labels[rows[c]]).mean()
            for c in range(rows.shape[0])
        ])
    grads = torch.autograd.grad(loss.sum(), list(leaves.values()))
    return loss.detach(), dict(zip(leaves, grads))


def _hand(params, tokens, labels, rows=None):
    grads = {k: torch.full_like(v, float("nan")) for k, v in params.items()}  # every entry must be written
    loss = LossGradient(tokens, labels)(params, grads, rows)
    return loss, grads


def _assert_same(got, ref, rtol):
    loss, grads = got
    ref_loss, ref_grads = ref
    torch.testing.assert_close(loss, ref_loss, rtol=rtol, atol=0.0)
    for k, g in ref_grads.items():
        scale = float(g.abs().max())
        assert float((grads[k].to(torch.float64) - g).abs().max()) <= rtol * scale, k


def test_float64_matches_autograd_on_shared_and_per_chain_rows():
    params = _weights(3, seed=0)
    tokens, labels = _rows(40, seed=1)
    _assert_same(_hand(params, tokens, labels), _autograd(params, tokens, labels), rtol=1e-12)
    rows = torch.stack([torch.randperm(40, generator=torch.Generator().manual_seed(c))[:10] for c in range(3)])
    _assert_same(_hand(params, tokens, labels, rows), _autograd(params, tokens, labels, rows), rtol=1e-12)
    # the loss alone is the same number
    assert torch.equal(LossGradient(tokens, labels)(params, None, rows), _hand(params, tokens, labels, rows)[0])


def test_wrong_classes_far_above_the_label():
    """Logits where a wrong class beats the label by hundreds of nats (exp of the gap overflows float32)."""
    params = _weights(2, seed=3)
    params["W_U"] = params["W_U"] * 60
    tokens, labels = _rows(30, seed=4)
    logits = forward(params, tokens).logits
    assert float((logits - logits.gather(-1, labels.expand(2, 30)[..., None])).max()) > 200
    ref = _autograd(params, tokens, labels)
    assert float(ref[0].min()) > 100
    _assert_same(_hand(params, tokens, labels), ref, rtol=1e-12)


def test_float32_at_a_grokked_checkpoint_keeps_the_label_gradient():
    if not FIXTURE.is_dir():
        pytest.skip(f"fixture run missing at {FIXTURE}")
    ds = open_run(FIXTURE)
    p = int(ds.attrs["p"])
    mask = torch.from_numpy(ds["is_train"].values.reshape(-1))
    tokens, labels = grid_tokens(p)[mask], grid_labels(p)[mask]
    w32 = {k: v.expand(2, *v.shape[1:]).contiguous() for k, v in checkpoint_weights(ds.sel(checkpoint=[3000]), dtype=torch.float32).items()}
    ref = _autograd({k: v.double() for k, v in w32.items()}, tokens, labels)
    assert float(ref[0][0]) < 1e-6  # a tiny loss: float32 rounds the label's probability to 1
    logged = float(ds["loss_train"].sel(epoch=3000))
    loss, grads = _hand(w32, tokens, labels)
    assert float(loss[0]) == pytest.approx(logged, rel=1e-4)
    _assert_same((loss, grads), ref, rtol=1e-4)
    # the check can fail: a float32 log-softmax drops the label's entry of the logit gradient
    leaves = {k: v.clone().requires_grad_(True) for k, v in w32.items()}
    naive = -forward(leaves, tokens).logits.log_softmax(-1).gather(-1, labels.expand(2, -1)[..., None]).mean((-1, -2))
    g_naive = torch.autograd.grad(naive.sum(), leaves["W_U"])[0].double()
    assert float((g_naive - ref[1]["W_U"]).abs().max()) > 1e-2 * float(ref[1]["W_U"].abs().max())


def test_rejects_bad_input():
    tokens, labels = _rows(8, seed=0)
    with pytest.raises(AnalysisError, match=r"\(rows, 3\)"):
        LossGradient(tokens[:, :2], labels)
    with pytest.raises(AnalysisError, match="labels"):
        LossGradient(tokens, labels[:5])
    other = tokens.clone()
    other[0, 2] = 3
    with pytest.raises(AnalysisError, match="same '=' token"):
        LossGradient(other, labels)
    lg = LossGradient(tokens, labels)
    params = _weights(2, seed=0)
    with pytest.raises(AnalysisError, match="rows must be"):
        lg(params, None, torch.zeros(3, 4, dtype=torch.int64))
    with pytest.raises(AnalysisError, match="missing"):
        lg({k: v for k, v in params.items() if k != "W_U"})
    with pytest.raises(AnalysisError, match="leading chain dim"):
        lg({k: v[0] for k, v in params.items()})
