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
    "write_explorer": "mechgrok.explorer",
    # TransformerLens round trip (the tl extra)
    "to_hooked_transformer": "mechgrok.store.hooked_transformer",
    "from_hooked_transformers": "mechgrok.store.hooked_transformer",
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
    "frequency_alignment": "mechgrok.analyses.modular.frequency_alignment",
    "vector_competition": "mechgrok.analyses.modular.competition",
    "frequency_switches": "mechgrok.analyses.modular.competition",
    "algorithm_metrics": "mechgrok.analyses.modular.algorithm_metrics",
    "coordinate_trajectory": "mechgrok.tasks.discrete_log",
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
    "phase_changes": "mechgrok.analyses.phase_changes",
    "learning_order": "mechgrok.analyses.phase_changes",
    "load_loss_curves": "mechgrok.store",
    # sequence tasks: n-digit addition and repeated subsequences (induction heads)
    "digit_losses": "mechgrok.analyses.digit_addition",
    "head_scores": "mechgrok.analyses.induction",
    "induction_circuit": "mechgrok.analyses.induction",
    "sequence_preset": "mechgrok.sequence_config",
    "train_sequence": "mechgrok.sequence_train",
    "find_bumps": "mechgrok.analyses.bumps",
    "find_slingshots": "mechgrok.analyses.slingshots",
    # toy models
    "competition_flow": "mechgrok.toys.vector_competition",
    "competition_bumps": "mechgrok.toys.vector_competition",
    "rank_sweep": "mechgrok.toys.vector_competition",
    "estimate_llc": "mechgrok.analyses.llc",
    "llc_trajectory": "mechgrok.analyses.llc",
    # sweeps: grids of runs on dask.distributed, their store, grokking epochs and early-warning lead times
    "load_spec": "mechgrok.sweep",
    "run_sweep": "mechgrok.sweep",
    "open_sweep": "mechgrok.sweep",
    "grokking_epoch": "mechgrok.analyses.grokking_epoch",
    "grokking_delay": "mechgrok.analyses.grokking_epoch",
    "change_onset": "mechgrok.analyses.early_warning",
    "lead_times": "mechgrok.analyses.early_warning",
    "summarise_leads": "mechgrok.analyses.early_warning",
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
    from mechgrok.analyses.bumps import find_bumps
    from mechgrok.analyses.modular.competition import frequency_switches, vector_competition
    from mechgrok.analyses.modular.frequency_alignment import frequency_alignment
    from mechgrok.analyses.phases import find_phases
    from mechgrok.analyses.phase_changes import learning_order, phase_changes
    from mechgrok.analyses.digit_addition import digit_losses
    from mechgrok.analyses.induction import head_scores, induction_circuit
    from mechgrok.sequence_config import sequence_preset
    from mechgrok.sequence_train import train_sequence
    from mechgrok.store import load_loss_curves
    from mechgrok.analyses.slingshots import find_slingshots
    from mechgrok.toys.vector_competition import competition_bumps, competition_flow, rank_sweep
    from mechgrok.engine import select_epochs
    from mechgrok.analyses.early_warning import change_onset, lead_times, summarise_leads
    from mechgrok.analyses.grokking_epoch import grokking_delay, grokking_epoch
    from mechgrok.sweep import load_spec, open_sweep, run_sweep
    from mechgrok.pipeline import ANALYSES, analyze
    from mechgrok.report import report_markdown, summarise
    from mechgrok.store import ingest, open_run, open_store
    from mechgrok.store.analysis_store import open_analysis, write_analysis
    from mechgrok.store.hooked_transformer import from_hooked_transformers, to_hooked_transformer
    from mechgrok.explorer import write_explorer


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
