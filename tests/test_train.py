"""The trainer: run directory, determinism, resume after SIGKILL, errors, and the committed fixture."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from mechgrok.config import Config, preset
from mechgrok.tasks.modular_arithmetic import split_indices
from mechgrok.errors import RunDirError
from mechgrok.rundir import list_checkpoints, read_checkpoint, read_config, read_metrics, read_split
from mechgrok.train import train

TINY = Config(p=23, frac_train=0.5, d_model=16, n_heads=2, d_head=8, d_mlp=32, lr=3e-3, num_epochs=60, checkpoint_every=20)


def test_run_directory_layout(tmp_path):
    run = train(TINY, tmp_path / "run")
    assert json.loads((run / "run.json").read_text())["complete"] is True
    assert read_config(run) == TINY
    assert [e for e, _ in list_checkpoints(run)] == [0, 20, 40, 60]
    m = read_metrics(run)
    assert m["epoch"].tolist() == list(range(61))
    assert m["train_loss"].dtype == np.float64
    assert abs(m["train_loss"][0] - np.log(TINY.d_vocab_out)) < 0.5  # starts near uniform
    train_idx, test_idx = read_split(run)
    ref_train, ref_test = split_indices(23, 0.5, 0)
    assert train_idx.tolist() == ref_train.tolist() and test_idx.tolist() == ref_test.tolist()
    sd = read_checkpoint(list_checkpoints(run)[-1][1])
    assert sd["embed.W_E"].shape == (24, 16) and sd["embed.W_E"].dtype == torch.float32


def test_deterministic(tmp_path):
    a = train(TINY, tmp_path / "a")
    b = train(TINY, tmp_path / "b")
    for (_, fa), (_, fb) in zip(list_checkpoints(a), list_checkpoints(b)):
        sa, sb = read_checkpoint(fa), read_checkpoint(fb)
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert (a / "metrics.csv").read_text() == (b / "metrics.csv").read_text()


def test_existing_run_dir_is_refused(tmp_path):
    train(TINY, tmp_path / "run")
    with pytest.raises(RunDirError, match="already exists"):
        train(TINY, tmp_path / "run")
    train(TINY, tmp_path / "run", overwrite=True)
    other = tmp_path / "notarun"
    other.mkdir()
    (other / "precious.txt").write_text("keep me")
    with pytest.raises(RunDirError, match="not a mechgrok run directory"):
        train(TINY, other, overwrite=True)
    assert (other / "precious.txt").exists()


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-c", "from mechgrok_cli.main import main; main()", *args]


@pytest.mark.slow
def test_resume_after_sigkill_gives_identical_weights(tmp_path):
    cfg = TINY.replace(num_epochs=2000, checkpoint_every=25)
    cfg_file = tmp_path / "cfg.json"
    cfg_file.write_text(cfg.to_json())
    full = train(cfg, tmp_path / "full")

    run = tmp_path / "killed"
    proc = subprocess.Popen(_cli("train", str(run), "--config", str(cfg_file), "--quiet"))
    deadline = time.time() + 120
    while time.time() < deadline and len(list_checkpoints(run)) < 8:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    n_before = len(list_checkpoints(run))
    assert 8 <= n_before < 81, "the process was not killed mid-run"
    assert json.loads((run / "run.json").read_text())["complete"] is False

    res = subprocess.run(_cli("train", str(run), "--resume", "--quiet"), capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    ckpts_full, ckpts_resumed = list_checkpoints(full), list_checkpoints(run)
    assert [e for e, _ in ckpts_full] == [e for e, _ in ckpts_resumed]
    for (_, fa), (_, fb) in zip(ckpts_full, ckpts_resumed):
        sa, sb = read_checkpoint(fa), read_checkpoint(fb)
        for k in sa:
            assert torch.equal(sa[k], sb[k]), f"{fb.name}: {k} differs after resume"
    assert (full / "metrics.csv").read_text() == (run / "metrics.csv").read_text()


def test_fixture_memorises_then_groks(fixture_run):
    cfg = read_config(fixture_run)
    assert cfg == preset("quick")
    m = read_metrics(fixture_run)
    memorised = (m["train_acc"] >= 0.99) & (m["test_acc"] < 0.5)
    epochs = m["epoch"][memorised]
    assert epochs.size >= 500, "the memorisation stretch should last hundreds of epochs"
    # one contiguous stretch
    assert np.all(np.diff(epochs) == 1)
    assert m["test_acc"][-1] >= 0.99 and m["train_acc"][-1] == 1.0
    assert m["epoch"][-1] == cfg.num_epochs
    assert len(list_checkpoints(fixture_run)) == cfg.num_epochs // cfg.checkpoint_every + 1
    # the committed run only: README's main command writes its analysis (analysis.zarr, figures/, report.*) into
    # the same folder, and the README's test command may run after it in the same checkout
    outputs = {"analysis.zarr", "figures", "report.json", "report.md"}
    size = sum(f.stat().st_size for f in fixture_run.rglob("*")
               if f.is_file() and f.relative_to(fixture_run).parts[0] not in outputs)
    assert size < 15 * 2**20
