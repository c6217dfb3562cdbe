"""Slingshots: the float32 training loss option, and the spike detector on released and committed runs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import xarray as xr

import mechgrok
from mechgrok.analyses.slingshots import FLOAT32_EPS, find_slingshots, slingshot_summary
from mechgrok.config import Config
from mechgrok.errors import AnalysisError, ConfigError
from mechgrok.tasks.loss import cross_entropy, cross_entropy_float32
from nanda import nanda_path

from conftest import REPO

FLOAT32_RUN = REPO / "fixtures" / "quick-run-float32"


def _jumps(v: np.ndarray, ratio: float) -> int:
    return sum(1 for i in range(1, len(v)) if v[i] / v[i - 1] > ratio)


def test_float32_loss_is_the_released_formula_and_rounds_to_zero():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(64, 11, generator=g) * 3
    labels = torch.randint(0, 11, (64,), generator=g)
    ref = -torch.log_softmax(logits.float(), -1)[torch.arange(64), labels].mean()  # helpers.py, float32
    assert cross_entropy_float32(logits, labels).dtype == torch.float32
    assert float(cross_entropy_float32(logits, labels)) == float(ref)
    assert float(cross_entropy(logits, labels)) == pytest.approx(float(ref), rel=1e-6)
    confident = torch.zeros(4, 5)
    confident[torch.arange(4), torch.arange(4)] = 18.0  # p(correct) = 1 - 4 e^-18 ~ 1 - 6e-8
    labels = torch.arange(4)
    assert float(cross_entropy_float32(confident, labels)) == 0.0
    assert float(cross_entropy(confident, labels)) == pytest.approx(4 * np.exp(-18.0), rel=1e-6)


def test_config_loss_dtype():
    assert Config().loss_dtype == "float64"
    assert Config(loss_dtype="float32").loss_dtype == "float32"
    with pytest.raises(ConfigError, match="loss_dtype"):
        Config(loss_dtype="float16")
    assert Config.from_dict({"p": 11, "frac_train": 0.5}).loss_dtype == "float64"  # older config.json files


def test_float32_training_records_float32_losses(tmp_path, tiny_config):
    from mechgrok.rundir import read_metrics
    from mechgrok.train import train

    run = train(tiny_config.replace(loss_dtype="float32", num_epochs=10), tmp_path / "f32")
    v = read_metrics(run)["train_loss"]
    assert np.all(v.astype(np.float32).astype(np.float64) == v)  # every logged loss is a float32 number
    assert (run / "config.json").read_text().count('"loss_dtype": "float32"') == 1


def test_released_low_precision_run(shared_runs):
    ds = mechgrok.open_run(nanda_path("low_precision_mod_addition.pth"))
    s = find_slingshots(ds["loss_train"])
    v = ds["loss_train"].dropna("epoch").values
    # the counts of the shared README (108 jumps > 10x, 37 > 100x), and a plain loop agrees
    assert int(s["n_jumps"]) == 108 == _jumps(v, 10)
    assert int(s["n_jumps_100x"]) == 37 == _jumps(v, 100)
    assert int(s["n_spikes"]) == 36  # docs/slingshots.md
    assert float(s["floor_loss"]) == pytest.approx(1.04e-7, rel=0.01)
    onset, peak = s["onset_epoch"].values, s["peak_epoch"].values
    assert np.all(onset < peak) and np.all(np.diff(peak) > 0)
    assert np.all(s["peak_loss"].values > 10 * s["onset_loss"].values)
    assert np.all(s["onset_loss"].values < 100 * FLOAT32_EPS)
    # the README's example: around epoch 2250, 7.8e-7 -> ... -> 1.6e-2
    assert 2200 < peak[0] < 2300 and peak[0] - onset[0] < 100
    assert int(peak[-1]) == 49913  # the spike the run ends in (0.18 at epoch ~49,913)


def test_released_float64_run_has_none(shared_runs):
    ds = mechgrok.open_run(nanda_path("mod_addition_no_wd.pth"), frac_train=0.9)
    s = find_slingshots(ds["loss_train"])
    assert int(s["n_spikes"]) == 0 and int(s["n_jumps"]) == 0
    assert int(s["armed_epoch"]) >= 0  # it does reach the float32 floor region, smoothly


def test_quick_run_float32_spikes_and_float64_does_not(fixture_run):
    f32 = find_slingshots(mechgrok.open_run(FLOAT32_RUN)["loss_train"])
    f64 = find_slingshots(mechgrok.open_run(fixture_run)["loss_train"])
    assert int(f32["n_spikes"]) >= 1 and int(f32["n_jumps"]) >= 1
    assert float(f32["peak_loss"][0]) > 1e-2 and float(f32["onset_loss"][0]) < 100 * FLOAT32_EPS
    assert int(f64["n_spikes"]) == 0 and int(f64["n_jumps"]) == 0
    assert int(f64["armed_epoch"]) >= 0  # the float64 run reaches the same loss range without a spike
    summary = slingshot_summary(f32)
    assert summary["n_spikes"] == len(summary["spikes"]) and summary["spikes"][0]["peak_epoch"] == int(f32["peak_epoch"][0])


def test_planted_curve():
    v = np.r_[np.geomspace(1.0, 1.1e-7, 50), np.full(20, 1.0e-7), [2e-6, 4e-2], np.geomspace(3e-2, 1.2e-7, 30),
              np.full(20, 1.15e-7), 0.0, 1.1e-7]
    s = find_slingshots(xr.DataArray(v, dims="epoch", coords={"epoch": np.arange(0, 2 * len(v), 2)}))
    assert int(s["n_spikes"]) == 1
    assert int(s["peak_epoch"][0]) == 2 * 71 and int(s["onset_epoch"][0]) == 2 * 69
    assert float(s["height"][0]) == pytest.approx(np.log10(4e-2 / 1.0e-7))
    assert s.attrs["n_zero_losses"] == 1


def test_errors():
    with pytest.raises(AnalysisError, match="over 'epoch'"):
        find_slingshots(xr.DataArray([1.0, 2.0, 3.0], dims="checkpoint"))
    with pytest.raises(AnalysisError, match="negative"):
        find_slingshots(xr.DataArray([1.0, -2.0, 3.0], dims="epoch"))
    with pytest.raises(AnalysisError, match="at least 3"):
        find_slingshots(xr.DataArray([1.0, np.nan, np.nan], dims="epoch"))
