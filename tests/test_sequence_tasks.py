"""n-digit addition and repeated subsequences: data, losses and the causal model against dense references written
here (plain loops), and against the authors' released models in ../shared (skipped where absent)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

import mechgrok
from mechgrok.errors import ConfigError
from mechgrok.models.causal_transformer import SequenceModelSizes, forward, init_params
from mechgrok.rundir import read_run_info
from mechgrok.tasks import digit_addition as add
from mechgrok.tasks import repeated_subsequences as rep
from nanda import nanda_path

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_addition_batch_is_column_addition():
    b = add.addition_batch(200, 4, seed=7)
    for row, carry in zip(b.tokens.tolist(), b.carries.tolist()):
        x = int("".join(map(str, row[:4])))
        y = int("".join(map(str, row[5:9])))
        assert row[4] == add.PLUS and row[9] == add.EQUALS
        assert int("".join(map(str, row[10:]))) == x + y  # carry-out first, then the digits, most significant first
        c = [0]
        for i in range(4):  # dense ripple carry from the units column
            c.append(int((x // 10**i) % 10 + (y // 10**i) % 10 + c[-1] >= 10))
        assert carry == c
    assert torch.equal(add.addition_batch(5, 4, seed=7).tokens, b.tokens[:5]) is False  # x then y per batch
    assert torch.equal(add.addition_batch(200, 4, seed=7).tokens, b.tokens)  # seeded, deterministic


def test_answer_carries_and_per_token_loss_dense():
    b = add.addition_batch(16, 3, seed=1)
    ac = add.answer_carries(b.carries)
    assert ac[:, 0].tolist() == b.tokens[:, 8].tolist()  # the carry-out token is the top carry
    assert torch.equal(ac[:, 3], torch.zeros(16, dtype=torch.int64))  # nothing feeds the units digit
    logits = torch.randn(16, 12, 10, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    got = add.per_token_loss(logits, b.tokens)
    want = [0.0] * 4
    for i in range(16):
        for k in range(4):
            row = logits[i, 7 + k].tolist()  # positions 2n+1 .. 3n+1 predict 2n+2 .. 3n+2
            lse = math.log(sum(math.exp(v) for v in row))
            want[k] += (lse - row[int(b.tokens[i, 8 + k])]) / 16
    assert got.tolist() == pytest.approx(want, rel=1e-12)
    assert float(add.addition_loss(logits, b.tokens)) == pytest.approx(sum(want) / 4, rel=1e-12)


def test_induction_batch_structure_and_errors():
    b = rep.induction_batch(64, seed=1)  # the authors' 85 / 16 / 3 / 128
    assert b.tokens.shape == (64, 85) and b.tokens[:, 0].eq(0).all() and b.tokens[:, 1:].ge(1).all()
    assert b.mask.sum(1).eq(30).all()  # 15 predictable positions in each of the 2 later repeats
    for row, s in zip(b.tokens.tolist(), b.starts.tolist()):
        for i in range(3):
            assert 1 + 28 * i <= s[i] < 1 + 28 * (i + 1) - 15
            assert row[s[i] : s[i] + 16] == row[s[0] : s[0] + 16]
    with pytest.raises(ConfigError):
        rep.induction_batch(2, seq_len=20, subseq_len=16)


def test_induction_loss_85_84_factor_dense():
    b = rep.induction_batch(4, seed=3, seq_len=25, subseq_len=5, vocab_size=11)
    logits = torch.randn(4, 25, 11, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    total, count = 0.0, 0
    for i in range(4):
        for t in range(24):
            if b.mask[i, t]:
                row = logits[i, t].tolist()
                total += math.log(sum(math.exp(v) for v in row)) - row[int(b.tokens[i, t + 1])]
                count += 1
    plain = total / count
    assert float(rep.induction_loss(logits, b, faithful=False)) == pytest.approx(plain, rel=1e-12)
    assert float(rep.induction_loss(logits, b)) == pytest.approx(plain * 25 / 24, rel=1e-12)


def _dense_forward(p, tokens, n_layers, doubled):
    """Plain-loop causal transformer: one sequence at a time, one head at a time (float64)."""
    out = []
    for seq in tokens.tolist():
        n = len(seq)
        x = [p["W_E"][t] + p["W_pos"][i] for i, t in enumerate(seq)]
        for l in range(n_layers):
            g = (lambda w: w[l]) if n_layers > 1 else (lambda w: w)
            attn = [torch.zeros_like(x[0]) for _ in range(n)]
            for h in range(p["W_Q"].shape[-3]):
                Wq, Wk, Wv, Wo = g(p["W_Q"])[h], g(p["W_K"])[h], g(p["W_V"])[h], g(p["W_O"])[h]
                for q in range(n):
                    s = torch.stack([(x[q] @ Wq) @ (x[k] @ Wk) / math.sqrt(Wq.shape[1]) for k in range(q + 1)])
                    a = torch.softmax(s, 0)
                    attn[q] = attn[q] + sum(a[k] * (x[k] @ Wv) for k in range(q + 1)) @ Wo
            x = [xi + (xi + ai) if doubled else xi + ai for xi, ai in zip(x, attn)]
            if "W_in" in p:
                x = [xi + torch.relu(xi @ g(p["W_in"]) + g(p["b_in"])) @ g(p["W_out"]) + g(p["b_out"]) for xi in x]
        out.append(torch.stack([xi @ p["W_U"] for xi in x]))
    return torch.stack(out)


@pytest.mark.parametrize("sizes", [SequenceModelSizes(2, 8, 2, 3, None, 7, 6, 6, True),
                                   SequenceModelSizes(1, 8, 2, 4, 16, 9, 12, 10, False)])
def test_causal_forward_matches_dense_loop(sizes):
    p = {k: v.double() for k, v in init_params(sizes, seed=3).items()}
    p["b_in"] = p["b_in"] + 0.1 if "b_in" in p else None
    p = {k: v for k, v in p.items() if v is not None}
    tok = torch.randint(0, sizes.d_vocab, (3, sizes.n_ctx), generator=torch.Generator().manual_seed(0))
    got = forward(p, tok, n_layers=sizes.n_layers, doubled_residual=sizes.doubled_residual).logits
    want = _dense_forward(p, tok, sizes.n_layers, sizes.doubled_residual)
    assert torch.allclose(got, want, rtol=1e-10, atol=1e-10)
    batched = forward({k: v[None] for k, v in p.items()}, tok, n_layers=sizes.n_layers,
                      doubled_residual=sizes.doubled_residual, cache=True)  # leading checkpoint dim
    assert torch.allclose(batched.logits[0], got, rtol=1e-12, atol=1e-12)
    assert batched.attn_pattern.shape == (1, sizes.n_layers, 3, sizes.n_heads, sizes.n_ctx, sizes.n_ctx)


def _weights(ds, names=None):
    return {k: torch.from_numpy(ds[k].values[0]).double() for k in (names or ds.data_vars)
            if k.startswith(("W_", "b_"))}


def test_released_induction_finite_test_loss():
    ds = mechgrok.open_run(nanda_path("induction_head_finite.pth"))
    assert ds.attrs["task"] == "repeated_subsequences" and ds.sizes["layer"] == 2
    stored = float(ds["loss_test"].dropna("epoch").values[-1])
    assert stored == pytest.approx(1.2305567, rel=1e-7)
    assert ds["loss_test"].attrs["log_every"] == 4  # the finite run stores test losses every 4 epochs
    test = rep.induction_batch(640, seed=2)  # the authors' test set: data seed 1 + 1
    got = float(rep.induction_loss(forward(_weights(ds), test.tokens, n_layers=2, doubled_residual=True).logits, test))
    assert got == pytest.approx(stored, rel=1e-5)
    plain = float(rep.induction_loss(forward(_weights(ds), test.tokens, n_layers=2).logits, test))
    assert plain > 1.7  # without the doubled residual the released model does not work (tasks.md: 1.746)


def test_released_addition_infinite_on_fresh_sums():
    ds = mechgrok.open_run(nanda_path("5_digit_addition_infinite.pth"))
    assert ds.attrs["task"] == "digit_addition" and ds.sizes["pos"] == 18
    stored = float(ds["loss_train"].values[-100:].mean())
    assert stored == pytest.approx(0.01223, abs=5e-6)
    b = add.addition_batch(8192, 5, seed=add.AUTHORS_SEED)
    w = _weights(ds)
    got = np.mean([float(add.addition_loss(forward(w, t, n_layers=1).logits, t))  # 4 equal chunks: the same mean
                   for t in b.tokens.split(2048)])
    assert got == pytest.approx(stored, rel=0.05)


def test_cli_trains_a_sequence_preset_and_open_run_reads_it(tmp_path):
    from typer.testing import CliRunner

    from mechgrok_cli.main import app

    run = tmp_path / "ind"
    args = ["train", str(run), "--preset", "repeated_subsequences_quick", "--epochs", "4", "--checkpoint-every", "2",
            "-q"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    ds = mechgrok.open_run(run)
    assert ds.attrs["task"] == "repeated_subsequences" and ds["checkpoint"].values.tolist() == [0, 2, 4]
    assert ds["W_Q"].dims == ("checkpoint", "layer", "head", "d_model", "d_head") and "W_in" not in ds
    assert ds["loss_test"].attrs["log_every"] == 5 and np.isfinite(ds["loss_train"].values).all()
    again = CliRunner().invoke(app, ["train", str(tmp_path / "again"), *args[2:]])
    assert again.exit_code == 0
    for f in sorted((run / "checkpoints").iterdir()):  # deterministic: the same bits
        assert f.read_bytes() == (tmp_path / "again" / "checkpoints" / f.name).read_bytes()
    resumed = CliRunner().invoke(app, ["train", str(run), "--preset", "repeated_subsequences_quick", "--resume"])
    assert resumed.exit_code == 2 and "saved config.json" in resumed.output  # --resume keeps the saved config


class _Stop(Exception):
    pass


def _stop_at(epoch):
    def on_epoch(e, train_loss, test_loss):
        if e == epoch:
            raise _Stop  # a run killed during epoch ``epoch`` (after the checkpoint before it)
    return on_epoch


def _same_run(a, b):
    """Checkpoints, metrics.csv and resume state of two runs, byte for byte."""
    names = sorted(p.name for p in (a / "checkpoints").iterdir())
    assert names == sorted(p.name for p in (b / "checkpoints").iterdir())
    for f in [*(f"checkpoints/{n}" for n in names), "metrics.csv", "state.safetensors"]:
        assert (a / f).read_bytes() == (b / f).read_bytes(), f


@pytest.mark.parametrize("preset,sizes", [
    ("repeated_subsequences_quick", dict(d_model=8, n_heads=2, d_head=4, test_size=8, batch_size=8)),
    ("repeated_subsequences_quick", dict(d_model=8, n_heads=2, d_head=4, test_size=8, batch_size=4, n_train=8,
                                         finite=True)),
    ("digit_addition_quick", dict(n_digits=2, d_model=8, n_heads=2, d_head=4, d_mlp=16, test_size=8, batch_size=8)),
])
def test_sequence_resume_is_bit_identical(tmp_path, preset, sizes):
    """Interrupted (killed mid-run, or trained 6 epochs and extended to 12), then resumed: the same bits as an
    uninterrupted 12-epoch run (the data stream, batch order and AdamW moments are restored)."""
    cfg = mechgrok.sequence_preset(preset, num_epochs=12, checkpoint_every=3, test_every=2, **sizes)
    full = mechgrok.train_sequence(cfg, tmp_path / "full")
    with pytest.raises(_Stop):
        mechgrok.train_sequence(cfg, tmp_path / "killed", on_epoch=_stop_at(8))
    assert not read_run_info(tmp_path / "killed")["complete"]
    mechgrok.train_sequence(None, tmp_path / "killed", resume=True)
    _same_run(full, tmp_path / "killed")
    info = read_run_info(tmp_path / "killed")
    assert info["complete"] and [r["epoch"] for r in info["resumes"]] == [6]
    mechgrok.train_sequence(cfg.replace(num_epochs=6), tmp_path / "short")
    mechgrok.train_sequence(None, tmp_path / "short", resume=True, num_epochs=12)
    _same_run(full, tmp_path / "short")
    assert [r["epoch"] for r in read_run_info(tmp_path / "short")["resumes"]] == [6]
    assert json.loads((tmp_path / "short" / "config.json").read_text())["num_epochs"] == 12
    ds, ref = mechgrok.open_run(tmp_path / "short"), mechgrok.open_run(full)
    assert ds["loss_train"].identical(ref["loss_train"]) and ds["loss_test"].identical(ref["loss_test"])
    with pytest.raises(ConfigError, match="cannot shorten"):
        mechgrok.train_sequence(None, tmp_path / "short", resume=True, num_epochs=10)


def test_cli_resumes_a_sequence_run(tmp_path):
    from typer.testing import CliRunner

    from mechgrok_cli.main import app

    common = ["--checkpoint-every", "2", "-q"]
    small = tmp_path / "small.json"  # a tiny induction config (config files are how sizes are set on the CLI)
    small.write_text(json.dumps(mechgrok.sequence_preset("repeated_subsequences_quick", d_model=8, n_heads=2, d_head=4,
                                                         test_size=8, batch_size=8, test_every=2).to_dict()))
    for name, epochs in (("full", "8"), ("run", "4")):
        res = CliRunner().invoke(app, ["train", str(tmp_path / name), "--config", str(small), "--epochs", epochs,
                                       *common])
        assert res.exit_code == 0, res.output
    refused = CliRunner().invoke(app, ["train", str(tmp_path / "run"), "--resume", "--seed", "3", "-q"])
    assert refused.exit_code != 0 and "--seed" in refused.output
    shorter = CliRunner().invoke(app, ["train", str(tmp_path / "run"), "--resume", "--epochs", "2", "-q"])
    assert shorter.exit_code != 0 and "cannot shorten" in shorter.output
    res = CliRunner().invoke(app, ["train", str(tmp_path / "run"), "--resume", "--epochs", "8", "-q"])
    assert res.exit_code == 0, res.output
    _same_run(tmp_path / "full", tmp_path / "run")
    assert [r["epoch"] for r in read_run_info(tmp_path / "run")["resumes"]] == [4]


def test_addition_run_has_per_token_curves(tmp_path):
    cfg = mechgrok.sequence_preset("digit_addition_quick", n_digits=2, d_model=8, d_head=2, d_mlp=16, num_epochs=6,
                                   checkpoint_every=3, test_size=16, test_every=2)
    ds = mechgrok.open_run(mechgrok.train_sequence(cfg, tmp_path / "add"))
    assert ds["loss_train_per_token"].dims == ("epoch", "answer_position") and ds.sizes["answer_position"] == 3
    tested = ds["loss_test_per_token"].dropna("epoch", how="all")["epoch"].values.tolist()
    assert tested == [0, 2, 4, 6]
    mean = ds["loss_train_per_token"].mean("answer_position")
    assert np.allclose(mean.values, ds["loss_train"].values, rtol=1e-12)  # the loss is the mean over positions


def test_causal_forward_last_position_is_the_modular_forward():
    """The sequence model is the paper's model read out at every position: at the last position the two agree."""
    from mechgrok.config import Config
    from mechgrok.models import transformer
    from mechgrok.tasks.modular_arithmetic import grid_tokens

    cfg = Config(p=7, frac_train=0.5, d_model=8, n_heads=2, d_head=4, d_mlp=16)
    p = {k: v.double() for k, v in transformer.init_params(cfg).items()}
    tok = grid_tokens(7)
    want = transformer.forward(p, tok).logits
    got = forward(p, tok, n_layers=1).logits[:, -1]
    assert torch.allclose(got, want, rtol=1e-12, atol=1e-12)
