"""A Zarr trajectory store whose chunk is damaged after it was written: mechgrok opens it lazily, so the damage
surfaces when the engine reads the weights; it must be a StoreError naming the store, never zarr's own exception
(issue 16: only MechgrokError subclasses escape)."""

from __future__ import annotations

import pytest

import mechgrok
from mechgrok.errors import StoreError
from mechgrok.store.zarr_io import write_store


def test_damaged_chunk_is_a_store_error_when_the_engine_reads_it(fixture_run, tmp_path):
    ds = mechgrok.open_run(fixture_run).isel(checkpoint=[-2, -1])
    store = write_store(ds, tmp_path / "run.zarr")
    chunks = sorted(p for p in (store / "W_in").rglob("*") if p.is_file() and p.name != "zarr.json")
    assert chunks, "W_in has no chunk files"
    for chunk in chunks:
        data = bytearray(chunk.read_bytes())
        data[len(data) // 2 :] = b"\xff" * (len(data) - len(data) // 2)  # corrupt the compressed stream
        chunk.write_bytes(bytes(data))
    lazy = mechgrok.open_run(store)  # opening reads only metadata: it succeeds
    with pytest.raises(StoreError, match="cannot read W_in"):
        mechgrok.analyze(lazy, analyses=["measures"])
