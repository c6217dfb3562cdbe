"""The pipeline behind ``mechgrok analyze``: consistency with the individual analyses, the store, the report."""

from __future__ import annotations

import json

import numpy as np
import pytest
import xarray as xr
from typer.testing import CliRunner

from mechgrok_cli.main import app
from mechgrok.errors import AnalysisError, StoreError
from mechgrok.pipeline import ANALYSES, analyze
from mechgrok.store.analysis_store import open_analysis, write_analysis
from mechgrok.report import report_markdown, summarise
from mechgrok.engine import select_epochs


def test_one_pass_results_equal_the_standalone_analyses(fixture_trajectory, fixture_analysis):
    from mechgrok.analyses.modular.ablation import ablation_losses
    from mechgrok.analyses.modular.attention import attention_fit
    from mechgrok.analyses.modular.key_frequencies import key_frequencies
    from mechgrok.analyses.modular.logits import logit_structure
    from mechgrok.analyses.modular.neurons import neuron_clusters

    ds = fixture_trajectory
    sub = [0, 30, 45, 60]  # a few checkpoints, recomputed independently
    kf = key_frequencies(ds)
    key = [int(k) for k in kf["key_freqs"].values]
    assert fixture_analysis.attrs["key_freqs"] == key
    tree = {name: fixture_analysis[name].to_dataset(inherit=False).isel(checkpoint=sub)
            for name in ("neurons", "attention", "logits", "ablation")}
    alone = ablation_losses(ds.isel(checkpoint=sub), key_freqs=key, all_freqs=True)
    for name in ("loss_train", "loss_test", "restricted_loss_all", "excluded_loss_full", "block3x3_loss_all"):
        np.testing.assert_allclose(tree["ablation"][name].values, alone[name].values, rtol=1e-12)
    np.testing.assert_allclose(tree["ablation"]["excluded_loss"].values, alone["excluded_loss"].values, rtol=1e-12)
    cl = neuron_clusters(ds.isel(checkpoint=sub))
    np.testing.assert_array_equal(tree["neurons"]["cluster"].values, cl["cluster"].values)
    np.testing.assert_allclose(tree["neurons"]["frac_explained"].values, cl["frac_explained"].values, rtol=1e-12)
    at = attention_fit(ds.isel(checkpoint=sub))
    np.testing.assert_allclose(tree["attention"]["head_fve"].values, at["head_fve"].values, rtol=1e-12)
    lg = logit_structure(ds.isel(checkpoint=sub), key_freqs=key)
    np.testing.assert_allclose(tree["logits"]["frac_var_key"].values, lg["frac_var_key"].values, rtol=1e-12)
    # every per-checkpoint group is labelled by the epochs of the trajectory
    for name in ("neurons", "attention", "logits", "ablation", "fourier_norms", "measures"):
        np.testing.assert_array_equal(fixture_analysis[name]["checkpoint"].values, ds["checkpoint"].values)


def test_model_losses_agree_with_the_training_metrics(fixture_trajectory, fixture_analysis):
    """The analysis loss (p classes) and the trainer's (p + 1 classes) differ only by the tiny '=' mass."""
    ab = fixture_analysis["ablation"].to_dataset(inherit=False)
    trained = fixture_trajectory["acc_test"].sel(epoch=ab["checkpoint"].values).values
    np.testing.assert_allclose(ab["acc_test"].values, trained, atol=1e-12)
    late = ab["checkpoint"].values >= 2500
    np.testing.assert_allclose(ab["loss_test"].values[late],
                               fixture_trajectory["loss_test"].sel(epoch=ab["checkpoint"].values[late]).values, rtol=0.05)


