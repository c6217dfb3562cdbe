"""Repeated subsequences (the induction-head task): data, mask, float64 loss and per-position loss.

The task of the authors' ``induction_head_*`` runs (paper.md 6.2; tasks.md section 2). A sequence of
``seq_len`` tokens (85) from a vocabulary of ``vocab_size`` (128): position 0 holds token 0 (BEGIN), the rest are
uniform in 1 .. vocab_size - 1. A subsequence of ``subseq_len`` (16) tokens is repeated ``num_repeats`` (3)
times: with L = (seq_len - 1) // num_repeats, repeat i starts at s_i, uniform in
[1 + L i, 1 + L (i + 1) - (subseq_len - 1)), and the tokens at s_0 .. s_0 + subseq_len - 1 are copied to every
s_i. The next token is predictable by copying at the ``subseq_len - 1`` positions s_i .. s_i + subseq_len - 2 of
every repeat i >= 1 (:attr:`InductionBatch.mask`, 30 positions per sequence in the authors' set-up).

Quirks kept (and why)
---------------------
- **Seeding and draw order**: the authors seed numpy's global generator and draw the tokens with
  ``np.random.randint(1, vocab_size, (batch, seq_len))``, then, for each repeat i in order, the starts of the
  whole batch with ``np.random.randint(low_i, high_i, batch)``. :func:`induction_batch` makes the same draws from
  its own ``np.random.RandomState``: the finite run's 512 training sequences come from ``seed`` (1), its 640 test
  sequences from ``seed + 1``, and the released final model gives the stored last test loss 1.2305567 on them.
- **The 85/84 factor**: the original loss is the mean over all (batch, position) entries of the masked log
  probabilities, multiplied by ``numel / sum`` of the *unshifted* mask (batch x seq_len entries, while the
  shifted log-probabilities have seq_len - 1 columns). That is the masked mean times seq_len / (seq_len - 1) =
  85/84. :func:`induction_loss` keeps the factor (``faithful=True``, the default) so that mechgrok's numbers
  match the released curves; ``faithful=False`` gives the plain masked mean.
- **Loss precision**: the original takes the log-softmax in float32; mechgrok takes it in float64 (the
  difference on the released model is below 1e-6 relative).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from mechgrok.errors import ConfigError
from mechgrok.tasks.loss import per_example_loss

__all__ = ["InductionBatch", "induction_batch", "per_position_loss", "induction_loss", "loss_factor"]


@dataclass
class InductionBatch:
    """A batch of sequences with repeated subsequences.

    Attributes
    ----------
    tokens : torch.Tensor
        int64, (batch, seq_len).
    starts : torch.Tensor
        int64, (batch, num_repeats): the start s_i of every repeat.
    mask : torch.Tensor
        float64, (batch, seq_len): 1 at the positions whose next token is predictable by copying
        (s_i .. s_i + subseq_len - 2 for repeats i >= 1).
    subseq_len : int
    """

    tokens: torch.Tensor
    starts: torch.Tensor
    mask: torch.Tensor
    subseq_len: int


def induction_batch(batch: int, *, seed: int | None = None, rng: np.random.RandomState | None = None,
                    seq_len: int = 85, subseq_len: int = 16, num_repeats: int = 3,
                    vocab_size: int = 128) -> InductionBatch:
    """Draw sequences with a repeated subsequence, as the authors' generator does (module docstring).

    Parameters
    ----------
    batch : int
        Number of sequences.
    seed : int, optional
        Seed of a new ``np.random.RandomState`` (ignored when ``rng`` is given; default 0).
    rng : numpy.random.RandomState, optional
        Source of randomness; successive calls continue its stream (the infinite-data set-up).
    seq_len, subseq_len, num_repeats, vocab_size : int
        The authors' 85, 16, 3 and 128 by default.

    Returns
    -------
    InductionBatch

    Raises
    ------
    ConfigError
        If a repeat does not fit in its stretch of L = (seq_len - 1) // num_repeats positions.

    Examples
    --------
    >>> b = induction_batch(2, seed=1, seq_len=25, subseq_len=5, num_repeats=3, vocab_size=20)
    >>> b.tokens.shape, int(b.mask.sum())
    (torch.Size([2, 25]), 16)
    >>> s = b.starts[0].tolist()
    >>> b.tokens[0, s[0]:s[0] + 5].tolist() == b.tokens[0, s[2]:s[2] + 5].tolist()
    True
    """
    L = (seq_len - 1) // num_repeats
    if num_repeats < 2 or subseq_len < 2 or L < subseq_len or vocab_size < 3 or batch < 1:
        raise ConfigError(
            f"repeated subsequences need num_repeats >= 2, 2 <= subseq_len <= (seq_len - 1) // num_repeats and "
            f"vocab_size >= 3; got seq_len={seq_len}, subseq_len={subseq_len}, num_repeats={num_repeats}, "
            f"vocab_size={vocab_size}")
    if rng is None:
        rng = np.random.RandomState(0 if seed is None else int(seed))
    x = rng.randint(1, vocab_size, (batch, seq_len))
    x[:, 0] = 0
    starts = np.stack([rng.randint(1 + L * i, 1 + L * (i + 1) - (subseq_len - 1), batch)
                       for i in range(num_repeats)], axis=1)
    mask = np.zeros((batch, seq_len))
    rows = np.arange(batch)[:, None]
    offs = np.arange(subseq_len)[None, :]
    src = starts[:, :1] + offs
    for i in range(1, num_repeats):
        x[rows, starts[:, i : i + 1] + offs] = x[rows, src]
        mask[rows, starts[:, i : i + 1] + offs[:, :-1]] = 1.0
    return InductionBatch(tokens=torch.from_numpy(x.astype(np.int64)), starts=torch.from_numpy(starts.astype(np.int64)),
                          mask=torch.from_numpy(mask), subseq_len=int(subseq_len))


def per_position_loss(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Float64 next-token loss at every position but the last, per sequence, in nats.

    Parameters
    ----------
    logits : torch.Tensor
        (..., batch, seq_len, vocab).
    tokens : torch.Tensor
        int64, (batch, seq_len).

    Returns
    -------
    torch.Tensor
        float64, (..., batch, seq_len - 1): entry t is -log p(tokens[t + 1] | tokens[:t + 1]).
    """
    return per_example_loss(logits[..., :-1, :], tokens[:, 1:])


