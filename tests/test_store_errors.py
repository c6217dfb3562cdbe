"""Bad input to the trajectory store: one-line MechgrokErrors naming the file; the CLI exits 2 and writes nothing.

Also the security check: a crafted pickle is refused by default and never executed.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from mechgrok_cli.main import app
from mechgrok.errors import (AnalysisError, CheckpointError, ConfigError, MechgrokError, RunDirError, StoreError,
                             UnsafeCheckpointError)
from mechgrok.store import open_run

from planted import paper_state_dict

QUICK_RUN = Path(__file__).resolve().parents[1] / "fixtures" / "quick-run"
runner = CliRunner()


def full_run(state_dicts, **extra):
    return {"config": {"p": 7}, "state_dicts": state_dicts, "epochs": list(range(0, 100 * len(state_dicts), 100)),
            "train_losses": [1.0] * 10, "test_losses": [1.0] * 10, **extra}


def save(obj, path: Path) -> Path:
    torch.save(obj, path)
    return path


def with_key(sd, key, value):
    out = dict(sd)
    if value is None:
        del out[key]
    else:
        out[key] = value
    return out


def bad_inputs(tmp: Path) -> dict[str, tuple[Path, type, str]]:
    """name -> (source, error class, message fragment)."""
    sd = paper_state_dict()
    good = save(full_run([sd, paper_state_dict(seed=1)]), tmp / "good.pth")
    data = good.read_bytes()
    (tmp / "truncated.pth").write_bytes(data[: len(data) // 2])
    torch.save({"model": sd}, tmp / "legacy.pth", _use_new_zipfile_serialization=False)
    legacy = (tmp / "legacy.pth").read_bytes()
    (tmp / "truncated_legacy.pth").write_bytes(legacy[: len(legacy) * 2 // 3])
    (tmp / "empty.pth").write_bytes(b"")
    (tmp / "empty_folder").mkdir()
    (tmp / "junk_folder").mkdir()
    (tmp / "junk_folder" / "notes.txt").write_text("hello")
    nan = with_key(sd, "blocks.0.mlp.W_in", sd["blocks.0.mlp.W_in"].clone().index_fill_(0, torch.tensor([3]), float("nan")))
    inf = with_key(sd, "unembed.W_U", sd["unembed.W_U"].clone().index_fill_(1, torch.tensor([2]), float("inf")))
    return {
        "truncated": (tmp / "truncated.pth", CheckpointError, "truncated"),
        "truncated legacy": (tmp / "truncated_legacy.pth", CheckpointError, "truncated"),
        "empty file": (tmp / "empty.pth", CheckpointError, "empty file"),
        "missing file": (tmp / "nope.pth", CheckpointError, "no such file"),
        "empty folder": (tmp / "empty_folder", CheckpointError, "empty folder"),
        "unrecognised folder": (tmp / "junk_folder", CheckpointError, "no checkpoints found"),
        "missing key": (save(full_run([with_key(sd, "blocks.0.mlp.W_in", None)]), tmp / "missing.pth"),
                        CheckpointError, "state_dicts\\[0\\]: missing key 'blocks.0.mlp.W_in'"),
        "missing container key": (save({"model": sd, "checkpoints": [sd]}, tmp / "no_epochs.pth"), CheckpointError,
                                  "missing key 'checkpoint_epochs'"),
        "wrong shape": (save(full_run([sd, with_key(sd, "blocks.0.mlp.b_out", torch.zeros(9))]), tmp / "shape.pth"),
                        CheckpointError, "state_dicts\\[1\\]: blocks.0.mlp.b_out has shape \\(9,\\), expected \\(8,\\)"),
        "unexpected key": (save(full_run([with_key(sd, "ln_final.w", torch.ones(8))]), tmp / "ln.pth"),
                           CheckpointError, "unexpected state-dict keys \\(ln_final.w\\)"),
        "mixed configs": (save(full_run([sd, paper_state_dict(d_mlp=32)]), tmp / "mixed.pth"), CheckpointError,
                          "mixed configs across checkpoints: W_in"),
        "nan": (save(full_run([sd, nan]), tmp / "nan.pth"), CheckpointError, "blocks.0.mlp.W_in holds NaN or Inf"),
        "inf": (save({"model": inf}, tmp / "inf.pth"), CheckpointError, "unembed.W_U holds NaN or Inf"),
        "p mismatch": (save(full_run([sd], config={"p": 13}), tmp / "p.pth"), CheckpointError,
                       "p=13 does not match the vocabulary: W_E has 8 tokens"),
        "config mismatch": (save(full_run([sd], config={"p": 7, "d_model": 16}), tmp / "cfg.pth"), CheckpointError,
                            "the config says d_model=16 but the weights have d_model=8"),
        "gelu": (save(full_run([sd], config={"p": 7, "act_type": "GeLU"}), tmp / "gelu.pth"), CheckpointError, "ReLU"),
        "epochs length": (save(full_run([sd], epochs=[0, 100]), tmp / "len.pth"), CheckpointError, "1 state dicts but 2 epochs"),
        "no model": (save({"train_loss": 1.0, "epoch": 3}, tmp / "losses.pth"), CheckpointError,
                     "no model weights"),  # loss curves alone load as curves (docs/phase-changes.md)
        "not a run": (save([1, 2, 3], tmp / "list.pth"), CheckpointError, "holds a list"),
    }


def test_bad_inputs_raise_mechgrok_errors(tmp_path):
    for name, (src, cls, msg) in bad_inputs(tmp_path).items():
        with pytest.raises(cls, match=msg) as info:
            open_run(src)
        text = str(info.value)
        assert "\n" not in text, name
        assert str(src) in text, name  # names the file


def test_every_truncation_is_corrupt_not_unsafe(tmp_path):
    """Cut a small file at many points: always a CheckpointError saying truncated/corrupt, never 'unsafe'."""
    for zip_format in (False, True):
        f = tmp_path / "small.pth"
        torch.save({"model": paper_state_dict(p=3, d_model=2, n_heads=1, d_head=2, d_mlp=2)}, f,
                   _use_new_zipfile_serialization=zip_format)
        data = f.read_bytes()
        for cut in range(1, len(data), max(1, len(data) // 60)):
            g = tmp_path / "cut.pth"
            g.write_bytes(data[:cut])
            with pytest.raises(CheckpointError, match="truncated|corrupt") as info:
                open_run(g)
            assert not isinstance(info.value, UnsafeCheckpointError), (zip_format, cut)


def test_stored_split_and_override_errors(tmp_path):
    sd = paper_state_dict()
    tl_like = {"checkpoints": [], "model": None}
    with pytest.raises(CheckpointError, match="no final model"):
        open_run(save(tl_like, tmp_path / "empty_demo.pth"))
    f = save(full_run([sd]), tmp_path / "run.pth")
    with pytest.raises(ConfigError, match="frac_train must lie strictly between 0 and 1"):
        open_run(f, frac_train=1.5)
    assert int(open_run(f, frac_train=0.5, seed=4)["is_train"].sum()) == int(0.5 * 49)
    with pytest.raises(RunDirError, match="no checkpoints"):
        run = tmp_path / "run"
        run.mkdir()
        for name in ("run.json", "config.json", "split.json", "metrics.csv"):
            (run / name).write_bytes((QUICK_RUN / name).read_bytes())
        open_run(run)


def test_crafted_pickle_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "PWNED"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"model": paper_state_dict(), "extra": Payload()}, tmp_path / "evil.pth")
    with open(tmp_path / "evil.pkl", "wb") as f:
        pickle.dump({"model": Payload()}, f)
    torch.save({"model": paper_state_dict(), "extra": Payload()}, tmp_path / "evil_legacy.pth",
               _use_new_zipfile_serialization=False)
    for name in ("evil.pth", "evil.pkl", "evil_legacy.pth"):
        with pytest.raises(UnsafeCheckpointError) as info:
            open_run(tmp_path / name)
        assert "--trust-checkpoint" in str(info.value) and "trusted=True" in str(info.value)
        assert not marker.exists()
    assert "posix.system" in str(pytest.raises(UnsafeCheckpointError, open_run, tmp_path / "evil.pth").value)
    out = tmp_path / "evil.zarr"
    result = runner.invoke(app, ["ingest", str(tmp_path / "evil.pth"), "--out", str(out)])
    assert result.exit_code == 2 and "--trust-checkpoint" in result.output
    assert not marker.exists() and not out.exists()


def test_cli_ingest(tmp_path):
    out = tmp_path / "q.zarr"
    result = runner.invoke(app, ["ingest", str(QUICK_RUN), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "61 checkpoints" in result.output and "p = 53" in result.output
    ds = open_run(out)
    assert ds.sizes["checkpoint"] == 61 and ds.attrs["source_format"] == "mechgrok-run"
    result = runner.invoke(app, ["ingest", str(QUICK_RUN), "--out", str(out)])
    assert result.exit_code == 2 and "already exists" in result.output
    result = runner.invoke(app, ["ingest", str(QUICK_RUN), "--out", str(tmp_path / "seeded.zarr"), "--seed", "1"])
    assert result.exit_code == 2 and "stores its split" in result.output
    assert not (tmp_path / "seeded.zarr").exists()
    sd = paper_state_dict()
    src = save({"model": sd, "train_losses": [1.0] * 5}, tmp_path / "final.pth")
    out2 = tmp_path / "final.zarr"
    result = runner.invoke(app, ["ingest", str(src), "--out", str(out2), "--seed", "2", "--frac-train", "0.5"])
    assert result.exit_code == 0, result.output
    ds = open_run(out2)
    assert ds.attrs["split_seed"] == 2 and ds.attrs["split_frac_train"] == 0.5 and list(ds["checkpoint"].values) == [4]
    result = runner.invoke(app, ["ingest", str(src), "--out", str(tmp_path / "x.zarr"), "--format", "tl-model"])
    assert result.exit_code == 2 and "format expects the transformerlens layout" in result.output
    assert not (tmp_path / "x.zarr").exists()


def test_cli_bad_input_exits_2_and_writes_nothing(tmp_path):
    srcdir = tmp_path / "src"
    srcdir.mkdir()
    cases = bad_inputs(srcdir)
    outdir = tmp_path / "out"
    outdir.mkdir()
    for name, (src, _, msg) in cases.items():
        out = outdir / "store.zarr"
        result = runner.invoke(app, ["ingest", str(src), "--out", str(out)])
        assert result.exit_code == 2, (name, result.output)
        assert "error" in result.output and str(src.name) in result.output, name
        assert list(outdir.iterdir()) == [], name  # nothing written, not even a temp folder


def test_cli_train_with_zarr(tmp_path):
    cfg = tmp_path / "tiny.json"
    cfg.write_text('{"p": 11, "frac_train": 0.5, "d_model": 8, "n_heads": 2, "d_head": 4, "d_mlp": 16, '
                   '"num_epochs": 10, "checkpoint_every": 5}')
    run, store = tmp_path / "run", tmp_path / "run.zarr"
    result = runner.invoke(app, ["train", str(run), "--config", str(cfg), "--quiet", "--zarr", str(store)])
    assert result.exit_code == 0, result.output
    z, ref = open_run(store), open_run(run)
    assert list(z["checkpoint"].values) == [0, 5, 10]
    np.testing.assert_array_equal(z["W_E"].values, ref["W_E"].values)
    np.testing.assert_array_equal(z["loss_train"].values, ref["loss_train"].values)
    result = runner.invoke(app, ["train", str(tmp_path / "run2"), "--config", str(cfg), "--quiet", "--zarr", str(store)])
    assert result.exit_code == 2 and "already exists" in result.output
    assert not (tmp_path / "run2").exists()


class _Payload:
    """A pickle that would run a shell command if unpickled (it never is: the load is refused)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_each_error_class_from_real_bad_input_is_one_line_naming_the_file(tmp_path):
    """Every MechgrokError subclass, raised by the public function on a real bad input: that exact class, one line
    naming the file and the problem; the command line prints that line as its only stderr line and exits 2."""
    from mechgrok.config import Config
    from mechgrok.pipeline import analyze
    from mechgrok.store import ingest

    bad_config = tmp_path / "bad_config.json"
    bad_config.write_text('{"p": 12}')
    empty_run = tmp_path / "empty_run"
    empty_run.mkdir()
    for name in ("run.json", "config.json", "split.json", "metrics.csv"):
        (empty_run / name).write_bytes((QUICK_RUN / name).read_bytes())
    good = save(full_run([paper_state_dict()]), tmp_path / "good.pth")
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    unsafe = tmp_path / "unsafe.pkl"
    with open(unsafe, "wb") as fh:
        pickle.dump({"model": _Payload(tmp_path / "PWNED")}, fh)
    existing = tmp_path / "existing.zarr"
    existing.mkdir()
    out = tmp_path / "never_written.zarr"
    cases = [  # (class, library call, file named, problem, command line)
        (ConfigError, lambda: Config.from_json(bad_config.read_text(), source=bad_config), bad_config,
         "p must be an odd integer", ["train", str(tmp_path / "run"), "--config", str(bad_config), "--quiet"]),
        (RunDirError, lambda: open_run(empty_run), empty_run, "no checkpoints found",
         ["ingest", str(empty_run), "--out", str(out)]),
        (CheckpointError, lambda: open_run(truncated), truncated, "truncated",
         ["ingest", str(truncated), "--out", str(out)]),
        (UnsafeCheckpointError, lambda: open_run(unsafe), unsafe, "--trust-checkpoint",
         ["ingest", str(unsafe), "--out", str(out)]),
        (StoreError, lambda: ingest(QUICK_RUN, existing), existing, "already exists",
         ["ingest", str(QUICK_RUN), "--out", str(existing)]),
        (AnalysisError, lambda: analyze(open_run(QUICK_RUN), analyses=["tea"]), None, "unknown analyses",
         ["analyze", str(QUICK_RUN), "--only", "tea", "--out", str(tmp_path / "analysis"), "--quiet"]),
    ]
    for cls, call, path, problem, argv in cases:
        with pytest.raises(MechgrokError) as info:
            call()
        err = info.value
        assert type(err) is cls, (cls.__name__, type(err).__name__, str(err))
        text = str(err)
        assert "\n" not in text and problem in text, text
        if path is not None:
            assert err.path == path and text.startswith(f"{path}: "), text
        res = runner.invoke(app, argv)
        assert res.exit_code == 2, (cls.__name__, res.output)
        lines = res.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), (cls.__name__, res.stderr)
        assert problem in lines[0] and (path is None or str(path) in lines[0]), lines[0]
        assert "Traceback" not in res.output
    assert not (tmp_path / "PWNED").exists() and not out.exists() and not (tmp_path / "run").exists()
    assert list(existing.iterdir()) == [] and not (tmp_path / "analysis").exists()
