"""Sweep specs, the sweep Dataset, early-warning lead times and the phase diagram, without a cluster."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

import mechgrok
from mechgrok.analyses.early_warning import MEASURES, change_onset, lead_times, summarise_leads
from mechgrok.analyses.grokking_epoch import grokking_delay, grokking_epoch
from mechgrok.config import Config
from mechgrok.errors import AnalysisError, ConfigError
from mechgrok.figures.sweep import phase_diagram, write_sweep_figures
from mechgrok.store.analysis_store import open_analysis, write_analysis
from mechgrok.sweep import SweepSpec, combine_runs, load_spec, run_summary
from mechgrok.sweep.spec import config_fields

FIXTURE = Path(__file__).resolve().parent.parent / "fixtures" / "quick-run"


# -- the spec ------------------------------------------------------------------------------------------------------
def test_spec_from_toml_grid(tmp_path):
    f = tmp_path / "wd.toml"
    f.write_text('preset = "quick"\n[base]\nnum_epochs = 500\n[grid]\nweight_decay = [0.3, 1.0]\nseed = [0, 1, 2]\n'
                 '[analysis]\nllc = true\n')
    spec = load_spec(f)
    assert spec.name == "wd" and spec.fields == ("weight_decay", "seed") and len(spec.cells) == 6
    assert [c.coords for c in spec.cells[:2]] == [{"weight_decay": 0.3, "seed": 0}, {"weight_decay": 0.3, "seed": 1}]
    cfg = spec.cells[-1].config
    assert (cfg.p, cfg.num_epochs, cfg.weight_decay, cfg.seed) == (53, 500, 1.0, 2)  # preset, base, grid
    assert spec.analysis["llc"] is True and spec.analysis["analyses"] is None
    assert spec.cells[0].name == "weight_decay=0.3,seed=0"


def test_spec_fields_are_the_config_dataclass_fields():
    assert set(config_fields()) == {f.name for f in dataclasses.fields(Config)} - {"preset"}


def test_spec_list_of_runs_and_errors(tmp_path):
    spec = SweepSpec.from_dict({"base": {"p": 23}, "runs": [{"seed": 0, "frac_train": 0.5}, {"seed": 1, "frac_train": 0.6}]})
    assert [c.name for c in spec.cells] == ["seed=0,frac_train=0.5", "seed=1,frac_train=0.6"]
    f = tmp_path / "bad.json"
    f.write_text('{"grid": {"not_a_field": [1, 2]}}')
    with pytest.raises(ConfigError, match="not Config fields: not_a_field") as e:
        load_spec(f)
    assert str(f) in str(e.value)
    with pytest.raises(ConfigError, match="appears twice"):
        SweepSpec.from_dict({"runs": [{"seed": 0}, {"seed": 0}]})
    with pytest.raises(ConfigError, match="names"):
        SweepSpec.from_dict({"runs": [{"seed": 0}, {"frac_train": 0.5}]})
    with pytest.raises(ConfigError, match="exactly one"):
        SweepSpec.from_dict({"base": {"p": 23}})
    with pytest.raises(ConfigError, match="frac_train"):
        SweepSpec.from_dict({"grid": {"frac_train": [0.5, 1.5]}})


# -- the change-point rule against a plain loop --------------------------------------------------------------------
def _onset_loop(y, t, direction, scale, fraction=0.1, min_fold=2.0, min_relative=0.1):
    pts = [(ti, yi) for ti, yi in zip(t, y) if np.isfinite(yi) and (scale == "linear" or yi > 0)]
    if len(pts) < 2:
        return np.nan
    z = [(ti, (np.log(yi) if scale == "log" else yi) * (1 if direction == "rise" else -1), yi) for ti, yi in pts]
    i0 = min(range(len(z)), key=lambda i: (z[i][1], i))
    if i0 == len(z) - 1:
        return np.nan
    i1 = max(range(i0, len(z)), key=lambda i: (z[i][1], -i))
    delta = z[i1][1] - z[i0][1]
    if scale == "log" and delta < np.log(min_fold):
        return np.nan
    if scale == "linear" and (delta <= 0 or delta < min_relative * max(abs(z[i0][2]), abs(z[i1][2]))):
        return np.nan
    for i in range(i0, len(z)):
        if z[i][1] >= z[i0][1] + fraction * delta:
            return float(z[i][0])
    return np.nan


@pytest.mark.parametrize("direction,scale", [("fall", "log"), ("rise", "log"), ("rise", "linear"), ("fall", "linear")])
def test_change_onset_matches_a_plain_loop(direction, scale):
    rng = np.random.default_rng(0)
    t = np.arange(0, 2000, 50)
    curves = []
    for k in range(12):  # sigmoids with noise, flat curves, NaNs
        mid = rng.uniform(300, 1700)
        s = 1 / (1 + np.exp(-(t - mid) / rng.uniform(20, 200)))
        sign = (1 if direction == "rise" else -1) * (-1 if k % 4 == 3 else 1)  # every 4th goes the other way
        level = (np.exp(rng.uniform(-1, 1) + sign * s * rng.uniform(0.2, 5)) if scale == "log"
                 else rng.uniform(0, 1) + sign * s * rng.uniform(0.02, 1))
        level = level * np.exp(rng.normal(0, 0.05, t.size))
        if k % 5 == 0:
            level[rng.integers(0, t.size, 3)] = np.nan
        curves.append(level)
    da = xr.DataArray(np.array(curves), dims=("run", "checkpoint"), coords={"checkpoint": t})
    got = change_onset(da, direction=direction, scale=scale).values
    want = [_onset_loop(c, t, direction, scale) for c in curves]
    np.testing.assert_array_equal(got, want)
    assert np.isfinite(got).sum() >= 4  # the comparison is not all-NaN


def test_lead_times_planted_and_summary():
    t = np.arange(0, 3000, 50)

    def fall(start, end):
        return 10.0 ** np.interp(t, [0, start, end, 2950], [0, 0, -3, -3])

    runs = xr.DataArray([0, 1, 2], dims="seed")
    leads_planted = [300.0, -100.0, 500.0]
    test = np.stack([fall(1500, 1800)] * 3)
    restricted = np.stack([fall(1500 - d, 1800 - d) for d in leads_planted])
    ds = xr.Dataset({"loss_test": (("seed", "checkpoint"), test),
                     "restricted_loss_test": (("seed", "checkpoint"), restricted),
                     "gini_W_E_component": (("seed", "checkpoint"), np.full((3, t.size), 0.4))},  # never changes
                    coords={"checkpoint": t, "seed": runs})
    lt = lead_times(ds)
    np.testing.assert_array_equal(lt["lead"].sel(measure="restricted_loss_test").values, leads_planted)
    assert lt["lead"].sel(measure="gini_W_E_component").isnull().all()
    assert lt["lead"].attrs["units"] == "epochs" and "rule" in lt.attrs
    s = summarise_leads(lt)
    r = s.sel(measure="restricted_loss_test")
    assert float(r["median_lead"]) == 300.0 and float(r["fraction_leading"]) == pytest.approx(2 / 3)
    assert (float(r["lead_q25"]), float(r["lead_q75"])) == (100.0, 400.0) and int(r["n_runs"]) == 3
    assert int(s["n_runs"].sel(measure="gini_W_E_component")) == 0
    with pytest.raises(AnalysisError, match="reference"):
        lead_times(ds.drop_vars("loss_test"))


def test_measures_lead_the_test_loss_on_the_released_fixture():
    """On the committed grokking run the progress measures change before the test loss drops (paper 5.1)."""
    ds = mechgrok.open_run(FIXTURE).isel(checkpoint=slice(None, None, 10))  # epochs 0, 500, ..., 3000
    key = mechgrok.key_frequencies(ds)["key_freqs"].values.tolist()
    pm = mechgrok.progress_measures(ds, key_freqs=key)
    lt = lead_times(pm)
    assert set(lt["measure"].values) == set(MEASURES) - {"llc_mean"}
    assert float(lt["reference_onset_epoch"]) == 2000
    assert (lt["lead"] > 0).all(), lt["lead"].values  # every measure leads the drop
    assert float(lt["lead"].sel(measure="restricted_loss_test")) == 1000


# -- the sweep Dataset ---------------------------------------------------------------------------------------------
def test_grokking_epoch_rule():
    m = mechgrok.open_run(FIXTURE)
    loss = m["loss_test"].values
    expect = next(e for e, v in zip(m["epoch"].values, loss) if v <= 0.1)
    assert float(grokking_epoch(m["loss_test"])) == expect
    assert float(run_summary(m)["grokking_epoch"]) == expect


def test_grokking_delay_on_planted_curves():
    """Planted memorisation and generalisation epochs per run: the delay is their difference, NaN where either
    curve never crosses, vectorised over the other dims; bad input is an AnalysisError."""
    epochs = np.arange(0, 1000, 10)
    memorise = {(0.3, 0): 120, (0.3, 1): 150, (0.5, 0): 90, (0.5, 1): None}
    generalise = {(0.3, 0): 700, (0.3, 1): 640, (0.5, 0): 300, (0.5, 1): 200}

    def curve(at):  # 4.7 nats until the planted epoch, then 0.05 (NaN tail: a shorter run on a common axis)
        y = np.where(epochs < (at if at is not None else 10**9), 4.7, 0.05)
        return np.where(epochs >= 950, np.nan, y)

    def planted(events):
        return xr.DataArray([[curve(events[(f, s)]) for s in (0, 1)] for f in (0.3, 0.5)],
                            dims=("frac_train", "seed", "epoch"),
                            coords={"frac_train": [0.3, 0.5], "seed": [0, 1], "epoch": epochs})

    train, test = planted(memorise), planted(generalise)
    d = grokking_delay(train, test)
    assert d.dims == ("frac_train", "seed") and d.dtype == np.float64 and d.attrs["units"] == "epochs"
    for (f, s), m in memorise.items():
        expect = np.nan if m is None else float(generalise[(f, s)] - m)
        np.testing.assert_equal(float(d.sel(frac_train=f, seed=s)), expect)
    xr.testing.assert_equal(d, grokking_epoch(test) - grokking_epoch(train))  # the rule, by the other function
    assert float(grokking_delay(test, train).sel(frac_train=0.3, seed=0)) == -580.0  # test first: negative
    # a stricter threshold that the planted 0.05 never reaches: NaN everywhere
    assert grokking_delay(train, test, threshold=0.01).isnull().all()
    with pytest.raises(AnalysisError, match="no 'checkpoint' dim"):
        grokking_delay(train, test, dim="checkpoint")
    with pytest.raises(AnalysisError, match="positive"):
        grokking_delay(train, test, threshold=0.0)
    with pytest.raises(AnalysisError, match="different 'epoch' coordinates"):
        grokking_delay(train, test.assign_coords(epoch=epochs + 5))
    assert mechgrok.grokking_delay is grokking_delay


def test_combine_runs_of_two_shapes_is_a_datatree(tmp_path):
    def fake(p, grok):
        epochs = np.arange(0, 400, 100)
        root = xr.Dataset({"loss_test": ("epoch", [4.0, 1.0, 0.05, 0.01]), "grokking_epoch": ((), float(grok)),
                           "is_key_freq": ("freq", np.eye((p - 1) // 2)[0])},
                          coords={"epoch": epochs, "freq": np.arange(1, (p - 1) // 2 + 1)}, attrs={"p": p})
        return xr.DataTree(root)

    runs = [fake(23, 200), fake(23, 300), fake(29, 250)]
    coords = [{"p": 23, "seed": 0}, {"p": 23, "seed": 1}, {"p": 29, "seed": 0}]
    tree = combine_runs(runs, coords, fields=["p", "seed"])
    assert set(tree.children) == {"p=23", "p=29"}
    assert tree["p=23"]["is_key_freq"].sizes["freq"] == 11 and tree["p=29"]["is_key_freq"].sizes["freq"] == 14
    np.testing.assert_array_equal(tree["p=23"]["grokking_epoch"].sel(p=23).values, [200.0, 300.0])
    write_analysis(tree, tmp_path / "summary.zarr")
    back = xr.open_datatree(tmp_path / "summary.zarr", engine="zarr", consolidated=False)
    xr.testing.assert_equal(back["p=29"].to_dataset(inherit=False)["grokking_epoch"],
                            tree["p=29"].to_dataset(inherit=False)["grokking_epoch"])
    assert xr.open_zarr(tmp_path / "summary.zarr", group="p=29", consolidated=False)["loss_test"].dims == ("p", "seed", "epoch")
    index = write_sweep_figures(open_analysis(tmp_path / "summary.zarr"), tmp_path / "figures")
    assert (tmp_path / "figures" / "phase_diagram_p23.png").is_file() and index.is_file()


def test_phase_diagram_heatmap_and_lines():
    rng = np.random.default_rng(1)
    ds = xr.Dataset({"grokking_epoch": (("seed", "frac_train", "weight_decay"), rng.uniform(100, 900, (2, 3, 2))),
                     "cleanup_end": (("seed", "frac_train", "weight_decay"), rng.uniform(100, 900, (2, 3, 2)))},
                    coords={"seed": [0, 1], "frac_train": [0.3, 0.4, 0.5], "weight_decay": [0.3, 1.0]},
                    attrs={"swept_fields": ["seed", "frac_train", "weight_decay"]})
    fig = phase_diagram(ds)
    heat = [ax for ax in fig.axes if ax.images]
    assert len(heat) == 2  # one heatmap per quantity, seeds averaged
    np.testing.assert_allclose(heat[0].images[0].get_array(), ds["grokking_epoch"].mean("seed").values)
    one = phase_diagram(ds.isel(weight_decay=0, drop=True).assign_attrs(swept_fields=["seed", "frac_train"]))
    assert not any(ax.images for ax in one.axes) and one.axes[0].get_xlabel() == "frac_train"
    with pytest.raises(AnalysisError):
        phase_diagram(xr.Dataset(attrs={"swept_fields": []}))


# -- the released curve-only sweeps ---------------------------------------------------------------------------------
def test_released_frac_train_sweep_grokking_epoch_rises_as_the_fraction_falls(tmp_path):
    import scipy.stats
    import torch

    from nanda import nanda_path
    from mechgrok.sweep.released import ingest_released_sweep

    f = nanda_path("mod_addition_frac_train_sweep.pth")
    tree = ingest_released_sweep(f, tmp_path / "frac", figures=True)
    g = tree["grokking_epoch"]
    fracs, losses = torch.load(f, weights_only=True)
    for i, frac in enumerate(fracs):  # the rule, with a plain loop over the file's own test curve
        expect = next((float(j) for j, v in enumerate(losses[2 * i + 1]) if v <= 0.1), np.nan)
        assert float(g.sel(frac_train=frac)) == expect
    falling = g.sortby("frac_train", ascending=False)  # 0.95, 0.9, ..., 0.25
    steps = list(zip(falling["frac_train"].values[:-1], falling["frac_train"].values[1:], np.diff(falling.values)))
    # grokking gets later at every step down from 0.7 (222 epochs) to 0.25 (21,848 epochs) ...
    assert all(d > 0 for a, b, d in steps if a <= 0.7)
    # ... and the one exception in the data is 0.8 -> 0.7, where both runs generalise within 260 epochs, about as
    # fast as they memorise (true for every loss threshold from 1 to 3e-6 nats; docs/sweeps.md)
    assert [(a, b) for a, b, d in steps if d <= 0] == [(0.8, 0.7)]
    assert float(falling.sel(frac_train=0.8)) < 260
    assert scipy.stats.spearmanr(g["frac_train"].values, g.values).statistic < -0.95
    # grokking is delayed generalisation: the delay from memorisation (train loss <= 0.1) to generalisation
    # (test loss <= 0.1) rises strictly at every step down, over all ten fractions (docs/sweeps.md)
    delay = tree["grokking_delay"]
    expect = {}
    for i, frac in enumerate(fracs):  # the rule, with a plain loop over the file's own curves
        first_train = next(j for j, v in enumerate(losses[2 * i]) if v <= 0.1)
        first_test = next(j for j, v in enumerate(losses[2 * i + 1]) if v <= 0.1)
        expect[frac] = first_test - first_train
    assert {f: float(delay.sel(frac_train=f)) for f in fracs} == expect
    ordered = [expect[f] for f in sorted(fracs, reverse=True)]  # 0.95, 0.9, ..., 0.25
    assert len(ordered) == 10 and all(b > a for a, b in zip(ordered, ordered[1:])), ordered
    assert delay.attrs["units"] == "epochs" and "loss_train" in delay.attrs["rule"]
    assert (tmp_path / "frac" / "figures" / "phase_diagram.png").is_file()
    back = xr.open_zarr(tmp_path / "frac" / "summary.zarr", consolidated=False)
    xr.testing.assert_equal(back["grokking_epoch"].load(), g.to_dataset()["grokking_epoch"])
    xr.testing.assert_equal(back["grokking_delay"].load(), delay.to_dataset()["grokking_delay"])
    assert back["loss_test"].dims == ("frac_train", "epoch")


def test_released_width_scan_ingests_as_a_sweep(tmp_path):
    from nanda import nanda_path
    from mechgrok.sweep.released import released_sweep

    tree = released_sweep(nanda_path("no_wd_width_scan.pth"))
    assert tree.attrs["swept_fields"] == ["d_model"] and tree.sizes["d_model"] == 8
    g = tree["grokking_epoch"]
    # widths 8 and 16 never fit the test set (final test loss 0.87, 0.25); 32 does (3.6e-8)
    assert g.sel(d_model=[8, 16]).isnull().all() and np.isfinite(float(g.sel(d_model=32)))
    final = tree["final_loss_test"]
    np.testing.assert_allclose(final.sel(d_model=[8, 16, 32]).values, [0.87, 0.25, 3.6e-8], rtol=0.06)
    assert phase_diagram(tree.to_dataset()).axes[0].get_xlabel() == "d_model"


def test_run_summary_takes_the_llc_and_algorithm_metrics_where_computed():
    t = np.arange(0, 2000, 100)

    def fall(start, end):
        return 10.0 ** np.interp(t, [0, start, end, 1900], [0, 0, -3, -3])

    epochs = np.arange(2000)
    traj = xr.Dataset({"loss_test": ("epoch", 10.0 ** np.interp(epochs, [0, 1200, 1500, 1999], [0.6, 0.6, -3, -3]))},
                      coords={"epoch": epochs}, attrs={"p": 23})
    tree = xr.DataTree.from_dict({
        "/": xr.Dataset(attrs={"p": 23}),
        "/ablation": xr.Dataset({"loss_test": ("checkpoint", fall(1200, 1500)),
                                 "restricted_loss_test": ("checkpoint", fall(900, 1200))}, coords={"checkpoint": t}),
        "/llc": xr.Dataset({"llc_mean": ("checkpoint", np.interp(t[::2], [0, 600, 1000, 1900], [50, 50, 10, 10]))},
                           coords={"checkpoint": t[::2]}),
        "/algorithm": xr.Dataset({"circularity": ("checkpoint", np.linspace(0, 0.9, t.size))}, coords={"checkpoint": t}),
    })
    s = run_summary(traj, tree)
    llc = s["measures"]["llc_mean"]
    assert llc.sizes["checkpoint"] == t.size and llc.isel(checkpoint=slice(1, None, 2)).isnull().all()
    assert float(s["final_circularity"]) == pytest.approx(0.9)
    assert float(s["grokking_epoch"]) == float(np.argmax(traj["loss_test"].values <= 0.1))
    lt = lead_times(s["measures"].to_dataset())
    assert float(lt["lead"].sel(measure="restricted_loss_test")) == 300.0
    # the test loss starts its drop at 1300, the LLC (estimated every 200 epochs) its fall at 800
    assert float(lt["lead"].sel(measure="llc_mean")) == 500.0


def test_cli_sweep_ingests_a_released_sweep_and_refuses_a_bad_spec(tmp_path):
    from typer.testing import CliRunner

    from nanda import nanda_path
    from mechgrok_cli.main import app

    runner = CliRunner()
    res = runner.invoke(app, ["sweep", str(nanda_path("no_wd_width_scan.pth")), "--out", str(tmp_path / "w"),
                              "--no-figures"])
    assert res.exit_code == 0, res.output
    assert "8 runs over d_model" in res.output and (tmp_path / "w" / "summary.zarr" / "zarr.json").is_file()
    bad = tmp_path / "bad.toml"
    bad.write_text("[grid]\nfrac_train = [0.5, 2.0]\n")
    res = runner.invoke(app, ["sweep", str(bad)])
    assert res.exit_code == 2 and "frac_train" in res.output and str(bad) in res.output.replace("\n", "")


def test_a_second_sweep_on_the_same_folder_fails_at_once(tmp_path):
    """Two sweeps on one output (issue 16): while another process holds the folder's sweep lock (as a running
    `mechgrok sweep` does), run_sweep refuses at once with a ConfigError naming the folder; nothing is written."""
    import subprocess
    import sys

    from mechgrok.sweep import run_sweep

    root = tmp_path / "sweep"
    root.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from mechgrok.store.lock import hold\n"
         f"with hold({str(root)!r}, kind='sweep', timeout=0):\n    print('held', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        spec = SweepSpec.from_dict({"name": "t", "base": {"p": 7, "num_epochs": 2}, "grid": {"seed": [0, 1]}})
        with pytest.raises(ConfigError, match="another mechgrok sweep is running"):
            run_sweep(spec, root, processes=False, figures=False)
        assert [p.name for p in root.iterdir()] == []
    finally:
        holder.kill()
        holder.wait()
