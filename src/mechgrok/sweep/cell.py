"""One run of a sweep, as one task: train (or ingest), analyse, summarise, into its own run directory.

:func:`run_cell` is what a dask worker executes. Everything it writes goes under ``SWEEP/runs/NAME/``, and only
there, so tasks never share a store (``tasks.md`` section 6):

``config.json``, ``checkpoints/``, ``metrics.csv``, ... (the run directory of :func:`mechgrok.train.train`),
``analysis.zarr`` and ``report.json`` (:func:`mechgrok.analyze`), ``summary.zarr``
(:func:`mechgrok.sweep.summary.run_summary`), and last ``status.json``: the cell's commit record.

``status.json`` holds ``status`` (``"done"`` or ``"failed"``), the cell's ``name``, ``coords``, ``config`` and
``source``, the ``attempt`` number, the ``seconds`` it took, the ``worker`` (host and process) and, for a failure, ``error``
(one line) and ``traceback``. A cell is finished when its status is ``"done"``; a re-run of the sweep skips it.

A task killed half-way (its worker died) leaves an incomplete run directory: the next attempt resumes training
from its last checkpoint (:func:`mechgrok.train.train` with ``resume=True``, bit-identical to an uninterrupted
run) and rewrites the analysis and summary stores whole (written aside, then renamed), so nothing is lost or
duplicated. On object storage (a URL root) the task works in a local working copy of its run directory
(:class:`mechgrok.store.location.Mirror`): it first downloads what an earlier attempt left at the URL, pushes the
run directory back after every checkpoint (the checkpoint, ``metrics.csv``, the resume state, ``run.json`` last)
and once more at the end, then writes ``status.json``. An interrupted task there resumes from its last pushed
checkpoint, as locally; files the new attempt replaces (a rewritten store's chunks) are deleted at the URL, so
nothing is duplicated.
"""

from __future__ import annotations

import json
import os
import socket
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Mapping

from mechgrok.errors import AnalysisError
from mechgrok.store.location import Mirror, exists, join, normalise, read_text, write_text

__all__ = ["STATUS_FILE", "SUMMARY_STORE", "run_dir_of", "read_status", "run_cell"]

#: The commit record of a cell, written last.
STATUS_FILE = "status.json"
#: The per-run summary store in each run directory.
SUMMARY_STORE = "summary.zarr"


def run_dir_of(root: str | Path, name: str) -> Path | str:
    """The run directory of the cell ``name`` in the sweep folder ``root`` (local path or URL)."""
    return join(root, "runs", name)


def read_status(run_dir: str | Path) -> dict[str, Any] | None:
    """The cell's ``status.json``, or None if it has none (never started, or killed before finishing)."""
    f = join(run_dir, STATUS_FILE)
    if not exists(f):
        return None
    try:
        status = json.loads(read_text(f))
    except (ValueError, OSError):
        return None
    return status if isinstance(status, dict) else None


def _train_here(cfg: Any, work: Path, on_checkpoint: Callable[[int, Any], None] | None = None) -> None:
    from mechgrok.rundir import is_run_dir, read_run_info
    from mechgrok.train import train

    if is_run_dir(work):
        if read_run_info(work).get("complete"):
            return
        # an attempt killed half-way: continue from its last checkpoint
        train(cfg, work, resume=True, on_checkpoint=on_checkpoint)
    else:
        # a failed attempt left its status record, which would block training into the folder; its count and
        # error were read before this attempt started
        (work / STATUS_FILE).unlink(missing_ok=True)
        train(cfg, work, overwrite=True, on_checkpoint=on_checkpoint)


