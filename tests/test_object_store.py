"""Object storage: mechgrok's stores and sweep folders at fsspec URLs, against a real S3-compatible server (moto's
server mode, started here on 127.0.0.1 as a separate process), never a mock of the client. Credentials and the
endpoint come from the environment, as a user would set them."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

import mechgrok
from mechgrok.errors import StoreError
from mechgrok.store import ingest, open_store, write_store
from mechgrok.store.analysis_store import open_analysis, write_analysis
from mechgrok.store.location import filesystem, is_remote, join, normalise
from mechgrok.sweep import SweepSpec, open_sweep, run_sweep

pytest.importorskip("s3fs", reason="s3:// needs s3fs")
pytest.importorskip("moto", reason="the S3-compatible test server is moto's (pip install 'moto[server]')")

FIXTURE = Path(__file__).resolve().parent.parent / "fixtures" / "quick-run"
BUCKET = "mechgrok-test"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3_server():
    """A moto S3 server on 127.0.0.1, the AWS_* environment pointing at it, and a bucket."""
    import s3fs

    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    s3fs.S3FileSystem.clear_instance_cache()
    try:
        deadline = time.monotonic() + 60
        while True:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail("the moto S3 server did not start")
            time.sleep(0.1)
        fs, _ = filesystem(f"s3://{BUCKET}")
        fs.mkdir(BUCKET)
        yield f"s3://{BUCKET}"
    finally:
        proc.terminate()
        proc.wait(10)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        s3fs.S3FileSystem.clear_instance_cache()


def _files(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def test_run_store_on_s3_is_bit_identical_to_the_local_one(s3_server, tmp_path):
    ds = mechgrok.open_run(FIXTURE).isel(checkpoint=[0, 30, -1])
    local = write_store(ds, tmp_path / "run.zarr")
    url = write_store(ds, f"{s3_server}/runs/run.zarr")
    fs, key = filesystem(url)
    names = _files(local)
    assert sorted(Path(f).relative_to(key).as_posix() for f in fs.find(key)) == names
    for name in names:  # every chunk and metadata file, byte for byte
        assert fs.cat_file(f"{key}/{name}") == (local / name).read_bytes(), name
    back = open_store(url).load()
    xr.testing.assert_identical(back, open_store(local).load())
    assert back["W_E"].dtype == np.float32 and back["loss_test"].dtype == np.float64
    xr.testing.assert_identical(mechgrok.open_run(url).load(), back)  # open_run reads the URL in place
    with pytest.raises(StoreError, match="already exists"):
        write_store(ds, url)
    copy = ingest(url, tmp_path / "copy.zarr")  # from the URL back to a local store
    assert _files(copy) == names and all((copy / n).read_bytes() == (local / n).read_bytes() for n in names)


def test_analysis_store_and_sweep_folder_on_s3(s3_server, tmp_path):
    # an analysis tree round trip at an s3:// URL and a memory:// one
    tree = mechgrok.analyze(mechgrok.open_run(FIXTURE).isel(checkpoint=[-3, -2, -1]),
                            analyses=["measures"], device="cpu")
    for url in (f"{s3_server}/analysis.zarr", "memory://mechgrok-test/analysis.zarr"):
        write_analysis(tree, url)
        back = open_analysis(url).load()
        for node in tree.subtree:
            xr.testing.assert_allclose(back[node.path].to_dataset(inherit=False),
                                       node.to_dataset(inherit=False), rtol=0, atol=0)
    # a one-run sweep whose folder is on S3: run directory, summary store, status and figures all land there
    spec = SweepSpec.from_dict({"base": {"p": 23, "d_model": 16, "n_heads": 2, "d_head": 8, "d_mlp": 32,
                                         "num_epochs": 30, "checkpoint_every": 10},
                                "grid": {"frac_train": [0.6]}, "analysis": {"analyses": ["measures"]}})
    root = f"{s3_server}/sweeps/tiny"
    result = run_sweep(spec, root, workers=1, processes=False)
    assert not result.failed, result.statuses
    fs, key = filesystem(root)
    status = json.loads(fs.cat_file(f"{key}/runs/frac_train=0.6/status.json"))
    assert status["status"] == "done"
    assert fs.exists(f"{key}/figures/index.html") and fs.exists(f"{key}/sweep.json")
    sweep = open_sweep(root)
    assert sweep["grokking_epoch"].dims == ("frac_train",)
    run = mechgrok.open_run(join(root, "runs", "frac_train=0.6"))  # a run directory read through a local copy
    np.testing.assert_array_equal(run["loss_test"].values, sweep["loss_test"].sel(frac_train=0.6).values)
    assert run.sizes["checkpoint"] == 4
    # a second run finds it finished, on S3 too
    assert run_sweep(spec, root, workers=1, processes=False, figures=False).skipped == ["frac_train=0.6"]


def test_paths_and_urls():
    assert is_remote("s3://b/k") and is_remote("gs://b/k") and is_remote("memory://x")
    assert not is_remote("file:///tmp/x") and not is_remote("runs/a") and not is_remote(Path("s3:/x"))
    assert normalise("file:///tmp/x") == Path("/tmp/x")
    with pytest.raises(StoreError, match="no filesystem"):
        filesystem("nosuchprotocol://bucket/key")


def test_mirror_pushes_changes_in_commit_order_and_deletes_what_went(tmp_path):
    """A Mirror's push: a store's root zarr.json after its chunks and group metadata, the named files last,
    unchanged files not again, locally deleted files deleted at the URL, hidden files never."""
    from mechgrok.store.location import Mirror, _push_order, read_text

    names = ["run.json", "a.zarr/zarr.json", "a.zarr/g/zarr.json", "a.zarr/g/x/c/0", "metrics.csv", "state.safetensors"]
    assert _push_order(names, ("state.safetensors", "run.json")) == [
        "a.zarr/g/x/c/0", "metrics.csv", "a.zarr/g/zarr.json", "a.zarr/zarr.json", "state.safetensors", "run.json"]
    url = "memory://mechgrok-test/mirror/run"
    m = Mirror(url, tmp_path / "run")
    assert not m.pull()
    (tmp_path / "run" / "sub").mkdir(parents=True)
    (tmp_path / "run" / "a.txt").write_text("a")
    (tmp_path / "run" / "sub" / "b.txt").write_text("b")
    (tmp_path / "run" / ".run.lock").write_text("")
    m.push()
    fs, key = filesystem(url)
    assert sorted(_rel(f, key) for f in fs.find(key)) == ["a.txt", "sub/b.txt"]
    (tmp_path / "run" / "sub" / "b.txt").unlink()
    fs.pipe_file(f"{key}/a.txt", b"changed there")  # an unchanged local file is not pushed again
    m.push()
    assert sorted(_rel(f, key) for f in fs.find(key)) == ["a.txt"] and read_text(f"{url}/a.txt") == "changed there"
    again = Mirror(url, tmp_path / "copy")
    assert again.pull() and (tmp_path / "copy" / "a.txt").read_text() == "changed there"


def _rel(f: str, key: str) -> str:
    return Path(f).relative_to(key).as_posix()


# -- the command line on URLs, and resuming at a URL -----------------------------------------------------------------
def _remote_files(url: str) -> dict[str, bytes]:
    fs, key = filesystem(url)
    return {Path(f).relative_to(key).as_posix(): fs.cat_file(f) for f in fs.find(key)}


def _local_files(root: Path) -> dict[str, bytes]:
    return {n: (root / n).read_bytes() for n in _files(root) if not n.startswith(".")}


def _stop_at(epoch: int):
    """An on_checkpoint that kills training (as a dead process would) right after the checkpoint of ``epoch``."""
    def stop(e, weights):
        if e == epoch:
            raise KeyboardInterrupt(f"stopped after epoch {e}")
    return stop


def test_cli_train_to_s3_equals_a_local_run_and_resumes_from_s3(s3_server, tmp_path):
    from typer.testing import CliRunner

    from mechgrok.config import preset
    from mechgrok.train import train
    from mechgrok_cli.main import app

    runner = CliRunner()
    opts = ["--preset", "quick", "--epochs", "60", "--checkpoint-every", "20", "-q"]
    url = f"{s3_server}/cli/run"
    for target in (url, str(tmp_path / "run")):
        res = runner.invoke(app, ["train", target, *opts])
        assert res.exit_code == 0, res.output
    remote, local = _remote_files(url), _local_files(tmp_path / "run")
    assert sorted(remote) == sorted(local) and "checkpoints/epoch_000060.safetensors" in remote
    for name in local:  # bit-identical training; run.json differs only by nothing that names the folder
        assert remote[name] == local[name], name
    back = mechgrok.open_run(url)
    xr.testing.assert_identical(back.drop_attrs(), mechgrok.open_run(tmp_path / "run").drop_attrs())
    assert json.loads(back.attrs["source_files"]) == [url]
    res = runner.invoke(app, ["train", url, *opts])  # a second train to the same URL is refused, as locally
    assert res.exit_code == 2 and "already exists" in res.output and url in res.output.replace("\n", "")
    # --zarr to a URL: the store appended checkpoint by checkpoint at the URL equals the run
    store = f"{s3_server}/cli/run.zarr"
    res = runner.invoke(app, ["train", str(tmp_path / "zrun"), "--preset", "quick", "--epochs", "20",
                              "--checkpoint-every", "10", "-q", "--zarr", store])
    assert res.exit_code == 0, res.output
    xr.testing.assert_identical(open_store(store).load(), mechgrok.open_run(tmp_path / "zrun"))

    # a run at a URL killed after its checkpoint at epoch 20 resumes there (not from scratch), bit-identically
    cut = f"{s3_server}/cli/cut"
    cfg = preset("quick").replace(num_epochs=60, checkpoint_every=20)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, cut, on_checkpoint=_stop_at(20))
    assert json.loads(_remote_files(cut)["run.json"])["complete"] is False
    assert "checkpoints/epoch_000040.safetensors" not in _remote_files(cut)
    res = runner.invoke(app, ["train", cut, "--resume", "-q"])
    assert res.exit_code == 0, res.output
    resumed = _remote_files(cut)
    assert [r["epoch"] for r in json.loads(resumed["run.json"])["resumes"]] == [20]
    assert sorted(resumed) == sorted(local)
    for name in local:
        if name != "run.json":
            assert resumed[name] == local[name], name
    rows = resumed["metrics.csv"].decode().splitlines()[1:]
    assert [int(r.split(",")[0]) for r in rows] == list(range(61))  # every epoch once: nothing duplicated


def test_cli_analyze_and_figures_of_a_run_on_s3(s3_server, tmp_path):
    import shutil

    from typer.testing import CliRunner

    from mechgrok_cli.main import app

    runner = CliRunner()
    url = f"{s3_server}/analyze/quick-run"
    fs, key = filesystem(url)
    local = tmp_path / "quick-run"
    # the committed run only: README's main command writes its analysis (analysis.zarr, figures/, report.*) beside it
    shutil.copytree(FIXTURE, local, ignore=shutil.ignore_patterns("analysis.zarr", "figures", "report.*", ".*"))
    fs.put(str(local), key, recursive=True)
    opts = ["--only", "key_frequencies,measures", "--checkpoints", "0:3000:1000", "--device", "cpu", "-q"]
    for target in (url, str(local)):
        res = runner.invoke(app, ["analyze", target, *opts])
        assert res.exit_code == 0, res.output
    # analysis.zarr and the reports land beside the run at the URL, equal to the local ones
    a, b = open_analysis(join(url, "analysis.zarr")).load(), open_analysis(local / "analysis.zarr").load()
    assert set(a.children) == set(b.children) == {"key_frequencies", "measures"}
    for node in b.subtree:
        xr.testing.assert_identical(a[node.path].to_dataset(inherit=False).drop_attrs(),
                                    node.to_dataset(inherit=False).drop_attrs())
    remote = _remote_files(url)
    assert json.loads(remote["report.json"]) == json.loads((local / "report.json").read_text())
    assert remote["report.md"].decode().replace(url, "RUN") == (local / "report.md").read_text().replace(str(local), "RUN")
    # the figure pack of the analysis at the URL: drawn locally, uploaded with index.html
    res = runner.invoke(app, ["figures", url, "--no-animations", "--no-explorer", "--dpi", "50", "-q"])
    assert res.exit_code == 0, res.output
    pngs = [n for n in _remote_files(url) if n.startswith("figures/") and n.endswith(".png")]
    assert pngs and "figures/index.html" in _remote_files(url)
    assert f"wrote {len(pngs)} figures" in res.output
    res = runner.invoke(app, ["analyze", f"{s3_server}/analyze/nothing-here", "-q"])
    assert res.exit_code == 2 and "nothing-here" in res.output


def test_a_sweep_on_s3_resumes_an_interrupted_cell_from_its_last_checkpoint(s3_server, tmp_path):
    from mechgrok.sweep.cell import run_dir_of
    from mechgrok.train import train

    spec = SweepSpec.from_dict({"base": {"p": 23, "d_model": 16, "n_heads": 2, "d_head": 8, "d_mlp": 32,
                                         "num_epochs": 40, "checkpoint_every": 10},
                                "grid": {"frac_train": [0.6]}, "analysis": {"analyses": ["measures"]}})
    root = f"{s3_server}/sweeps/resume"
    cell = spec.cells[0]
    run_url = str(run_dir_of(root, cell.name))
    with pytest.raises(KeyboardInterrupt):  # the cell's task died after its checkpoint at epoch 20
        train(cell.config, run_url, on_checkpoint=_stop_at(20))
    result = run_sweep(spec, root, workers=1, processes=False, figures=False)
    assert result.ran == [cell.name] and not result.failed, result.statuses
    remote = _remote_files(run_url)
    assert [r["epoch"] for r in json.loads(remote["run.json"])["resumes"]] == [20]  # resumed, not restarted
    train(cell.config, tmp_path / "run")  # the same run, uninterrupted
    local = _local_files(tmp_path / "run")
    for name in local:
        if name != "run.json":
            assert remote[name] == local[name], name
    extra = {n.split("/")[0] for n in remote} - {n.split("/")[0] for n in local}
    assert extra == {"analysis.zarr", "summary.zarr", "status.json"}  # nothing else, nothing twice
    checkpoints = sorted(n for n in local if n.startswith("checkpoints/"))
    assert sorted(n for n in remote if n.startswith("checkpoints/")) == checkpoints
    rows = remote["metrics.csv"].decode().splitlines()[1:]
    assert [int(r.split(",")[0]) for r in rows] == list(range(41))
    assert json.loads(remote["status.json"])["status"] == "done"
    assert run_sweep(spec, root, workers=1, processes=False, figures=False).skipped == [cell.name]
