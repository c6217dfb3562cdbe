"""The analyses: pure functions from xarray objects to new xarray objects, run over checkpoints by
:mod:`mechgrok.engine`.

- Any task: :mod:`~mechgrok.analyses.measures` (sum of squared weights, Gini), :mod:`~mechgrok.analyses.phases`,
  :mod:`~mechgrok.analyses.llc` with :mod:`~mechgrok.analyses.sgld`.
- :mod:`mechgrok.analyses.modular`: what assumes the p x p grid of modular arithmetic and its Fourier basis.

The documented namespace of the analyses is the top-level ``mechgrok`` package (``dir(mechgrok)``).
"""
