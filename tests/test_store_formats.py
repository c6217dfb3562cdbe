"""Trajectory store: every source format loads to the same canonical Dataset; the authors' released models.

The synthetic files are built here from a tiny real mechgrok run, with the paper's original ("column") layout
written by an explicit loop (independent of the loader's transposes).
"""

from __future__ import annotations

import json
import sys
import types
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr

from mechgrok.tasks.modular_arithmetic import grid_labels, grid_tokens, split_indices
from mechgrok.errors import CheckpointError, ConfigError, UnsafeCheckpointError
from mechgrok.models.transformer import PARAM_KEYS, WEIGHT_NAMES, forward
from mechgrok.store import open_run

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "nanda-saved-runs"


def shared_file(name: str) -> Path:
    f = SHARED / name
    if not f.is_file():
        pytest.skip(f"the authors' released models are not present ({f}); see shared/data/nanda-saved-runs/README.md")
    return f


def to_original(tl: dict[str, np.ndarray], prefix: str = "blocks") -> dict[str, torch.Tensor]:
    """TransformerLens weights of one checkpoint -> the paper's original layout, by explicit loops."""
    H, D, M = tl["W_O"].shape
    W_O = np.zeros((M, H * D), np.float32)
    for h in range(H):
        for j in range(D):
            W_O[:, h * D + j] = tl["W_O"][h, j, :]
    sd = {
        "embed.W_E": tl["W_E"].T.copy(),
        "pos_embed.W_pos": tl["W_pos"].copy(),
        f"{prefix}.0.attn.W_K": np.stack([tl["W_K"][h].T for h in range(H)]),
        f"{prefix}.0.attn.W_Q": np.stack([tl["W_Q"][h].T for h in range(H)]),
        f"{prefix}.0.attn.W_V": np.stack([tl["W_V"][h].T for h in range(H)]),
        f"{prefix}.0.attn.W_O": W_O,
        f"{prefix}.0.attn.mask": np.tril(np.ones((3, 3), np.float32)),
        "unembed.W_U": tl["W_U"].copy(),
    }
    if "W_in" in tl:
        sd.update({
            f"{prefix}.0.mlp.W_in": tl["W_in"].T.copy(), f"{prefix}.0.mlp.b_in": tl["b_in"].copy(),
            f"{prefix}.0.mlp.W_out": tl["W_out"].T.copy(), f"{prefix}.0.mlp.b_out": tl["b_out"].copy(),
        })
    return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in sd.items()}


