"""Figures of the paper's analyses, as matplotlib Figures, and the figure pack (PNG, SVG, GIF, index.html).

Every ``fig_*`` function takes either the analysis tree of :func:`mechgrok.analyze` (or of
:func:`mechgrok.open_analysis`) or the plain Dataset an analysis function returns, e.g.
``fig_neuron_clusters(mechgrok.neuron_clusters(ds))`` or ``fig_loss_curves(mechgrok.open_run(run_dir))``
(:mod:`mechgrok.figures.analysis` has the rule), and returns a :class:`matplotlib.figure.Figure`, made headless
on an Agg canvas in mechgrok's style (:mod:`mechgrok.figures.style`) and free to restyle.
:func:`write_figure_pack` writes them all. See ``docs/figures.md``.
"""

from __future__ import annotations

from mechgrok.figures.animations import animate_neuron_frequencies, animate_W_E_fourier_norms, save_gif
from mechgrok.figures.algorithm import fig_algorithm_metrics
from mechgrok.figures.attention import fig_attention
from mechgrok.figures.competition import fig_competition_bumps, fig_slingshots, fig_toy_alignment
from mechgrok.figures.fourier_norms import fig_fourier_norms, fig_fourier_norms_over_training
from mechgrok.figures.neurons import fig_neuron_activations, fig_neuron_clusters, fig_W_logit_per_cluster
from mechgrok.figures.pack import write_figure_pack
from mechgrok.figures.spectra import fig_fourier_spectra_2d
from mechgrok.figures.training import fig_key_frequency_ablations, fig_loss_curves, fig_progress_measures

__all__ = [
    "fig_loss_curves",
    "fig_progress_measures",
    "fig_fourier_norms",
    "fig_fourier_norms_over_training",
    "fig_neuron_clusters",
    "fig_W_logit_per_cluster",
    "fig_fourier_spectra_2d",
    "fig_neuron_activations",
    "fig_attention",
    "fig_key_frequency_ablations",
    "fig_algorithm_metrics",
    "fig_competition_bumps",
    "fig_toy_alignment",
    "fig_slingshots",
    "animate_W_E_fourier_norms",
    "animate_neuron_frequencies",
    "save_gif",
    "write_figure_pack",
]
