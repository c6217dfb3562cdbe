"""Crash safety and concurrency with real processes: ``mechgrok`` commands run as subprocesses and are killed by
PID with SIGKILL at random moments (seeded, so every run tries the same moments); concurrent commands on one run
directory or output folder.

``MECHGROK_KILLS`` (default 1) sets how many random kills each command gets after the first.

* ``train``: killed (right after ``config.json`` appears, then mid-training), then resumed: the final weights, every checkpoint and ``metrics.csv`` are
  bit-identical to an uninterrupted run's.
* ``ingest --overwrite`` and ``analyze``: killed while writing; the store under the final name is the previous one
  or the new one, whole: it opens with plain xarray and passes mechgrok's own check
  (:mod:`mechgrok.store.verify`); re-running completes and leaves no temporary folders.
* two ``analyze`` on one output folder: one runs, the other fails at once with a clear error; ``analyze`` (and
  ``open_run``) while ``train`` appends checkpoints: each sees a consistent prefix of the run; a second ``train`` of
  the same run fails at once.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from typer.testing import CliRunner

from mechgrok.config import Config
from mechgrok.errors import RunDirError
from mechgrok.rundir import list_checkpoints, read_checkpoint
from mechgrok.store import open_run
from mechgrok.store.verify import verify_analysis, verify_store
from mechgrok.train import train
from mechgrok_cli.main import app

pytestmark = pytest.mark.crash

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO / "cli")]), "OMP_NUM_THREADS": "1",
       "COLUMNS": "200"}
#: a run long enough to be killed in the middle of (a few seconds of training on one thread)
CFG = Config(p=11, frac_train=0.5, d_model=8, n_heads=2, d_head=4, d_mlp=16, num_epochs=300, checkpoint_every=20,
             lr=3e-3, seed=3, model_seed=1)
#: kills per command (each is a fresh subprocess: a few seconds of imports on a busy 2-core machine)
KILLS = int(os.environ.get("MECHGROK_KILLS", "1"))
runner = CliRunner()


def mechgrok(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "mechgrok_cli.main", *args], env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def wait_for(cond, proc: subprocess.Popen, timeout: float = 120.0) -> bool:
    """Poll ``cond()`` until true (True) or the process has ended (False)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if cond():
            return True
        if proc.poll() is not None:
            return cond()
        time.sleep(0.005)
    raise TimeoutError("condition not reached")


def kill(proc: subprocess.Popen) -> bool:
    """SIGKILL by PID; whether the process was still running."""
    alive = proc.poll() is None
    if alive:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    if proc.stdout:
        proc.stdout.close()
    return alive


def assert_same_run(a: Path, b: Path) -> None:
    ca, cb = list_checkpoints(a), list_checkpoints(b)
    assert [e for e, _ in ca] == [e for e, _ in cb]
    for (_, fa), (_, fb) in zip(ca, cb):
        sa, sb = read_checkpoint(fa), read_checkpoint(fb)
        assert sa.keys() == sb.keys() and all(np.array_equal(sa[k].numpy(), sb[k].numpy()) for k in sa), fa.name
    assert (a / "metrics.csv").read_bytes() == (b / "metrics.csv").read_bytes()


def no_leftovers(folder: Path, name: str) -> None:
    left = [p.name for p in folder.iterdir() if p.name.startswith(f".{name}.") and not p.name.endswith(".lock")]
    assert left == [], left


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """The uninterrupted run."""
    run = tmp_path_factory.mktemp("ref") / "run"
    train(CFG, run)
    return run


def test_train_killed_at_random_moments_resumes_bit_identical(reference, tmp_path):
    rng = random.Random(16)
    cfg_file = tmp_path / "cfg.json"
    cfg_file.write_text(CFG.to_json())
    run = tmp_path / "run"
    kills = []
    # first killed as soon as config.json exists (before run.json, or just after), then mid-training
    proc = mechgrok("train", str(run), "--config", str(cfg_file), "--quiet")
    wait_for(lambda: (run / "config.json").exists(), proc)
    kills.append(("after config.json", kill(proc)))
    for _ in range(KILLS):
        args = ["train", str(run), "--quiet"] + (["--resume"] if (run / "config.json").exists() else
                                                  ["--config", str(cfg_file), "--overwrite"])
        proc = mechgrok(*args)
        wait_for(lambda: len(list_checkpoints(run)) >= 2, proc)
        time.sleep(rng.uniform(0.0, 0.8))
        n = len(list_checkpoints(run))
        kills.append((f"after {n} checkpoints", kill(proc)))
    assert any(alive for _, alive in kills), kills  # at least one kill hit a running process
    train(CFG, run, resume=True)
    assert_same_run(reference, run)
    info = json.loads((run / "run.json").read_text())
    assert info["complete"] is True
    assert not any(p.name.endswith(".tmp") for p in run.rglob("*"))


def _store_is_whole(store: Path, epochs_before: set[int], epochs_after: set[int]) -> None:
    plain = xr.open_zarr(store, consolidated=False)  # plain xarray, no mechgrok
    assert set(plain["checkpoint"].values.tolist()) in (epochs_before, epochs_after)
    verify_store(store)


