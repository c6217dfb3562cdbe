"""The TransformerLens round trip with the real ``transformer-lens`` package (the ``mechgrok[tl]`` extra).

Export: a fixture checkpoint becomes a ``HookedTransformer`` whose ``run_with_cache`` logits, attention pattern and
MLP activations at the read-out position equal mechgrok's forward (float32). Import: ``HookedTransformer`` state
dicts over training, saved as the TransformerLens grokking demo saves them (its ``d_vocab_out = p``, without the
``=`` class), load as a trajectory that analyses to the same key frequencies.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

tl = pytest.importorskip(
    "transformer_lens", reason='TransformerLens is not installed (the optional extra: pip install "mechgrok[tl]")'
)

import mechgrok  # noqa: E402
from mechgrok.errors import ConfigError  # noqa: E402
from mechgrok.models.transformer import forward  # noqa: E402
from mechgrok.store.hooked_transformer import (  # noqa: E402
    STATE_DICT_KEYS,
    from_hooked_transformers,
    hooked_config,
    to_hooked_transformer,
)
from mechgrok.tasks.modular_arithmetic import grid_tokens  # noqa: E402


@pytest.fixture(scope="module")
def trajectory(fixture_trajectory):
    """Three checkpoints of the committed run: initialisation, memorisation, after grokking."""
    return fixture_trajectory.sel(checkpoint=[0, 600, 3000]).load()


def _params(ds, epoch, dtype=torch.float32):
    one = ds.sel(checkpoint=epoch)
    return {n: torch.from_numpy(np.asarray(one[n].values, np.float32)).to(dtype) for n in
            ("W_E", "W_pos", "W_Q", "W_K", "W_V", "W_O", "W_in", "b_in", "W_out", "b_out", "W_U")}


def test_export_matches_mechgrok_forward_float32(trajectory):
    """The acceptance check: float32 logits of run_with_cache within 1e-5 of mechgrok's at a fixture checkpoint."""
    p = trajectory.attrs["p"]
    tokens = grid_tokens(p)  # every (a, b, =), (p^2, 3)
    model = to_hooked_transformer(trajectory, 0)
    with torch.no_grad():
        logits, cache = model.run_with_cache(tokens)
        ours = forward(_params(trajectory, 0), tokens, cache=True)
    assert logits.dtype == torch.float32 and logits.shape == (p * p, 3, p + 1)
    assert (logits[:, -1] - ours.logits).abs().max().item() < 1e-5
    assert (cache["blocks.0.attn.hook_pattern"][:, :, -1, :] - ours.attn_pattern).abs().max().item() < 1e-6
    assert (cache["blocks.0.mlp.hook_post"][:, -1] - ours.mlp_post).abs().max().item() < 1e-5


@pytest.mark.parametrize("epoch", [0, 600, 3000])
def test_export_matches_mechgrok_forward(trajectory, epoch):
    """At every stage: float32 to rounding (logits reach ~90 once grokked, where a float32 step is 7.6e-6, so
    the bound is relative), float64 to 1e-10 (the same model, no rounding to hide behind)."""
    p = trajectory.attrs["p"]
    tokens = grid_tokens(p)
    with torch.no_grad():
        tl32 = to_hooked_transformer(trajectory, epoch)(tokens)[:, -1]
        ours32 = forward(_params(trajectory, epoch), tokens).logits
        model64 = to_hooked_transformer(trajectory, epoch, dtype=torch.float64)
        tl64, cache64 = model64.run_with_cache(tokens)
        ours64 = forward(_params(trajectory, epoch, torch.float64), tokens, cache=True)
    scale = ours64.logits.abs().max().item()
    assert (tl32 - ours32).abs().max().item() <= 1e-6 * scale
    assert (tl64[:, -1] - ours64.logits).abs().max().item() < 1e-10
    assert (cache64["blocks.0.hook_resid_mid"][:, -1] - ours64.resid_mid).abs().max().item() < 1e-10
    assert (cache64["blocks.0.mlp.hook_post"][:, -1] - ours64.mlp_post).abs().max().item() < 1e-10
    if epoch == 3000:  # the exported model computes (a + b) mod p once grokked
        pred = tl32[:, :p].argmax(-1).reshape(p, p)
        a, b = np.meshgrid(np.arange(p), np.arange(p), indexing="ij")
        assert (pred.numpy() == (a + b) % p).mean() > 0.99


def test_export_config_and_biases(trajectory):
    cfg = hooked_config(trajectory)
    assert (cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.d_head, cfg.d_mlp) == (1, 48, 4, 12, 192)
    assert (cfg.d_vocab, cfg.d_vocab_out, cfg.n_ctx, cfg.act_fn, cfg.normalization_type) == (54, 54, 3, "relu", None)
    sd = to_hooked_transformer(trajectory, 3000).state_dict()
    for key in ("blocks.0.attn.b_Q", "blocks.0.attn.b_K", "blocks.0.attn.b_V", "blocks.0.attn.b_O", "unembed.b_U"):
        assert not sd[key].any(), key
    np.testing.assert_array_equal(sd["blocks.0.mlp.b_in"].numpy(), trajectory["b_in"].sel(checkpoint=3000).values)
    np.testing.assert_array_equal(sd["embed.W_E"].numpy(), trajectory["W_E"].sel(checkpoint=3000).values)