def to_transformerlens(tl: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """A HookedTransformer-style state dict (zero attention/unembedding biases, IGNORE and mask buffers)."""
    H, D, M = tl["W_O"].shape
    sd = {PARAM_KEYS[n]: torch.from_numpy(tl[n].copy()) for n in WEIGHT_NAMES}
    for b in ("b_Q", "b_K", "b_V"):
        sd[f"blocks.0.attn.{b}"] = torch.zeros(H, D)
    sd["blocks.0.attn.b_O"] = torch.zeros(M)
    sd["blocks.0.attn.mask"] = torch.tril(torch.ones(3, 3)).bool()
    sd["blocks.0.attn.IGNORE"] = torch.tensor(-torch.inf)
    sd["unembed.b_U"] = torch.zeros(tl["W_U"].shape[1])
    return sd


def run_weights(ds: xr.Dataset) -> list[dict[str, np.ndarray]]:
    return [{n: ds[n].values[i] for n in WEIGHT_NAMES} for i in range(ds.sizes["checkpoint"])]


def assert_same_trajectory(a: xr.Dataset, b: xr.Dataset, *, curves=("loss_train", "loss_test")) -> None:
    np.testing.assert_array_equal(a["checkpoint"].values, b["checkpoint"].values)
    for n in WEIGHT_NAMES:
        assert a[n].dims == b[n].dims, n
        assert a[n].dtype == b[n].dtype == np.float32
        np.testing.assert_array_equal(a[n].values, b[n].values, err_msg=n)
    np.testing.assert_array_equal(a["is_train"].values, b["is_train"].values)
    for c in curves:
        np.testing.assert_array_equal(a[c].values, b[c].values, err_msg=c)
    assert a.attrs["p"] == b.attrs["p"]


# ---------------------------------------------------------------------------------------------------------------
# Round trips: mechgrok run, TransformerLens demo layout, paper full_run_data layout, paper per-epoch folder
# ---------------------------------------------------------------------------------------------------------------

def test_run_dir_schema(tiny_run):
    ds = open_run(tiny_run)
    assert list(ds["checkpoint"].values) == [0, 5, 10, 15, 20]
    assert ds["checkpoint"].dtype == np.int64 and ds["checkpoint"].attrs["units"] == "epochs"
    assert ds["W_E"].dims == ("checkpoint", "vocab", "d_model") and ds.sizes["vocab"] == 12
    assert ds["W_U"].dims == ("checkpoint", "d_model", "vocab_out")
    assert ds["W_Q"].dims == ("checkpoint", "head", "d_model", "d_head")
    assert ds["W_O"].dims == ("checkpoint", "head", "d_head", "d_model")
    assert ds["W_in"].dims == ("checkpoint", "d_model", "d_mlp")
    assert ds["loss_train"].dims == ("epoch",) and ds.sizes["epoch"] == 21
    assert ds["is_train"].dims == ("a", "b") and int(ds["is_train"].sum()) == int(0.5 * 121)
    assert json.loads(ds.attrs["config_json"])["d_mlp"] == 16
    assert ds.attrs["p"] == 11 and ds.attrs["source_format"] == "mechgrok-run" and "mechgrok_version" in ds.attrs
    assert ds["W_in"].attrs["source_key"] == "blocks.0.mlp.W_in"
    # the split is the paper's procedure with the run's seed
    train_idx, _ = split_indices(11, 0.5, 3)
    mask = np.zeros(121, bool)
    mask[train_idx] = True
    np.testing.assert_array_equal(ds["is_train"].values.reshape(-1), mask)


def test_tl_demo_layout_round_trip(tiny_run, tmp_path):
    ref = open_run(tiny_run)
    train_idx, test_idx = split_indices(11, 0.5, 3)
    obj = {
        "model": to_transformerlens(run_weights(ref)[-1]),
        "config": {"n_layers": 1, "d_model": 8, "d_head": 4, "n_heads": 2, "d_mlp": 16, "d_vocab": 12,
                   "d_vocab_out": 12, "n_ctx": 3, "act_fn": "relu", "normalization_type": None, "seed": 999},
        "checkpoints": [to_transformerlens(w) for w in run_weights(ref)],
        "checkpoint_epochs": [0, 5, 10, 15, 20],
        "train_losses": [float(v) for v in ref["loss_train"].values],
        "test_losses": [float(v) for v in ref["loss_test"].values],
        "train_indices": torch.from_numpy(train_idx),
        "test_indices": torch.from_numpy(test_idx),
    }
    f = tmp_path / "grokking_demo.pth"
    torch.save(obj, f)
    ds = open_run(f)
    assert ds.attrs["source_format"] == "tl-demo" and ds.attrs["split"] == "stored"
    assert ds.attrs["source_layout"] == "transformerlens"
    assert_same_trajectory(ds, ref)


def test_paper_full_run_layout_round_trip(tiny_run, tmp_path):
    ref = open_run(tiny_run)
    obj = {
        "config": {"p": 11, "frac_train": 0.5, "seed": 3, "d_model": 8, "num_heads": 2, "d_head": 4, "d_mlp": 16,
                   "num_layers": 1, "n_ctx": 3, "d_vocab": 12, "act_type": "ReLU", "save_every": 5},
        "state_dicts": [to_original(w) for w in run_weights(ref)],
        "epochs": [0, 5, 10, 15, 20],
        "train_losses": [float(v) for v in ref["loss_train"].values],
        "test_losses": [float(v) for v in ref["loss_test"].values],
    }
    f = tmp_path / "full_run_data.pth"
    torch.save(obj, f)
    ds = open_run(f)
    assert ds.attrs["source_format"] == "paper-full-run" and ds.attrs["source_layout"] == "original"
    assert ds.attrs["split"] == "rebuilt" and ds.attrs["split_seed"] == 3 and ds.attrs["split_frac_train"] == 0.5
    assert "from the source config" in ds.attrs["split_rule"]
    assert ds["W_O"].attrs["source_key"] == "blocks.0.attn.W_O"
    assert_same_trajectory(ds, ref)
    # the checkpoint epochs can also come from the config's save_every
    del obj["epochs"]
    torch.save(obj, f)
    np.testing.assert_array_equal(open_run(f)["checkpoint"].values, [0, 5, 10, 15, 20])


def test_paper_full_run_test_loss_cadence(tiny_run, tmp_path):
    """Test losses stored every k epochs (k = len(train) / len(test)) land on epochs 0, k, 2k, ..."""
    ref = open_run(tiny_run)
    obj = {"config": {"p": 11}, "state_dicts": [to_original(w) for w in run_weights(ref)], "epochs": [0, 5, 10, 15, 20],
           "train_losses": [0.5] * 20, "test_losses": [1.0, 2.0, 3.0, 4.0, 5.0]}
    f = tmp_path / "full_run_data.pth"
    torch.save(obj, f)
    ds = open_run(f)
    test = ds["loss_test"].dropna("epoch")
    np.testing.assert_array_equal(test["epoch"].values, [0, 4, 8, 12, 16])
    np.testing.assert_array_equal(test.values, [1, 2, 3, 4, 5])
    assert "every" not in ds.attrs["curve_epochs"] and "4 * j" in ds.attrs["curve_epochs"]
    assert ds.attrs["split_seed"] == 0 and ds.attrs["split_frac_train"] == 0.3  # the paper's defaults


def test_paper_epoch_folder(tiny_run, tmp_path):
    ref = open_run(tiny_run)
    folder = tmp_path / "paper_run"
    folder.mkdir()
    train_idx, _ = split_indices(11, 0.5, 3)
    torch.save({"model": to_original(run_weights(ref)[0]), "train_data": [(int(i) // 11, int(i) % 11, 11) for i in train_idx],
                "test_data": []}, folder / "init.pth")
    for e, w in zip(ref["checkpoint"].values, run_weights(ref)):
        torch.save({"model": to_original(w), "train_loss": float(ref["loss_train"].sel(epoch=e)),
                    "test_loss": float(ref["loss_test"].sel(epoch=e)), "epoch": int(e)}, folder / f"{int(e)}.pth")
    ds = open_run(folder)
    assert ds.attrs["source_format"] == "paper-epochs" and ds.attrs["split"] == "stored"
    assert_same_trajectory(ds, ref, curves=())
    np.testing.assert_array_equal(ds["loss_train"].values, ref["loss_train"].sel(epoch=[0, 5, 10, 15, 20]).values)
    # final.pth brings the per-epoch curves
    torch.save({"model": to_original(run_weights(ref)[-1]), "epoch": 20,
                "train_losses": [float(v) for v in ref["loss_train"].values],
                "test_losses": [float(v) for v in ref["loss_test"].values]}, folder / "final.pth")
    assert_same_trajectory(open_run(folder), ref)


def test_single_model_files_and_safetensors(tiny_run, tmp_path):
    ref = open_run(tiny_run)
    last = run_weights(ref)[-1]
    paper = tmp_path / "final.pth"
    torch.save({"model": to_original(last), "train_losses": [0.1] * 21, "test_losses": [0.2] * 21}, paper)
    ds = open_run(paper, seed=3, frac_train=0.5)
    assert ds.attrs["source_format"] == "paper-model" and list(ds["checkpoint"].values) == [20]
    assert ds.attrs["checkpoint_epoch_rule"].startswith("the last index")
    assert "(given)" in ds.attrs["split_rule"]
    assert_same_trajectory(ds, ref.isel(checkpoint=[-1]), curves=())
    bare = tmp_path / "bare_tl.pth"
    torch.save(to_transformerlens(last), bare)
    ds = open_run(bare, seed=3, frac_train=0.5)
    assert ds.attrs["source_format"] == "tl-model" and list(ds["checkpoint"].values) == [0]
    assert_same_trajectory(ds, ref.isel(checkpoint=[-1]).assign_coords(checkpoint=[0]), curves=())
    from safetensors.torch import save_file

    st = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in to_transformerlens(last).items() if v.dtype != torch.bool}, str(st))
    ds = open_run(st, seed=3, frac_train=0.5)
    np.testing.assert_array_equal(ds["W_in"].values[0], last["W_in"])


def test_format_override(tiny_run, tmp_path):
    ref = open_run(tiny_run)
    f = tmp_path / "bare_tl.pth"
    torch.save(to_transformerlens(run_weights(ref)[-1]), f)
    with pytest.raises(CheckpointError, match="transformerlens layout .* format expects the original layout"):
        open_run(f, format="paper-model")
    assert open_run(f, format="tl-model").attrs["source_format"] == "tl-model"
    with pytest.raises(ConfigError, match="unknown format"):
        open_run(f, format="keras")
    with pytest.raises(ConfigError, match="folder format"):
        open_run(f, format="paper-epochs")
    with pytest.raises(ConfigError, match="stores its split"):
        open_run(tiny_run, seed=1)


def test_two_layer_transformerlens_attention_only(tmp_path):
    rng = np.random.default_rng(0)
    L, H, D, M, V, C = 2, 3, 5, 15, 20, 7
    sd = {"embed.W_E": rng.normal(size=(V, M)), "pos_embed.W_pos": rng.normal(size=(C, M)),
          "unembed.W_U": rng.normal(size=(M, V))}
    for layer in range(L):
        for w in ("W_Q", "W_K", "W_V"):
            sd[f"blocks.{layer}.attn.{w}"] = rng.normal(size=(H, M, D))
        sd[f"blocks.{layer}.attn.W_O"] = rng.normal(size=(H, D, M))
    f = tmp_path / "two_layer.pth"
    torch.save({k: torch.tensor(v, dtype=torch.float32) for k, v in sd.items()}, f)
    ds = open_run(f)
    assert ds.attrs["n_layers"] == 2 and "p" not in ds.attrs and "is_train" not in ds
    assert ds["W_Q"].dims == ("checkpoint", "layer", "head", "d_model", "d_head")
    assert "W_in" not in ds and ds["W_Q"].attrs["source_key"] == "blocks.{layer}.attn.W_Q"
    for layer in range(L):
        np.testing.assert_allclose(ds["W_O"].values[0, layer], sd[f"blocks.{layer}.attn.W_O"].astype(np.float32))


def test_trusted_load_of_pickled_config_class(tiny_run, tmp_path):
    """The TL demo pickles a HookedTransformerConfig: refused by default; trusted, read even without the package."""
    ref = open_run(tiny_run)
    mod = types.ModuleType("fake_transformer_lens_for_mechgrok_test")

    @dataclass
    class HookedTransformerConfig:
        d_model: int
        n_heads: int
        d_vocab: int
        d_vocab_out: int
        n_ctx: int
        act_fn: str

    HookedTransformerConfig.__module__ = mod.__name__
    HookedTransformerConfig.__qualname__ = "HookedTransformerConfig"
    mod.HookedTransformerConfig = HookedTransformerConfig
    sys.modules[mod.__name__] = mod
    try:
        obj = {"config": HookedTransformerConfig(8, 2, 12, 12, 3, "relu"), "checkpoints": [to_transformerlens(w) for w in run_weights(ref)],
               "checkpoint_epochs": [0, 5, 10, 15, 20], "train_indices": torch.from_numpy(split_indices(11, 0.5, 3)[0])}
        f = tmp_path / "demo_with_class.pth"
        torch.save(obj, f)
    finally:
        del sys.modules[mod.__name__]
    with pytest.raises(UnsafeCheckpointError, match="trust"):
        open_run(f)
    ds = open_run(f, trusted=True)
    cfg = json.loads(ds.attrs["config_json"])["source_config"]
    assert cfg["d_model"] == 8 and cfg["act_fn"] == "relu"
    assert_same_trajectory(ds, ref, curves=())


# ---------------------------------------------------------------------------------------------------------------
# The authors' released models (shared/data/nanda-saved-runs)
# ---------------------------------------------------------------------------------------------------------------

def _params(ds: xr.Dataset, i: int = -1) -> dict[str, torch.Tensor]:
    return {n: torch.from_numpy(ds[n].values[i]) for n in WEIGHT_NAMES}


def test_mod_addition_no_wd_train_loss():
    f = shared_file("mod_addition_no_wd.pth")
    ds = open_run(f, seed=0, frac_train=0.9)
    assert ds.attrs["p"] == 113 and ds.attrs["split"] == "rebuilt"
    assert ds.attrs["split_seed"] == 0 and ds.attrs["split_frac_train"] == 0.9
    assert int(ds["is_train"].sum()) == int(0.9 * 113**2)
    assert list(ds["checkpoint"].values) == [4999]
    p = 113
    logits = forward(_params(ds), grid_tokens(p)).logits  # (p^2, 114), float32
    labels = grid_labels(p)
    train = torch.from_numpy(ds["is_train"].values.reshape(-1))
    last_saved = float(ds["loss_train"].values[-1])
    assert last_saved == pytest.approx(1.68e-10, rel=0.01)
    # float64 loss over the training loss's 114 classes: within 2% of the stored value
    loss64 = torch.nn.functional.cross_entropy(logits[train].double(), labels[train]).item()
    assert loss64 == pytest.approx(last_saved, rel=0.02)
    assert (logits[train].argmax(-1) == labels[train]).double().mean().item() == 1.0
    # the same logits with a float32 log-softmax give exactly zero loss (paper.md 2.3)
    assert torch.nn.functional.cross_entropy(logits[train].float(), labels[train]).item() == 0.0
    # README reference value: all-pairs loss over the 113 non-'=' classes ~ 1.11e-7
    all_pairs = torch.nn.functional.cross_entropy(logits[:, :p].double(), labels).item()
    assert all_pairs == pytest.approx(1.11e-7, rel=0.02)


def test_low_precision_model_reference_errors():
    """README: all-pairs loss ~ 2.89e-3 with exactly 7 errors (accuracy 0.99945)."""
    ds = open_run(shared_file("low_precision_mod_addition.pth"))
    assert list(ds["checkpoint"].values) == [49999]
    p = 113
    logits = forward(_params(ds), grid_tokens(p)).logits[:, :p]
    labels = grid_labels(p)
    assert int((logits.argmax(-1) != labels).sum()) == 7
    assert torch.nn.functional.cross_entropy(logits.double(), labels).item() == pytest.approx(2.89e-3, rel=0.01)
    test = ds["loss_test"].dropna("epoch")
    assert test["epoch"].values[1] == 10 and test.sizes["epoch"] == 5000


def test_induction_head_model_has_two_layers():
    f = shared_file("induction_head_finite.pth")
    ds = open_run(f)
    assert ds.attrs["n_layers"] == 2 and ds.sizes["layer"] == 2 and "p" not in ds.attrs and "is_train" not in ds
    assert ds["W_Q"].dims == ("checkpoint", "layer", "head", "d_model", "d_head")
    assert dict(ds["W_Q"].sizes) == {"checkpoint": 1, "layer": 2, "head": 4, "d_model": 48, "d_head": 12}
    assert "W_in" not in ds and ds.sizes["pos"] == 85 and ds.sizes["vocab"] == 128
    raw = torch.load(f, map_location="cpu", weights_only=True)["model"]
    for layer in range(2):
        orig_q = raw[f"attn_blocks.{layer}.attn.W_Q"].numpy()
        orig_o = raw[f"attn_blocks.{layer}.attn.W_O"].numpy()
        for h in range(4):
            np.testing.assert_array_equal(ds["W_Q"].values[0, layer, h], orig_q[h].T)
            for j in range(12):
                np.testing.assert_array_equal(ds["W_O"].values[0, layer, h, j], orig_o[:, h * 12 + j])
    assert json.loads(ds.attrs["config_json"])["source_config"]["num_layers"] == 2
    test = ds["loss_test"].dropna("epoch")
    assert test["epoch"].values[1] == 4  # stored every 4 epochs


def test_five_digit_addition_is_not_modular():
    ds = open_run(shared_file("5_digit_addition_infinite.pth"))
    assert ds.sizes["vocab"] == 12 and ds.sizes["vocab_out"] == 10 and ds.sizes["pos"] == 18
    assert "p" not in ds.attrs and "is_train" not in ds
    with pytest.raises(ConfigError, match="modular"):
        open_run(shared_file("5_digit_addition_infinite.pth"), seed=0)


def test_numpy_file_needs_trust():
    f = shared_file("5_digit_addition_infinite_per_token.pth")
    with pytest.raises(UnsafeCheckpointError, match="--trust-checkpoint"):
        open_run(f)
    # trusted, it loads as what it is: per-token loss curves, no weights (issue 12)
    curves = open_run(f, trusted=True)
    assert curves.attrs["task"] == "curves" and "W_E" not in curves
    assert curves["loss_train_per_token"].dims == ("epoch", "answer_position")
    assert curves.sizes == {"epoch": 3000, "answer_position": 6}
