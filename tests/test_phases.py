"""Phases of grokking (mechgrok.analyses.phases): planted progress curves and the committed quick-preset run."""

from __future__ import annotations

import math

import numpy as np
import pytest
import xarray as xr

from mechgrok.analyses.modular.ablation import ablation_losses
from mechgrok.errors import AnalysisError
from mechgrok.analyses.modular.fourier_gini import weight_measures
from mechgrok.analyses.phases import POINTS, find_phases, phase_labels
from mechgrok.store import open_run

#: Key frequencies of the fixture run (neuron FVE clusters and W_E norms at its last checkpoint).
FIXTURE_KEY_FREQS = [9, 17, 25]


def sigmoid(x):
    return 1 / (1 + np.exp(-x))


def planted_measures(
    *, t_mem=300, t_exmin=500, g_mid=6000.0, g_width=300.0, n=1001, step=10, grok=True, acc_max=1.0
) -> xr.Dataset:
    """Progress curves with known transitions: train accuracy reaches 1 at t_mem, the excluded loss has its
    minimum at t_exmin, the Gini is a logistic in t with centre g_mid and scale g_width (so dG/dt is at half
    its maximum at g_mid -/+ g_width * ln(3 + 2 sqrt 2)), the test loss drops with the Gini if ``grok``."""
    t = np.arange(n) * step
    acc_train = np.where(t >= t_mem, acc_max, np.minimum(t / t_mem, 1) * 0.9)
    loss_train = np.where(t >= t_mem, 1e-3, 4.0 - 3.9 * t / t_mem)
    excluded = 0.5 + np.abs(t - t_exmin) / 500.0
    G = 0.1 + 0.6 * sigmoid((t - g_mid) / g_width)
    loss_test = 12.0 * 10.0 ** (-6 * sigmoid((t - g_mid) / g_width) if grok else 0.0 * t)
    restricted = 4.0 * np.exp(-t / 800.0)
    return xr.Dataset(
        {
            "acc_train": ("checkpoint", acc_train),
            "loss_train": ("checkpoint", loss_train),
            "loss_test": ("checkpoint", loss_test),
            "acc_test": ("checkpoint", np.exp(-loss_test)),
            "excluded_loss_full": ("checkpoint", excluded),
            "restricted_loss_all": ("checkpoint", restricted),
            "gini_W_E_component": ("checkpoint", G),
            "gini_W_logit_component": ("checkpoint", G),
            "sum_sq_weights_total": ("checkpoint", 1000.0 - 500 * sigmoid((t - g_mid) / g_width)),
        },
        coords={"checkpoint": t},
    )


# ------------------------------------------------------------------------------------------------------------
# planted curves
# ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("g_mid, g_width", [(6000.0, 300.0), (4000.0, 120.0)])
def test_planted_boundaries(g_mid, g_width):
    ph = find_phases(planted_measures(g_mid=g_mid, g_width=g_width))
    assert list(ph["point"].values) == list(POINTS)
    assert bool(ph["found"].all())
    half = g_width * math.log(3 + 2 * math.sqrt(2))  # dG/dt = max/2 at g_mid -/+ half
    ep = ph["epoch_at"]
    assert int(ep.sel(point="memorisation_end")) == 500  # excluded-loss minimum, after train acc >= 0.99 at 300
    assert abs(int(ep.sel(point="circuit_formation_end")) - (g_mid - half)) <= 10
    assert abs(int(ep.sel(point="cleanup_end")) - (g_mid + half)) <= 10
    assert bool(ph["signature"].all())
    ev = ph["measure_at"]
    assert float(ev.sel(point="cleanup_end", measure="gini")) == pytest.approx(
        0.1 + 0.6 * sigmoid(half / g_width), abs=0.01
    )


def test_memorisation_end_waits_for_train_accuracy():
    # excluded loss minimal before the training set is fitted: the boundary is the first accurate checkpoint
    ph = find_phases(planted_measures(t_mem=800, t_exmin=200))
    assert int(ph["epoch_at"].sel(point="memorisation_end")) == 800
    ph = find_phases(planted_measures(t_mem=800, t_exmin=200), train_acc_threshold=0.95)
    assert int(ph["epoch_at"].sel(point="memorisation_end")) == 800


def test_no_grokking_no_cleanup():
    ph = find_phases(planted_measures(grok=False))
    assert bool(ph["found"].sel(point="memorisation_end"))
    for pt in ("circuit_formation_end", "cleanup_end"):
        assert not bool(ph["found"].sel(point=pt))
        assert int(ph["epoch_at"].sel(point=pt)) == -1
        assert np.isnan(ph["measure_at"].sel(point=pt)).all()
    assert "did not generalise" in str(ph["criterion"].sel(point="cleanup_end").values)


def test_run_ending_mid_cleanup_or_never_memorising():
    ph = find_phases(planted_measures(g_mid=9800.0))  # the last checkpoint is 10000
    assert not bool(ph["found"].sel(point="cleanup_end"))
    assert "run ends" in str(ph["criterion"].sel(point="cleanup_end").values)
    ph = find_phases(planted_measures(acc_max=0.9))
    assert list(ph["found"].values) == [True, False, False, False, True]
    assert "never reaches" in str(ph["criterion"].sel(point="memorisation_end").values)


