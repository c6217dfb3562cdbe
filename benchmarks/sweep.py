"""Sweep throughput: the same runs one after another in this process, then on a dask LocalCluster of worker
processes, in one run; prints both times, the speed-up and the load average.

Run:  python benchmarks/sweep.py [--runs 16] [--workers 2] [--epochs 1000] [--p 31]

Both sides run exactly the task of `mechgrok sweep` (`mechgrok.sweep.cell.run_cell`: train, analyse, summarise,
status record) for every cell of a seed grid of a small config (p = 31, d_model 32, 2 heads, d_mlp 64,
`--epochs` epochs, a checkpoint every 50). The serial side calls it in a loop; the parallel side is
`mechgrok.sweep.run_sweep` on a LocalCluster of `--workers` processes with one thread each, timed with and
without the cluster's start-up and the worker imports; both sides include the combine into `summary.zarr`
(figures off on both sides). Torch runs on one thread on both sides. On an idle 2-core machine the target is a
speed-up of at least 1.8.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch

from mechgrok.sweep import SweepSpec, collect_sweep, run_sweep
from mechgrok.sweep.cell import run_cell
from mechgrok.sweep.runner import local_cluster


def spec(runs: int, epochs: int, p: int) -> SweepSpec:
    return SweepSpec.from_dict({
        "name": "bench",
        "base": {"p": p, "d_model": 32, "n_heads": 2, "d_head": 16, "d_mlp": 64, "lr": 0.01, "frac_train": 0.6,
                 "num_epochs": epochs, "checkpoint_every": 50},
        "grid": {"seed": list(range(runs))},
        "analysis": {"analyses": ["ablation", "measures", "phases"]},
    })


def _warm_up() -> None:
    """The imports of a task (torch, xarray, zarr, the analyses), done once per worker before the clock runs."""
    from importlib import import_module

    for name in ("mechgrok.pipeline", "mechgrok.sweep.cell", "mechgrok.sweep.summary"):
        import_module(name)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=16)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=1000)
    ap.add_argument("--p", type=int, default=31)
    args = ap.parse_args()
    torch.set_num_threads(1)
    sp = spec(args.runs, args.epochs, args.p)
    print(f"{args.runs} runs: p={args.p}, {args.epochs} epochs, analyses {sp.analysis['analyses']}; "
          f"{os.cpu_count()} CPUs; load average before {os.getloadavg()}")
    with tempfile.TemporaryDirectory(prefix="mechgrok-bench-") as tmp:
        serial_root, parallel_root = Path(tmp) / "serial", Path(tmp) / "parallel"
        t0 = time.perf_counter()
        for cell in sp.cells:
            status = run_cell(cell.to_dict(), str(serial_root), sp.analysis)
            assert status["status"] == "done", status
        collect_sweep(sp, serial_root, figures=False)
        serial = time.perf_counter() - t0
        load_serial = os.getloadavg()
        t0 = time.perf_counter()
        from distributed import Client

        with local_cluster(args.workers) as cluster, Client(cluster) as client:
            client.run(_warm_up)  # worker start-up: the imports a task needs
            startup = time.perf_counter() - t0
            result = run_sweep(sp, parallel_root, scheduler=cluster.scheduler_address, figures=False)
        parallel = time.perf_counter() - t0
        assert not result.failed and len(result.ran) == args.runs, result.statuses
        load_parallel = os.getloadavg()
        shutil.rmtree(serial_root, ignore_errors=True)
    print(f"{'side':<28} {'seconds':>8} {'per run':>8}  load average after")
    print(f"{'serial (one process)':<28} {serial:8.1f} {serial / args.runs:8.2f}  {load_serial}")
    print(f"{f'dask, {args.workers} worker processes':<28} {parallel:8.1f} {parallel / args.runs:8.2f}  {load_parallel}")
    print(f"  of which cluster start-up and worker imports {startup:.1f} s")
    print(f"speed-up: {serial / parallel:.2f}x including the start-up, {serial / (parallel - startup):.2f}x without "
          "(target >= 1.8x with 2 workers on an idle 2-core machine)")


if __name__ == "__main__":
    main()
