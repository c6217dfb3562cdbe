"""Analyses of modular arithmetic: they assume the p x p input grid and its Fourier basis (Nanda et al. 2023).

- :mod:`~.grid`: the model evaluated on every input (a, b), re-arranged from per-token tables.
- :mod:`~.fourier`: the Fourier basis; :mod:`~.fourier_norms`, :mod:`~.fourier_gini`: norms and their Gini.
- :mod:`~.effective_weights`, :mod:`~.key_frequencies`, :mod:`~.neurons`, :mod:`~.attention`, :mod:`~.logits`.
- :mod:`~.ablation`: Fourier-space ablations (restricted and excluded loss); :mod:`~.progress`: the progress suite.
- :mod:`~.loss_gradient`: the hand-written backward of the grid loss, for the LLC.
"""
