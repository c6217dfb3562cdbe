"""Modular subtraction, multiplication and division: labels, split, discrete-log coordinates, planted models per
operation, and the committed quick runs (fixtures/quick-{sub,mul,div}) that grok and whose key frequencies
``analyze`` finds in the operation's coordinates."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

import mechgrok
from mechgrok.config import Config, preset
from mechgrok.errors import ConfigError
from mechgrok.models.transformer import forward
from mechgrok.report import summarise
from mechgrok.store.schema import build_dataset
from mechgrok.tasks.discrete_log import coordinate_trajectory, coordinates, discrete_log_table, primitive_root
from mechgrok.tasks.modular_arithmetic import grid_labels, grid_tokens, split_indices, task_mask, train_mask

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
OPS = ("add", "sub", "mul", "div")


def dense_label(a: int, b: int, p: int, op: str) -> int:
    if op == "add":
        return (a + b) % p
    if op == "sub":
        return (a - b) % p
    if op == "mul":
        return a * b % p
    inv = next(x for x in range(1, p) if x * b % p == 1)  # brute-force inverse
    return a * inv % p


@pytest.mark.parametrize("op", OPS)
def test_labels_match_dense_loops(op):
    p = 11
    labels = grid_labels(p, op).view(p, p)
    mask = task_mask(p, op)
    for a in range(p):
        for b in range(p):
            if mask[a, b]:
                assert labels[a, b] == dense_label(a, b, p, op)
    assert mask.sum() == (p * (p - 1) if op == "div" else p * p)


def test_division_split_leaves_out_b_zero():
    p = 13
    train, test = split_indices(p, 0.5, 0, "div")
    both = np.concatenate([train, test])
    assert len(both) == p * (p - 1) == len(set(both.tolist())) and not np.any(both % p == 0)
    assert len(train) == int(0.5 * p * (p - 1))
    assert split_indices(p, 0.5, 0, "mul")[0].tolist() == split_indices(p, 0.5, 0)[0].tolist()  # the paper's


@pytest.mark.parametrize("p", [3, 5, 7, 11, 13, 53, 59, 113])
def test_primitive_root_generates_the_group(p):
    g = primitive_root(p)
    assert sorted(pow(g, i, p) for i in range(p - 1)) == list(range(1, p))
    assert all(sorted(pow(h, i, p) for i in range(p - 1)) != list(range(1, p)) for h in range(2, g))  # smallest
    _, powers, log = discrete_log_table(p)
    assert all(powers[log[x]] == x for x in range(1, p))


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("p", [7, 13])
def test_coordinates_turn_every_operation_into_addition(op, p):
    co = coordinates(p, op)
    for i in range(co.n):
        for j in range(co.n):
            assert dense_label(int(co.a_tokens[i]), int(co.b_tokens[j]), p, op) == co.c_classes[(i + j) % co.n]


def test_config_checks_operations():
    with pytest.raises(ConfigError, match="prime"):
        Config(p=15, operation="mul")
    with pytest.raises(ConfigError, match="unknown operation"):
        Config(operation="pow")
    with pytest.raises(ConfigError, match="attn_coeff"):
        Config(attn_coeff=1.5)
    assert preset("quick", operation="div").n_train == int(0.4 * 53 * 52)


def planted_op_model(p: int, op: str, freqs: tuple[int, ...], *, n_phases: int = 16, scale: float = 20.0):
    """A model that runs the Clock algorithm in the operation's coordinates (i, j, k of tokens a, b, class c).

    Residual dims: ``=`` (0), position 0 (1), position 1 (2), then per frequency k the embeddings
    e_k(i(a)) ("A", read at position a) and e_k(j(b)) ("B", read at position b), their sum ("S") and the output
    ("O"). Head 0 attends from ``=`` to position 0 only (score 30) and copies A into S, head 1 the same for
    position 1 and B, so S holds e_k(i) + e_k(j). Neurons ReLU(cos(w i - phi) + cos(w j - phi) + beta) read S;
    their readout to O is fitted by least squares to (cos w(i + j), sin w(i + j)); W_U reads O as
    scale * cos(w k(c)). Tokens outside the coordinates (0 for mul and div) get no embedding.
    """
    co = coordinates(p, op)
    n, nf = co.n, len(freqs)
    pos = {name: np.full(p, -1) for name in ("a", "b", "c")}
    pos["a"][co.a_tokens], pos["b"][co.b_tokens], pos["c"][co.c_classes] = (np.arange(n),) * 3
    d_model, d_head = 3 + 8 * nf, 2 * nf
    A, B, S, O = (3 + 2 * nf * r for r in range(4))
    W_E, W_pos = np.zeros((p + 1, d_model)), np.zeros((3, d_model))
    W_E[p, 0], W_pos[0, 1], W_pos[1, 2] = 1.0, 1.0, 1.0
    W_Q, W_K = np.zeros((2, d_model, d_head)), np.zeros((2, d_model, d_head))
    W_V, W_O = np.zeros((2, d_model, d_head)), np.zeros((2, d_head, d_model))
    betas = (0.0, 0.5)
    d_mlp = nf * len(betas) * n_phases
    W_in, b_in, W_out = np.zeros((d_model, d_mlp)), np.zeros(d_mlp), np.zeros((d_mlp, d_model))
    W_U = np.zeros((d_model, p + 1))
    W_U[0, p] = -100.0
    phis = 2 * np.pi * np.arange(n_phases) / n_phases
    i, j = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    for h, (start, pos_dim) in enumerate(((A, 1), (B, 2))):
        W_Q[h, 0, 0] = 1.0
        W_K[h, pos_dim, 0] = 30.0 * math.sqrt(d_head)
        for d in range(2 * nf):
            W_V[h, start + d, d] = 1.0
            W_O[h, d, S + d] = 1.0
    for f, k in enumerate(freqs):
        w = 2 * np.pi * k / n
        for t in range(p):
            for start, role in ((A, "a"), (B, "b")):
                if pos[role][t] >= 0:
                    amp = 1.0 - 0.3 * f  # distinct per frequency: the embedding's principal components are not degenerate
                    W_E[t, start + 2 * f : start + 2 * f + 2] = amp * np.cos(w * pos[role][t]), amp * np.sin(w * pos[role][t])
            if pos["c"][t] >= 0:
                W_U[O + 2 * f, t], W_U[O + 2 * f + 1, t] = scale * np.cos(w * pos["c"][t]), scale * np.sin(w * pos["c"][t])
        cols = slice(f * len(betas) * n_phases, (f + 1) * len(betas) * n_phases)
        phase = np.tile(phis, len(betas))
        W_in[S + 2 * f, cols], W_in[S + 2 * f + 1, cols] = np.cos(phase) / amp, np.sin(phase) / amp
        b_in[cols] = np.repeat(betas, n_phases)
        H = np.maximum(np.cos(w * i[..., None] - phase) + np.cos(w * j[..., None] - phase) + b_in[cols], 0)
        target = np.stack([np.cos(w * (i + j)), np.sin(w * (i + j))], -1).reshape(-1, 2)
        W_out[cols, O + 2 * f : O + 2 * f + 2] = np.linalg.lstsq(H.reshape(-1, H.shape[-1]), target, rcond=None)[0]
    weights = {"W_E": W_E, "W_pos": W_pos, "W_Q": W_Q, "W_K": W_K, "W_V": W_V, "W_O": W_O, "W_in": W_in,
               "b_in": b_in, "W_out": W_out, "b_out": np.zeros(d_model), "W_U": W_U}
    cfg = Config(p=p, operation=op, d_model=d_model, n_heads=2, d_head=d_head, d_mlp=d_mlp, frac_train=0.5)
    train, _ = split_indices(p, cfg.frac_train, cfg.seed, op)
    return build_dataset({k: v[None].astype(np.float32) for k, v in weights.items()}, [0], config=cfg.to_dict(),
                         is_train=train_mask(p, train), source_format="planted", p=p)


@pytest.mark.parametrize("op", OPS)
def test_planted_model_per_operation(op):
    p, freqs = 13, (2, 5)
    ds = planted_op_model(p, op, freqs)
    w = {k: torch.from_numpy(ds[k].values[0]).double() for k in ("W_E", "W_pos", "W_Q", "W_K", "W_V", "W_O",
                                                                  "W_in", "b_in", "W_out", "b_out", "W_U")}
    logits = forward(w, grid_tokens(p)).logits[:, :p].view(p, p, p)
    co = coordinates(p, op)
    for i, a in enumerate(co.a_tokens):  # every pair in the coordinates is classified by the operation's label
        for j, b in enumerate(co.b_tokens):
            if co.n % 2 == 0 and (i - j) % co.n == co.n // 2:
                continue  # antipodal in Z_(p-1): e_k(i) + e_k(j) = 0 at odd k, the planted sum carries nothing
            assert int(logits[a, b].argmax()) == dense_label(int(a), int(b), p, op)
    kf = mechgrok.key_frequencies(coordinate_trajectory(ds))
    assert kf["key_freqs"].values.tolist() == list(freqs) and bool(kf["agree"])
    m = mechgrok.algorithm_metrics(ds)
    assert m["circularity"].item() > 0.999
    assert set(m["circularity_freq"].values.ravel().tolist()) == set(freqs)
    tree = mechgrok.analyze(ds, analyses=["key_frequencies", "neurons", "logits", "algorithm"])
    assert tree.attrs["key_freqs"] == list(freqs) and tree.attrs["operation"] == op
    assert tree["logits"]["frac_var_key"].item() > 0.8  # 0.87 for mul and div: the antipodal pairs
    if op in ("mul", "div"):
        assert tree.attrs["p"] == p - 1 and "discrete log" in tree.attrs["operation_coordinates"]


@pytest.mark.parametrize("op", ["sub", "mul", "div"])
def test_quick_runs_grok_and_analyze_finds_key_frequencies(op):
    run = FIXTURES / f"quick-{op}"
    ds = mechgrok.open_run(run)
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["operation"] == op and cfg["preset"] == "quick"
    assert float(ds["acc_test"].dropna("epoch")[-1]) > 0.95  # it grokked (sub: 0.961 at epoch 3000)
    tree = mechgrok.analyze(ds.isel(checkpoint=[0, len(ds["checkpoint"]) // 2, -1]), analyses=[
        "key_frequencies", "algorithm", "fourier_norms", "ablation", "reference"])
    report = summarise(tree)
    keys = report["key_frequencies"]["set"]
    assert keys and report["key_frequencies"]["sources_agree"] and report["operation"] == op
    circle = set(tree["algorithm"]["circularity_freq"].isel(checkpoint=-1).values.tolist())
    assert circle <= set(keys)  # the embedding's circles are the key frequencies, found independently
    final = report["losses"]["final"]
    assert final["acc_test"] > 0.95 and final["excluded_loss_full"] > 5  # without the key frequencies: lost
    if op == "sub":  # b re-indexed in the grid and in is_train alike: the trainer's own losses come back
        recorded = ds["loss_test"].dropna("epoch")
        assert final["loss_test"] == pytest.approx(float(recorded[-1]), rel=1e-4)
    if op == "mul":
        assert final["restricted_loss_all"] < 1e-4  # the key frequencies alone classify every non-zero pair
    ref = tree["reference"]  # every example neuron of the reference views is in a key-frequency cluster
    assert set(ref["example_freq"].values.tolist()) == set(keys)
    if op in ("mul", "div"):
        assert report["p"] == 52 and report["modulus"] == 53 and "discrete log" in report["operation_coordinates"]


def test_cli_train_takes_the_operation_and_the_pizza_options(tmp_path):
    from typer.testing import CliRunner

    from mechgrok_cli.main import app

    runner = CliRunner()
    res = runner.invoke(app, ["train", str(tmp_path / "div"), "--preset", "quick", "--operation", "div",
                              "--frac-train", "0.6", "--epochs", "2", "--attn-coeff", "0.5", "--no-equals-token",
                              "--quiet"])
    assert res.exit_code == 0, res.output
    cfg = json.loads((tmp_path / "div" / "config.json").read_text())
    assert (cfg["operation"], cfg["frac_train"], cfg["attn_coeff"], cfg["equals_token"]) == ("div", 0.6, 0.5, False)
    split = json.loads((tmp_path / "div" / "split.json").read_text())
    assert len(split["train"]) == int(0.6 * 53 * 52) and not any(i % 53 == 0 for i in split["train"] + split["test"])
    for args, fragment in ((["--operation", "pow"], "unknown operation"), (["--attn-coeff", "2"], "attn_coeff")):
        bad = runner.invoke(app, ["train", str(tmp_path / "bad"), "--preset", "quick", *args, "--quiet"])
        assert bad.exit_code == 2 and fragment in bad.output and "Traceback" not in bad.output


def test_sub_is_analysed_in_its_coordinates_only():
    ds = planted_op_model(7, "sub", (1,))
    with pytest.raises(mechgrok.MechgrokError, match="coordinate_trajectory"):
        mechgrok.neuron_clusters(ds)  # the grid would be re-indexed but not is_train: refused
    co = coordinate_trajectory(ds)
    assert co is coordinate_trajectory(co)  # idempotent
    for a in range(7):
        for j in range(7):
            assert bool(co["is_train"].values[a, j]) == bool(ds["is_train"].values[a, (-j) % 7])
    np.testing.assert_array_equal(co["W_E"].values, ds["W_E"].values)  # sub keeps the weights
