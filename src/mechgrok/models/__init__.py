"""The model families, with TransformerLens weight names and orientation.

- :mod:`mechgrok.models.transformer`: the paper's one-layer transformer (Nanda et al. 2023, Appendix A).
"""
