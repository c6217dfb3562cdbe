"""mechgrok: mechanistic interpretability of grokking over whole checkpoint trajectories.

Train the paper's model (Nanda et al. 2023), load any checkpoint trajectory into a labelled xarray Dataset, and
run the paper's analyses and progress measures over every checkpoint.
"""

from __future__ import annotations

__version__ = "0.1.0"

from mechgrok.config import Config, preset
from mechgrok.errors import MechgrokError

__all__ = ["__version__", "Config", "preset", "MechgrokError", "open_run", "analyze"]


def __getattr__(name: str):
    # lazy, so that ``import mechgrok`` (and ``mechgrok --help``) does not import xarray and zarr
    if name == "open_run":
        from mechgrok.store import open_run

        return open_run
    if name == "analyze":
        from mechgrok.pipeline import analyze

        return analyze
    raise AttributeError(f"module 'mechgrok' has no attribute {name!r}")
