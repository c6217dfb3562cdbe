"""Which task a trajectory belongs to: ``attrs["task"]`` where recorded, else told from the model's shapes.

==========================  ====================================================================================
task                        recognised by
==========================  ====================================================================================
``modular_arithmetic``      ``attrs["p"]`` (the p x p grid; also trajectories without a ``task`` attr, as every
                            modular trajectory written before tasks were recorded)
``digit_addition``          one layer with an MLP, ``d_vocab`` 12, ``d_vocab_out`` 10, ``n_ctx = 3 n + 3``
``repeated_subsequences``   attention-only (no ``W_in``), at least 2 layers
``curves``                  no weights at all: a loss-curve-only file (:mod:`mechgrok.store.curves`); its
                            ``attrs["run"]`` says which run the curves belong to where known
==========================  ====================================================================================

Examples
--------
>>> import xarray as xr
>>> task_of(xr.Dataset(attrs={"p": 113}))
'modular_arithmetic'
>>> task_of(xr.Dataset(attrs={"task": "digit_addition"}))
'digit_addition'
"""

from __future__ import annotations

import json

import xarray as xr

from mechgrok.errors import AnalysisError

__all__ = ["TASKS", "task_of", "infer_task", "record_task"]

#: The tasks mechgrok knows.
TASKS: tuple[str, ...] = ("modular_arithmetic", "digit_addition", "repeated_subsequences", "curves")


def infer_task(ds: xr.Dataset) -> str | None:
    """The task told from a trajectory's variables and shapes (table above), or None if none fits."""
    if "p" in ds.attrs:
        return "modular_arithmetic"
    if "W_E" not in ds:
        return "curves" if any(str(v).startswith("loss") for v in ds.data_vars) else None
    n_layers = int(ds.attrs.get("n_layers", ds.sizes.get("layer", 1)))
    if "W_in" not in ds and n_layers >= 2:
        return "repeated_subsequences"
    n_ctx = ds.sizes.get("pos", 0)
    if n_layers == 1 and "W_in" in ds and ds.sizes.get("vocab") == 12 and ds.sizes.get("vocab_out") == 10 \
            and n_ctx >= 6 and n_ctx % 3 == 0:
        return "digit_addition"
    return None


def task_of(ds: xr.Dataset) -> str:
    """The task of a trajectory: ``attrs["task"]``, else :func:`infer_task`, else modular arithmetic when the
    trajectory has a ``p`` (or nothing else fits and it has a ``config_json`` with ``p``).

    Raises
    ------
    AnalysisError
        If no task fits (a model of none of the known shapes).
    """
    task = ds.attrs.get("task")
    if task:
        if task not in TASKS:
            raise AnalysisError(f"unknown task {task!r} in the trajectory's attrs; known: {', '.join(TASKS)}")
        return str(task)
    found = infer_task(ds)
    if found is not None:
        return found
    try:
        if "p" in json.loads(ds.attrs.get("config_json", "{}")):
            return "modular_arithmetic"
    except (TypeError, ValueError):
        pass
    raise AnalysisError(
        f"cannot tell the task of this trajectory (variables {sorted(map(str, ds.data_vars))[:8]}); known tasks: "
        f"{', '.join(TASKS)}")


def record_task(ds: xr.Dataset) -> xr.Dataset:
    """``ds`` with ``attrs["task"]`` set when its shapes tell a task other than modular arithmetic (whose
    trajectories carry ``p`` instead); returned unchanged otherwise."""
    task = infer_task(ds)
    if task not in (None, "modular_arithmetic") and "task" not in ds.attrs:
        ds.attrs["task"] = task
    return ds
