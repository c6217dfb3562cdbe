"""The task: modular arithmetic on the p x p grid, and the paper's train/test split.

Inputs are sequences ``[a, b, =]`` with ``=`` the token id p (or ``[a, b]`` without it, the Pizza models of
Zhong et al. 2023); the label is c*(a, b) = (a + b), (a - b), (a * b) or (a / b) mod p for the operations
``add``, ``sub``, ``mul``, ``div`` (:data:`mechgrok.config.OPERATIONS`). Division is defined for b = 1..p-1
only (a / b = a * b^(p-2) mod p, p prime): its task holds the p (p - 1) pairs with b != 0, and the pairs with
b = 0 are in neither split. The flattened grid index is ``i = a * p + b`` (lexicographic, a first; paper.md
section 3.0).
"""

from __future__ import annotations

import random

import numpy as np
import torch

from mechgrok.errors import ConfigError

__all__ = ["grid_tokens", "grid_labels", "task_mask", "split_indices", "train_mask"]


def grid_tokens(p: int, *, equals_token: bool = True) -> torch.Tensor:
    """All p^2 input sequences ``[a, b, =]`` (or ``[a, b]``) in lexicographic order.

    Parameters
    ----------
    p : int
        The modulus; ``=`` is token id p.
    equals_token : bool
        Append the ``=`` token (the paper's inputs); False for ``[a, b]`` (the Pizza models').

    Returns
    -------
    torch.Tensor
        int64, shape (p*p, 3) (or (p*p, 2)); row ``a * p + b`` is ``[a, b, p]`` (or ``[a, b]``).
    """
    a = torch.arange(p).repeat_interleave(p)
    b = torch.arange(p).repeat(p)
    return torch.stack([a, b, torch.full_like(a, p)] if equals_token else [a, b], dim=1)


def grid_labels(p: int, operation: str = "add") -> torch.Tensor:
    """Labels c*(a, b) over the grid, shape (p*p,), int64, rows ``a * p + b``.

    ``(a + b)``, ``(a - b)``, ``(a * b)`` or ``(a * b^(p-2))`` mod p for add, sub, mul, div. For div the pairs
    with b = 0 are outside the task (:func:`task_mask`); their label is given as 0, never trained nor scored.

    Raises
    ------
    ConfigError
        For an unknown operation.

    Examples
    --------
    >>> grid_labels(5, "div").view(5, 5)[3].tolist()  # 3 / b mod 5 for b = 0..4 (b = 0 outside the task)
    [0, 3, 4, 1, 2]
    """
    a, b = grid_tokens(p, equals_token=False).T
    if operation == "add":
        return (a + b) % p
    if operation == "sub":
        return (a - b) % p
    if operation == "mul":
        return (a * b) % p
    if operation == "div":
        inv = torch.tensor([pow(int(x), p - 2, p) if x else 0 for x in range(p)])  # Fermat: b^-1 = b^(p-2)
        return (a * inv[b]) % p
    raise ConfigError(f"unknown operation {operation!r}")


def task_mask(p: int, operation: str = "add") -> np.ndarray:
    """Membership of each grid pair in the task, bool (p, p): all pairs, but b = 0 for division.

    Examples
    --------
    >>> int(task_mask(7, "div").sum()), int(task_mask(7, "mul").sum())
    (42, 49)
    """
    m = np.ones((p, p), dtype=bool)
    if operation == "div":
        m[:, 0] = False
    return m


def split_indices(p: int, frac_train: float, seed: int, operation: str = "add") -> tuple[np.ndarray, np.ndarray]:
    """The paper's train/test split of the grid (``gen_train_test`` in the released code).

    The lexicographic list of triples ``(a, b, p)`` of the task's pairs (:func:`task_mask`: all p^2 pairs, for
    division those with b != 0) is shuffled by Python's ``random`` seeded with ``seed``; the first
    ``int(frac_train * n_pairs)`` are the training pairs. For add, sub and mul this is the paper's split.

    Parameters
    ----------
    p : int
        Modulus.
    frac_train : float
        Training fraction in (0, 1).
    seed : int
        Seed for ``random.seed``.
    operation : str
        The task's operation (only division leaves pairs out).

    Returns
    -------
    train, test : numpy.ndarray
        int64 flattened grid indices ``a * p + b``, in the shuffled order.
    """
    keep = task_mask(p, operation)
    pairs = [(i, j, p) for i in range(p) for j in range(p) if keep[i, j]]
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
