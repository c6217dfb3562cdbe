"""mechgrok: mechanistic interpretability of grokking over whole checkpoint trajectories.

Train the paper's model (Nanda et al. 2023), load any checkpoint trajectory into a labelled xarray Dataset, and
run the paper's analyses and progress measures over every checkpoint.

The public API is this one namespace: every name in ``__all__`` (and ``dir(mechgrok)``) is importable from
``mechgrok`` directly. The analyses are loaded on first use, so ``import mechgrok`` (and ``mechgrok --help``)
stays fast; type checkers and IDEs see them through the ``TYPE_CHECKING`` imports below.

The analyses live in :mod:`mechgrok.analyses` (any task) and :mod:`mechgrok.analyses.modular` (the p x p grid and
its Fourier basis); every one runs over checkpoints through the one loop of :mod:`mechgrok.engine`. The caller
selects checkpoints with xarray (``ds.isel(checkpoint=[-1])``, ``ds.sel(checkpoint=[epochs])``) and every
analysis takes the selection it is given. Training is :func:`mechgrok.train.train` (its module shares its name).

Examples
--------
>>> import mechgrok
>>> "neuron_clusters" in dir(mechgrok) and "progress_measures" in dir(mechgrok)
True
>>> mechgrok.neuron_clusters.__module__
'mechgrok.analyses.modular.neurons'
>>> callable(mechgrok.key_frequencies) and callable(mechgrok.fourier_norms)
True
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING

__version__ = "0.1.0"

from mechgrok.config import Config, preset
from mechgrok.errors import MechgrokError

#: Public name -> module that defines it (loaded lazily by :func:`__getattr__`).
_LAZY: dict[str, str] = {
    # trajectories and stores
    "open_run": "mechgrok.store",
    "ingest": "mechgrok.store",
    "open_store": "mechgrok.store",
    "select_epochs": "mechgrok.engine",
    # the whole analysis and what it writes
    "analyze": "mechgrok.pipeline",
    "ANALYSES": "mechgrok.pipeline",
    "write_analysis": "mechgrok.store.analysis_store",
    "open_analysis": "mechgrok.store.analysis_store",
    "summarise": "mechgrok.report",
    "report_markdown": "mechgrok.report",
    # modular arithmetic: the grid and the Fourier basis
    "grid_activations": "mechgrok.analyses.modular.grid",
    "fourier_basis": "mechgrok.analyses.modular.fourier",
    "fourier_norms": "mechgrok.analyses.modular.fourier_norms",
    "effective_weights": "mechgrok.analyses.modular.effective_weights",
    "key_frequencies": "mechgrok.analyses.modular.key_frequencies",
    "neuron_clusters": "mechgrok.analyses.modular.neurons",
    "frequency_fve": "mechgrok.analyses.modular.neurons",
    "attention_fit": "mechgrok.analyses.modular.attention",
    "logit_structure": "mechgrok.analyses.modular.logits",
    "ablation_losses": "mechgrok.analyses.modular.ablation",
    "logit_ablations": "mechgrok.analyses.modular.ablation",
    "restricted_logits": "mechgrok.analyses.modular.ablation",
    "excluded_logits": "mechgrok.analyses.modular.ablation",
    "progress_measures": "mechgrok.analyses.modular.progress",
    "fourier_gini": "mechgrok.analyses.modular.fourier_gini",
    "weight_measures": "mechgrok.analyses.modular.fourier_gini",
    # any task
    "sum_squared_weights": "mechgrok.analyses.measures",
    "gini": "mechgrok.analyses.measures",
    "find_phases": "mechgrok.analyses.phases",
    "estimate_llc": "mechgrok.analyses.llc",
    "llc_trajectory": "mechgrok.analyses.llc",
}

__all__ = ["__version__", "Config", "preset", "MechgrokError", *_LAZY]

if TYPE_CHECKING:  # pragma: no cover - for IDEs and type checkers only
    from mechgrok.analyses.llc import estimate_llc, llc_trajectory
    from mechgrok.analyses.measures import gini, sum_squared_weights
    from mechgrok.analyses.modular.ablation import ablation_losses, excluded_logits, logit_ablations, restricted_logits
    from mechgrok.analyses.modular.attention import attention_fit
    from mechgrok.analyses.modular.effective_weights import effective_weights
    from mechgrok.analyses.modular.fourier import fourier_basis
    from mechgrok.analyses.modular.fourier_gini import fourier_gini, weight_measures
    from mechgrok.analyses.modular.fourier_norms import fourier_norms
    from mechgrok.analyses.modular.grid import grid_activations
    from mechgrok.analyses.modular.key_frequencies import key_frequencies
    from mechgrok.analyses.modular.logits import logit_structure
    from mechgrok.analyses.modular.neurons import frequency_fve, neuron_clusters
    from mechgrok.analyses.modular.progress import progress_measures
    from mechgrok.analyses.phases import find_phases
    from mechgrok.engine import select_epochs
    from mechgrok.pipeline import ANALYSES, analyze
    from mechgrok.report import report_markdown, summarise
    from mechgrok.store import ingest, open_run, open_store
    from mechgrok.store.analysis_store import open_analysis, write_analysis


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
