"""Zarr v3 trajectory stores: ingest, lazy open, strict appends, interrupted writes, the trainer's writer."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from mechgrok.errors import StoreError
from mechgrok.models.transformer import WEIGHT_NAMES
from mechgrok.store import (
    TrajectoryWriter,
    append_checkpoints,
    append_curves,
    ingest,
    open_run,
    open_store,
    repair_store,
    write_store,
)
from mechgrok.store.zarr_io import COMMIT_ATTR
from mechgrok.train import train

QUICK_RUN = Path(__file__).resolve().parents[1] / "fixtures" / "quick-run"


@pytest.fixture(scope="module")
def quick_store(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("zarr") / "quick.zarr"
    ingest(QUICK_RUN, out)
    return out


@pytest.fixture
def store(tmp_path, quick_store) -> Path:
    """A private copy of the quick-run store, cut to its first 5 checkpoints."""
    ds = open_run(quick_store).isel(checkpoint=slice(0, 5)).load()
    out = tmp_path / "s.zarr"
    write_store(ds, out)
    return out


def piece_from(ds: xr.Dataset, epochs) -> xr.Dataset:
    """Checkpoint-dim variables of ``ds`` relabelled to new epochs."""
    w = ds[[n for n in ds.data_vars if "checkpoint" in ds[n].dims]].isel(checkpoint=slice(0, len(epochs))).load()
    return w.assign_coords(checkpoint=np.asarray(epochs, dtype=np.int64))


def test_ingest_round_trip_and_chunks(quick_store):
    ref = open_run(QUICK_RUN)
    ds = open_run(quick_store)
    xr.testing.assert_identical(ds.load(), ref)
    z = open_run(quick_store)
    for n in WEIGHT_NAMES:  # one checkpoint per chunk
        assert z[n].encoding["chunks"] == (1, *z[n].shape[1:]), n
        assert z[n].encoding["compressors"][0].cname.value == "zstd"
    assert len(list((quick_store / "W_E" / "c").iterdir())) == 61
    meta = json.loads((quick_store / "zarr.json").read_text())
    assert meta["zarr_format"] == 3 and meta["attributes"][COMMIT_ATTR] == {"checkpoint": 61, "epoch": 3001}
    assert COMMIT_ATTR not in z.attrs


def test_open_is_lazy(tmp_path, quick_store):
    path = tmp_path / "lazy.zarr"
    shutil.copytree(quick_store, path)
    ds = open_run(path)
    assert not isinstance(ds["W_E"].variable._data, np.ndarray)
    first, second = ds["W_E"].isel(checkpoint=0).values.copy(), ds["W_E"].isel(checkpoint=1).values.copy()
    ds2 = open_run(path)  # opened before the chunk files change ...
    c = path / "W_E" / "c"
    os.rename(c / "0", c / "tmp")
    os.rename(c / "1", c / "0")
    os.rename(c / "tmp", c / "1")
    # ... yet reads what is on disk now: nothing was read at open
    np.testing.assert_array_equal(ds2["W_E"].isel(checkpoint=0).values, second)
    np.testing.assert_array_equal(ds2["W_E"].isel(checkpoint=1).values, first)


def test_strict_appends(store):
    ds = open_store(store)
    n0 = ds.sizes["checkpoint"]
    last = int(ds["checkpoint"].values[-1])
    good = piece_from(ds, [last + 10, last + 20])
    bad_cases = {
        "extra variable": (good.assign(extra=("checkpoint", np.zeros(2, np.float32))), "extra: extra"),
        "missing variable": (good.drop_vars("W_E"), "missing: W_E"),
        "dtype": (good.assign(W_E=good["W_E"].astype(np.float64)), "dtype float64"),
        "duplicate epoch": (good.assign_coords(checkpoint=[last, last + 10]), "not after"),
        "decreasing": (good.assign_coords(checkpoint=[last + 20, last + 10]), "strictly increasing"),
        "size": (good.isel(d_mlp=slice(0, 10)), "d_mlp=10"),
        "off-dim variable": (good.assign(junk=("d_model", np.zeros(good.sizes["d_model"], np.float32))), "junk"),
    }
    for name, (piece, msg) in bad_cases.items():
        with pytest.raises(StoreError, match=msg):
            append_checkpoints(store, piece)
        assert open_store(store).sizes["checkpoint"] == n0, name  # nothing written
    is_train = open_store(store)["is_train"].values.copy()
    append_checkpoints(store, good)
    after = open_store(store)
    assert after.sizes["checkpoint"] == n0 + 2
    assert list(after["checkpoint"].values[-2:]) == [last + 10, last + 20]
    np.testing.assert_array_equal(after["W_in"].isel(checkpoint=-1).values, good["W_in"].isel(checkpoint=-1).values)
    np.testing.assert_array_equal(after["is_train"].values, is_train)  # static variables untouched
    assert after.attrs == ds.attrs


def test_append_curves(store):
    ds = open_store(store)
    last = int(ds["epoch"].values[-1])
    e = np.arange(last + 1, last + 4)
    rows = xr.Dataset({n: ("epoch", np.full(3, 0.5)) for n in ("loss_train", "loss_test", "acc_train", "acc_test")},
                      coords={"epoch": e})
    with pytest.raises(StoreError, match="missing: acc_test"):
        append_curves(store, rows.drop_vars("acc_test"))
    with pytest.raises(StoreError, match="not after"):
        append_curves(store, rows.assign_coords(epoch=e - 3))
    append_curves(store, rows)
    after = open_store(store)
    np.testing.assert_array_equal(after["epoch"].values[-3:], e)
    np.testing.assert_array_equal(after["loss_train"].values[-3:], 0.5)
    assert after.sizes["checkpoint"] == ds.sizes["checkpoint"]


def test_interrupted_append_never_opens_half_written(store, monkeypatch):
    from xarray.backends.zarr import ZarrStore

    ds = open_store(store)
    n0 = ds.sizes["checkpoint"]
    ref = {n: ds[n].values.copy() for n in WEIGHT_NAMES}
    piece = piece_from(ds, [int(ds["checkpoint"].values[-1]) + 1])
    original = ZarrStore.set_variables

    def killed_half_way(self, variables, *args, **kwargs):
        some = dict(list(variables.items())[:3])
        original(self, some, *args, **kwargs)
        raise KeyboardInterrupt("killed")

    monkeypatch.setattr(ZarrStore, "set_variables", killed_half_way)
    with pytest.raises(KeyboardInterrupt):
        append_checkpoints(store, piece)
    monkeypatch.setattr(ZarrStore, "set_variables", original)
    lengths = {json.loads((store / n / "zarr.json").read_text())["shape"][0] for n in WEIGHT_NAMES}
    assert lengths == {n0, n0 + 1}  # really half-written on disk
    with pytest.raises(StoreError, match="interrupted"):
        open_run(store)
    # re-running the append repairs, then finishes the job
    append_checkpoints(store, piece)
    after = open_run(store)
    assert after.sizes["checkpoint"] == n0 + 1
    for n in WEIGHT_NAMES:
        np.testing.assert_array_equal(after[n].values[:n0], ref[n])
        np.testing.assert_array_equal(after[n].values[n0:], piece[n].values)
    # and the explicit repair: cut back to the commit record
    monkeypatch.setattr(ZarrStore, "set_variables", killed_half_way)
    with pytest.raises(KeyboardInterrupt):
        append_checkpoints(store, piece_from(after, [int(after["checkpoint"].values[-1]) + 1]))
    monkeypatch.setattr(ZarrStore, "set_variables", original)
    assert repair_store(store) is True
    assert open_run(store).sizes["checkpoint"] == n0 + 1
    assert repair_store(store) is False


def test_interrupted_first_write_leaves_nothing(tmp_path, monkeypatch, tiny_run):
    out = tmp_path / "new.zarr"
    # a write killed without cleanup leaves only a hidden temp sibling, never a store under the final name
    (tmp_path / ".new.zarr.tmp-deadbeef").mkdir()
    (tmp_path / ".new.zarr.tmp-deadbeef" / "zarr.json").write_text("{")
    original = xr.Dataset.to_zarr

    def boom(self, *args, **kwargs):
        original(self, *args, **kwargs)
        raise KeyboardInterrupt("killed")

    monkeypatch.setattr(xr.Dataset, "to_zarr", boom)
    with pytest.raises(KeyboardInterrupt):
        ingest(tiny_run, out)
    monkeypatch.setattr(xr.Dataset, "to_zarr", original)
    assert not out.exists()
    ingest(tiny_run, out)  # re-running finishes the job and clears the leftover
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")) == ["new.zarr"]
    assert open_run(out).sizes["checkpoint"] == 5
    with pytest.raises(StoreError, match="already exists"):
        ingest(tiny_run, out)
    ingest(tiny_run, out, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")) == ["new.zarr"]


def test_trainer_writer_equals_run_dir(tmp_path, tiny_config):
    run, zarr_path = tmp_path / "run", tmp_path / "run.zarr"
    train(tiny_config, run, on_checkpoint=TrajectoryWriter(zarr_path, run_dir=run))
    xr.testing.assert_identical(open_run(zarr_path).load(), open_run(run))


def test_trainer_writer_resume_and_late_start(tmp_path, tiny_config):
    run, zarr_path = tmp_path / "run", tmp_path / "run.zarr"

    class Stop(Exception):
        pass

    def stop_at_12(m):
        if m.epoch == 12:
            raise Stop

    with pytest.raises(Stop):
        train(tiny_config, run, on_epoch=stop_at_12, on_checkpoint=TrajectoryWriter(zarr_path, run_dir=run))
    mid = open_run(zarr_path)
    assert list(mid["checkpoint"].values) == [0, 5, 10]
    assert int(mid["epoch"].values[-1]) == 10  # curves up to the last checkpoint
    train(tiny_config, run, resume=True, on_checkpoint=TrajectoryWriter(zarr_path, run_dir=run))
    full = open_run(zarr_path).load()
    xr.testing.assert_identical(full, open_run(run))
    # a store started late (e.g. --zarr added on resume) picks up the run's earlier checkpoints
    late = tmp_path / "late.zarr"
    writer = TrajectoryWriter(late, run_dir=run)
    writer(20, {n: full[n].sel(checkpoint=20).values for n in WEIGHT_NAMES})
    xr.testing.assert_identical(open_run(late).load(), full)
    # the same epoch again with other weights, an earlier epoch, or another run's store: refused
    other = {n: full[n].sel(checkpoint=20).values + 1 for n in WEIGHT_NAMES}
    with pytest.raises(StoreError, match="different weights"):
        writer(20, other)
    with pytest.raises(StoreError, match="before the store's last"):
        writer(15, other)
    wrong = TrajectoryWriter(late, config={"p": 11, "d_model": 8}, p=11)
    with pytest.raises(StoreError, match="different run"):
        wrong.append(25, other)


def test_writer_without_run_dir(tmp_path, tiny_config):
    ref = open_run(QUICK_RUN).isel(checkpoint=slice(0, 3)).load()
    path = tmp_path / "w.zarr"
    writer = TrajectoryWriter(path, config={"p": 53, "note": "synthetic"}, p=53, is_train=ref["is_train"].values)
    for i, e in enumerate(ref["checkpoint"].values):
        curves = {"loss_train": (np.arange(e + 1), np.full(e + 1, float(i)))}
        writer.append(int(e), {n: ref[n].values[i] for n in WEIGHT_NAMES}, curves=curves)
    ds = open_run(path)
    np.testing.assert_array_equal(ds["W_U"].values, ref["W_U"].values)
    assert ds.sizes["epoch"] == 101 and float(ds["loss_train"].sel(epoch=100)) == 2.0
    assert float(ds["loss_train"].sel(epoch=50)) == 1.0 and float(ds["loss_train"].sel(epoch=0)) == 0.0
    bad = {n: ref[n].values[0] for n in WEIGHT_NAMES}
    bad["W_E"] = bad["W_E"].copy()
    bad["W_E"][0, 0] = np.nan
    with pytest.raises(StoreError, match="NaN"):
        writer.append(500, bad)


def test_trainer_writer_recovers_from_a_killed_append(tmp_path, tiny_config, monkeypatch):
    from xarray.backends.zarr import ZarrStore

    run, zarr_path = tmp_path / "run", tmp_path / "run.zarr"
    original = ZarrStore.set_variables

    def killed_at_15(self, variables, *args, **kwargs):
        ck = variables.get("checkpoint")
        if ck is not None and np.asarray(ck.data).tolist() == [15]:
            original(self, dict(list(variables.items())[:3]), *args, **kwargs)
            raise KeyboardInterrupt("killed")
        return original(self, variables, *args, **kwargs)

    monkeypatch.setattr(ZarrStore, "set_variables", killed_at_15)
    with pytest.raises(KeyboardInterrupt):
        train(tiny_config, run, on_checkpoint=TrajectoryWriter(zarr_path, run_dir=run))
    monkeypatch.setattr(ZarrStore, "set_variables", original)
    with pytest.raises(StoreError, match="interrupted"):
        open_run(zarr_path)
    train(tiny_config, run, resume=True, on_checkpoint=TrajectoryWriter(zarr_path, run_dir=run))
    xr.testing.assert_identical(open_run(zarr_path).load(), open_run(run))
