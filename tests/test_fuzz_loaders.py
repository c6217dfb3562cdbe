"""Property-based fuzzing of every loader (hypothesis): damaged input ends in a MechgrokError naming the file.

For each format a valid tiny source is built once; every example damages it -- bytes (truncations, flips,
overwrites, insertions, deletions) or structure (keys dropped, added, renamed; values replaced by other types;
tensors with other dtypes or shapes, NaN or Inf; lists cut, reordered, nested; one checkpoint swapped for another
configuration's) -- and loads it through the public entry point (:func:`mechgrok.open_run`, plus
:func:`mechgrok.store.verify.verify_store` for Zarr stores, which reads every chunk). The property: the load
either succeeds or raises a :class:`~mechgrok.errors.MechgrokError` whose message is one line naming the file;
any other exception (KeyError, IndexError, RuntimeError, UnicodeDecodeError, ...) fails the test.

Each format runs ``MECHGROK_FUZZ_EXAMPLES`` examples, derandomised so CI sees the same inputs every run: 50 in
the default run (the suite's time budget), 1,000 in CI's fuzz step (about 6 minutes on 2 busy cores)::

    MECHGROK_FUZZ_EXAMPLES=1000 python -m pytest -m fuzz tests/test_fuzz_loaders.py

Inputs that once failed are kept as ``@example`` regressions. Marked ``fuzz``.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from mechgrok.config import Config
from mechgrok.errors import MechgrokError
from mechgrok.rundir import list_checkpoints, read_checkpoint
from mechgrok.store import ingest, open_run
from mechgrok.store.verify import verify_store
from mechgrok.train import train

from planted import paper_state_dict

pytestmark = pytest.mark.fuzz

N = int(os.environ.get("MECHGROK_FUZZ_EXAMPLES", "50"))
FUZZ = settings(max_examples=N, deadline=None, derandomize=True, database=None, print_blob=True,
                suppress_health_check=list(HealthCheck))
SIZES = dict(p=3, d_model=2, n_heads=1, d_head=2, d_mlp=2)


# -- the property ------------------------------------------------------------------------------------------------
def clean(load: Callable[[], Any], named: Path) -> None:
    """``load()`` succeeds or raises a one-line MechgrokError naming ``named`` (or a file inside it)."""
    try:
        load()
    except MechgrokError as e:
        text = str(e)
        assert "\n" not in text, text
        assert str(named) in text, f"the error does not name {named}: {text}"
        event(f"refused: {type(e).__name__}")  # outcome counts: pytest --hypothesis-show-statistics
    else:
        event("loaded")


# -- damage to bytes ---------------------------------------------------------------------------------------------
def byte_ops(n: int):
    pos = st.integers(0, max(0, n - 1))
    return st.lists(st.one_of(
        st.tuples(st.just("cut"), pos, st.just(b"")),
        st.tuples(st.just("flip"), pos, st.integers(1, 255).map(lambda x: bytes([x]))),
        st.tuples(st.just("put"), pos, st.binary(min_size=1, max_size=8)),
        st.tuples(st.just("insert"), pos, st.binary(min_size=1, max_size=8)),
        st.tuples(st.just("delete"), pos, st.integers(1, 64).map(lambda k: bytes(k))),
    ), min_size=1, max_size=3)


def damage(data: bytes, ops) -> bytes:
    b = bytearray(data)
    for op, i, arg in ops:
        i = min(i, max(0, len(b) - 1))
        if op == "cut":
            del b[i:]
        elif op == "flip" and b:
            b[i] ^= arg[0]
        elif op == "put":
            b[i:i + len(arg)] = arg
        elif op == "insert":
            b[i:i] = arg
        elif op == "delete":
            del b[i:i + len(arg)]
    return bytes(b)


# -- damage to structure -----------------------------------------------------------------------------------------
ODD_VALUES = [None, True, -1, 0, 7, 2**62, 1.5, math.nan, math.inf, -math.inf, "x", "", "lambda x: x", [], {},
              [[1, 2], [3]], (1, "a"), [1.0, math.nan], {"p": 3}, b"\x00\xff"]


def tensor_variants(t: torch.Tensor) -> list[Any]:
    out: list[Any] = [t.to(torch.int64), t.to(torch.float16), t.to(torch.bfloat16), t.to(torch.float64),
                      t.to(torch.complex64), t != 0, t.reshape(-1), t[..., :0], t.unsqueeze(0),
                      torch.zeros(3, 3), t.tolist(), t.numpy().astype(np.float32)]
    if t.numel():
        for bad in (math.nan, math.inf, -math.inf):
            u = t.clone().to(torch.float32)
            u.reshape(-1)[0] = bad
            out.append(u)
    if t.ndim >= 2:
        out.append(t.transpose(-1, -2).contiguous())
        out.append(torch.cat([t, t], dim=-1))
    return out


def mutate(data: st.DataObject, obj: Any, extra: list[Any], depth: int = 0) -> Any:
    """A copy of ``obj`` with one damage somewhere inside (drawn with ``data``)."""
    if isinstance(obj, torch.Tensor):
        return data.draw(st.sampled_from(tensor_variants(obj) + ODD_VALUES[:6]))
    if isinstance(obj, dict) and obj:
        keys = sorted(obj, key=str)
        action = data.draw(st.sampled_from(["descend", "descend", "drop", "add", "replace", "rename"]))
        key = data.draw(st.sampled_from(keys))
        out = dict(obj)
        if action == "descend" and depth < 6:
            out[key] = mutate(data, obj[key], extra, depth + 1)
        elif action == "drop":
            del out[key]
        elif action == "add":
            out[data.draw(st.sampled_from(["extra", "blocks.0.attn.b_Q", "ln_final.w", 5, "epoch", "model"]))] = \
                data.draw(st.sampled_from(ODD_VALUES + extra))
        elif action == "rename":
            out[f"{key}_"] = out.pop(key)
        else:
            out[key] = data.draw(st.sampled_from(ODD_VALUES + extra))
        return out
    if isinstance(obj, (list, tuple)) and obj:
        action = data.draw(st.sampled_from(["descend", "descend", "drop", "dup", "append", "reverse", "nest"]))
        i = data.draw(st.integers(0, len(obj) - 1))
        out = list(obj)
        if action == "descend" and depth < 6:
            out[i] = mutate(data, obj[i], extra, depth + 1)
        elif action == "drop":
            del out[i]
        elif action == "dup":
            out.insert(i, out[i])
        elif action == "append":
            out.append(data.draw(st.sampled_from(ODD_VALUES + extra)))
        elif action == "reverse":
            out.reverse()
        else:
            out = [out]
        return type(obj)(out) if isinstance(obj, tuple) else out
    return data.draw(st.sampled_from(ODD_VALUES + extra))


# -- valid sources, built once ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def base(tmp_path_factory) -> dict[str, Any]:
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("fuzz")
    cfg = Config(frac_train=0.5, num_epochs=4, checkpoint_every=2, **SIZES)
    run = root / "run"
    train(cfg, run)
    store = ingest(run, root / "run.zarr")
    tl_sd = read_checkpoint(list_checkpoints(run)[-1][1])
    sd, sd2 = paper_state_dict(**SIZES), paper_state_dict(seed=1, **SIZES)
    other = paper_state_dict(p=3, d_model=4, n_heads=2, d_head=2, d_mlp=3)  # another configuration
    objects = {
        "paper-full-run": {"config": {"p": 3, "frac_train": 0.5, "seed": 0}, "state_dicts": [sd, sd2],
                           "epochs": [0, 10], "train_losses": [1.0] * 11, "test_losses": [1.0] * 11},
        "paper-model": {"model": sd, "epoch": 10, "train_losses": [2.0, 1.0], "test_losses": [2.0, 1.5],
                        "config": {"p": 3, "d_model": 2}},
        "tl-demo": {"checkpoints": [tl_sd, tl_sd], "checkpoint_epochs": [0, 4], "train_indices": [0, 1, 2, 3],
                    "test_indices": [4, 5, 6, 7, 8], "train_losses": [1.0] * 5, "test_losses": [1.0] * 5,
                    "config": {"p": 3, "d_model": 2, "n_heads": 1}},
        "tl-model": dict(tl_sd),
        "curves": {"train_losses": [3.0, 2.0, 1.0, 0.5], "test_losses": [3.0, 2.5]},
    }
    files = {}
    for name, obj in objects.items():
        files[name] = root / f"{name}.pth"
        torch.save(obj, files[name])
    legacy = root / "legacy.pth"
    torch.save({"model": sd}, legacy, _use_new_zipfile_serialization=False)
    st_file = root / "model.safetensors"
    shutil.copyfile(list_checkpoints(run)[-1][1], st_file)
    epochs = root / "epochs"
    epochs.mkdir()
    for e, s in ((0, sd), (10, sd2)):
        torch.save({"model": s, "train_loss": 1.0, "test_loss": 2.0, "epoch": e}, epochs / f"{e}.pth")
    torch.save({"train_data": [(0, 1, 3), (2, 2, 3)]}, epochs / "init.pth")
    return {"root": root, "run": run, "store": store, "objects": objects, "files": files, "legacy": legacy,
            "safetensors": st_file, "epochs": epochs, "other": other, "sd": sd}


def _fresh(root: Path, name: str) -> Path:
    f = root / "work" / name
    f.parent.mkdir(exist_ok=True)
    return f


# -- byte-level fuzzing of single files --------------------------------------------------------------------------
@FUZZ
@given(data=st.data())
@example(data=None)  # the undamaged file loads
def test_zip_pth_bytes(base, data):
    src = base["files"]["paper-full-run"].read_bytes()
    f = _fresh(base["root"], "zip.pth")
    f.write_bytes(src if data is None else damage(src, data.draw(byte_ops(len(src)))))
    clean(lambda: open_run(f), f)


@FUZZ
@given(ops=byte_ops(2000))
@example(ops=[("flip", 143, b"\x01")])  # a damaged opcode in the pickle: was reported as "needs a full unpickle"
@example(ops=[("flip", 1340, b"\x01")])  # STOP damaged: the C unpickler looped forever on the rest
@example(ops=[("flip", 302, b"\x01")])  # 'collections' -> 'bollections': was "unsafe", and failed with trust too
def test_legacy_pth_bytes(base, ops):
    src = base["legacy"].read_bytes()
    f = _fresh(base["root"], "legacy.pth")
    f.write_bytes(damage(src, ops))
    clean(lambda: open_run(f), f)
    clean(lambda: open_run(f, trusted=True), f)  # a trusted load of damaged input is still a clean error


@FUZZ
@given(data=st.data())
@example(data=None)
def test_safetensors_bytes(base, data):
    src = base["safetensors"].read_bytes()
    f = _fresh(base["root"], "model.safetensors")
    f.write_bytes(src if data is None else damage(src, data.draw(byte_ops(len(src)))))
    clean(lambda: open_run(f), f)


# -- structural fuzzing of the unpickled formats -----------------------------------------------------------------
def _structural(base, data, name: str) -> None:
    obj = mutate(data, base["objects"][name], [base["other"], base["sd"], torch.zeros(2, 2)])
    f = _fresh(base["root"], f"{name}.pth")
    try:
        torch.save(obj, f)
    except Exception:  # not every damaged object can be saved (e.g. a bfloat16 numpy view); nothing to load
        return
    clean(lambda: open_run(f), f)


@pytest.mark.parametrize("name", ["paper-full-run", "paper-model", "tl-demo", "tl-model", "curves"])
@FUZZ
@given(data=st.data())
def test_structure(base, data, name):
    """The unpickled formats: paper-full-run (incl. mixed configs across its state dicts), paper-model,
    TransformerLens' demo and state dict, a loss-curve-only file."""
    _structural(base, data, name)


