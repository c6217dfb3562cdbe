"""mechgrok: mechanistic interpretability of grokking over whole checkpoint trajectories.

Train the paper's model (Nanda et al. 2023), load any checkpoint trajectory into a labelled xarray Dataset, and
run the paper's analyses and progress measures over every checkpoint.

The public API is this one namespace: every name in ``__all__`` (and ``dir(mechgrok)``) is importable from
``mechgrok`` directly. The analyses are loaded on first use, so ``import mechgrok`` (and ``mechgrok --help``)
stays fast; type checkers and IDEs see them through the ``TYPE_CHECKING`` imports below.

Four functions share their module's name and are therefore reached through it, not from the package (a
submodule, once imported, takes the package attribute of the same name): ``mechgrok.train.train``,
``mechgrok.key_frequencies.key_frequencies``, ``mechgrok.fourier_norms.fourier_norms`` and
``mechgrok.effective_weights.effective_weights``.

Examples
--------
>>> import mechgrok
>>> "neuron_clusters" in dir(mechgrok) and "progress_measures" in dir(mechgrok)
True
>>> mechgrok.neuron_clusters.__module__
'mechgrok.neurons'
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING

__version__ = "0.1.0"

from mechgrok.config import Config, preset
from mechgrok.errors import MechgrokError

#: Public name -> module that defines it (loaded lazily by :func:`__getattr__`).
_LAZY: dict[str, str] = {
    # loading and writing trajectories
    "open_run": "mechgrok.store",
    "ingest": "mechgrok.store",
    "open_store": "mechgrok.store",
    # the whole analysis and its outputs
    "analyze": "mechgrok.pipeline",
    "write_analysis": "mechgrok.pipeline",
    "open_analysis": "mechgrok.pipeline",
    "summarise": "mechgrok.pipeline",
    "report_markdown": "mechgrok.pipeline",
    # analyses over checkpoints (pure functions, xarray in, xarray out)
    "select_checkpoints": "mechgrok.activations",
    "grid_activations": "mechgrok.activations",
    "neuron_clusters": "mechgrok.neurons",
    "frequency_fve": "mechgrok.neurons",
    "attention_fit": "mechgrok.attention",
    "logit_structure": "mechgrok.logits",
    "ablation_losses": "mechgrok.ablation",
    "logit_ablations": "mechgrok.ablation",
    "restricted_logits": "mechgrok.ablation",
    "excluded_logits": "mechgrok.ablation",
    "progress_measures": "mechgrok.progress",
    "fourier_basis": "mechgrok.fourier",
    "weight_measures": "mechgrok.measures",
    "fourier_gini": "mechgrok.measures",
    "sum_squared_weights": "mechgrok.measures",
    "gini": "mechgrok.measures",
    "find_phases": "mechgrok.phases",
    "estimate_llc": "mechgrok.llc",
    "llc_trajectory": "mechgrok.llc",
}

__all__ = ["__version__", "Config", "preset", "MechgrokError", *_LAZY]

if TYPE_CHECKING:  # pragma: no cover - for IDEs and type checkers only
    from mechgrok.ablation import ablation_losses, excluded_logits, logit_ablations, restricted_logits
    from mechgrok.activations import grid_activations, select_checkpoints
    from mechgrok.attention import attention_fit
    from mechgrok.fourier import fourier_basis
    from mechgrok.llc import estimate_llc, llc_trajectory
    from mechgrok.logits import logit_structure
    from mechgrok.measures import fourier_gini, gini, sum_squared_weights, weight_measures
    from mechgrok.neurons import frequency_fve, neuron_clusters
    from mechgrok.phases import find_phases
    from mechgrok.pipeline import analyze, open_analysis, report_markdown, summarise, write_analysis
    from mechgrok.progress import progress_measures
    from mechgrok.store import ingest, open_run, open_store


def __getattr__(name: str):
    # lazy, so that ``import mechgrok`` (and ``mechgrok --help``) does not import xarray and zarr
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'mechgrok' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
