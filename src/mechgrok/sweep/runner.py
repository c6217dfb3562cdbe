"""Run a sweep on dask.distributed: one task per run, resumable, then the sweep store and its figures.

:func:`run_sweep` submits :func:`mechgrok.sweep.cell.run_cell` once per unfinished cell to a dask cluster: a
``LocalCluster`` of worker processes (one thread each) started for the sweep, or an existing cluster
(``scheduler="tcp://HOST:8786"``, a ``dask scheduler`` with ``dask worker`` processes on any machines that see the
sweep folder: a shared file system or an object store URL). When every task has reported, the driver combines
the runs' summaries (:func:`mechgrok.sweep.summary.combine_runs`) into ``SWEEP/summary.zarr`` and draws the phase
diagrams into ``SWEEP/figures/``.

Resuming: a cell whose ``status.json`` says ``done`` (and whose summary store exists) is skipped; a failed or
unfinished one runs again. A worker that dies mid-task is replaced by dask, which reschedules its task; the task
resumes the run from its last checkpoint. The sweep folder::

    SWEEP/
      sweep.json        the resolved spec: fields, analysis options, every cell's config
      runs/NAME/        one run directory per cell (mechgrok.sweep.cell), NAME = "field=value,..."
      summary.zarr      the sweep Dataset (DataTree; opens with xarray.open_zarr / open_datatree)
      sweep_status.json every cell's status: done / failed (with the error) / not run
      figures/          phase diagrams and early-warning leads (mechgrok.figures.sweep), index.html
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import xarray as xr

from mechgrok.errors import ConfigError, StoreError
from mechgrok.store.location import exists, join, normalise, read_text, upload, write_text
from mechgrok.store.lock import hold
from mechgrok.sweep.cell import STATUS_FILE, SUMMARY_STORE, read_status, run_cell, run_dir_of
from mechgrok.sweep.spec import SweepSpec

__all__ = ["SweepResult", "run_sweep", "collect_sweep", "open_sweep", "local_cluster"]

#: The sweep store in the sweep folder.
SWEEP_STORE = "summary.zarr"

Progress = Callable[[dict[str, Any], int, int], None]


@dataclass
class SweepResult:
    """What :func:`run_sweep` did.

    Attributes
    ----------
    root : Path or str
        The sweep folder.
    statuses : dict
        Cell name -> its status record (``status``: done / failed / not run).
    ran, skipped : list of str
        Cells run now, cells already finished before.
    tree : xarray.DataTree or None
        The sweep store's content (None when no cell finished).
    """

    root: Path | str
    statuses: dict[str, dict[str, Any]] = field(default_factory=dict)
    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    tree: xr.DataTree | None = None

    @property
    def failed(self) -> list[str]:
        """Cells whose last attempt failed."""
        return [n for n, s in self.statuses.items() if s.get("status") == "failed"]


def _check_root(spec: SweepSpec, root: Path | str) -> None:
    f = join(root, "sweep.json")
    if exists(f):
        try:
            old = json.loads(read_text(f))
        except ValueError:
            raise StoreError("sweep.json is not valid JSON", path=f) from None
        if list(old.get("fields", [])) != list(spec.fields):
            raise ConfigError(f"the folder holds a sweep over {old.get('fields')}, this spec sweeps {list(spec.fields)}; "
                              "choose another output folder", path=root)


def _finished(root: Path | str, name: str) -> bool:
    run_dir = run_dir_of(root, name)
    status = read_status(run_dir)
    return bool(status and status.get("status") == "done" and exists(join(run_dir, SUMMARY_STORE, "zarr.json")))


#: What the workers of a local cluster import once, in the forkserver that forks them (where the platform has one):
#: each worker starts with torch and the analyses imported instead of importing them itself (start-up of 2 workers
#: 2.9 s instead of 5.2-6.5 s on the 2-core development machine), and with what a run's first task would import on
#: the way (``torch._dynamo``, which torch's optimizers import at their first step; the trainer; the stores).
WORKER_PRELOAD = ("distributed", "numpy", "torch", "torch._dynamo", "xarray", "zarr", "dask.array", "scipy.signal",
                  "mechgrok.pipeline", "mechgrok.train", "mechgrok.report", "mechgrok.store.analysis_store",
                  "mechgrok.sweep.cell", "mechgrok.sweep.summary")


def local_cluster(n_workers: int, *, processes: bool = True):
    """The ``LocalCluster`` a sweep starts: ``n_workers`` workers of one thread each, no dashboard.

    Worker processes are forked from a forkserver that has imported :data:`WORKER_PRELOAD` (distributed's own
    default spawns each worker as a fresh interpreter that imports everything again). The forkserver never runs
    torch operations, so no thread pool is forked.

    distributed's nannies start workers with ``MALLOC_TRIM_THRESHOLD_=65536`` (its default
    ``distributed.nanny.pre-spawn-environ``), which makes glibc hand freed memory back to the system at once; a run's
    torch training and analysis then spend their time in page faults (20 % slower per run measured here, and a
    sweep on 2 workers 1.28x instead of about 2x faster than serial). The sweep's workers keep glibc's default.

    Returns
    -------
    distributed.LocalCluster
    """
    import dask
    from distributed import LocalCluster

    settings: dict = {"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}
    fork = processes and "forkserver" in multiprocessing.get_all_start_methods()
    if fork:
        settings["distributed.worker.multiprocessing-method"] = "forkserver"
    with dask.config.set(settings):
        if fork:
            from distributed.utils import get_mp_context

            get_mp_context().set_forkserver_preload(list(WORKER_PRELOAD))
        return LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=processes, dashboard_address=None,
                            silence_logs=logging.ERROR)


def _client(workers: int | None, scheduler: str | None, processes: bool):
    from distributed import Client

    if scheduler is not None:
        return Client(scheduler), None
    cluster = local_cluster(max(1, int(workers or os.cpu_count() or 1)), processes=processes)
    return Client(cluster), cluster


def run_sweep(
    spec: SweepSpec,
    root: str | Path,
    *,
    workers: int | None = None,
    scheduler: str | None = None,
    processes: bool = True,
    progress: Progress | None = None,
    figures: bool = True,
) -> SweepResult:
    """Run every unfinished cell of a sweep on dask.distributed, then write the sweep store and figures.

    Parameters
    ----------
    spec : SweepSpec
        The sweep (:func:`mechgrok.sweep.spec.load_spec`).
    root : str or Path
        The sweep folder: a local path or an fsspec URL (``s3://bucket/sweep``); created if needed.
    workers : int, optional
        Worker processes of the ``LocalCluster`` (default: the number of CPUs). Ignored with ``scheduler``.
    scheduler : str, optional
        Address of a running dask scheduler (``tcp://127.0.0.1:8786``); its workers must import the same
        mechgrok and see ``root``.
    processes : bool
        The ``LocalCluster``'s workers are processes (default). False runs them as threads of this process
        ("in-process": no start-up cost, but the threads share the GIL; for small sweeps, tests and
        ``memory://`` roots, which other processes cannot see).
    progress : callable, optional
        ``progress(status, done, total)`` after each cell (``status`` as in ``status.json``).
    figures : bool
        Also draw the figures (``root/figures``).

    Returns
    -------
    SweepResult

    Raises
    ------
    ConfigError
        If ``root`` holds a sweep over other fields, or a finished run made with another config, or another
        sweep is running on ``root`` (a lock file ``.NAME.sweep.lock`` beside it; not on object-store URLs).
    StoreError
        If the sweep folder cannot be written.
    """
    root = normalise(root)
    if isinstance(root, Path):
        root.mkdir(parents=True, exist_ok=True)
    # one sweep at a time on one output: a second one fails at once, naming the folder and the lock
    with hold(root, kind="sweep", timeout=0, error=ConfigError, busy="another mechgrok sweep is running on this folder"):
        return _run_sweep(spec, root, workers=workers, scheduler=scheduler, processes=processes, figures=figures,
                          progress=progress)


def _run_sweep(spec: SweepSpec, root: str | Path, *, workers, scheduler, processes, figures, progress) -> SweepResult:
    """:func:`run_sweep` once its output folder is held."""
    _check_root(spec, root)
    result = SweepResult(root=root)
    todo = []
    for cell in spec.cells:
        if _finished(root, cell.name):
            status = read_status(run_dir_of(root, cell.name)) or {}
            config = json.loads(json.dumps(cell.config.to_dict(), default=str))  # as status.json holds it
            if status.get("config", config) != config or status.get("source") != cell.source:
                raise ConfigError(f"run {cell.name} in this folder was made with another config or source than the "
                                  "spec gives now; choose another output folder (or delete that run)", path=root)
            result.skipped.append(cell.name)
            result.statuses[cell.name] = status
        else:
            todo.append(cell)
    write_text(join(root, "sweep.json"), json.dumps(spec.to_dict(), indent=2, default=str))
    total, done = len(spec.cells), len(result.skipped)
    if todo:
        from distributed import as_completed

        client, cluster = _client(workers, scheduler, processes)
        try:
            token = uuid.uuid4().hex[:8]
            futures = client.map(run_cell, [c.to_dict() for c in todo], root=str(root), analysis=spec.analysis,
                                 key=[f"mechgrok-{c.name}-{token}" for c in todo], pure=False)
            names = {f.key: c.name for f, c in zip(futures, todo)}
            for fut in as_completed(futures):
                name = names[fut.key]
                try:
                    status = fut.result()
                except Exception as e:  # the task could not run at all (its workers kept dying, ...)
                    status = {"name": name, "status": "failed", "error": f"{type(e).__name__}: {e}".splitlines()[0]}
                    write_text(join(run_dir_of(root, name), STATUS_FILE), json.dumps(status, indent=2))
                result.statuses[name] = status
                result.ran.append(name)
                done += 1
                if progress is not None:
                    progress(status, done, total)
        finally:
            client.close()
            if cluster is not None:
                cluster.close()
    result.tree = collect_sweep(spec, root, figures=figures)
    return result


def collect_sweep(spec: SweepSpec, root: str | Path, *, figures: bool = True) -> xr.DataTree | None:
    """Combine the finished runs of a sweep folder into ``summary.zarr`` (and the figures); write
    ``sweep_status.json``.

    Returns
    -------
    xarray.DataTree or None
        The sweep tree, or None if no run has finished.

    Raises
    ------
    StoreError
        If a run's summary store cannot be read or the sweep store cannot be written.
    """
    from mechgrok.store.analysis_store import open_analysis, write_analysis
    from mechgrok.sweep.summary import combine_runs

    root = normalise(root)
    statuses: dict[str, Any] = {}
    summaries, coords = [], []
    for cell in spec.cells:
        run_dir = run_dir_of(root, cell.name)
        status = read_status(run_dir) or {"status": "not run"}
        statuses[cell.name] = {k: status.get(k) for k in ("status", "attempt", "seconds", "error", "note") if k in status}
        if _finished(root, cell.name):
            summaries.append(open_analysis(join(run_dir, SUMMARY_STORE)).load())
            coords.append(cell.coords)
    write_text(join(root, "sweep_status.json"), json.dumps(statuses, indent=2, default=str))
    if not summaries:
        return None
    attrs = {"sweep_name": spec.name, "n_runs": len(spec.cells), "n_finished": len(summaries),
             "spec_json": json.dumps(spec.to_dict(), default=str)}
    tree = combine_runs(summaries, coords, fields=spec.fields, attrs=attrs)
    write_analysis(tree, join(root, SWEEP_STORE))
    if figures:
        from mechgrok.figures.sweep import write_sweep_figures

        target = join(root, "figures")
        if isinstance(target, Path):
            write_sweep_figures(tree, target, title=f"mechgrok sweep: {spec.name}")
        else:
            with tempfile.TemporaryDirectory(prefix="mechgrok-fig-") as tmp:
                write_sweep_figures(tree, Path(tmp), title=f"mechgrok sweep: {spec.name}")
                upload(Path(tmp), str(target), last=("index.html",))
    return tree


def open_sweep(root: str | Path) -> xr.DataTree:
    """Open the sweep store of a sweep folder (or the store itself), lazily.

    Raises
    ------
    StoreError
        If there is no sweep store.
    """
    from mechgrok.store.analysis_store import open_analysis

    root = normalise(root)
    path = root if str(root).endswith(".zarr") else join(root, SWEEP_STORE)
    return open_analysis(path)
