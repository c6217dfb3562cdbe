"""The structure of the command line (issue 11): no import cycle among the ``cli`` modules, no command calling
another command, the library free of typer, and ``mechgrok figures`` writing exactly what the library writes."""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mechgrok_cli.main import app

REPO = Path(__file__).resolve().parents[1]
CLI = REPO / "cli" / "mechgrok_cli"
SRC = REPO / "src" / "mechgrok"
MODULES = sorted(p.stem for p in CLI.glob("*.py") if p.stem != "__init__")
runner = CliRunner()


def _cli_imports(name: str) -> set[str]:
    """The cli modules that ``cli/mechgrok_cli/<name>.py`` imports (at any depth of the file, absolute or relative)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse((CLI / f"{name}.py").read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("mechgrok_cli.")}
        elif isinstance(node, ast.ImportFrom):
            # from cli import x / from . import x -> x;  from mechgrok_cli.x import y / from .x import y -> x
            if node.level == 0:
                parts = (node.module or "").split(".")
                if parts[0] != "mechgrok_cli":
                    continue
                tail = parts[1:]
            elif node.level == 1:
                tail = node.module.split(".") if node.module else []
            else:
                continue
            found |= {tail[0]} if tail else {a.name for a in node.names}
    return found & set(MODULES)


def _command_modules() -> set[str]:
    """The cli modules that define a command (a function decorated with ``@app.command(...)``)."""
    def is_command(d: ast.expr) -> bool:
        f = d.func if isinstance(d, ast.Call) else d
        return isinstance(f, ast.Attribute) and f.attr == "command"

    return {name for name in MODULES
            for node in ast.walk(ast.parse((CLI / f"{name}.py").read_text(encoding="utf-8")))
            if isinstance(node, ast.FunctionDef) and any(is_command(d) for d in node.decorator_list)}


def test_the_command_modules_are_found():
    assert {"train", "ingest", "analyze", "figures"} <= _command_modules()
    assert "main" not in _command_modules()


@pytest.mark.parametrize("name", MODULES)
def test_no_cli_module_imports_a_command_module_or_main(name):
    # only cli/mechgrok_cli/main.py assembles the commands; the others share only the non-command modules (cli.app, ...)
    if name == "main":
        assert _command_modules() <= _cli_imports("main")
    else:
        assert not _cli_imports(name) & (_command_modules() | {"main"})


def test_the_cli_import_graph_has_no_cycle():
    graph = {name: _cli_imports(name) for name in MODULES}
    done: set[str] = set()

    def visit(name: str, path: tuple[str, ...]) -> None:
        assert name not in path, f"import cycle: {' -> '.join((*path, name))}"
        if name not in done:
            for dep in graph[name]:
                visit(dep, (*path, name))
            done.add(name)

    for name in MODULES:
        visit(name, ())


@pytest.mark.parametrize("name", MODULES)
def test_each_cli_module_imports_alone_in_a_fresh_interpreter(name):
    code = (f"import sys, json; import mechgrok_cli.{name}; "
            "print(json.dumps(sorted(m for m in sys.modules if m.startswith('mechgrok_cli.'))))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    loaded = {m.split(".", 1)[1] for m in json.loads(proc.stdout.splitlines()[-1])}
    if name != "main":  # importing one command loads no other command (and not the assembled app)
        assert not loaded & ((_command_modules() | {"main"}) - {name}), loaded


def test_the_entry_point_stays_fast_and_lists_the_commands_in_order():
    script = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]["scripts"]["mechgrok"]
    assert script == "mechgrok_cli.main:main"
    code = ("import sys; sys.argv = ['mechgrok', '--help']; from mechgrok_cli.main import main\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\n"
            "print('HEAVY', sorted(m for m in ('torch', 'xarray', 'zarr', 'matplotlib') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                          env={**os.environ, "COLUMNS": "100"})
    assert proc.returncode == 0, proc.stderr
    assert "HEAVY []" in proc.stdout
    positions = [proc.stdout.find(f"│ {c} ") for c in ("train", "ingest", "analyze", "figures")]
    assert -1 not in positions and positions == sorted(positions), proc.stdout


def test_the_library_never_imports_typer_or_the_cli():
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else [])
            for n in names:
                assert n.split(".")[0] not in ("typer", "click", "cli"), f"{path.relative_to(REPO)} imports {n}"


# ---------------------------------------------------------------------------------------------------------------
# `mechgrok figures` on a run without analysis.zarr: the library's outputs, byte for byte


def _copy_run(src: Path, dest: Path, keep) -> Path:
    """A copy of the run directory ``src`` with only the checkpoints whose epoch passes ``keep``, without the
    outputs a previous ``mechgrok analyze`` may have left in it (analysis.zarr, reports, figures)."""
    outputs = {"analysis.zarr", "report.md", "report.json", "figures"}

    def ignore(d: str, names: list[str]) -> list[str]:
        if Path(d) == Path(src):
            return [n for n in names if n in outputs]
        if Path(d).name != "checkpoints":
            return []
        return [n for n in names if n.startswith("epoch_") and not keep(int(n.removeprefix("epoch_").split(".")[0]))]

    shutil.copytree(src, dest, ignore=ignore)
    return dest


@pytest.mark.slow
def test_figures_without_an_analysis_writes_what_the_library_writes(fixture_run, tmp_path):
    import mechgrok
    from mechgrok.figures.pack import write_figure_pack

    run = _copy_run(fixture_run, tmp_path / "run", lambda epoch: epoch % 1000 == 0)  # 4 checkpoints

    # expected: the library, called directly with the defaults of `mechgrok analyze`
    trajectory = mechgrok.open_run(run)
    tree = mechgrok.analyze(trajectory)
    summary = mechgrok.summarise(tree)
    expected = tmp_path / "expected"
    mechgrok.write_analysis(tree, expected / "analysis.zarr")
    write_figure_pack(mechgrok.open_analysis(expected / "analysis.zarr"), expected / "figures",
                      trajectory=trajectory, animations=False, dpi=50)

    res = runner.invoke(app, ["figures", str(run), "--no-animations", "--no-explorer", "--dpi", "50"])
    assert res.exit_code == 0, res.output
    output = " ".join(res.output.split())  # rich wraps long lines
    n_figures = len(list((expected / "figures").glob("*.png")))
    assert n_figures >= 10
    assert "running the analysis first" in output and "key frequencies" in output  # the summary table
    assert "report.json" in output and f"wrote {n_figures} figures (PNG + SVG) and 0 animations" in output

    assert json.loads((run / "report.json").read_text()) == json.loads(json.dumps(summary))
    assert (run / "report.md").read_text() == mechgrok.report_markdown(summary, title=f"mechgrok report: {run}")
    got = mechgrok.open_analysis(run / "analysis.zarr")
    assert got.identical(mechgrok.open_analysis(expected / "analysis.zarr"))
    names = sorted(p.name for p in (expected / "figures").iterdir())
    assert sorted(p.name for p in (run / "figures").iterdir()) == names and "01_loss_curves.png" in names
    for name in names:
        assert (run / "figures" / name).read_bytes() == (expected / "figures" / name).read_bytes(), name


def test_figures_whose_analysis_fails_is_one_red_line_and_writes_nothing(fixture_run, tmp_path):
    run = _copy_run(fixture_run, tmp_path / "run", lambda epoch: epoch <= 100)  # before the circuit forms
    before = sorted(p.name for p in run.iterdir())
    res = runner.invoke(app, ["figures", str(run), "--no-animations"])
    assert res.exit_code == 2
    assert "error: no key frequencies" in res.output and "Traceback" not in res.output
    assert sorted(p.name for p in run.iterdir()) == before  # no analysis.zarr, report.* or figures/
