"""Untrusted code never runs: one test per malicious-pickle vector, in zip-format and legacy torch files and raw
pickles, flat and nested in dicts, lists and tuples.

Every payload would create a marker file if it ran. Without the trust option the file is refused with an
:class:`UnsafeCheckpointError` and the marker never appears; loading the same file with ``trusted=True`` makes
it appear, which proves that the payload is live and the test can fail. Strings in foreign configs (the Pizza
configs' lambda) are never evaluated.
"""

from __future__ import annotations

import builtins
import json
import os
import pickle
import shutil
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from mechgrok.errors import CheckpointError, MechgrokError, UnsafeCheckpointError
from mechgrok.store import open_run
from mechgrok_cli.main import app

from planted import paper_state_dict

PIZZA = Path(__file__).resolve().parents[2] / "shared" / "data" / "pizza"


class Reduce:
    """Unpickles as ``func(*args)``."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return (self.func, self.args)


def vectors(marker: Path) -> dict[str, object]:
    """Payloads that create ``marker`` when unpickled."""
    m = str(marker)
    return {
        "os.system": Reduce(os.system, f"touch '{m}'"),
        "builtins.exec": Reduce(builtins.exec, f"open({m!r}, 'w').close()"),
        "builtins.eval": Reduce(builtins.eval, f"open({m!r}, 'w').close()"),
        "open for writing": Reduce(builtins.open, m, "w"),
        "torch.save (a torch function with side effects)": Reduce(torch.save, {"x": 1}, m),
        "getattr chain to os.system": Reduce(getattr(__import__("posix"), "system"), f"touch '{m}'"),
    }


CONTAINERS = {
    "flat": lambda payload: {"model": paper_state_dict(), "extra": payload},
    "nested dict/list/tuple": lambda payload: {"model": paper_state_dict(),
                                               "meta": {"runs": [({"cfg": [payload]},)]}},
    "in a list of state dicts": lambda payload: {"state_dicts": [paper_state_dict(), {"evil": payload}],
                                                 "epochs": [0, 1]},
}

WRITERS = {
    "zip": lambda obj, f: torch.save(obj, f),
    "legacy": lambda obj, f: torch.save(obj, f, _use_new_zipfile_serialization=False),
    "raw pickle": lambda obj, f: f.write_bytes(pickle.dumps(obj, protocol=2)),
}


def _refused_then_live(f: Path, marker: Path) -> None:
    with pytest.raises(UnsafeCheckpointError, match="--trust-checkpoint") as info:
        open_run(f)
    assert "\n" not in str(info.value) and str(f) in str(info.value)
    assert not marker.exists(), "the payload ran without the trust option"
    try:
        open_run(f, trusted=True)
    except MechgrokError:
        pass  # the payload ran while unpickling; what it left is no model
    assert marker.exists(), "the payload did not run even with trust: this test could not fail"


@pytest.mark.parametrize("writer", list(WRITERS))
@pytest.mark.parametrize("vector", list(vectors(Path("m"))))
def test_each_vector_is_refused_and_never_runs(tmp_path, vector, writer):
    marker = tmp_path / "PWNED"
    for container, wrap in CONTAINERS.items():
        marker.unlink(missing_ok=True)
        f = tmp_path / f"evil-{len(container)}.pth"
        WRITERS[writer](wrap(vectors(marker)[vector]), f)
        _refused_then_live(f, marker)


def test_side_effect_on_import_of_a_pickled_class(tmp_path, monkeypatch):
    """A pickled instance of a torch Module subclass whose module writes the marker when imported: the module
    is never imported without trust."""
    marker = tmp_path / "PWNED"
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "evil_module_16.py").write_text(
        "import torch\n"
        f"open({str(marker)!r}, 'w').close()\n"
        "class Model(torch.nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.w = torch.nn.Parameter(torch.zeros(2))\n")
    monkeypatch.syspath_prepend(str(pkg))
    import evil_module_16

    model = evil_module_16.Model()
    for name, writer in WRITERS.items():
        f = tmp_path / f"module-{name.replace(' ', '_')}.pth"
        writer({"model": paper_state_dict(), "module": model}, f)
    del sys.modules["evil_module_16"]
    marker.unlink()
    for f in sorted(tmp_path.glob("module-*.pth")):
        with pytest.raises(UnsafeCheckpointError):
            open_run(f)
        assert not marker.exists() and "evil_module_16" not in sys.modules, f.name
    try:
        open_run(sorted(tmp_path.glob("module-*.pth"))[0], trusted=True)
    except MechgrokError:
        pass
    assert marker.exists()
    sys.modules.pop("evil_module_16", None)


def test_cli_refuses_without_the_flag_and_writes_nothing(tmp_path):
    marker = tmp_path / "PWNED"
    f = tmp_path / "evil.pth"
    torch.save(CONTAINERS["nested dict/list/tuple"](vectors(marker)["os.system"]), f)
    runner = CliRunner()
    for argv in (["ingest", str(f), "--out", str(tmp_path / "x.zarr")],
                 ["analyze", str(f), "--out", str(tmp_path / "out"), "--quiet"]):
        result = runner.invoke(app, argv)
        assert result.exit_code == 2 and "--trust-checkpoint" in result.output, result.output
        assert not marker.exists()
    assert not (tmp_path / "x.zarr").exists() and not (tmp_path / "out" / "analysis.zarr").exists()


def test_pizza_config_strings_are_never_evaluated(tmp_path):
    if not PIZZA.is_dir():
        pytest.skip(f"the Pizza models are not at {PIZZA} (../shared is absent)")
    marker = tmp_path / "PWNED"
    shutil.copyfile(PIZZA / "model_l8k1hzciux.pt", tmp_path / "model_l8k1hzciux.pt")
    cfg = json.loads((PIZZA / "config_l8k1hzciux.json").read_text())
    evil = f"lambda x: __import__('os').system('touch {marker}') or (x[0]+x[1])%59"
    for field in ("funcs", "name", "func", "attention_dir"):
        bad = {**cfg, field: evil}
        (tmp_path / "config_l8k1hzciux.json").write_text(json.dumps(bad))
        try:
            open_run(tmp_path / "model_l8k1hzciux.pt")
        except CheckpointError as e:
            assert field == "funcs" and "never evaluated" in str(e), (field, str(e))
        assert not marker.exists(), field
    # the check can fail: evaluating the same string does create the marker
    eval(evil)((1, 2))  # noqa: S307 - deliberate, in the test only
    assert marker.exists()
