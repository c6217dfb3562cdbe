"""The tasks a model is trained on: one module per task (data, train/test split, labels), plus the loss.

- :mod:`mechgrok.tasks.modular_arithmetic`: (a op b) mod p over the full p x p grid (Nanda et al. 2023, section 3).
- :mod:`mechgrok.tasks.loss`: the exact float64 cross-entropy every task and analysis uses.
"""
