"""What a new user meets first. Files others can read: everything mechgrok writes gets the mode the umask gives a
new file.

The atomic writers create their temporary files with ``tempfile.mkstemp`` (0600 whatever the umask); they must set
the umask's mode before renaming into place. Checked under umask 022 (files 0644, folders 0755) and 027 (0640,
0750), for a fresh ``mechgrok train --zarr`` (run directory and trajectory store), ``mechgrok ingest``, the
analysis store, the reports and the explorer page. Then ``mechgrok --version``, ``train`` without a preset, the
split ``ingest`` assumes, and the progress reports of the long library functions.
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

import pytest
from typer.testing import CliRunner

import mechgrok
from mechgrok_cli.main import app

runner = CliRunner()


@pytest.fixture(params=[0o022, 0o027], ids=["umask022", "umask027"])
def umask(request):
    old = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(old)


def _modes(root: Path) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {"files": set(), "dirs": set()}
    for dirpath, dirnames, filenames in os.walk(root):
        found["dirs"].add(oct(stat.S_IMODE(os.stat(dirpath).st_mode)))
        for f in filenames:
            found["files"].add(oct(stat.S_IMODE(os.stat(Path(dirpath) / f).st_mode)))
    return found


def test_train_ingest_analysis_respect_umask(umask, tiny_config, tmp_path, fixture_trajectory):
    want = {"files": {oct(0o666 & ~umask)}, "dirs": {oct(0o777 & ~umask)}}
    cfg = tmp_path / "tiny.json"
    cfg.write_text(tiny_config.to_json())
    run = tmp_path / "run"
    res = runner.invoke(app, ["train", str(run), "--config", str(cfg), "--zarr", str(tmp_path / "run.zarr"), "-q"])
    assert res.exit_code == 0, res.output
    assert _modes(run) == want and len(list(run.rglob("*"))) > 5
    assert _modes(tmp_path / "run.zarr") == want
    res = runner.invoke(app, ["ingest", str(run), "--out", str(tmp_path / "ingested.zarr")])
    assert res.exit_code == 0, res.output
    assert _modes(tmp_path / "ingested.zarr") == want
    # the analysis store, the reports and the explorer page
    from mechgrok.explorer import write_explorer
    from mechgrok.rundir import write_atomic

    out = tmp_path / "analysis"
    tree = mechgrok.analyze(fixture_trajectory.isel(checkpoint=[-2, -1]), analyses=["fourier_norms", "ablation"])
    mechgrok.write_analysis(tree, out / "analysis.zarr")
    write_atomic(out / "report.md", "# report\n")
    write_explorer(tree, out / "explorer.html")
    assert _modes(out) == want


def test_version():
    res = runner.invoke(app, ["--version"])
    assert res.exit_code == 0 and res.output.strip() == f"mechgrok {mechgrok.__version__}"


def test_train_without_preset_says_quick(tmp_path, monkeypatch):
    """No --preset/--config: the quick preset (not the 40,000-epoch paper run), and the command says so."""
    seen = {}

    def fake_train(cfg, run_dir, **kwargs):  # stands in for the minute of training; the choice is what is tested
        seen["cfg"] = cfg

    monkeypatch.setattr("mechgrok.train.train", fake_train)
    res = runner.invoke(app, ["train", str(tmp_path / "run"), "-q"])
    assert res.exit_code == 0, res.output
    assert seen["cfg"].preset == "quick" and seen["cfg"].num_epochs == 3000
    assert "no --preset or --config: training the quick preset" in " ".join(res.output.split())


def test_ingest_of_a_bare_state_dict_states_the_split(tmp_path):
    import torch
    from safetensors.torch import load_file

    src = tmp_path / "model.pth"
    torch.save(load_file("fixtures/quick-run/checkpoints/epoch_003000.safetensors"), src)
    res = runner.invoke(app, ["ingest", str(src), "--out", str(tmp_path / "m.zarr"), "--frac-train", "0.4"])
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())
    assert re.search(r"assumed split: seed 0, frac_train 0\.4 ", text), text
    ds = mechgrok.open_run(tmp_path / "m.zarr")
    assert (ds.attrs["split"], ds.attrs["split_seed"], ds.attrs["split_frac_train"]) == ("rebuilt", 0, 0.4)


def test_long_functions_report_progress(fixture_trajectory, capsys):
    """ablation_losses and progress_measures take the progress callback of engine.run, or True for a rich bar."""
    ds = fixture_trajectory.isel(checkpoint=[0, -1])
    calls = []
    out = mechgrok.ablation_losses(ds, key_freqs=[9, 17, 25], block3x3=False, chunk=1,
                                   progress=lambda stage, done, total: calls.append((stage, done, total)))
    assert calls == [("ablation", 1, 2), ("ablation", 2, 2)]
    calls.clear()
    pm = mechgrok.progress_measures(ds, key_freqs=[9, 17, 25], chunk=1,
                                    progress=lambda stage, done, total: calls.append((stage, done, total)))
    assert calls == [("progress measures", 1, 2), ("progress measures", 2, 2)]
    assert float(pm["loss_test"][-1]) == pytest.approx(float(out["loss_test"][-1]), rel=1e-12)
    mechgrok.ablation_losses(ds.isel(checkpoint=[-1]), key_freqs=[9, 17, 25], block3x3=False, progress=True)
    assert "ablation" in capsys.readouterr().err  # the rich bar, on stderr
