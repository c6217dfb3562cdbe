"""Loss curves logged at different cadences land on the right epochs (issue 11).

The authors' ``wd_10-1_mod_addition_loss_curve.pth`` stores 107,791 train losses (one per epoch) but 10,780 test
losses (one every 10 epochs, epoch 0 and the final epoch 107,790 included). The store infers each list's stride
from the lengths: the longest list is per-epoch, a list of m entries beside n is at epochs 0, k, ..., (m - 1) k
for the one integer k with m = ceil(n / k); no such k, or several, is a ``CurveCadenceError`` naming the file.

The synthetic files have the same shape, small: 1,001 train losses (epochs 0..1000) and 101 test losses
(epochs 0, 10, ..., 1000). Every value encodes its epoch (train: epoch + 0.25, test: epoch + 0.5), so the epoch
each entry lands on is checked exactly.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from mechgrok_cli.main import app
from mechgrok.errors import CheckpointError, MechgrokError
from mechgrok.store import CurveCadenceError, ingest, open_run
from mechgrok.store.assemble import curve_log_every, infer_stride, loss_curves

from planted import paper_state_dict
import nanda

WD_10_1 = "wd_10-1_mod_addition_loss_curve.pth"
N_TRAIN, N_TEST, STRIDE = 1001, 101, 10
TRAIN = [i + 0.25 for i in range(N_TRAIN)]  # train_losses[i] = epoch i + 0.25
TEST = [STRIDE * j + 0.5 for j in range(N_TEST)]  # test_losses[j] = epoch 10 j + 0.5


def save_run(tmp_path: Path, fmt: str, train_losses=TRAIN, test_losses=TEST) -> Path:
    """A file in the layout of ``wd_10-1_mod_addition_loss_curve.pth`` (paper-model) or ``full_run_data.pth``."""
    last = len(train_losses) - 1
    if fmt == "paper-model":
        obj = {"model": paper_state_dict(), "epoch": last, "config": {"p": 7, "seed": 1, "frac_train": 0.3},
               "train_losses": list(train_losses), "test_losses": list(test_losses)}
    else:
        obj = {"config": {"p": 7}, "state_dicts": [paper_state_dict(), paper_state_dict()], "epochs": [0, last],
               "train_losses": list(train_losses), "test_losses": list(test_losses)}
    f = tmp_path / f"{fmt}_loss_curve.pth"
    torch.save(obj, f)
    return f


# ---------------------------------------------------------------------------------------------------------------
# The file shape of the issue: 1,001 train losses, 101 test losses logged every 10 epochs
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", ["paper-model", "paper-full-run"])
def test_every_entry_lands_on_its_epoch(tmp_path, fmt):
    ds = open_run(save_run(tmp_path, fmt))
    assert ds.attrs["source_format"] == fmt
    np.testing.assert_array_equal(ds["epoch"].values, np.arange(N_TRAIN))
    # train: index i is epoch i
    np.testing.assert_array_equal(ds["loss_train"].values - 0.25, ds["epoch"].values)
    # test: entry j is epoch 10 j, for every j
    test = ds["loss_test"].dropna("epoch")
    np.testing.assert_array_equal(test["epoch"].values, np.arange(0, N_TRAIN, STRIDE))
    np.testing.assert_array_equal(test.values - 0.5, test["epoch"].values)
    assert ds["loss_test"].attrs["log_every"] == STRIDE and ds["loss_train"].attrs["log_every"] == 1
    assert "loss_test[j] is epoch 10 * j" in ds.attrs["curve_epochs"]
    assert "101 = ceil(1001 / 10)" in ds.attrs["curve_epochs"]


@pytest.mark.parametrize("fmt", ["paper-model", "paper-full-run"])
def test_final_test_loss_at_last_epoch_not_nan(tmp_path, fmt):
    """The bug: the final test loss sat at epoch 100 (its index) and the last epoch held NaN."""
    ds = open_run(save_run(tmp_path, fmt))
    last = int(ds["checkpoint"].values[-1])
    assert last == N_TRAIN - 1 == int(ds["epoch"].values[-1])
    assert float(ds["loss_test"].sel(epoch=last)) == TEST[-1] == last + 0.5
    assert not math.isnan(float(ds["loss_test"].isel(epoch=-1)))
    assert int(ds["loss_test"].dropna("epoch")["epoch"].values[-1]) == last
    # the old placement: index 100 at epoch 100 -- now epoch 100 holds test_losses[10]
    assert float(ds["loss_test"].sel(epoch=100)) == TEST[10]


def test_nan_between_logged_test_epochs(tmp_path):
    """docs/store.md, Curves: no interpolation; a curve is NaN at the epochs where it was not logged."""
    ds = open_run(save_run(tmp_path, "paper-model"))
    epochs = ds["epoch"].values
    logged = epochs % STRIDE == 0
    test = ds["loss_test"].values
    assert np.isnan(test[~logged]).all()
    assert np.isfinite(test[logged]).all() and int(logged.sum()) == N_TEST
    assert np.isfinite(ds["loss_train"].values).all()
    # e.g. between epochs 990 and 1000
    assert np.isnan(ds["loss_test"].sel(epoch=[991, 995, 999]).values).all()


def test_exact_ratio_ends_before_the_last_epoch():
    """1,000 train and 100 test losses: stride 10, test epochs 0..990; nothing is placed at epoch 999."""
    curves, rule = loss_curves([1.0] * 1000, [2.0] * 100)
    np.testing.assert_array_equal(curves["loss_test"][0], np.arange(0, 1000, 10))
    np.testing.assert_array_equal(curves["loss_train"][0], np.arange(1000))
    assert "epochs 0..990" in rule


def test_cadence_survives_a_zarr_store(tmp_path):
    src = save_run(tmp_path, "paper-model")
    store = tmp_path / "run.zarr"
    ingest(src, store)
    z = open_run(store)
    assert z["loss_test"].attrs["log_every"] == STRIDE
    assert float(z["loss_test"].sel(epoch=N_TRAIN - 1)) == TEST[-1]
    assert z.attrs["curve_epochs"] == open_run(src).attrs["curve_epochs"]


# ---------------------------------------------------------------------------------------------------------------
# Lengths that fix no single stride: an error naming the file, never a guess
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("n_test, why", [(300, "no integer stride"), (2, "ambiguous"), (1, "ambiguous")])
@pytest.mark.parametrize("fmt", ["paper-model", "paper-full-run"])
def test_unfit_lengths_raise_naming_the_file(tmp_path, fmt, n_test, why):
    f = save_run(tmp_path, fmt, test_losses=[1.0] * n_test)
    with pytest.raises(CurveCadenceError, match=why) as info:
        open_run(f)
    err = info.value
    assert isinstance(err, CheckpointError) and isinstance(err, MechgrokError)
    text = str(err)
    assert "\n" not in text
    assert str(f) in text and err.path == f
    assert f"test_losses has {n_test} entr" in text and "train_losses 1001" in text
    assert err.lengths == {"train_losses": 1001, "test_losses": n_test}


def test_cli_ingest_refuses_unfit_lengths(tmp_path):
    f = save_run(tmp_path, "paper-model", test_losses=[1.0] * 300)
    out = tmp_path / "out.zarr"
    result = CliRunner().invoke(app, ["ingest", str(f), "--out", str(out)])
    assert result.exit_code == 2, result.output
    assert "no integer stride" in result.output and str(f.name) in result.output
    assert not out.exists()


# ---------------------------------------------------------------------------------------------------------------
# The inference rule itself
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("n_ref, n, k", [
    (107_791, 10_780, 10),  # wd_10-1_mod_addition_loss_curve.pth
    (50_000, 5_000, 10),  # full_run_data.pth, low_precision_mod_addition.pth
    (285_820, 71_455, 4),  # induction_head_finite.pth
    (20, 5, 4),
    (1001, 101, 10),
    (5000, 5000, 1),
    (1, 1, 1),
])
def test_infer_stride_known_shapes(n_ref, n, k):
    assert infer_stride(n_ref, n) == k


def test_infer_stride_matches_its_definition():
    """k is the one integer with n == ceil(n_ref / k); none or several is an error (lengths up to 80)."""
    for n_ref in range(2, 81):
        for n in range(1, n_ref):
            fits = [k for k in range(1, n_ref + 2) if -(-n_ref // k) == n]
            if len(fits) == 1:
                assert infer_stride(n_ref, n) == fits[0], (n_ref, n)
            else:
                with pytest.raises(CurveCadenceError):
                    infer_stride(n_ref, n)
        assert infer_stride(n_ref, n_ref) == 1


def test_the_longest_list_is_per_epoch():
    """A test list longer than the train list is the reference; the train list gets the stride."""
    curves, rule = loss_curves([1.0] * 101, [2.0] * 1001)
    np.testing.assert_array_equal(curves["loss_test"][0], np.arange(1001))
    np.testing.assert_array_equal(curves["loss_train"][0], np.arange(0, 1001, 10))
    assert "loss_train[j] is epoch 10 * j" in rule and "loss_test[i] is epoch i" in rule


def test_curve_log_every():
    assert curve_log_every(np.arange(0, 1001, 10)) == 10
    assert curve_log_every([0, 1, 3]) is None
    assert curve_log_every([5]) is None


# ---------------------------------------------------------------------------------------------------------------
# The real file (shared data; skipped where absent)
# ---------------------------------------------------------------------------------------------------------------

def test_wd_10_1_loss_curve_file():
    """``wd_10-1_mod_addition_loss_curve.pth``: the last test loss is that of the final model (epoch 107,790).

    The run stopped when its test loss first fell below ``stopping_thresh`` 5e-7: the last entry, 4.9915e-7,
    logged (before that epoch's step) at the epoch of the saved model. The saved model, one step later, has a
    float64 test loss just below it (4.9884e-7): one epoch's decrease, not the ten that separate logged entries.
    """
    from mechgrok.models.transformer import WEIGHT_NAMES, forward
    from mechgrok.tasks.modular_arithmetic import grid_labels, grid_tokens

    f = nanda.SHARED_RUNS / WD_10_1
    if not f.is_file():
        pytest.skip(f"{WD_10_1} is not at {f}: the shared copy of the authors' saved_runs/ does not include it "
                    "(it is in saved_runs/ of mechanistic-interpretability-grokking/progress-measures-paper)")
    ds = open_run(f)  # the config stores p 113, seed 1, frac_train 0.3
    last = 107_790
    assert list(ds["checkpoint"].values) == [last] and ds.sizes["epoch"] == 107_791
    assert ds["loss_test"].attrs["log_every"] == 10 and ds["loss_train"].attrs["log_every"] == 1
    test = ds["loss_test"].dropna("epoch")
    assert test.sizes["epoch"] == 10_780
    np.testing.assert_array_equal(test["epoch"].values, np.arange(0, last + 1, 10))
    stored = float(ds["loss_test"].sel(epoch=last))
    assert stored == pytest.approx(4.9915e-7, rel=1e-4) and stored < 5e-7
    assert (test.values[:-1] >= 5e-7).all()  # the stopping threshold was crossed at the last entry only
    assert np.isnan(ds["loss_test"].sel(epoch=last - 1))

    p = 113
    params = {n: torch.from_numpy(ds[n].values[-1]) for n in WEIGHT_NAMES}
    logits = forward(params, grid_tokens(p)).logits.double()
    labels = grid_labels(p)
    is_test = ~torch.from_numpy(ds["is_train"].values.reshape(-1))
    model_test = torch.nn.functional.cross_entropy(logits[is_test], labels[is_test]).item()
    one_entry_step = float(ds["loss_test"].sel(epoch=last - 10)) - stored  # the decrease over 10 epochs
    assert 0 < stored - model_test < 0.3 * one_entry_step