def unsigned_measures() -> xr.Dataset:
    """Planted curves whose Gini and test loss place every boundary, but which lack four of the paper's
    signatures: the excluded loss only falls, the restricted loss and the sum of squared weights only rise."""
    m = planted_measures()
    t = m["checkpoint"].values.astype(float)
    return m.assign(
        excluded_loss_full=("checkpoint", 5.0 - t / 5000.0),
        restricted_loss_all=("checkpoint", 1.0 + t / 1000.0),
        sum_sq_weights_total=("checkpoint", 500.0 + t / 10.0),
    )


def test_failed_signatures_make_points_uncertain():
    ph = find_phases(unsigned_measures())
    assert bool(ph["found"].all())  # the rule still places every point ...
    failed = {str(k) for k in ph["check"].values[~ph["signature"].values]}
    assert failed == {
        "circuit formation: excluded loss rises",
        "circuit formation: restricted loss falls",
        "cleanup: sum of squared weights falls",
        "restricted loss falls ten-fold before the test loss",
    }
    # ... but the boundaries next to the phases without their signatures are uncertain, with the checks named
    certain = {str(p): bool(c) for p, c in zip(ph["point"].values, ph["certain"].values)}
    assert certain == {"start": True, "memorisation_end": False, "circuit_formation_end": False,
                       "cleanup_end": False, "final": True}
    per_point = {str(p): set(filter(None, str(f).split("; "))) for p, f in zip(ph["point"].values, ph["failed_checks"].values)}
    assert per_point["memorisation_end"] == failed - {"cleanup: sum of squared weights falls"}
    assert per_point["circuit_formation_end"] == failed
    assert per_point["cleanup_end"] == {"cleanup: sum of squared weights falls"}
    assert per_point["start"] == per_point["final"] == set()
    assert bool(ph["check_applies"].sel(point="cleanup_end", check="cleanup: Gini rises"))
    assert not bool(ph["check_applies"].sel(point="cleanup_end", check="memorisation: train loss falls"))
    assert set(ph["check_phase"].values) == {"memorisation", "circuit_formation", "cleanup"}


def test_certain_when_signatures_hold_or_point_missing():
    ph = find_phases(planted_measures())
    assert bool(ph["certain"].all()) and all(str(f) == "" for f in ph["failed_checks"].values)
    # no cleanup: the checks of the missing phases do not make the end of memorisation uncertain
    ph = find_phases(planted_measures(grok=False))
    assert list(ph["certain"].values) == [True, True, False, False, True]
    assert str(ph["failed_checks"].sel(point="memorisation_end").values) == ""


_RATE = r"(-?[0-9.]+(?:e[-+]?[0-9]+)?|nan)/epoch"


@pytest.mark.parametrize("g_mid, g_width", [(6000.0, 300.0), (4000.0, 120.0)])
def test_criterion_rates_equal_measure_at(g_mid, g_width):
    import re

    ph = find_phases(planted_measures(g_mid=g_mid, g_width=g_width))
    rate = ph["measure_at"].sel(measure="gini_rate")
    after = ph["measure_at"].sel(measure="gini_rate_after")
    start, end = (str(ph["criterion"].sel(point=p).values) for p in ("circuit_formation_end", "cleanup_end"))
    first = re.search(rf"dG/dt {_RATE} on the window's first interval \(gini_rate_after\), {_RATE} on the interval "
                      r"ending here \(gini_rate\)", start)
    assert first, start
    assert float(first.group(1)) == pytest.approx(float(after.sel(point="circuit_formation_end")), rel=1e-5)
    assert float(first.group(2)) == pytest.approx(float(rate.sel(point="circuit_formation_end")), rel=1e-5)
    last = re.search(rf"dG/dt {_RATE} on the window's last interval \(gini_rate\), {_RATE} after it", end)
    assert last, end
    assert float(last.group(1)) == pytest.approx(float(rate.sel(point="cleanup_end")), rel=1e-5)
    assert float(last.group(2)) == pytest.approx(float(after.sel(point="cleanup_end")), rel=1e-5)
    # the window is where the rate is at least half its maximum: its edge intervals are in, their neighbours out
    r_max = float(re.search(rf"its maximum {_RATE}", start).group(1))
    assert float(after.sel(point="circuit_formation_end")) >= 0.5 * r_max * (1 - 1e-5)
    assert float(rate.sel(point="cleanup_end")) >= 0.5 * r_max * (1 - 1e-5)
    assert float(rate.sel(point="circuit_formation_end")) < 0.5 * r_max
    assert float(after.sel(point="cleanup_end")) < 0.5 * r_max
    # gini_rate_after at a point is gini_rate at the next checkpoint
    m = planted_measures(g_mid=g_mid, g_width=g_width)
    e = int(ph["epoch_at"].sel(point="circuit_formation_end"))
    G = (m["gini_W_E_component"] + m["gini_W_logit_component"]) / 2
    assert float(after.sel(point="circuit_formation_end")) == pytest.approx(
        float(G.sel(checkpoint=e + 10) - G.sel(checkpoint=e)) / 10, rel=1e-12)


