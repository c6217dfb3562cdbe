"""Test helper: the paper authors' released mod-113 models as canonical trajectories (one checkpoint each).

They load through mechgrok's own store (``mechgrok.open_run``), which detects the original "column" layout and
transposes once (paper.md section 5.4). The training fraction is not stored in the files: the no-weight-decay
run's 0.9 is inferred from its stored losses (shared README section 3); the low-precision run gets the paper's
default 0.3. The split is rebuilt with seed 0 (the paper's procedure).

The files live beside the repository in ``../shared/data/nanda-saved-runs``; :func:`nanda_path` skips the
calling test (with the reason) where they are absent. They are never copied into the repository.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import xarray as xr

import mechgrok

__all__ = ["SHARED_RUNS", "nanda_path", "load_nanda_model"]

SHARED_RUNS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "nanda-saved-runs"

#: Training fraction of each released mod-113 run (see the module docstring).
_FRAC_TRAIN = {"mod_addition_no_wd.pth": 0.9, "low_precision_mod_addition.pth": 0.3}


def nanda_path(name: str) -> Path:
    """Path of a released file; ``pytest.skip`` where the shared data folder or the file is absent."""
    path = SHARED_RUNS / name
    if not path.is_file():
        pytest.skip(f"released run {name} not found at {path} (../shared is absent on this machine)")
    return path


def load_nanda_model(name: str) -> xr.Dataset:
    """A released mod-113 model as a one-checkpoint canonical trajectory (``mechgrok.open_run``).

    Parameters
    ----------
    name : str
        ``"mod_addition_no_wd.pth"`` or ``"low_precision_mod_addition.pth"``.

    Returns
    -------
    xarray.Dataset
        Weights in TransformerLens orientation with a ``checkpoint`` dim of length 1 (the source's own epoch
        number of the final model), ``attrs["p"] = 113``, the loss curves and the rebuilt split.
    """
    return mechgrok.open_run(nanda_path(name), seed=0, frac_train=_FRAC_TRAIN[name])
