"""Toy models with known ground truth, for checking the analyses of learning dynamics.

- :mod:`~mechgrok.toys.vector_competition`: the rank-r matrix-factorisation gradient flow of Jermyn & Shlegeris
  (2022), where learned vectors compete for target directions and their alignments show bumps.
"""
