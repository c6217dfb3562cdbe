"""Test helper: independent dense references shared by several test files."""

from __future__ import annotations

import math

import numpy as np


def dense_basis(p: int) -> np.ndarray:
    """The Fourier basis with rows [const, cos 1, sin 1, ...], built entry by entry with plain loops."""
    F = np.zeros((p, p))
    for x in range(p):
        F[0, x] = 1 / math.sqrt(p)
        for k in range(1, (p - 1) // 2 + 1):
            F[2 * k - 1, x] = math.sqrt(2 / p) * math.cos(2 * math.pi * k * x / p)
            F[2 * k, x] = math.sqrt(2 / p) * math.sin(2 * math.pi * k * x / p)
    return F
