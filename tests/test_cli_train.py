"""``mechgrok train`` errors: one red line, exit 2, no traceback."""

import re

from typer.testing import CliRunner

from mechgrok_cli.main import app

runner = CliRunner()


def test_unknown_preset(tmp_path):
    res = runner.invoke(app, ["train", str(tmp_path / "r"), "--preset", "huge", "--quiet"])
    assert res.exit_code == 2
    assert "unknown preset" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "r").exists()


def test_invalid_config_file(tmp_path):
    cfg = tmp_path / "c.json"
    cfg.write_text('{"p": 12}')
    res = runner.invoke(app, ["train", str(tmp_path / "r"), "--config", str(cfg), "--quiet"])
    assert res.exit_code == 2
    assert "odd integer" in res.output and "c.json" in res.output
    assert not (tmp_path / "r").exists()


def test_existing_run_dir(tmp_path):
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "x").write_text("")
    res = runner.invoke(app, ["train", str(tmp_path / "r"), "--preset", "quick", "--quiet"])
    assert res.exit_code == 2
    assert "already exists" in res.output


def test_trains_with_progress_bar(tmp_path):
    """Without --quiet the bar is drawn (on a non-terminal, once at the end): its label, the bar, the epochs done
    of the total and the latest losses and accuracies; with --quiet none of it."""
    cfg = tmp_path / "c.json"
    cfg.write_text('{"p": 11, "d_model": 8, "n_heads": 2, "d_head": 4, "d_mlp": 16, "num_epochs": 30, "checkpoint_every": 10, "frac_train": 0.5}')
    res = runner.invoke(app, ["train", str(tmp_path / "r"), "--config", str(cfg)])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "r" / "checkpoints" / "epoch_000030.safetensors").is_file()
    bar = [line for line in res.output.splitlines() if "30/30" in line]
    assert len(bar) == 1, res.output
    assert re.search(r"^train \S*━+\S* 30/30 train \d\S* / test \d\S*\s+acc \d\.\d{3} / \d\.\d{3}", bar[0]), bar[0]
    quiet = runner.invoke(app, ["train", str(tmp_path / "q"), "--config", str(cfg), "--quiet"])
    assert quiet.exit_code == 0, quiet.output
    assert "━" not in quiet.output and "30/30" not in quiet.output and "acc" not in quiet.output
    assert "wrote" in quiet.output


def test_threads_option_is_recorded_and_validated(tmp_path):
    """--threads overrides the config (recorded in config.json and run.json); a bad count is one red line."""
    import json

    cfg = tmp_path / "c.json"
    cfg.write_text('{"p": 11, "d_model": 8, "n_heads": 2, "d_head": 4, "d_mlp": 16, "num_epochs": 4, "checkpoint_every": 2, "frac_train": 0.5}')
    res = runner.invoke(app, ["train", str(tmp_path / "r"), "--config", str(cfg), "--threads", "2", "--quiet"])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "r" / "config.json").read_text())["threads"] == 2
    assert json.loads((tmp_path / "r" / "run.json").read_text())["environment"]["threads"] == 2
    bad = runner.invoke(app, ["train", str(tmp_path / "b"), "--config", str(cfg), "--threads", "0", "--quiet"])
    assert bad.exit_code == 2 and "threads" in bad.output and "Traceback" not in bad.output
    assert not (tmp_path / "b").exists()