def test_bad_input():
    m = planted_measures()
    with pytest.raises(AnalysisError, match="excluded_loss_full"):
        find_phases(m.drop_vars("excluded_loss_full"))
    with pytest.raises(AnalysisError, match="rate_fraction"):
        find_phases(m, rate_fraction=1.5)
    with pytest.raises(AnalysisError, match="3 checkpoints"):
        find_phases(m.isel(checkpoint=[0, 1]))
    with pytest.raises(AnalysisError, match="increasing"):
        find_phases(m.isel(checkpoint=[0, 2, 1]))
    with pytest.raises(AnalysisError, match="find_phases"):
        phase_labels(m, m["checkpoint"])


# ------------------------------------------------------------------------------------------------------------
# the committed quick-preset run (p = 53, 61 checkpoints every 50 epochs)
# ------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def quick(fixture_run):
    ds = open_run(fixture_run)
    measures = xr.merge(
        [ablation_losses(ds, key_freqs=FIXTURE_KEY_FREQS, chunk=16), weight_measures(ds)], combine_attrs="drop_conflicts"
    )
    return measures, find_phases(measures)


def _at(measures, var, epoch):
    return float(measures[var].sel(checkpoint=epoch))


def test_fixture_phases_in_order(quick):
    measures, ph = quick
    assert bool(ph["found"].all())
    ep = [int(e) for e in ph["epoch_at"].values]
    assert ep[0] < ep[1] < ep[2] < ep[3] < ep[4]
    mem, circ, clean = ep[1:4]
    # memorisation ends after the training set is fitted (by ~150) and long before the test accuracy rises
    assert 150 <= mem <= 500
    assert _at(measures, "acc_train", mem) >= 0.99 and _at(measures, "acc_test", mem) < 0.1
    # cleanup brackets the final collapse of the test loss
    assert _at(measures, "acc_test", circ) < 0.9
    assert _at(measures, "acc_test", clean) >= 0.999
    assert _at(measures, "loss_test", clean) < 1e-3 * _at(measures, "loss_test", circ)
    assert bool(ph["signature"].all())
    labels = phase_labels(ph, measures["checkpoint"])
    assert labels.sel(checkpoint=mem).item() == "memorisation"
    assert labels.sel(checkpoint=mem + 50).item() == "circuit_formation"
    assert labels.sel(checkpoint=clean).item() == "cleanup"
    assert labels.sel(checkpoint=3000).item() == "stable"


def test_fixture_restricted_loss_falls_well_before_test_loss(quick):
    measures, ph = quick
    mem, circ = (int(ph["epoch_at"].sel(point=p)) for p in ("memorisation_end", "circuit_formation_end"))
    r_drop, t_drop = (int(ph["tenfold_drop_epoch"].sel(loss=x)) for x in ("restricted_loss", "loss_test"))
    assert 0 < r_drop and r_drop + 500 <= t_drop
    # by the end of circuit formation the restricted loss has fallen 100-fold, the test loss less than 10-fold
    r = measures["restricted_loss_all"]
    t = measures["loss_test"]
    assert float(r.sel(checkpoint=circ)) < 0.01 * float(r.sel(checkpoint=mem))
    assert float(t.sel(checkpoint=circ)) > 0.1 * float(t.sel(checkpoint=slice(mem, None)).max())


def test_fixture_excluded_loss_rises_during_circuit_formation(quick):
    measures, ph = quick
    mem, circ = (int(ph["epoch_at"].sel(point=p)) for p in ("memorisation_end", "circuit_formation_end"))
    ex = measures["excluded_loss_full"].sel(checkpoint=slice(mem, circ)).values
    assert ex[-1] > 5 * ex[0]
    assert np.mean(np.diff(ex) > 0) > 0.9
    # and it fell during memorisation
    assert _at(measures, "excluded_loss_full", mem) < 0.5 * _at(measures, "excluded_loss_full", 0)


def test_fixture_gini_rises_during_cleanup(quick):
    measures, ph = quick
    mem, circ, clean = (int(ph["epoch_at"].sel(point=p)) for p in ("memorisation_end", "circuit_formation_end", "cleanup_end"))
    for g in ("gini_W_E_component", "gini_W_logit_component", "gini_W_E_freq", "gini_W_logit_freq"):
        rise_cleanup = _at(measures, g, clean) - _at(measures, g, circ)
        rise_circuit = _at(measures, g, circ) - _at(measures, g, mem)
        assert rise_cleanup > 0.2, g
        # faster per epoch during cleanup than during circuit formation
        assert rise_cleanup / (clean - circ) > 2 * rise_circuit / (circ - mem), g
    # sum of squared weights falls during cleanup
    assert _at(measures, "sum_sq_weights_total", clean) < 0.8 * _at(measures, "sum_sq_weights_total", circ)
