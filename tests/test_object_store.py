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