def test_fixture_run_tells_the_papers_story(fixture_analysis):
    s = summarise(fixture_analysis)
    assert s["key_frequencies"]["sources_agree"]
    ph = s["phases"]
    ends = [ph[k]["epoch"] for k in ("memorisation_end", "circuit_formation_end", "cleanup_end")]
    assert all(ph[k]["found"] for k in ("memorisation_end", "circuit_formation_end", "cleanup_end"))
    assert ends == sorted(ends) and len(set(ends)) == 3
    final = s["losses"]["final"]
    assert final["acc_test"] == 1.0
    assert final["restricted_loss_all"] <= final["loss_all"]  # the circuit alone does at least as well
    assert final["excluded_loss_full"] > 1.0  # and without it the model is lost
    assert s["logit_structure"]["fraction_of_logit_variance_explained_by_key_freqs"] > 0.9
    assert set(h["freq"] for h in s["heads"]) <= set(s["key_frequencies"]["set"])


def test_write_and_reopen(tmp_path, fixture_analysis):
    path = write_analysis(fixture_analysis, tmp_path / "analysis.zarr")
    again = open_analysis(path)
    assert set(again.children) == set(fixture_analysis.children)
    for name in fixture_analysis.children:
        xr.testing.assert_allclose(again[name].to_dataset(inherit=False).load(),
                                   fixture_analysis[name].to_dataset(inherit=False), rtol=1e-12)
    assert summarise(again) == summarise(fixture_analysis)
    # no temporary left behind (the lock file of mechgrok.store.lock stays, empty, as filelock leaves it)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".") and not p.name.endswith(".lock")]
    with pytest.raises(StoreError, match="already exists"):
        write_analysis(fixture_analysis, path, overwrite=False)
    with pytest.raises(StoreError, match="not a Zarr store"):
        open_analysis(tmp_path)


def test_report_is_complete(fixture_analysis):
    s = summarise(fixture_analysis)
    for key in ("key_frequencies", "clusters", "losses", "logit_structure", "heads", "phases", "weights"):
        assert key in s
    json.dumps(s)  # serialisable
    md = report_markdown(s)
    for heading in ("Key frequencies", "Neuron clusters", "Losses", "Logit structure", "Attention heads", "Phases"):
        assert f"## {heading}" in md
    sizes = s["clusters"]["sizes"]
    assert sum(sizes.values()) == fixture_analysis["reference"].sizes["d_mlp"]


def test_subsets_and_errors(fixture_trajectory):
    ds = fixture_trajectory
    tree = analyze(select_epochs(ds, [0, 1500]), analyses=["measures"])
    assert set(tree.children) == {"measures"}
    np.testing.assert_array_equal(tree["measures"]["checkpoint"].values, [0, 1500])
    with pytest.raises(AnalysisError, match=r"no checkpoints at epochs \[7\].*61 checkpoints, epochs 0..3000"):
        select_epochs(ds, [0, 7])
    with pytest.raises(AnalysisError, match="no checkpoints selected"):
        analyze(ds.isel(checkpoint=[]), analyses=["measures"])
    tree = analyze(select_epochs(ds, [3000]), analyses=["ablation"])
    assert set(tree.children) == {"key_frequencies", "ablation"}  # dependency added
    with pytest.raises(AnalysisError, match="unknown analyses"):
        analyze(ds, analyses=["tea"])
    with pytest.raises(AnalysisError, match="no checkpoint at epoch 123"):
        analyze(ds, reference=123)
    with pytest.raises(AnalysisError, match="no key frequencies"):
        analyze(ds, reference=0, analyses=["ablation"])


#: Fast LLC settings (as in tests/test_llc.py): a few short chains, enough to run the pipeline's LLC stage.
LLC_FAST = dict(num_chains=2, num_burnin=5, num_draws=10, epsilon=1e-4, seed=4)


