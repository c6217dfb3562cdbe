"""The model families, with TransformerLens weight names and orientation.

- :mod:`mechgrok.models.transformer`: the paper's one-layer transformer (Nanda et al. 2023, Appendix A).
- :mod:`mechgrok.models.causal_transformer`: the same family read out at every position, with n layers,
  optional MLP and the doubled residual (n-digit addition, the 2-layer attention-only induction model).
"""
