"""Cross-entropy in float64, as every loss in mechgrok is computed.

A float32 log-softmax rounds probabilities within 2^-24 of 1 to exactly 1, so confidently fit examples get a
loss of exactly 0 (and a zero gradient on the correct class). The released ``helpers.py`` of the paper casts
to float32 despite its comment; the analysis notebook, the TL demo and mechgrok use float64 (paper.md 2.3).
"""

from __future__ import annotations

import torch

__all__ = ["cross_entropy", "per_example_loss", "accuracy"]


def per_example_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Negative log-likelihood of each label under a float64 softmax, in nats.

    Parameters
    ----------
    logits : torch.Tensor
        Shape (..., batch, n_classes), any float dtype; cast to float64 before the log-softmax.
    labels : torch.Tensor
        int64, shape (batch,) or broadcastable to ``logits.shape[:-1]``.

    Returns
    -------
    torch.Tensor
        float64, shape ``logits.shape[:-1]``.
    """
    logp = logits.to(torch.float64).log_softmax(dim=-1)
    labels = labels.expand(logp.shape[:-1])
    return -logp.gather(-1, labels.unsqueeze(-1)).squeeze(-1)


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean float64 cross-entropy over the batch dim, in nats; shape ``logits.shape[:-2]``.

    Differentiable: gradients flow back to ``logits`` in their own dtype.
    """
    return per_example_loss(logits, labels).mean(dim=-1)


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Fraction of rows whose argmax is the label; float64, shape ``logits.shape[:-2]``."""
    return (logits.argmax(dim=-1) == labels).to(torch.float64).mean(dim=-1)
