"""Resource limits: a run larger than memory is read lazily, a chunk of checkpoints at a time; one checkpoint that
cannot fit is a clear AnalysisError, not an out-of-memory kill. (Peak memory on a 4,000-checkpoint paper-scale
trajectory is measured in ``benchmarks/large_trajectory.py``, not here.)"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from safetensors.torch import save_file
from typer.testing import CliRunner

import mechgrok
import mechgrok.memory
import mechgrok.store.own as own
from mechgrok.errors import AnalysisError, CheckpointError
from mechgrok.rundir import list_checkpoints, read_checkpoint
from mechgrok.store.checkpoint_stack import CheckpointStack
from mechgrok_cli.main import app


@pytest.fixture
def lazy(monkeypatch):
    monkeypatch.setattr(own, "EAGER_LIMIT", 0)


def test_lazy_run_equals_eager_and_reads_only_what_is_selected(fixture_run, fixture_trajectory, lazy, monkeypatch):
    ds = mechgrok.open_run(fixture_run)
    assert isinstance(ds["W_in"].variable._data.array, CheckpointStack)  # nothing read yet
    reads = []
    real = CheckpointStack._one
    monkeypatch.setattr(CheckpointStack, "_one", lambda self, f: reads.append(f.name) or real(self, f))
    sel = ds["W_Q"].isel(checkpoint=[40, 3, 7], head=[0, 2], d_head=1).values
    np.testing.assert_array_equal(sel, fixture_trajectory["W_Q"].isel(checkpoint=[40, 3, 7], head=[0, 2], d_head=1).values)
    assert sorted(reads) == sorted(f"epoch_{e:06d}.safetensors" for e in (2000, 150, 350))
    for name in ("W_E", "W_pos", "W_O", "b_in", "W_U"):
        np.testing.assert_array_equal(ds[name].isel(checkpoint=slice(50, None, 4)).values,
                                      fixture_trajectory[name].isel(checkpoint=slice(50, None, 4)).values)
    sub = [55, 58, 60]
    lazy_tree = mechgrok.analyze(ds.isel(checkpoint=sub), analyses=["measures"], chunk=2)
    eager_tree = mechgrok.analyze(fixture_trajectory.isel(checkpoint=sub), analyses=["measures"])
    for name in lazy_tree["measures"].data_vars:
        np.testing.assert_array_equal(lazy_tree["measures"][name].values, eager_tree["measures"][name].values)


def test_lazy_run_checks_headers_at_open_and_values_at_read(fixture_run, tmp_path, lazy):
    run = tmp_path / "run"
    shutil.copytree(fixture_run, run, ignore=shutil.ignore_patterns("analysis.zarr", "report.*", ".*"))
    ckpts = dict(list_checkpoints(run))
    sd = read_checkpoint(ckpts[100])
    sd["blocks.0.mlp.W_in"][0, 0] = float("nan")
    save_file(sd, str(ckpts[100]), metadata={"epoch": "100"})
    ds = mechgrok.open_run(run)  # headers are fine: opens
    with pytest.raises(CheckpointError, match="blocks.0.mlp.W_in holds NaN or Inf") as info:
        ds["W_in"].isel(checkpoint=slice(0, 4)).values
    assert str(ckpts[100]) in str(info.value)
    shutil.copyfile(ckpts[50], ckpts[150])  # renamed checkpoint: found from the header alone
    with pytest.raises(CheckpointError, match="metadata says epoch 50 but its name says 150"):
        mechgrok.open_run(run)
    sd = read_checkpoint(ckpts[50])
    sd["unembed.W_U"] = sd["unembed.W_U"][:, :3].contiguous()
    save_file(sd, str(ckpts[150]), metadata={"epoch": "150"})
    with pytest.raises(CheckpointError, match=r"unembed.W_U has shape \(48, 3\)"):
        mechgrok.open_run(run)


def test_a_checkpoint_that_cannot_fit_is_a_clear_error(fixture_trajectory, fixture_run, tmp_path, monkeypatch):
    monkeypatch.setattr(mechgrok.memory, "available_bytes", lambda: 5 * 2**20)
    with pytest.raises(AnalysisError, match=r"needs about 0\.\d+ GiB of memory at once, but only 0\.00 GiB"):
        mechgrok.analyze(fixture_trajectory.isel(checkpoint=[-1]), analyses=["neurons"], device="cpu")
    result = CliRunner().invoke(app, ["analyze", str(fixture_run), "--out", str(tmp_path / "o"), "--quiet",
                                      "--device", "cpu", "--checkpoints", "3000"])
    assert result.exit_code == 2 and "GiB of memory at once" in result.output.replace("\n", "")
    assert "Traceback" not in result.output



def test_competition_is_skipped_or_refused_when_its_per_vector_arrays_cannot_fit(fixture_run, monkeypatch):
    """The competition analysis keeps per-vector alignments for every checkpoint (its output grows with the
    trajectory): where they would take more than half the available memory, the default analyze skips it and says
    why, and asking for it by name is refused with an AnalysisError (not an OOM kill)."""
    import mechgrok
    import mechgrok.memory
    import mechgrok.pipeline
    from mechgrok.errors import AnalysisError

    ds = mechgrok.open_run(fixture_run)  # 61 checkpoints, p = 53: about 26 MB of per-vector arrays
    available = lambda: 40 * 2**20  # noqa: E731  40 MiB: the grid pass (16 MB) fits, half of it is 20 MiB
    monkeypatch.setattr(mechgrok.pipeline, "available_bytes", available)
    monkeypatch.setattr(mechgrok.memory, "available_bytes", available)
    with pytest.raises(AnalysisError, match="competition analysis over 61 checkpoints"):
        mechgrok.analyze(ds, analyses=["key_frequencies", "competition"])
    tree = mechgrok.analyze(ds.isel(checkpoint=slice(None, None, 1)), analyses=None)
    assert "competition" not in tree.children
    assert "per-vector alignments over 61 checkpoints" in mechgrok.summarise(tree)["skipped"]["competition"]
    # with the memory it needs, the same call keeps it
    assert "competition" in mechgrok.analyze(ds.isel(checkpoint=[0, 30, 60]), analyses=None).children
