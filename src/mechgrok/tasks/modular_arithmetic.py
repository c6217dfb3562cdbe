"""The task: modular arithmetic on the p x p grid, and the paper's train/test split.

Inputs are sequences ``[a, b, =]`` with ``=`` the token id p; the label is ``(a + b) mod p`` for the ``add``
operation. The flattened grid index is ``i = a * p + b`` (lexicographic, a first; paper.md section 3.0).
"""

from __future__ import annotations

import random

import numpy as np
import torch

from mechgrok.errors import ConfigError

__all__ = ["grid_tokens", "grid_labels", "split_indices", "train_mask"]


def grid_tokens(p: int) -> torch.Tensor:
    """All p^2 input sequences ``[a, b, =]`` in lexicographic order.

    Parameters
    ----------
    p : int
        The modulus; ``=`` is token id p.

    Returns
    -------
    torch.Tensor
        int64, shape (p*p, 3); row ``a * p + b`` is ``[a, b, p]``.
    """
    a = torch.arange(p).repeat_interleave(p)
    b = torch.arange(p).repeat(p)
    return torch.stack([a, b, torch.full_like(a, p)], dim=1)


def grid_labels(p: int, operation: str = "add") -> torch.Tensor:
    """Labels c*(a, b) over the grid, shape (p*p,), int64.

    Raises
    ------
    ConfigError
        For an unknown operation.
    """
    t = grid_tokens(p)
    if operation == "add":
        return (t[:, 0] + t[:, 1]) % p
    raise ConfigError(f"unknown operation {operation!r}")


def split_indices(p: int, frac_train: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The paper's train/test split of the grid (``gen_train_test`` in the released code).

    The lexicographic list of triples ``(a, b, p)`` is shuffled by Python's ``random`` seeded with ``seed``;
    the first ``int(frac_train * p**2)`` are the training pairs.

    Parameters
    ----------
    p : int
        Modulus.
    frac_train : float
        Training fraction in (0, 1).
    seed : int
        Seed for ``random.seed``.

    Returns
    -------
    train, test : numpy.ndarray
        int64 flattened grid indices ``a * p + b``, in the shuffled order.
    """
    pairs = [(i, j, p) for i in range(p) for j in range(p)]
    random.seed(seed)
    random.shuffle(pairs)
    n = int(frac_train * len(pairs))
    idx = np.array([i * p + j for i, j, _ in pairs], dtype=np.int64)
    return idx[:n], idx[n:]


def train_mask(p: int, train: np.ndarray) -> np.ndarray:
    """Boolean membership of the training split over the (a, b) grid, shape (p, p)."""
    m = np.zeros(p * p, dtype=bool)
    m[np.asarray(train, dtype=np.int64)] = True
    return m.reshape(p, p)