def test_ingest_killed_while_overwriting_keeps_a_whole_store(reference, tmp_path):
    from mechgrok.store import ingest

    store = tmp_path / "run.zarr"
    small = tmp_path / "small"
    shutil.copytree(reference, small, ignore=shutil.ignore_patterns(".*"))
    for e, f in list_checkpoints(small)[3:]:
        f.unlink()
    ingest(small, store)
    before = set(open_run(small)["checkpoint"].values.tolist())
    after = set(open_run(reference)["checkpoint"].values.tolist())
    rng = random.Random(7)
    tried = 0
    for _ in range(KILLS):
        proc = mechgrok("ingest", str(reference), "--out", str(store), "--overwrite")
        wait_for(lambda: any(p.name.startswith(".run.zarr.tmp-") for p in tmp_path.iterdir()), proc)
        time.sleep(rng.uniform(0.0, 0.3))
        tried += kill(proc)
        _store_is_whole(store, before, after)
    assert tried == KILLS
    result = runner.invoke(app, ["ingest", str(reference), "--out", str(store), "--overwrite"])
    assert result.exit_code == 0, result.output
    _store_is_whole(store, after, after)
    no_leftovers(tmp_path, "run.zarr")


ANALYZE = ["--only", "measures,fourier_norms", "--quiet"]


def test_analyze_killed_while_writing_keeps_a_whole_store(reference, tmp_path):
    out = tmp_path / "out"
    result = runner.invoke(app, ["analyze", str(reference), "--out", str(out), "--checkpoints", "0:100:20", *ANALYZE])
    assert result.exit_code == 0, result.output
    n_before = verify_analysis(out / "analysis.zarr")["measures"].sizes["checkpoint"]
    rng = random.Random(3)
    for _ in range(KILLS):
        proc = mechgrok("analyze", str(reference), "--out", str(out), *ANALYZE)
        wait_for(lambda: any(p.name.startswith(".analysis.zarr.tmp-") for p in out.iterdir()), proc)
        time.sleep(rng.uniform(0.0, 0.2))
        kill(proc)
        tree = xr.open_datatree(out / "analysis.zarr", engine="zarr", consolidated=False)  # plain xarray
        n = tree["measures"].sizes["checkpoint"]
        assert n in (n_before, len(list_checkpoints(reference)))
        verify_analysis(out / "analysis.zarr")
        if (out / "report.json").exists():  # a report beside the store is the store's own
            assert json.loads((out / "report.json").read_text())["n_checkpoints"] == n
    result = runner.invoke(app, ["analyze", str(reference), "--out", str(out), *ANALYZE])
    assert result.exit_code == 0, result.output
    assert verify_analysis(out / "analysis.zarr")["measures"].sizes["checkpoint"] == len(list_checkpoints(reference))
    assert (out / "report.json").is_file() and (out / "report.md").is_file()
    no_leftovers(out, "analysis.zarr")


def test_two_analyze_on_one_folder(reference, tmp_path):
    # the second analyze must find the folder's lock held, whatever the timing: this process holds it, as a first
    # analyze does from reading the trajectory to writing the reports (two processes started together raced: a
    # short analysis could finish before the other had imported torch)
    from mechgrok.store.lock import hold

    out = tmp_path / "out"
    out.mkdir()
    with hold(out, kind="analyze", timeout=0):
        second = mechgrok("analyze", str(reference), "--out", str(out), *ANALYZE)
        text = second.communicate(timeout=300)[0]
    assert second.returncode == 2, text
    assert "another mechgrok analyze is writing to this folder" in text.replace("\n", "")
    assert "Traceback" not in text
    assert not (out / "analysis.zarr").exists()  # nothing half-written
    first = mechgrok("analyze", str(reference), "--out", str(out), *ANALYZE)  # the lock released: it runs
    first_text = first.communicate(timeout=300)[0]
    assert first.returncode == 0, first_text
    verify_analysis(out / "analysis.zarr")
    no_leftovers(out, "analysis.zarr")


def test_open_and_analyze_while_train_appends(tmp_path):
    """While a train subprocess appends checkpoints: every open_run sees a consistent prefix (curves up to its last
    checkpoint), analyze of the run completes, and a second train of the same run fails at once."""
    cfg_file = tmp_path / "cfg.json"
    cfg_file.write_text(CFG.replace(num_epochs=1500, checkpoint_every=10).to_json())
    run = tmp_path / "run"
    proc = mechgrok("train", str(run), "--config", str(cfg_file), "--quiet")
    try:
        wait_for(lambda: len(list_checkpoints(run)) >= 2, proc)
        with pytest.raises(RunDirError, match="another mechgrok train is writing this run directory"):
            train(CFG, run, resume=True)
        seen = []
        for _ in range(4):
            ds = open_run(run)
            epochs = ds["checkpoint"].values
            assert int(ds["epoch"].values[-1]) == int(epochs[-1])  # metrics rows up to the last checkpoint, no more
            assert not np.isnan(ds["loss_train"].values).any()
            seen.append(len(epochs))
        result = runner.invoke(app, ["analyze", str(run), "--out", str(tmp_path / "out"), *ANALYZE])
        assert result.exit_code == 0, result.output
        verify_analysis(tmp_path / "out" / "analysis.zarr")
        still_training = proc.poll() is None
    finally:
        kill(proc)
    assert seen == sorted(seen)
    assert still_training or seen[-1] > seen[0], "the train finished before the reads: nothing was concurrent"
