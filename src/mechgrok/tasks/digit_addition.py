"""n-digit addition (5 digits in the authors' runs): data, carries, float64 loss and per-token loss.

The task of Nanda et al.'s phase-change runs (paper.md 6.1; tasks.md section 1; the authors' notebook
``Non_Modular_Addition_Grokking_Tasks.ipynb``, ``data_generator`` and ``get_pred_log_probs``).

Layout of one sequence (n = ``n_digits``, context ``3 n + 3``; 18 for n = 5)::

    x_{n-1} ... x_0  +  y_{n-1} ... y_0  =  c_n  s_{n-1} ... s_0
    positions 0..n-1  n  n+1..2n        2n+1 2n+2 ........... 3n+2

Tokens 0-9 are digits, ``+`` is :data:`PLUS` (10) and ``=`` is :data:`EQUALS` (11): ``d_vocab`` 12 in and 10 out.
Numbers are written most significant digit first. The answer has n + 1 tokens, the **carry-out first** (the
top carry, 0 or 1), then the n sum digits, most significant first.

Quirks kept (and why)
---------------------
- **Answer-token order**: carry-out first, then the sum digits from the most significant; the answer positions
  (``answer_position`` 0..n) follow this order, so answer position 0 is the carry-out and answer position n the
  units digit. The authors' per-token curves use the same order.
- **Carries**: ``carries[:, i]`` is the carry *into* column i counted from the units column (``carries[:, 0]``
  is always 0) and ``carries[:, n]`` the carry out of the top column, as the notebook's ripple-carry loop stacks
  them (shape (batch, n + 1)). :func:`answer_carries` reorders them to answer positions: the carry that feeds
  each answer digit (for the carry-out token, the carry out of the top column, i.e. the token itself).
- **Seeding**: the notebook seeds torch's global generator (``torch.manual_seed(seed)``, default seed 129000) and
  draws ``x = randint(0, 10, (batch, n))`` then ``y`` likewise for every batch. :func:`addition_batch` does the
  same with its own ``torch.Generator``, so the same seed gives the same sums without touching global state.
- **Loss**: the logits at positions 2n+1 .. 3n+1 predict the n + 1 answer tokens (positions 2n+2 .. 3n+2);
  float64 log-softmax over the 10 digit classes; the per-token loss is the batch mean at each answer position,
  and the loss is their mean (the notebook's ``loss_fn``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mechgrok.errors import ConfigError
from mechgrok.tasks.loss import per_example_loss

__all__ = [
    "PLUS",
    "EQUALS",
    "AUTHORS_SEED",
    "AdditionBatch",
    "n_ctx",
    "addition_batch",
    "answer_carries",
    "answer_logits",
    "per_token_loss",
    "addition_loss",
]

#: Token id of ``+``.
PLUS = 10
#: Token id of ``=``.
EQUALS = 11
#: The notebook's default data seed (``seed = 129000``); the released infinite-data model's check uses it.
AUTHORS_SEED = 129000


@dataclass
class AdditionBatch:
    """A batch of sums.

    Attributes
    ----------
    tokens : torch.Tensor
        int64, (batch, 3 n + 3): the sequences (module docstring).
    carries : torch.Tensor
        int64, (batch, n + 1): carry into each column from the units column (``carries[:, 0] == 0``) and the
        carry out of the top column last.
    """

    tokens: torch.Tensor
    carries: torch.Tensor


def n_ctx(n_digits: int) -> int:
    """Context length of n-digit addition: ``3 n + 3`` (18 for 5 digits)."""
    return 3 * int(n_digits) + 3


def addition_batch(batch: int, n_digits: int = 5, *, generator: torch.Generator | None = None,
                   seed: int | None = None) -> AdditionBatch:
    """Draw ``batch`` sums of two uniform ``n_digits``-digit numbers (the notebook's ``data_generator``).

    Parameters
    ----------
    batch : int
        Number of sums.
    n_digits : int
        Digits per summand (>= 1).
    generator : torch.Generator, optional
        Source of randomness (successive calls continue its stream, like the notebook's generator).
    seed : int, optional
        Seed a new generator instead (ignored when ``generator`` is given).

    Returns
    -------
    AdditionBatch
        ``tokens`` (batch, 3 n + 3) and ``carries`` (batch, n + 1).

    Raises
    ------
    ConfigError
        If ``batch`` or ``n_digits`` is below 1.

    Examples
    --------
    >>> b = addition_batch(2, 2, seed=0)
    >>> b.tokens.shape, b.carries.shape
    (torch.Size([2, 9]), torch.Size([2, 3]))
    >>> t = b.tokens[0].tolist()
    >>> (10 * t[0] + t[1]) + (10 * t[3] + t[4]) == 100 * t[6] + 10 * t[7] + t[8]
    True
    """
    if int(batch) < 1 or int(n_digits) < 1:
        raise ConfigError(f"batch and n_digits must be >= 1, got {batch} and {n_digits}")
    n = int(n_digits)
    if generator is None:
        generator = torch.Generator().manual_seed(0 if seed is None else int(seed))
    x = torch.randint(0, 10, (batch, n), generator=generator)
    y = torch.randint(0, 10, (batch, n), generator=generator)
    tokens = torch.zeros((batch, n_ctx(n)), dtype=torch.int64)
    tokens[:, :n] = x
    tokens[:, n] = PLUS
    tokens[:, n + 1 : 2 * n + 1] = y
    tokens[:, 2 * n + 1] = EQUALS
    carries = [torch.zeros(batch, dtype=torch.int64)]
    for i in range(n):  # ripple carry from the units column (position n - 1 of x, 2n of y)
        s = tokens[:, n - 1 - i] + tokens[:, 2 * n - i] + carries[-1]
        tokens[:, -1 - i] = s % 10
        carries.append((s >= 10).to(torch.int64))
    tokens[:, -1 - n] = carries[-1]
    return AdditionBatch(tokens=tokens, carries=torch.stack(carries, dim=1))


def answer_carries(carries: torch.Tensor) -> torch.Tensor:
    """The carry feeding each answer position, in answer order (carry-out token first).

    Answer position 0 (the carry-out token) gets the carry out of the top column; answer position k >= 1 (sum
    digit of column n - k, counted from the units column) gets the carry into that column.

    Parameters
    ----------
    carries : torch.Tensor
        (batch, n + 1) as in :class:`AdditionBatch`.

    Returns
    -------
    torch.Tensor
        int64, (batch, n + 1), 0 or 1.

    Examples
    --------
    >>> answer_carries(addition_batch(1, 2, seed=3).carries).shape
    torch.Size([1, 3])
    """
    n = carries.shape[-1] - 1
    return torch.cat([carries[..., n:], carries[..., :n].flip(-1)], dim=-1)


def answer_logits(logits: torch.Tensor) -> torch.Tensor:
    """The logits that predict the answer tokens: positions 2n+1 .. 3n+1 of (..., batch, 3n+3, 10)."""
    n = (logits.shape[-2] - 3) // 3
    return logits[..., 2 * n + 1 : 3 * n + 2, :]


def per_token_loss(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Float64 loss at each answer position, averaged over the batch, in nats.

    Parameters
    ----------
    logits : torch.Tensor
        (..., batch, 3 n + 3, 10): the model's logits at every position.
    tokens : torch.Tensor
        int64, (batch, 3 n + 3).

    Returns
    -------
    torch.Tensor
        float64, (..., n + 1): answer position 0 is the carry-out token.

    Examples
    --------
    >>> b = addition_batch(4, 2, seed=0)
    >>> per_token_loss(torch.zeros(4, 9, 10), b.tokens)  # uniform logits: log 10 everywhere
    tensor([2.3026, 2.3026, 2.3026], dtype=torch.float64)
    """
    n = (tokens.shape[-1] - 3) // 3
    ans = tokens[:, 2 * n + 2 :]
    return per_example_loss(answer_logits(logits), ans).mean(dim=-2)


def addition_loss(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """The task's loss: the mean of :func:`per_token_loss` over the answer positions (nats, float64)."""
    return per_token_loss(logits, tokens).mean(dim=-1)
