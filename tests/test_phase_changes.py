"""Phase changes, curve-only files, the addition and induction analyses, analyze/report/figures for these tasks:
planted curves, dense references written here, the committed quick fixtures and the released files in ../shared."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import xarray as xr

import mechgrok
from mechgrok.analyses.digit_addition import digit_losses
from mechgrok.analyses.induction import (RISE_FRACTION, _induction_targets, control_tokens, head_scores,
                                         induction_circuit)
from mechgrok.analyses.phase_changes import learning_order, phase_changes
from mechgrok.errors import UnsafeCheckpointError
from mechgrok.models.causal_transformer import forward
from mechgrok.store import load_loss_curves
from mechgrok.task_pipeline import analyze_task
from mechgrok.tasks import digit_addition as add
from mechgrok.tasks import repeated_subsequences as rep
from conftest import REPO
from nanda import SHARED_RUNS, nanda_path

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ADD_FIXTURE = REPO / "fixtures" / "digit-addition-quick"
IND_FIXTURE = REPO / "fixtures" / "repeated-subsequences-quick"


def _sigmoid_drops(e, centres, width=10.0, decades=1.5):
    """log10 loss falls by ``decades`` in a logistic step centred on each centre (steepest exactly there)."""
    y = 0.3 - sum(decades / (1 + np.exp(-(e - c) / width)) for c in centres)
    return 10.0**y


def test_planted_drops_found_with_onset_steepest_end():
    e = np.arange(2000)
    two = _sigmoid_drops(e, [300], decades=2.0) * _sigmoid_drops(e, [1400], decades=0.8) / 10**0.3  # 300 highest
    curves = xr.DataArray(np.stack([_sigmoid_drops(e, [500]), two]),
                          dims=("answer_position", "epoch"), coords={"epoch": e, "answer_position": [0, 1]})
    pc = phase_changes(curves)
    assert pc["n_drops"].values.tolist() == [1, 2]
    assert pc["steepest"].sel(answer_position=1).values[:2].tolist() == pytest.approx([300, 1400], abs=3)
    for pos, centre in ((0, 500), (1, 300)):
        row = pc.sel(answer_position=pos)
        assert float(row["onset"][0]) < centre < float(row["end"][0])
    assert float(pc["first_below"].sel(answer_position=0)) == float(e[np.argmax(curves.values[0] < 0.1)])
    assert learning_order(pc, "answer_position") == [1, 0]
    assert "slope" in pc.attrs["rule"] and pc.attrs["slope_frac"] == 0.1  # the rule records its thresholds
    flat = phase_changes(xr.DataArray(np.full(300, 2.0), dims="epoch", coords={"epoch": np.arange(300)}))
    assert int(flat["n_drops"]) == 0 and np.isnan(float(flat["main_onset"]))


def test_released_per_token_onsets_and_crossings():
    path = nanda_path("5_digit_addition_infinite_per_token.pth")
    with pytest.raises(UnsafeCheckpointError, match="trust"):
        load_loss_curves(path)  # a pickled numpy array: only through the trust option
    ds = mechgrok.open_run(path, trusted=True)
    assert ds.attrs["task"] == "curves" and ds["loss_train_per_token"].shape == (3000, 6)
    assert np.allclose(ds["loss_train"].values, load_loss_curves(nanda_path("5_digit_addition_infinite_train.pth"))[
        "loss_train"].values, atol=1e-14)  # the train-curve file is the row mean (shared README)
    pc = phase_changes(ds["loss_train_per_token"])
    crossings = pc["first_below"].values
    raw = ds["loss_train_per_token"].values  # dense reference: first step below 0.1, by a plain loop
    assert crossings.tolist() == [next(i for i, v in enumerate(raw[:, k]) if v < 0.1) for k in range(6)]
    assert crossings.tolist() == [288, 1818, 2180, 2056, 1963, 1761]  # the README's table
    onset, end = pc["onset"].values, pc["end"].values
    for k in range(6):  # every position starts a drop before it crosses 0.1 nats
        assert np.nanmin(onset[k]) <= crossings[k]
    inside = [bool(np.any((onset[k] <= crossings[k]) & (crossings[k] <= end[k]))) for k in range(6)]
    assert inside == [True, False, True, True, True, True]  # position 1 declines gradually (docs: the rule)
    assert learning_order(pc, "answer_position")[0] == 0  # the carry-out token is learned first


def test_sweep_and_width_scan_curves():
    sweep = load_loss_curves(nanda_path("mod_addition_frac_train_sweep.pth"))
    assert sweep["loss_test"].dims == ("frac_train", "epoch")
    assert sweep["frac_train"].values.tolist() == [0.95, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.28, 0.25]
    assert sweep["run_length"].values.tolist() == [970, 1057, 1339, 897, 1091, 1618, 3667, 8996, 16614, 23276]
    assert float(sweep["loss_train"].isel(frac_train=0, epoch=0)) == pytest.approx(math.log(113), abs=0.05)
    scan = load_loss_curves(nanda_path("no_wd_width_scan.pth"))
    assert scan["d_model"].values.tolist() == [8, 16, 32, 64, 128, 256, 512, 1024]
    assert float(scan["loss_test"].sel(d_model=32).isel(epoch=-1)) == pytest.approx(3.6e-8, rel=0.05)
    pc = phase_changes(sweep["loss_test"])
    assert pc["main_onset"].dims == ("frac_train",)


def test_digit_losses_dense_carry_split():
    ds = mechgrok.open_run(ADD_FIXTURE).isel(checkpoint=[0, -1])
    dl = digit_losses(ds, n_eval=64, seed=5)
    b = add.addition_batch(64, 5, seed=5)
    c = add.answer_carries(b.carries)
    w = {k: torch.from_numpy(ds[k].values[-1]).double() for k in ds.data_vars if k.startswith(("W_", "b_"))}
    logp = torch.log_softmax(forward(w, b.tokens, n_layers=1).logits[:, 11:17], -1)
    for k in range(6):
        for carry in (0, 1):
            rows = [i for i in range(64) if int(c[i, k]) == carry]
            want = np.mean([-float(logp[i, k, b.tokens[i, 12 + k]]) for i in rows]) if rows else np.nan
            got = float(dl["loss_by_carry"].isel(checkpoint=-1).sel(answer_position=k, carry=carry))
            assert (np.isnan(got) and np.isnan(want)) or got == pytest.approx(want, rel=1e-9)
    assert dl["n_by_carry"].sel(answer_position=5, carry=1) == 0  # nothing feeds the units digit
    assert float(dl["loss"].isel(checkpoint=-1)) < float(dl["loss"].isel(checkpoint=0))


def test_head_scores_against_dense_loop():
    ds = mechgrok.open_run(IND_FIXTURE).isel(checkpoint=[-1])
    hs = head_scores(ds, n_eval=6, seed=11)
    cfg = json.loads(ds.attrs["config_json"])
    b = rep.induction_batch(6, seed=11, seq_len=cfg["seq_len"], subseq_len=cfg["subseq_len"],
                            num_repeats=cfg["num_repeats"], vocab_size=cfg["vocab_size"])
    w = {k: torch.from_numpy(ds[k].values[0]).double() for k in ds.data_vars if k.startswith("W_")}
    A = forward(w, b.tokens, n_layers=2, doubled_residual=True, cache=True).attn_pattern  # (layer, b, head, q, k)
    ctl = control_tokens(b, cfg["vocab_size"], 11)  # the repeats after the first replaced by random tokens
    Ac = forward(w, ctl, n_layers=2, doubled_residual=True, cache=True).attn_pattern
    n, s, k = b.tokens.shape[1], b.starts.tolist(), cfg["subseq_len"]
    for i in range(6):
        copies = {s[i][r] + j for r in (1, 2) for j in range(k)}
        assert all(int(ctl[i, q]) == int(b.tokens[i, q]) for q in range(n) if q not in copies)
        assert sum(int(ctl[i, s[i][1] + j]) == int(b.tokens[i, s[i][0] + j]) for j in range(k)) < k / 2  # no repeat
    for l in range(2):
        for h in range(2):
            prev = np.mean([float(A[l, i, h, q, q - 1]) for i in range(6) for q in range(1, n)])
            vals, base = [], []
            for i in range(6):
                for r in range(1, 3):
                    for j in range(k - 1):  # attention to the token after each earlier occurrence
                        vals.append(sum(float(A[l, i, h, s[i][r] + j, s[i][rp] + j + 1]) for rp in range(r)))
                        base.append(sum(float(Ac[l, i, h, s[i][r] + j, s[i][rp] + j + 1]) for rp in range(r)))
            assert float(hs["prev_token_score"][0, l, h]) == pytest.approx(prev, rel=1e-9)
            assert float(hs["induction_score"][0, l, h]) == pytest.approx(np.mean(vals), rel=1e-9)
            assert float(hs["induction_baseline"][0, l, h]) == pytest.approx(np.mean(base), rel=1e-9)
            assert float(hs["induction_content"][0, l, h]) == pytest.approx(np.mean(vals) - np.mean(base), abs=1e-12)
    assert _induction_targets(b, 3).sum() == 6 * (1 + 2) * (cfg["subseq_len"] - 1)


def _onset(score, epochs, frac):
    """Dense reference of the formation rule: the first epoch whose score made ``frac`` of the first-to-last rise."""
    for e, v in zip(epochs, score):
        if v >= score[0] + frac * (score[-1] - score[0]):
            return float(e)


def test_quick_induction_run_shows_the_phase_change_in_order():
    """prev-token head, then induction head, then the loss drop, strictly (the committed quick run, every
    checkpoint), with the attention evidence behind each step."""
    hs = analyze_task(mechgrok.open_run(IND_FIXTURE), device="cpu", n_eval=64)["induction"].to_dataset()
    assert hs["is_induction_head"].sel(layer=1).all() and hs["is_prev_token_head"].sel(layer=0).all()
    assert not hs["is_induction_head"].sel(layer=0).any() and not hs["is_prev_token_head"].sel(layer=1).any()
    assert induction_circuit(hs)["induction_formed"].identical(hs["induction_formed"])
    assert hs.attrs["rise_fraction"] == RISE_FRACTION and "content induction score" in hs.attrs["rule"]
    order = json.loads(hs.attrs["formation_order"])
    prev_at, ind_at = order["prev_token_head_formed"], order["induction_head_formed"]
    assert prev_at < ind_at < order["loss_drop_steepest"] < order["loss_drop_end"]
    assert order["loss_drop_onset"] < order["loss_drop_steepest"]
    e = hs["checkpoint"].values
    prev, content = hs["prev_token_score"].sel(layer=0), hs["induction_content"].sel(layer=1)
    assert prev_at == min(_onset(prev.values[:, h], e, RISE_FRACTION) for h in range(2))
    assert ind_at == min(_onset(content.values[:, h], e, RISE_FRACTION) for h in range(2))
    start = dict(checkpoint=slice(0, 5))  # steps 0-40: the untrained heads' noise band
    for score, at in ((prev, prev_at), (content, ind_at)):
        lo, hi = float(score.isel(**start).min()), float(score.isel(**start).max())
        assert float(score.sel(checkpoint=at).max()) > hi + 5 * max(hi - lo, 1e-3)  # out of the band when formed
        before = score.sel(checkpoint=at - 10).max()  # and a checkpoint earlier it had made less of its rise
        assert float(before) < float(score.sel(checkpoint=at).max())
    # when the previous-token head formed, the layer-1 heads did not yet match content: their induction score
    # then was the positional baseline (within 0.05), far from the induction head's final content score
    at_prev = hs.sel(checkpoint=prev_at, layer=1)
    assert float(abs(at_prev["induction_content"]).max()) < 0.05 < 0.5 < float(content.isel(checkpoint=-1).min())
    # the attention patterns of the first evaluation sequence at the end: the induction head attends to the
    # token after the earlier occurrence, the previous-token head to the previous token, far above uniform
    ind = hs.sel(layer=1).isel(checkpoint=-1)
    tok = hs["eval_tokens"].values
    b = rep.induction_batch(hs.attrs["n_eval"], seed=hs.attrs["eval_seed"], seq_len=hs.attrs["seq_len"],
                            subseq_len=hs.attrs["subseq_len"], num_repeats=hs.attrs["num_repeats"],
                            vocab_size=hs.attrs["vocab_size"])
    assert b.tokens[0].tolist() == tok.tolist()  # the stored pattern's sequence, regenerated
    st, k = b.starts[0].tolist(), hs.attrs["subseq_len"]
    for h in range(2):
        paid = [sum(float(ind["attn_pattern"][h, st[r] + j, st[rp] + j + 1]) for rp in range(r))
                for r in (1, 2) for j in range(k - 1)]
        assert np.mean(paid) > 0.5
    pat = hs.sel(layer=0).isel(checkpoint=-1)["attn_pattern"]
    sub = np.array([np.diagonal(pat.values[h], offset=-1)[5:].mean() for h in range(2)])
    assert sub.max() > 3 * float(np.mean([1 / (q + 1) for q in range(5, len(tok))]))  # uniform: 1 / (q + 1)
    loss = hs["loss"].values
    assert loss[0] > 3 * loss[-1]  # the drop happened
    from mechgrok.figures.phase_changes import plot_head_scores

    fig = plot_head_scores(hs)  # the figure marks each circuit head's formation, the baseline dotted
    dots = [[ln.get_xdata()[0] for ln in ax.lines if ln.get_marker() == "o"] for ax in fig.axes[:2]]
    assert dots == [[prev_at, prev_at], [ind_at, ind_at]]
    assert sum(ln.get_linestyle() == ":" for ln in fig.axes[1].lines) == 4


def test_analyze_fixture_runs_cli_with_figures(tmp_path):
    from typer.testing import CliRunner

    from mechgrok_cli.main import app

    res = CliRunner().invoke(app, ["analyze", str(ADD_FIXTURE), "--out", str(tmp_path / "a"), "--figures", "-q"])
    assert res.exit_code == 0, res.output
    rep_ = json.loads((tmp_path / "a" / "report.json").read_text())
    assert rep_["task"] == "digit_addition" and len(rep_["digit_losses"]["per_token"]) == 6
    assert "loss_train_per_token" in rep_["phase_changes"] and "learning_order" in rep_["phase_changes"]["loss_train_per_token"]
    assert len(list((tmp_path / "a" / "figures").glob("[0-9][0-9]_phase_changes_loss_train_per_token.png"))) == 1
    assert len(list((tmp_path / "a" / "figures").glob("[0-9][0-9]_digit_losses.png"))) == 1
    tree = mechgrok.open_analysis(tmp_path / "a" / "analysis.zarr")
    assert tree["digit_losses"]["loss_by_carry"].dims == ("checkpoint", "answer_position", "carry")


#: Every released file but the two modular models (which the modular pipeline analyses).
NON_MODULAR = ["5_digit_addition_finite.pth", "5_digit_addition_infinite.pth", "5_digit_addition_infinite_per_token.pth",
               "5_digit_addition_infinite_train.pth", "induction_head_finite.pth", "induction_head_infinite.pth",
               "mod_addition_frac_train_sweep.pth", "no_wd_width_scan.pth", "skip_trigram_finite.pth",
               "skip_trigram_infinite.pth"]


@pytest.mark.parametrize("name", NON_MODULAR)
def test_analyze_every_released_file(name):
    ds = mechgrok.open_run(nanda_path(name), trusted=name.endswith("per_token.pth"))
    tree = mechgrok.analyze(ds, device="cpu")
    summary = mechgrok.summarise(tree)
    text = mechgrok.report_markdown(summary)
    assert summary["task"] in ("digit_addition", "repeated_subsequences", "curves") and "Phase changes" in text
    if name.startswith("induction"):
        heads = summary["induction"]["induction_heads"]
        assert heads and all(h.startswith("1.") for h in heads), heads
        assert summary["induction"]["prev_token_heads"], summary["induction"]
        assert "Induction heads" in text


def test_shared_folder_has_no_other_released_files():
    if not SHARED_RUNS.is_dir():
        pytest.skip("../shared is absent")
    modular = {"low_precision_mod_addition.pth", "mod_addition_no_wd.pth"}  # analysed by the modular pipeline
    covered = set(NON_MODULAR) | modular
    assert {p.name for p in SHARED_RUNS.glob("*.pth")} == covered