def test_export_refuses_pizza_attention(trajectory):
    cfg = json.loads(trajectory.attrs["config_json"])
    pizza = trajectory.assign_attrs(config_json=json.dumps({**cfg, "attn_coeff": 0.5}))
    with pytest.raises(ConfigError, match="attn_coeff"):
        to_hooked_transformer(pizza)


def _demo_model(ds, epoch):
    """A HookedTransformer configured as the TransformerLens grokking demo configures its model (d_vocab_out = p,
    no ``=`` class; its own random initialisation, zero biases), then given one checkpoint's weights with the
    ``=`` column of W_U dropped."""
    p = ds.attrs["p"]
    demo_cfg = tl.HookedTransformerConfig(
        n_layers=1, n_heads=ds.sizes["head"], d_model=ds.sizes["d_model"], d_head=ds.sizes["d_head"],
        d_mlp=ds.sizes["d_mlp"], act_fn="relu", normalization_type=None, d_vocab=p + 1, d_vocab_out=p, n_ctx=3,
        init_weights=True, device="cpu", seed=999,
    )
    model = tl.HookedTransformer(demo_cfg)
    sd = model.state_dict()
    for name, w in _params(ds, epoch).items():
        key = STATE_DICT_KEYS[name].format(layer=0)
        sd[key] = w[:, :p] if name == "W_U" else w
    for key in ("blocks.0.attn.b_Q", "blocks.0.attn.b_K", "blocks.0.attn.b_V", "blocks.0.attn.b_O", "unembed.b_U"):
        sd[key] = torch.zeros_like(sd[key])  # the demo freezes the biases at zero
    model.load_state_dict(sd)
    return model


@pytest.mark.filterwarnings("ignore:HookedTransformer is deprecated:DeprecationWarning")
def test_import_demo_checkpoints_same_key_frequencies(fixture_trajectory, tmp_path):
    ds = fixture_trajectory.sel(checkpoint=[0, 1500, 2250, 3000]).load()
    p = ds.attrs["p"]
    epochs = [int(e) for e in ds["checkpoint"].values]
    models = [_demo_model(ds, e) for e in epochs]
    train_indices = torch.from_numpy(np.flatnonzero(ds["is_train"].values.ravel()))
    # as the demo saves its run: torch.save of the state dicts, with the config object (hence a trusted load)
    f = tmp_path / "grokking_demo.pth"
    torch.save({"checkpoints": [m.state_dict() for m in models], "checkpoint_epochs": epochs,
                "train_indices": train_indices, "test_indices": torch.from_numpy(np.flatnonzero(~ds["is_train"].values.ravel())),
                "config": models[0].cfg, "model": models[-1].state_dict()}, f)
    from_file = mechgrok.open_run(f, trusted=True)
    in_memory = from_hooked_transformers(models, epochs, train_indices=train_indices)
    for back in (from_file, in_memory):
        assert back.attrs["source_format"] == "tl-demo"
        assert back.sizes["vocab_out"] == p  # the demo's unembedding, without the = class
        np.testing.assert_array_equal(back["is_train"].values, ds["is_train"].values)
        np.testing.assert_array_equal(back["W_in"].values, ds["W_in"].values)
    want = mechgrok.key_frequencies(ds)
    got = mechgrok.key_frequencies(in_memory)
    assert got["key_freqs"].values.tolist() == want["key_freqs"].values.tolist() == [9, 17, 25]
    # the analysis losses (over the p non-= classes) do not depend on the dropped = column
    late_ours = mechgrok.ablation_losses(ds.isel(checkpoint=[-1]), key_freqs=[9, 17, 25], block3x3=False)
    late_tl = mechgrok.ablation_losses(from_file.isel(checkpoint=[-1]), key_freqs=[9, 17, 25], block3x3=False)
    np.testing.assert_allclose(late_tl["loss_test"].values, late_ours["loss_test"].values, rtol=1e-9)
    # and the round trip closes: the imported trajectory exports to the demo's model
    again = to_hooked_transformer(in_memory, 3000)
    tokens = grid_tokens(p)[:200]
    with torch.no_grad():
        np.testing.assert_array_equal(again(tokens).numpy(), models[-1](tokens).numpy())


def test_export_two_layer_attention_only_model():
    """A ``layer`` dim and no MLP (the repeated-subsequences fixture): every block exported, every position equal
    to mechgrok's causal forward in float64. Its doubled residual x + (x + attn(x)) is refused; with a plain
    residual the model is a standard attention-only HookedTransformer."""
    from mechgrok.models.causal_transformer import forward as causal_forward

    ds = mechgrok.open_run("fixtures/repeated-subsequences-quick").isel(checkpoint=[-1]).load()
    with pytest.raises(ConfigError, match="doubled_residual"):
        to_hooked_transformer(ds)
    plain = ds.assign_attrs(config_json=json.dumps({**json.loads(ds.attrs["config_json"]), "doubled_residual": False}))
    model = to_hooked_transformer(plain, dtype=torch.float64)
    assert (model.cfg.n_layers, model.cfg.attn_only) == (2, True)
    params = {n: torch.from_numpy(plain[n].isel(checkpoint=0).values).double()
              for n in ("W_E", "W_pos", "W_Q", "W_K", "W_V", "W_O", "W_U")}
    tokens = torch.randint(0, plain.sizes["vocab"], (4, plain.sizes["pos"]), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = causal_forward(params, tokens, n_layers=2, doubled_residual=False).logits
        assert (model(tokens) - ours).abs().max().item() < 1e-10