def test_every_listed_analysis_writes_its_group(fixture_trajectory, tmp_path):
    """Each name of ANALYSES yields its own group, with data, in the written analysis.zarr; the LLC group is the
    LLC of the analysed checkpoints with the options given."""
    from mechgrok.analyses.llc import llc_trajectory

    assert sorted(ANALYSES) == sorted(["key_frequencies", "neurons", "attention", "logits", "algorithm", "ablation",
                                       "fourier_norms", "measures", "competition", "slingshots", "phases",
                                       "reference", "llc"])
    ds = select_epochs(fixture_trajectory, [0, 1500, 3000])
    tree = analyze(ds, analyses=list(ANALYSES), llc_every=1, llc_options=LLC_FAST)
    stored = open_analysis(write_analysis(tree, tmp_path / "analysis.zarr"))
    assert set(stored.children) == set(ANALYSES)
    assert sorted(stored.attrs["analyses"]) == sorted(ANALYSES)
    for name in ANALYSES:
        group = stored[name].to_dataset(inherit=False)
        assert group.data_vars, f"{name}: empty group"
        xr.testing.assert_allclose(group.load(), tree[name].to_dataset(inherit=False), rtol=1e-12)
    llc = stored["llc"].to_dataset(inherit=False)
    np.testing.assert_array_equal(llc["checkpoint"].values, [0, 1500, 3000])
    assert np.isfinite(llc["llc_mean"].values).all() and llc.sizes["chain"] == 2
    alone = llc_trajectory(ds, **LLC_FAST)  # each checkpoint's chains are seeded by (seed, epoch, chain)
    np.testing.assert_allclose(llc["llc_chain"].values, alone["llc_chain"].values, rtol=1e-6)


def test_llc_runs_only_when_asked_on_every_nth_checkpoint(fixture_trajectory, fixture_analysis):
    assert set(fixture_analysis.children) == set(ANALYSES) - {"llc"}  # the default: every analysis but the LLC
    ds = select_epochs(fixture_trajectory, [0, 1500, 3000])
    tree = analyze(ds, analyses=["measures"], llc=True, llc_every=2, llc_options=LLC_FAST)
    assert set(tree.children) == {"measures", "llc"}
    np.testing.assert_array_equal(tree["llc"]["checkpoint"].values, [0, 3000])  # every 2nd, and the last
    assert np.isfinite(tree["llc"]["llc_mean"].values).all()


runner = CliRunner()


def test_cli_analyze_writes_everything(tmp_path, fixture_run):
    out = tmp_path / "out"
    res = runner.invoke(app, ["analyze", str(fixture_run), "--out", str(out), "--quiet", "--checkpoints", "0:3000:500"])
    assert res.exit_code == 0, res.output
    assert (out / "analysis.zarr" / "zarr.json").is_file()
    report = json.loads((out / "report.json").read_text())
    assert report["n_checkpoints"] == 7 and report["reference_checkpoint"] == 3000
    assert "Key frequencies" in (out / "report.md").read_text()
    assert "key frequencies" in res.output


@pytest.mark.parametrize(
    "args, message",
    [
        (["--only", "tea"], "unknown analyses"),
        (["--reference", "123"], "no checkpoint at epoch 123"),
        (["--checkpoints", "a:b"], "cannot parse"),
    ],
)
def test_cli_analyze_errors(tmp_path, fixture_run, args, message):
    out = tmp_path / "out"
    res = runner.invoke(app, ["analyze", str(fixture_run), "--out", str(out), "--quiet", *args])
    assert res.exit_code == 2
    assert message in res.output and "Traceback" not in res.output
    assert not out.exists()


def test_cli_analyze_missing_source(tmp_path):
    res = runner.invoke(app, ["analyze", str(tmp_path / "nothing"), "--quiet"])
    assert res.exit_code == 2
    assert "Traceback" not in res.output


def test_released_model_end_to_end():
    """The authors' no-weight-decay model (frac 0.9 split rebuilt with seed 0) through the whole pipeline."""
    from nanda import load_nanda_model

    ds = load_nanda_model("mod_addition_no_wd.pth")
    s = summarise(analyze(ds))
    assert s["skipped"] == {"phases": "needs at least 3 checkpoints, the trajectory has 1",
                            "competition": "bumps need at least 3 checkpoints, the trajectory has 1"}
    assert s["key_frequencies"]["set"] == [36, 52] and s["key_frequencies"]["sources_agree"]
    final = s["losses"]["final"]
    assert final["loss_train"] == pytest.approx(float(ds["loss_train"].values[-1]), rel=0.02)  # 1.68e-10 saved
    assert final["acc_train"] == 1.0 and final["acc_test"] == 1.0
    assert final["restricted_loss_all"] < final["loss_all"] < 1e-6 < 1.0 < final["excluded_loss_full"]
    with pytest.raises(AnalysisError, match="at least 3 checkpoints"):
        analyze(ds, analyses=["phases"])


