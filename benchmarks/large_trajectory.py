"""Benchmark: peak memory of ``analyze`` on a trajectory larger than memory (issue 16, resource limits).

Writes a synthetic mechgrok run directory with N paper-scale checkpoints (default 4,000: p = 113, d_model 128, 4
heads of 32, d_mlp 512; random float32 weights, about 0.9 MB a checkpoint, 3.6 GB in all) to a temporary folder,
then measures in fresh child processes, each printing its own peak resident memory (``ru_maxrss``):

- **open**: ``mechgrok.open_run`` of the run (headers only: the run is above the eager limit, so its weights are
  read lazily, :mod:`mechgrok.store.checkpoint_stack`);
- **measures**: ``analyze(ds, analyses=["measures"])`` over all N checkpoints (Fourier norms of W_E and W_logit,
  Gini coefficients, sums of squared weights: every weight of every checkpoint is read, a chunk at a time);
- **full**: every default analysis (the float64 grid pass: neurons, attention, logits, ablations, phases, ...)
  over every ``--full-every``-th checkpoint of the same lazily opened run (reference: the last).

and prints each peak against the trajectory's size in memory (N x one checkpoint, float32) with the load average.
The weights are random, so the full analysis finds no key frequencies; its run plants the paper's key frequencies
at the last checkpoint by copying the released ``low_precision_mod_addition.pth`` there when ``../shared`` has it,
and is skipped otherwise.

Run: ``python benchmarks/large_trajectory.py [--checkpoints 4000] [--full-every 100] [--chunk 16] [--keep DIR]``
(writing 3.6 GB takes a minute or two; the measures pass a few minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
RELEASED = REPO.parent / "shared" / "data" / "nanda-saved-runs" / "low_precision_mod_addition.pth"

CHILD = r"""
import json, resource, sys, time
import mechgrok
run, what, chunk, every = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
t0 = time.perf_counter()
ds = mechgrok.open_run(run)
lazy = type(ds["W_in"].variable._data).__name__
if what == "measures":
    mechgrok.analyze(ds, analyses=["measures"], chunk=chunk, device="cpu")
elif what == "full":
    n = ds.sizes["checkpoint"]
    mechgrok.analyze(ds.isel(checkpoint=sorted(set(range(0, n, every)) | {n - 1})), chunk=chunk, device="cpu")
print(json.dumps({"what": what, "seconds": time.perf_counter() - t0, "lazy": lazy,
                  "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                  "n": int(ds.sizes["checkpoint"])}))
"""


def make_run(folder: Path, n: int, *, seed: int = 0) -> int:
    """A run directory of ``n`` paper-scale checkpoints at epochs 0, 100, ...; returns one checkpoint's bytes."""
    from safetensors.numpy import save_file

    from mechgrok.config import Config
    from mechgrok.models.transformer import PARAM_KEYS, param_shapes
    from mechgrok.rundir import METRIC_COLUMNS
    from mechgrok.tasks.modular_arithmetic import split_indices

    cfg = Config(num_epochs=100 * (n - 1), checkpoint_every=100)
    shapes = param_shapes(cfg)
    (folder / "checkpoints").mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2, sort_keys=True))
    train, test = split_indices(cfg.p, cfg.frac_train, cfg.seed)
    (folder / "split.json").write_text(json.dumps({"p": cfg.p, "seed": cfg.seed, "frac_train": cfg.frac_train,
                                                   "train": train.tolist(), "test": test.tolist()}))
    epochs = np.arange(cfg.num_epochs + 1)
    loss = 4.7 * np.exp(-epochs / 8000.0) + 1e-3
    rows = "".join(f"{e},{float(v)!r},{float(v) * 1.3!r},0.5,0.5\n" for e, v in zip(epochs, loss))
    (folder / "metrics.csv").write_text(",".join(METRIC_COLUMNS) + "\n" + rows)
    end = None
    if RELEASED.is_file():
        from mechgrok.store import open_run

        ref = open_run(RELEASED)
        end = {key: np.ascontiguousarray(ref[name].isel(checkpoint=-1).values, dtype=np.float32)
               for name, key in PARAM_KEYS.items()}
    rng = np.random.default_rng(seed)
    base = {key: rng.standard_normal(shapes[name]).astype(np.float32) * 0.1 for name, key in PARAM_KEYS.items()}
    for i in range(n):
        if i == n - 1 and end is not None:
            weights = end
        else:
            weights = {k: v + np.float32(0.001 * i) for k, v in base.items()}
        save_file(weights, str(folder / "checkpoints" / f"epoch_{100 * i:06d}.safetensors"),
                  metadata={"epoch": str(100 * i)})
    (folder / "run.json").write_text(json.dumps({"format": "mechgrok-run", "version": "bench", "complete": True}))
    return sum(4 * int(np.prod(s)) for s in shapes.values())


def child(run: Path, what: str, chunk: int, every: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    out = subprocess.run([sys.executable, "-c", CHILD, str(run), what, str(chunk), str(every)], env=env,
                         capture_output=True, text=True, cwd=REPO)
    if out.returncode != 0:
        return {"what": what, "error": (out.stderr.strip().splitlines() or ["?"])[-1]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoints", type=int, default=4000)
    ap.add_argument("--full-every", type=int, default=100)
    ap.add_argument("--chunk", type=int, default=16)
    ap.add_argument("--keep", type=Path, default=None, help="write the run here and keep it (default: a temp folder)")
    ap.add_argument("--skip", default="", help="comma-separated stages to skip: open, measures, full")
    args = ap.parse_args()
    torch.set_num_threads(1)
    root = args.keep or Path(tempfile.mkdtemp(prefix="mechgrok-large-"))
    run = root / "run"
    try:
        t0 = time.perf_counter()
        if not (run / "run.json").exists():
            per = make_run(run, args.checkpoints)
        else:
            from mechgrok.config import Config
            from mechgrok.models.transformer import param_shapes

            per = sum(4 * int(np.prod(s)) for s in param_shapes(Config()).values())
        size = per * args.checkpoints
        print(f"run: {args.checkpoints} checkpoints x {per / 2**20:.2f} MiB = {size / 2**30:.2f} GiB of float32 weights "
              f"(written in {time.perf_counter() - t0:.0f} s); load average {os.getloadavg()[0]:.1f}", flush=True)
        skip = set(filter(None, args.skip.split(",")))
        for what in ("open", "measures", "full"):
            if what in skip or (what == "full" and not RELEASED.is_file()):
                print(f"{what:>8}: skipped" + ("" if what in skip else f" (no {RELEASED})"))
                continue
            r = child(run, what, args.chunk, args.full_every)
            if "error" in r:
                print(f"{what:>8}: failed: {r['error']}")
                continue
            print(f"{what:>8}: peak RSS {r['peak_rss'] / 2**30:.2f} GiB = {r['peak_rss'] / size:.3f} x the trajectory "
                  f"({r['seconds']:.0f} s, weights {r['lazy']}); load average {os.getloadavg()[0]:.1f}", flush=True)
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