@FUZZ
@given(data=st.data(), which=st.sampled_from(["0.pth", "10.pth", "init.pth"]))
def test_paper_epochs_folder_mixed_and_damaged(base, data, which):
    """A folder of {epoch}.pth files with one file damaged or swapped for another configuration's model."""
    folder = base["epochs"]
    f = folder / which
    original = f.read_bytes()
    obj = mutate(data, torch.load(f, weights_only=True), [base["other"], base["sd"]])
    try:
        try:
            torch.save(obj, f)
        except Exception:
            return
        clean(lambda: open_run(folder), folder)
    finally:
        f.write_bytes(original)


# -- mechgrok's run directory ----------------------------------------------------------------------------------
RUN_FILES = ["config.json", "run.json", "split.json", "metrics.csv", "checkpoints/epoch_000002.safetensors",
             "state.safetensors"]


@FUZZ
@given(data=st.data(), which=st.sampled_from(RUN_FILES), how=st.sampled_from(["bytes", "json", "folder", "gone"]))
def test_run_directory(base, data, which, how):
    run = base["run"]
    f = run / which
    original = f.read_bytes()
    try:
        if how == "folder":
            f.unlink()
            f.mkdir()
        elif how == "gone":
            f.unlink()
        elif how == "json" and which.endswith(".json"):
            f.write_text(json.dumps(mutate(data, json.loads(original), [[0, 1], -5, 10**6, "0"]),
                                    default=str, allow_nan=True))
        else:
            f.write_bytes(damage(original, data.draw(byte_ops(len(original)))))
        clean(lambda: open_run(run), run)
    finally:
        if f.is_dir():
            f.rmdir()
        f.write_bytes(original)


