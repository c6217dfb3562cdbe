"""The paper's model: shapes, parameter count, and the forward pass against a dense numpy reference."""

import numpy as np
import pytest
import torch

from mechgrok.config import Config, preset
from mechgrok.tasks.modular_arithmetic import grid_tokens
from mechgrok.models.transformer import PARAM_KEYS, Transformer, forward, init_params, param_shapes


def test_paper_parameter_count_and_shapes():
    model = Transformer(preset("paper"))
    n = sum(t.numel() for t in model.parameters())
    assert n == 226_816  # paper.md section 2.1, with the 114-token vocabulary
    sd = model.state_dict()
    assert set(sd) == set(PARAM_KEYS.values())
    expected = {
        "embed.W_E": (114, 128),
        "pos_embed.W_pos": (3, 128),
        "blocks.0.attn.W_Q": (4, 128, 32),
        "blocks.0.attn.W_K": (4, 128, 32),
        "blocks.0.attn.W_V": (4, 128, 32),
        "blocks.0.attn.W_O": (4, 32, 128),
        "blocks.0.mlp.W_in": (128, 512),
        "blocks.0.mlp.b_in": (512,),
        "blocks.0.mlp.W_out": (512, 128),
        "blocks.0.mlp.b_out": (128,),
        "unembed.W_U": (128, 114),
    }
    assert {k: tuple(v.shape) for k, v in sd.items()} == expected


def test_initialisation_scales():
    cfg = preset("paper")
    w = init_params(cfg)
    assert abs(w["W_E"].std().item() - 1 / np.sqrt(128)) < 0.005
    assert abs(w["W_U"].std().item() - 1 / np.sqrt(114)) < 0.005
    assert abs(w["W_in"].std().item() - 1 / np.sqrt(128)) < 0.005
    assert torch.all(w["b_in"] == 0) and torch.all(w["b_out"] == 0)
    # seeded
    assert torch.equal(init_params(cfg)["W_Q"], w["W_Q"])
    assert not torch.equal(init_params(cfg.replace(model_seed=1))["W_Q"], w["W_Q"])


def dense_reference(w: dict[str, np.ndarray], tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Full-sequence forward in plain numpy loops (causal attention at every position, logits at every position)."""
    n_heads, d_model, d_head = w["W_Q"].shape
    out_logits, out_pattern, out_post = [], [], []
    for seq in tokens:
        x = np.stack([w["W_E"][t] + w["W_pos"][i] for i, t in enumerate(seq)])  # (pos, d_model)
        attn_out = np.zeros_like(x)
        patterns = np.zeros((n_heads, len(seq), len(seq)))
        for h in range(n_heads):
            q, k, v = x @ w["W_Q"][h], x @ w["W_K"][h], x @ w["W_V"][h]
            for i in range(len(seq)):
                scores = np.array([q[i] @ k[j] / np.sqrt(d_head) if j <= i else -np.inf for j in range(len(seq))])
                e = np.exp(scores - scores.max())
                patterns[h, i] = e / e.sum()
                attn_out[i] += (patterns[h, i] @ v) @ w["W_O"][h]
        mid = x + attn_out
        post = np.maximum(mid @ w["W_in"] + w["b_in"], 0)
        resid = mid + post @ w["W_out"] + w["b_out"]
        logits = resid @ w["W_U"]
        out_logits.append(logits[-1])
        out_pattern.append(patterns[:, -1])
        out_post.append(post[-1])
    return np.array(out_logits), np.array(out_pattern), np.array(out_post)


@pytest.fixture
def small():
    cfg = Config(p=7, d_model=12, n_heads=3, d_head=4, d_mlp=20, frac_train=0.5)
    w = init_params(cfg)
    w["b_in"] = torch.randn(w["b_in"].shape)  # exercise the biases too
    w["b_out"] = torch.randn(w["b_out"].shape)
    return cfg, w


def test_forward_matches_dense_reference(small):
    cfg, w = small
    tokens = grid_tokens(cfg.p)
    out = forward({k: v.double() for k, v in w.items()}, tokens, cache=True)
    ref_logits, ref_pattern, ref_post = dense_reference({k: v.double().numpy() for k, v in w.items()}, tokens.numpy())
    np.testing.assert_allclose(out.logits.numpy(), ref_logits, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(out.attn_pattern.numpy(), ref_pattern, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(out.mlp_post.numpy(), ref_post, rtol=1e-10, atol=1e-12)
    assert out.logits.shape == (cfg.p**2, cfg.d_vocab_out)


def test_forward_batched_over_checkpoints_equals_one_at_a_time(small):
    cfg, _ = small
    ws = [init_params(cfg, generator=torch.Generator().manual_seed(s)) for s in range(3)]
    stacked = {k: torch.stack([w[k] for w in ws]) for k in ws[0]}
    tokens = grid_tokens(cfg.p)
    batched = forward(stacked, tokens).logits
    assert batched.shape == (3, cfg.p**2, cfg.d_vocab_out)
    for i, w in enumerate(ws):
        torch.testing.assert_close(batched[i], forward(w, tokens).logits, rtol=1e-5, atol=1e-6)


def test_module_forward_uses_its_parameters(small):
    """The module's forward against the dense reference on its state dict, read by the PyTorch key names written
    out here (not through the module's own name map), so a mis-mapped parameter (say W_Q read as W_K) fails."""
    cfg, _ = small
    model = Transformer(cfg)
    with torch.no_grad():  # non-zero biases, so that b_in and b_out are checked too
        model.state_dict()["blocks.0.mlp.b_in"].copy_(torch.randn(cfg.d_mlp, generator=torch.Generator().manual_seed(1)))
        model.state_dict()["blocks.0.mlp.b_out"].copy_(torch.randn(cfg.d_model, generator=torch.Generator().manual_seed(2)))
    sd = {k: v.detach().double().numpy() for k, v in model.state_dict().items()}
    keys = {"W_E": "embed.W_E", "W_pos": "pos_embed.W_pos", "W_Q": "blocks.0.attn.W_Q", "W_K": "blocks.0.attn.W_K",
            "W_V": "blocks.0.attn.W_V", "W_O": "blocks.0.attn.W_O", "W_in": "blocks.0.mlp.W_in",
            "b_in": "blocks.0.mlp.b_in", "W_out": "blocks.0.mlp.W_out", "b_out": "blocks.0.mlp.b_out",
            "W_U": "unembed.W_U"}
    tokens = grid_tokens(cfg.p)
    ref_logits, ref_pattern, ref_post = dense_reference({n: sd[k] for n, k in keys.items()}, tokens.numpy())
    with torch.no_grad():
        out = model(tokens, cache=True)
    np.testing.assert_allclose(out.logits.double().numpy(), ref_logits, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(out.attn_pattern.double().numpy(), ref_pattern, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(out.mlp_post.double().numpy(), ref_post, rtol=1e-4, atol=1e-5)
    assert param_shapes(cfg)["W_O"] == (3, 4, 12)
