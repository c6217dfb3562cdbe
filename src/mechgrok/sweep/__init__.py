"""Sweeps: grids of runs over any Config fields, run on dask.distributed, combined into one sweep Dataset.

:func:`load_spec` reads a spec (TOML or JSON, :mod:`.spec`); :func:`run_sweep` runs one task per cell on a dask
cluster, each writing its own run directory (:mod:`.cell`), and combines the runs' summaries (:mod:`.summary`)
into ``summary.zarr`` with phase diagrams and early-warning leads (:mod:`mechgrok.figures.sweep`,
:mod:`mechgrok.analyses.early_warning`). ``docs/sweeps.md`` describes the spec, the store and the rules.
"""

from __future__ import annotations

from mechgrok.sweep.runner import SweepResult, collect_sweep, open_sweep, run_sweep
from mechgrok.sweep.spec import Cell, SweepSpec, load_spec
from mechgrok.sweep.summary import combine_runs, run_summary

__all__ = ["Cell", "SweepSpec", "SweepResult", "load_spec", "run_sweep", "collect_sweep", "open_sweep",
           "combine_runs", "run_summary"]