# -- Zarr stores -------------------------------------------------------------------------------------------------
@FUZZ
@given(data=st.data())
def test_zarr_store(base, data):
    store = base["store"]
    files = sorted(p for p in store.rglob("*") if p.is_file())
    f = data.draw(st.sampled_from(files))
    original = f.read_bytes()
    try:
        if f.name == "zarr.json" and data.draw(st.booleans()):
            f.write_text(json.dumps(mutate(data, json.loads(original), [[1, 2, 3], "float32", {"name": "bytes"}]),
                                    default=str))
        else:
            f.write_bytes(damage(original, data.draw(byte_ops(len(original)))))
        clean(lambda: verify_store(store), store)  # opens it as open_run does, then reads every chunk
    finally:
        f.write_bytes(original)


# -- the new task formats: sequence-task run directories (issue 13) and the Pizza models (issue 12) -------------
@pytest.fixture(scope="module")
def sequence_run(tmp_path_factory) -> Path:
    from mechgrok.sequence_config import sequence_preset
    from mechgrok.sequence_train import train_sequence

    run = tmp_path_factory.mktemp("seq") / "run"
    train_sequence(sequence_preset("digit_addition_quick", num_epochs=4, checkpoint_every=2, d_model=8, n_heads=2,
                                   d_head=4, d_mlp=16, test_size=16, n_train=16, batch_size=16), run)
    return run


