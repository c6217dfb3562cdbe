"""Sweeps on dask.distributed: an in-process LocalCluster and a real `dask scheduler` + `dask worker` started as
separate processes on 127.0.0.1 give the same sweep store; a worker killed mid-run loses and duplicates nothing.

The sweep is 2 seeds x 2 training fractions of a tiny config (p = 23, 60 epochs).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from mechgrok.errors import ConfigError
from mechgrok.rundir import list_checkpoints, read_metrics, read_run_info
from mechgrok.sweep import SweepSpec, load_spec, open_sweep, run_sweep

SPEC = {
    "name": "tiny",
    "base": {"p": 23, "d_model": 32, "n_heads": 2, "d_head": 16, "d_mlp": 64, "lr": 0.02, "num_epochs": 60,
             "checkpoint_every": 20},
    "grid": {"seed": [0, 1], "frac_train": [0.6, 0.7]},
    "analysis": {"analyses": ["ablation", "measures", "phases"]},
}
BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_port(port: int, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"the dask scheduler exited with {proc.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port}")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


@pytest.fixture(autouse=True, scope="module")
def _dask_scheduler_restored():
    """A Client whose scheduler dies under it (the killed-worker test) can leave dask's global ``scheduler``
    config pointing at dask.distributed; later tests that compute with dask must see the default again."""
    import dask

    before = dask.config.get("scheduler", None)
    yield
    dask.config.set(scheduler=before)


@pytest.fixture(scope="module")
def local_sweep(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep-local") / "sweep"
    result = run_sweep(SweepSpec.from_dict(SPEC), root, workers=2, processes=False, figures=True)
    return root, result


def _runs(root: Path) -> list[Path]:
    """The run directories (not the lock files or anything hidden beside them)."""
    return sorted(p for p in (root / "runs").glob("[!.]*") if p.is_dir()) if (root / "runs").is_dir() else []


def _values(tree: xr.DataTree) -> dict[str, xr.Dataset]:
    return {node.path: node.to_dataset(inherit=False).drop_attrs() for node in tree.subtree}


def test_local_cluster_sweep_store(local_sweep):
    root, result = local_sweep
    assert sorted(result.ran) == sorted(c.name for c in SweepSpec.from_dict(SPEC).cells) and not result.failed
    # plain xarray opens the sweep store: one dim per swept field
    ds = xr.open_zarr(root / "summary.zarr", consolidated=False)
    assert ds["grokking_epoch"].dims == ("seed", "frac_train")
    assert ds.sizes["seed"] == 2 and ds.sizes["frac_train"] == 2
    assert ds["loss_test"].dims == ("seed", "frac_train", "epoch") and ds.sizes["epoch"] == 61
    measures = xr.open_zarr(root / "summary.zarr", group="measures", consolidated=False)
    assert measures["restricted_loss_test"].dims == ("seed", "frac_train", "checkpoint")
    for seed in (0, 1):
        for frac in (0.6, 0.7):
            run = root / "runs" / f"seed={seed},frac_train={frac}"
            m = read_metrics(run)
            # the curve in the sweep store is the run's own metrics.csv, on the common epoch axis
            np.testing.assert_array_equal(ds["loss_test"].sel(seed=seed, frac_train=frac).values, m["test_loss"])
            # grokking epoch by its rule, recomputed here with a plain loop
            expect = np.nan
            for e, loss in zip(m["epoch"], m["test_loss"]):
                if loss <= 0.1:
                    expect = float(e)
                    break
            np.testing.assert_equal(float(ds["grokking_epoch"].sel(seed=seed, frac_train=frac)), expect)
            assert float(ds["final_loss_train"].sel(seed=seed, frac_train=frac)) == m["train_loss"][-1]
    assert (root / "figures" / "phase_diagram.png").is_file() and (root / "figures" / "index.html").is_file()
    status = json.loads((root / "sweep_status.json").read_text())
    assert {s["status"] for s in status.values()} == {"done"}


def test_external_cluster_with_killed_worker_gives_the_same_store(local_sweep, tmp_path):
    local_root, _ = local_sweep
    spec_file = tmp_path / "tiny.json"
    spec_file.write_text(json.dumps(SPEC))
    root = tmp_path / "sweep"
    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    procs: list[subprocess.Popen] = []
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}

    def worker(name: str) -> subprocess.Popen:
        p = subprocess.Popen([str(BIN / "dask"), "worker", address, "--nthreads", "1", "--no-nanny", "--name", name,
                              "--no-dashboard"], **quiet)
        procs.append(p)
        return p

    try:
        scheduler = subprocess.Popen([str(BIN / "dask"), "scheduler", "--host", "127.0.0.1", "--port", str(port),
                                      "--no-dashboard"], **quiet)
        procs.append(scheduler)
        _wait_port(port, scheduler)
        workers = {name: worker(name) for name in ("first", "second")}
        pool = ThreadPoolExecutor(1)  # the driver: mechgrok sweep SPEC --scheduler ADDRESS, in a thread
        driver = pool.submit(run_sweep, load_spec(spec_file), root, scheduler=address, figures=False)
        # kill the worker training a run half-way (a checkpoint written, the run not complete); the scheduler
        # says which worker holds the run's task
        from distributed import Client

        killed = None
        with Client(address, timeout=60) as client:
            deadline = time.monotonic() + 150
            while killed is None and time.monotonic() < deadline and not driver.done():
                for run in _runs(root):
                    if not (run / "state.safetensors").is_file() or read_run_info(run).get("complete", False):
                        continue
                    info = client.scheduler_info()["workers"]
                    for addr, keys in client.processing().items():
                        if any(f"mechgrok-{run.name}-" in str(k) for k in keys):
                            workers[info[addr]["name"]].send_signal(signal.SIGKILL)
                            killed = run
                    if killed is not None:
                        break
                time.sleep(0.02)
        assert killed is not None, "no run was caught mid-training"
        result = driver.result(timeout=240)
        pool.shutdown()
        assert len(result.ran) == 4 and not result.failed, result.statuses
        # the killed run was resumed from its last checkpoint, not restarted or duplicated
        assert read_run_info(killed)["resumes"], "the killed run was not resumed"
        # re-running finds every cell finished
        again = run_sweep(SweepSpec.from_dict(SPEC), root, scheduler=address, figures=False)
        assert again.ran == [] and len(again.skipped) == 4
    finally:
        for p in reversed(procs):
            _stop(p)
    runs = _runs(root)
    assert len(runs) == 4
    for run in runs:
        m = read_metrics(run)
        np.testing.assert_array_equal(m["epoch"], np.arange(61))  # every epoch once: nothing lost or duplicated
        assert [e for e, _ in list_checkpoints(run)] == [0, 20, 40, 60]
        assert json.loads((run / "status.json").read_text())["status"] == "done"
    # the same sweep store as the in-process LocalCluster's, value for value
    ours, theirs = _values(open_sweep(root).load()), _values(open_sweep(local_root).load())
    assert ours.keys() == theirs.keys()
    for path in ours:
        xr.testing.assert_identical(ours[path], theirs[path])


def test_rerun_skips_finished_and_retries_failed(local_sweep, tmp_path):
    """A failed cell is recorded with its error; re-running retries it and leaves the finished ones alone."""
    spec = dict(SPEC, grid={"seed": [0], "frac_train": [0.6]}, base={**SPEC["base"], "num_epochs": 30})
    root = tmp_path / "sweep"
    cell = root / "runs" / "seed=0,frac_train=0.6"
    cell.mkdir(parents=True)
    (cell / "checkpoints").write_text("")  # a file where the run's checkpoint folder goes: training fails
    first = run_sweep(SweepSpec.from_dict(spec), root, workers=1, processes=False, figures=False)
    assert first.failed == ["seed=0,frac_train=0.6"]
    status = json.loads((cell / "status.json").read_text())
    assert status["status"] == "failed" and status["error"] and "Traceback" in status["traceback"]
    assert first.tree is None
    (cell / "checkpoints").unlink()
    second = run_sweep(SweepSpec.from_dict(spec), root, workers=1, processes=False, figures=False)
    assert second.ran == ["seed=0,frac_train=0.6"] and not second.failed
    assert json.loads((cell / "status.json").read_text())["attempt"] == 2
    third = run_sweep(SweepSpec.from_dict(spec), root, workers=1, processes=False, figures=False)
    assert third.ran == [] and third.skipped == ["seed=0,frac_train=0.6"]
    assert os.path.isdir(root / "summary.zarr")


def test_a_run_may_ingest_an_existing_trajectory(tmp_path):
    fixture = Path(__file__).resolve().parent.parent / "fixtures" / "quick-run"
    spec = SweepSpec.from_dict({"runs": [{"seed": 0, "source": str(fixture)}], "base": {"p": 53},
                                "analysis": {"analyses": ["measures"]}})
    result = run_sweep(spec, tmp_path / "sweep", workers=1, processes=False, figures=False)
    assert not result.failed, result.statuses
    m = read_metrics(fixture)
    np.testing.assert_array_equal(result.tree["loss_test"].sel(seed=0).values, m["test_loss"])
    assert float(result.tree["grokking_epoch"].sel(seed=0)) == m["epoch"][np.argmax(m["test_loss"] <= 0.1)]
    assert result.tree["measures"]["gini_W_E_component"].sizes["checkpoint"] == 61
    assert not (tmp_path / "sweep" / "runs" / "seed=0" / "checkpoints").exists()  # ingested, not trained


def test_a_finished_run_with_another_config_is_refused(local_sweep):
    root, _ = local_sweep
    before = (root / "sweep.json").read_text()
    changed = dict(SPEC, base={**SPEC["base"], "lr": 0.01})
    with pytest.raises(ConfigError, match="another config"):
        run_sweep(SweepSpec.from_dict(changed), root, workers=1, processes=False)
    with pytest.raises(ConfigError, match="sweep over"):
        run_sweep(SweepSpec.from_dict(dict(SPEC, grid={"seed": [0]})), root, workers=1, processes=False)
    assert (root / "sweep.json").read_text() == before  # nothing rewritten


def _preloaded() -> dict:
    import os
    import sys

    return {"mechgrok.pipeline": "mechgrok.pipeline" in sys.modules, "torch": "torch" in sys.modules,
            "MALLOC_TRIM_THRESHOLD_": os.environ.get("MALLOC_TRIM_THRESHOLD_")}


@pytest.mark.skipif(sys.platform == "win32", reason="no forkserver on Windows")
def test_local_cluster_workers_start_with_the_analyses_imported():
    # the sweep's LocalCluster forks its workers from a forkserver that has imported torch and the analyses, so a
    # worker's first task does not import them, and no worker runs with distributed's MALLOC_TRIM_THRESHOLD_
    from distributed import Client

    from mechgrok.sweep.runner import local_cluster

    with local_cluster(2) as cluster, Client(cluster) as client:
        seen = client.run(_preloaded)
    assert len(seen) == 2
    for worker, state in seen.items():
        assert state == {"mechgrok.pipeline": True, "torch": True, "MALLOC_TRIM_THRESHOLD_": None}, worker