def loss_factor(seq_len: int, *, faithful: bool = True) -> float:
    """The factor the original loss carries: seq_len / (seq_len - 1) (85/84) if ``faithful``, else 1."""
    return seq_len / (seq_len - 1) if faithful else 1.0


def induction_loss(logits: torch.Tensor, data: InductionBatch, *, faithful: bool = True) -> torch.Tensor:
    """The task's loss: the masked mean of :func:`per_position_loss`, times 85/84 if ``faithful`` (nats).

    Parameters
    ----------
    logits : torch.Tensor
        (..., batch, seq_len, vocab).
    data : InductionBatch
    faithful : bool
        Keep the original code's seq_len / (seq_len - 1) factor (module docstring). Default True.

    Returns
    -------
    torch.Tensor
        float64, shape ``logits.shape[:-3]``.

    Examples
    --------
    >>> b = induction_batch(3, seed=0, seq_len=25, subseq_len=5, vocab_size=20)
    >>> float(induction_loss(torch.zeros(3, 25, 20), b, faithful=False))  # uniform: log 20
    2.995732273553991
    """
    m = data.mask[:, :-1].to(logits.device)
    lp = per_position_loss(logits, data.tokens.to(logits.device))
    seq_len = data.tokens.shape[-1]
    return (lp * m).sum(dim=(-2, -1)) / m.sum() * loss_factor(seq_len, faithful=faithful)