SEQ_FILES = ["config.json", "run.json", "metrics.csv", "checkpoints/epoch_000002.safetensors"]


@FUZZ
@given(data=st.data(), which=st.sampled_from(SEQ_FILES), how=st.sampled_from(["bytes", "json", "gone"]))
def test_sequence_run_directory(sequence_run, data, which, how):
    f = sequence_run / which
    original = f.read_bytes()
    try:
        if how == "gone":
            f.unlink()
        elif how == "json" and which.endswith(".json"):
            f.write_text(json.dumps(mutate(data, json.loads(original), [[0, 1], -5, 10**6, "add", "0"]),
                                    default=str, allow_nan=True))
        else:
            f.write_bytes(damage(original, data.draw(byte_ops(len(original)))))
        clean(lambda: open_run(sequence_run).load(), sequence_run)
    finally:
        f.write_bytes(original)


PIZZA = Path(__file__).resolve().parents[2] / "shared" / "data" / "pizza"


@FUZZ
@given(data=st.data(), which=st.sampled_from(["config", "model"]))
def test_pizza_model(base, data, which):
    if not PIZZA.is_dir():
        pytest.skip(f"the Pizza models are not at {PIZZA} (../shared is absent)")
    folder = base["root"] / "pizza"
    if not folder.exists():
        folder.mkdir()
        for name in ("model_l8k1hzciux.pt", "config_l8k1hzciux.json"):
            shutil.copyfile(PIZZA / name, folder / name)
    f = folder / ("config_l8k1hzciux.json" if which == "config" else "model_l8k1hzciux.pt")
    original = f.read_bytes()
    try:
        if which == "config" and data.draw(st.booleans()):
            f.write_text(json.dumps(mutate(data, json.loads(original), ["lambda x: (x[0]-x[1])%59", 59, 0, -1]),
                                    default=str, allow_nan=True))
        else:
            f.write_bytes(damage(original, data.draw(byte_ops(len(original)))))
        clean(lambda: open_run(folder / "model_l8k1hzciux.pt"), folder)
    finally:
        f.write_bytes(original)