def _analyse(ds: Any, analysis: Mapping[str, Any]) -> tuple[Any, str]:
    """The analysis tree (or None) and a note: a run without key frequencies gets the weight measures only."""
    import mechgrok

    opts = {"analyses": analysis.get("analyses"), "llc": bool(analysis.get("llc", False)),
            "llc_every": int(analysis.get("llc_every", 10)), "device": analysis.get("device")}
    if analysis.get("chunk"):
        opts["chunk"] = int(analysis["chunk"])
    try:
        return mechgrok.analyze(ds, **opts), ""
    except AnalysisError as e:
        if "no key frequencies" not in str(e):
            raise
        note = f"full analysis skipped: {e.reason}; weight measures only"
        return mechgrok.analyze(ds, analyses=["fourier_norms", "measures"], device=opts["device"]), note


def _work(cell: Any, work: Path, analysis: Mapping[str, Any], mirror: Mirror | None = None) -> str:
    import mechgrok
    from mechgrok.report import summarise
    from mechgrok.rundir import PUSH_LAST
    from mechgrok.store.analysis_store import write_analysis
    from mechgrok.sweep.summary import run_summary

    if cell.source is None:
        push = None if mirror is None else (lambda epoch, weights: mirror.push(last=PUSH_LAST))
        _train_here(cell.config, work, push)
        ds = mechgrok.open_run(work)
    else:
        work.mkdir(parents=True, exist_ok=True)
        ds = mechgrok.open_run(cell.source)
    has_weights = "W_E" in ds and ds.sizes.get("checkpoint", 0) > 0
    tree, note = _analyse(ds, analysis) if has_weights else (None, "curves only: no weights to analyse")
    if tree is not None:
        write_analysis(tree, work / "analysis.zarr")
        if "p" in tree.attrs and "key_frequencies" in tree.children:
            write_text(work / "report.json", json.dumps(summarise(tree), indent=2))
    summary = run_summary(ds, tree)
    summary.attrs["note"] = note
    write_analysis(summary, work / SUMMARY_STORE)
    return note


def run_cell(cell: Mapping[str, Any], root: str, analysis: Mapping[str, Any]) -> dict[str, Any]:
    """Run one cell of a sweep (the dask task); never raises for a failure of the run itself.

    Parameters
    ----------
    cell : mapping
        :meth:`mechgrok.sweep.spec.Cell.to_dict` of the cell.
    root : str
        The sweep folder (local path or fsspec URL).
    analysis : mapping
        The spec's analysis options (:attr:`mechgrok.sweep.spec.SweepSpec.analysis`).

    Returns
    -------
    dict
        The status record written to ``status.json`` (see the module docstring).

    Notes
    -----
    Torch runs on one thread inside the task (training pins ``Config.threads`` itself): the parallelism of a
    sweep is across tasks.
    """
    import torch

    from mechgrok.rundir import PUSH_LAST
    from mechgrok.sweep.spec import Cell

    c = Cell.from_dict(cell)
    run_dir = run_dir_of(root, c.name)
    previous = read_status(run_dir) or {}
    status: dict[str, Any] = {"name": c.name, "coords": c.coords, "attempt": int(previous.get("attempt", 0)) + 1,
                              "worker": f"{socket.gethostname()}:{os.getpid()}", "config": c.config.to_dict(),
                              "source": c.source}
    start = time.perf_counter()
    torch.set_num_threads(1)
    remote = isinstance(normalise(run_dir), str)
    try:
        if remote:
            with tempfile.TemporaryDirectory(prefix="mechgrok-cell-") as tmp:
                mirror = Mirror(str(run_dir), Path(tmp) / "run")
                mirror.pull()  # what an interrupted attempt left: its training resumes from the last checkpoint
                status["note"] = _work(c, mirror.local, analysis, mirror)
                mirror.push(last=PUSH_LAST)
        else:
            status["note"] = _work(c, Path(run_dir), analysis)
        status["status"] = "done"
    except Exception as e:  # the task's boundary: a failure of the run is recorded with its error, not raised
        status.update(status="failed", error=f"{type(e).__name__}: {e}".splitlines()[0], traceback=traceback.format_exc())
    status["seconds"] = round(time.perf_counter() - start, 3)
    write_text(join(run_dir, STATUS_FILE), json.dumps(status, indent=2, default=str))
    return status
