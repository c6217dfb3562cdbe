"""Regression tests for the defects of issue 16 ("Defects found on main"), each reproduced as a hostile user would.

Every bad input ends in one :class:`MechgrokError` line naming the file and the problem (the command line: one red
line, exit 2), never a traceback, a wrong result or a run that cannot be recovered.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from mechgrok.config import Config
from mechgrok.errors import CheckpointError, ConfigError, RunDirError, UnsafeCheckpointError
from mechgrok.rundir import list_checkpoints, read_checkpoint
from mechgrok.store import open_run
from mechgrok.train import train
from mechgrok_cli.main import app

from planted import paper_state_dict

runner = CliRunner()
NOT_UTF8 = b'{"p": 11, "note": "\xff\xfe caf\xe9"}'


def copy_run(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("analysis.zarr", "report.*", ".*"))
    return dst


def one_line_naming(err: BaseException, path: Path) -> str:
    text = str(err)
    assert "\n" not in text and str(path) in text, text
    return text


def cli_fails(argv: list[str], *fragments: str) -> str:
    result = runner.invoke(app, argv)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and "error:" in result.output, result.output
    for f in fragments:
        assert f in result.output.replace("\n", ""), (f, result.output)
    return result.output


@pytest.mark.parametrize("name", ["config.json", "run.json", "metrics.csv"])
def test_non_utf8_files_are_one_line_errors(tiny_run, tmp_path, name):
    run = copy_run(tiny_run, tmp_path / "run")
    (run / name).write_bytes(NOT_UTF8)
    with pytest.raises(RunDirError, match=f"{name} is not UTF-8 text") as info:
        open_run(run)
    one_line_naming(info.value, run / name)
    cli_fails(["analyze", str(run), "--quiet", "--out", str(tmp_path / "out")], "not UTF-8")
    assert not (tmp_path / "out" / "analysis.zarr").exists()


def test_folder_named_metrics_csv(tiny_run, tmp_path):
    run = copy_run(tiny_run, tmp_path / "run")
    (run / "metrics.csv").unlink()
    (run / "metrics.csv").mkdir()
    with pytest.raises(RunDirError, match="metrics.csv is a folder") as info:
        open_run(run)
    one_line_naming(info.value, run / "metrics.csv")
    cli_fails(["ingest", str(run), "--out", str(tmp_path / "x.zarr")], "is a folder")


@pytest.mark.parametrize("split, problem", [
    ({"train": [[1, 2], [3, 4]], "test": []}, "not a flat list"),
    ({"train": [0, -1, 5], "test": [7]}, "holds index -1"),
    ({"train": [0, 121], "test": [7]}, "holds index 121, outside 0..120"),
    ({"train": [0, 1, 1], "test": [7]}, "holds an index twice"),
    ({"train": [0, 1], "test": [1, 2]}, "share indices"),
    ({"train": [0, 1.5], "test": [2]}, "not a flat list"),
    ({"train": [0, True], "test": [2]}, "not a flat list"),
    ({"p": 13, "train": [0], "test": [2]}, "split.json is for p=13"),
    ({"train": "0,1", "test": []}, "expected an object with lists"),
    ([0, 1], "expected an object with lists"),
])
def test_split_json_is_validated(tiny_run, tmp_path, split, problem):
    run = copy_run(tiny_run, tmp_path / "run")
    (run / "split.json").write_text(json.dumps(split))
    with pytest.raises(RunDirError, match=problem.replace("(", r"\(").replace(".", r"\.")) as info:
        open_run(run)
    one_line_naming(info.value, run / "split.json")


def test_checkpoint_epoch_is_checked_against_its_name(tiny_run, tmp_path):
    run = copy_run(tiny_run, tmp_path / "run")
    ckpts = dict(list_checkpoints(run))
    shutil.copyfile(ckpts[5], ckpts[10])  # same shapes, another epoch: a renamed checkpoint
    with pytest.raises(CheckpointError, match="metadata says epoch 5 but its name says 10") as info:
        open_run(run)
    one_line_naming(info.value, ckpts[10])


def test_non_float_checkpoint_is_refused(tiny_run, tmp_path):
    from safetensors.torch import save_file

    run = copy_run(tiny_run, tmp_path / "run")
    f = dict(list_checkpoints(run))[10]
    sd = read_checkpoint(f)
    sd["embed.W_E"] = sd["embed.W_E"].to(torch.int32)
    save_file(sd, str(f), metadata={"epoch": "10"})
    with pytest.raises(CheckpointError, match="embed.W_E has dtype torch.int32"):
        open_run(run)


def test_resume_without_metrics_is_a_clear_error(tiny_config, tmp_path):
    run = tmp_path / "run"
    train(tiny_config.replace(num_epochs=10), run)
    (run / "metrics.csv").unlink()
    with pytest.raises(RunDirError, match="metrics.csv is missing") as info:
        train(tiny_config, run, resume=True)
    one_line_naming(info.value, run)
    cli_fails(["train", str(run), "--resume", "--quiet"], "metrics.csv is missing")


def test_resume_after_a_torn_metrics_row(tiny_config, tmp_path):
    """A row cut short by a killed append (after the last checkpoint) is dropped and written again."""
    cfg = tiny_config.replace(num_epochs=10)
    ref, run = tmp_path / "ref", tmp_path / "run"
    train(cfg, ref)
    train(cfg, run)
    (run / "state.safetensors").unlink()  # as if killed before the first resume state
    text = (run / "metrics.csv").read_text()
    (run / "metrics.csv").write_text(text + "11,0.5")
    train(cfg, run, resume=True)
    assert (run / "metrics.csv").read_text() == (ref / "metrics.csv").read_text()


def _same_weights(a: Path, b: Path) -> None:
    ca, cb = list_checkpoints(a), list_checkpoints(b)
    assert [e for e, _ in ca] == [e for e, _ in cb]
    for (_, fa), (_, fb) in zip(ca, cb):
        sa, sb = read_checkpoint(fa), read_checkpoint(fb)
        assert all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("leftover", ["config", "config+tmp", "config+split+metrics"])
def test_train_killed_before_run_json_recovers(tiny_config, tmp_path, leftover):
    cfg = tiny_config.replace(num_epochs=10)
    ref = tmp_path / "ref"
    train(cfg, ref)
    run = tmp_path / "run"
    run.mkdir()
    shutil.copyfile(ref / "config.json", run / "config.json")
    if "tmp" in leftover:
        (run / ".run.json.k2j4.tmp").write_text('{"format": "mech')
    if "split" in leftover:
        for name in ("split.json", "metrics.csv"):
            shutil.copyfile(ref / name, run / name)
    assert cli_fails(["train", str(run), "--quiet"], "already exists")
    result = runner.invoke(app, ["train", str(run), "--resume", "--quiet"])
    assert result.exit_code == 0, result.output
    _same_weights(ref, run)
    assert not any(f.name.endswith(".tmp") for f in run.iterdir())
    # the same leftovers are replaced by --overwrite
    shutil.rmtree(run)
    run.mkdir()
    shutil.copyfile(ref / "config.json", run / "config.json")
    (run / ".config.json.x1.tmp").write_text("{")
    result = runner.invoke(app, ["train", str(run), "--overwrite", "--quiet", "--config", str(ref / "config.json")])
    assert result.exit_code == 0, result.output
    _same_weights(ref, run)


def test_train_killed_while_writing_config_asks_for_overwrite(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / ".config.json.abcd.tmp").write_text('{"p": 1')
    cli_fails(["train", str(run), "--resume", "--quiet"], "before it wrote config.json", "--overwrite")


def test_resume_with_more_epochs_extends_the_run(tiny_config, tmp_path):
    short, long_ = tiny_config.replace(num_epochs=10), tiny_config.replace(num_epochs=20)
    ref, run = tmp_path / "ref", tmp_path / "run"
    train(long_, ref)
    train(short, run)
    result = runner.invoke(app, ["train", str(run), "--resume", "--epochs", "20", "--quiet"])
    assert result.exit_code == 0, result.output
    _same_weights(ref, run)
    assert Config.from_json((run / "config.json").read_text()).num_epochs == 20
    assert (run / "metrics.csv").read_text() == (ref / "metrics.csv").read_text()
    cli_fails(["train", str(run), "--resume", "--epochs", "15", "--quiet"], "cannot shorten the run")
    with pytest.raises(ConfigError, match="cannot shorten"):
        train(short, run, resume=True, num_epochs=5)
    for option, value in (("--preset", "quick"), ("--seed", "4"), ("--model-seed", "2"), ("--threads", "2"),
                          ("--config", str(run / "config.json"))):
        cli_fails(["train", str(run), "--resume", option, value, "--quiet"], option, "cannot change it")


def test_corrupt_legacy_pth_is_corrupt_not_unsafe(tmp_path):
    """A flipped byte in a class name of a legacy torch file: 'corrupt' without the trust option, and still a
    CheckpointError (not a raw exception) with it."""
    f = tmp_path / "legacy.pth"
    torch.save({"model": paper_state_dict(p=3, d_model=2, n_heads=1, d_head=2, d_mlp=2)}, f,
               _use_new_zipfile_serialization=False)
    data = f.read_bytes()
    for needle, fix in ((b"_rebuild_tensor_v2", b"_rebuild_tensor_v3"), (b"collections", b"cnllections"),
                        (b"torch\n", b"tnrch\n")):
        g = tmp_path / "flipped.pth"
        assert needle in data
        g.write_bytes(data.replace(needle, fix, 1))
        with pytest.raises(CheckpointError, match="corrupt") as info:
            open_run(g)
        assert not isinstance(info.value, UnsafeCheckpointError), needle
        one_line_naming(info.value, g)
        with pytest.raises(CheckpointError):
            open_run(g, trusted=True)
    # a structural flip (an opcode, not a name) is corrupt too
    g = tmp_path / "flipped.pth"
    g.write_bytes(data[:302] + bytes([data[302] ^ 1]) + data[303:])
    with pytest.raises(CheckpointError, match="corrupt") as info:
        open_run(g)
    assert not isinstance(info.value, UnsafeCheckpointError)


def test_analyze_help_warns_about_trust_checkpoint():
    for command in ("analyze", "ingest"):
        result = runner.invoke(app, [command, "--help"], env={"COLUMNS": "300"})
        assert result.exit_code == 0
        assert "arbitrary code" in result.output, command


def test_analyze_killed_after_the_swap_leaves_no_stale_report(fixture_run, tmp_path, monkeypatch):
    """Simulate a kill right after analysis.zarr is swapped in: the old reports are gone (nothing says the old
    analysis is current), and the next analyze completes."""
    import mechgrok

    out = tmp_path / "out"
    argv = ["analyze", str(fixture_run), "--out", str(out), "--quiet", "--checkpoints", "2900,2950,3000",
            "--only", "measures"]
    assert runner.invoke(app, argv).exit_code == 0
    assert (out / "report.json").is_file()
    real = mechgrok.write_analysis

    class Killed(BaseException):
        pass

    def killed_after_swap(tree, path, **kw):
        real(tree, path, **kw)
        raise Killed

    monkeypatch.setattr(mechgrok, "write_analysis", killed_after_swap)
    with pytest.raises(Killed):
        runner.invoke(app, argv, catch_exceptions=False)
    assert (out / "analysis.zarr").is_dir() and not (out / "report.json").exists() and not (out / "report.md").exists()
    monkeypatch.setattr(mechgrok, "write_analysis", real)
    assert runner.invoke(app, argv).exit_code == 0
    assert (out / "report.json").is_file()


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_leftovers_of_killed_writes_are_cleaned_and_a_torn_swap_is_undone(tmp_path):
    """A write killed between moving the old store aside and moving the new one in leaves no store under the
    name: the next write puts the old one back first. Leftover ``.NAME.old-*`` / ``.NAME.tmp-*`` folders of dead
    processes are removed; those of a live process are not."""
    import xarray as xr

    from mechgrok.store.analysis_store import open_analysis, write_analysis

    target = tmp_path / "analysis.zarr"
    tree = xr.DataTree.from_dict({"/": xr.Dataset(attrs={"v": 1}), "/a": xr.Dataset({"x": ("i", np.arange(3.0))})})
    write_analysis(tree, target)
    dead = _dead_pid()
    torn = tmp_path / f".analysis.zarr.old-{dead}-{uuid.uuid4().hex[:8]}"
    os.replace(target, torn)  # killed mid-swap: no store under the name
    live_tmp = tmp_path / f".analysis.zarr.tmp-{os.getppid()}-abcd1234"
    live_tmp.mkdir()
    stale_tmp = tmp_path / f".analysis.zarr.tmp-{dead}-abcd1234"
    stale_tmp.mkdir()
    old_style = tmp_path / ".analysis.zarr.old-deadbeef"
    old_style.mkdir()
    tree2 = xr.DataTree.from_dict({"/": xr.Dataset(attrs={"v": 2}), "/a": xr.Dataset({"x": ("i", np.arange(4.0))})})
    write_analysis(tree2, target)
    assert open_analysis(target).attrs["v"] == 2
    assert not torn.exists() and not stale_tmp.exists() and not old_style.exists()
    assert live_tmp.exists()  # another live process's temporary store is never touched
    leftovers = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".analysis.zarr.") and p.is_dir())
    assert leftovers == [live_tmp.name]


def test_reads_in_a_readonly_location_take_no_lock(tmp_path, monkeypatch):
    """Where no lock file can be made (a read-only copy of released runs), reading goes ahead without one; elsewhere
    the lock file appears beside the target."""
    import mechgrok.store.lock as lock

    with lock.hold(tmp_path / "a"):
        pass
    assert lock.lock_file(tmp_path / "a").is_file()
    monkeypatch.setattr(lock.os, "access", lambda path, mode: False)
    with lock.hold(tmp_path / "b"):
        pass
    assert not lock.lock_file(tmp_path / "b").exists()


def test_a_run_not_trained_here_is_read_without_a_lock_file(fixture_run, tmp_path):
    run = copy_run(fixture_run, tmp_path / "run")
    assert open_run(run).sizes["checkpoint"] == 61
    assert not any(p.name.endswith(".lock") for p in tmp_path.iterdir())
