"""The tasks a model is trained on: one module per task (data, train/test split, labels), plus the loss.

- :mod:`mechgrok.tasks.modular_arithmetic`: (a op b) mod p over the full p x p grid (Nanda et al. 2023, section 3).
- :mod:`mechgrok.tasks.digit_addition`: n-digit addition, carry-out first (the authors' phase-change runs).
- :mod:`mechgrok.tasks.repeated_subsequences`: repeated subsequences, the induction-head task.
- :mod:`mechgrok.tasks.identify`: which task a trajectory belongs to.
- :mod:`mechgrok.tasks.loss`: the exact float64 cross-entropy every task and analysis uses.
"""