def _phases_tree(measures: xr.Dataset, *, n_checkpoints: int) -> xr.DataTree:
    """A stored analysis holding only the phases of planted progress curves."""
    from mechgrok.analyses.phases import find_phases

    last = int(measures["checkpoint"].values[-1])
    root = xr.Dataset(attrs={"p": 53, "reference_checkpoint": last, "n_checkpoints": n_checkpoints,
                             "analyses": ["phases"], "skipped": "{}"})
    return xr.DataTree.from_dict({"/": root, "phases": find_phases(measures)})


def test_report_marks_uncertain_phase_points():
    from test_phases import planted_measures, unsigned_measures

    s = summarise(_phases_tree(unsigned_measures(), n_checkpoints=1001))
    json.dumps(s)
    ph = s["phases"]
    assert all(v["found"] for v in ph.values())
    assert {k: v["certain"] for k, v in ph.items()} == {
        "start": True, "memorisation_end": False, "circuit_formation_end": False, "cleanup_end": False, "final": True}
    assert ph["cleanup_end"]["failed_checks"] == ["cleanup: sum of squared weights falls"]
    assert len(ph["circuit_formation_end"]["failed_checks"]) == 4 and ph["start"]["failed_checks"] == []
    md = report_markdown(s)
    e = ph["cleanup_end"]["epoch"]
    assert f"| cleanup_end | {e} (uncertain: check cleanup: sum of squared weights falls failed) |" in md
    e = ph["circuit_formation_end"]["epoch"]
    assert f"| circuit_formation_end | {e} (uncertain: checks circuit formation: excluded loss rises, " in md
    assert f"| start | 0 | first checkpoint |" in md
    # when every signature holds, nothing is marked
    s = summarise(_phases_tree(planted_measures(), n_checkpoints=1001))
    assert all(v["certain"] and v["failed_checks"] == [] for v in s["phases"].values())
    assert "uncertain" not in report_markdown(s)


def _losses_summary(reference: int, final: int, n_checkpoints: int) -> dict:
    names = ["loss_all", "acc_test"]
    return {"p": 53, "n_checkpoints": n_checkpoints, "reference_checkpoint": reference, "mechgrok_version": "x",
            "losses": {"final_checkpoint": final, "final": dict(zip(names, [0.125, 1.0])),
                       "reference": dict(zip(names, [2.5, 0.5])), "excluded_loss_per_key_freq_final": {9: 3.0}}}


def test_report_counts_and_losses_columns():
    md = report_markdown(_losses_summary(3000, 3000, 1))
    assert "p = 53, 1 checkpoint, reference checkpoint" in md
    assert "| measure | final (= reference, epoch 3000) |\n|---|---|\n| loss_all | 0.125 |" in md
    assert "| reference" not in md
    md = report_markdown(_losses_summary(1500, 3000, 2))
    assert "p = 53, 2 checkpoints, reference checkpoint" in md
    assert "| measure | reference (epoch 1500) | final (epoch 3000) |" in md
    assert "| loss_all | 2.5 | 0.125 |" in md


def test_fixture_report_has_one_loss_column(fixture_analysis):
    s = summarise(fixture_analysis)
    assert s["losses"]["final_checkpoint"] == s["reference_checkpoint"]
    md = report_markdown(s)
    assert f"| measure | final (= reference, epoch {s['reference_checkpoint']}) |" in md
    assert all(isinstance(v["certain"], bool) and isinstance(v["failed_checks"], list) for v in s["phases"].values())
