"""Cross-entropy in float64, as every loss in mechgrok is computed.

A float32 log-softmax rounds probabilities within 2^-24 of 1 to exactly 1, so confidently fit examples get a
loss of exactly 0 (and a zero gradient on the correct class). The released ``helpers.py`` of the paper casts
to float32 despite its comment; the analysis notebook, the TL demo and mechgrok use float64 (paper.md 2.3).
"""

from __future__ import annotations

import torch

__all__ = ["cross_entropy", "cross_entropy_float32", "per_example_loss", "accuracy"]


def per_example_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Negative log-likelihood of each label under a float64 softmax, in nats, exact for losses near 0.

    With the gaps d_j = L_j - L_label and m = max_j d_j (>= 0), the loss is

        m + log1p(sum_{j != label} exp(d_j - m) + expm1(-m)),

    which equals log-sum-exp(L) - L_label. Unlike ``-log_softmax(L)[label]`` it never forms 1 + t for a tiny t
    (a float64 log-softmax rounds t to multiples of 2.2e-16, i.e. a loss of 1e-10 to about 1e-6 relative): a
    fit example's loss log1p(t) keeps full float64 precision (paper.md 2.3). Differentiable; the gradient is
    softmax(L) - onehot(label) as usual.

    Parameters
    ----------
    logits : torch.Tensor
        Shape (..., batch, n_classes), any float dtype; cast to float64 first.
    labels : torch.Tensor
        int64, shape (batch,) or broadcastable to ``logits.shape[:-1]``.

    Returns
    -------
    torch.Tensor
        float64, shape ``logits.shape[:-1]``.

    Examples
    --------
    >>> import torch
    >>> L = torch.tensor([[30.0, 0.0, 0.0]], dtype=torch.float64)
    >>> float(per_example_loss(L, torch.tensor([0])))  # log1p(2 e^-30), to the last digit
    1.8715245937678598e-13
    """
    L = logits.to(torch.float64)
    labels = labels.expand(L.shape[:-1]).unsqueeze(-1)
    d = L - L.gather(-1, labels)  # gaps to the label's logit; 0 at the label
    m = d.amax(-1, keepdim=True).detach()  # >= 0; a shift, so its gradient is not needed
    e = torch.exp(d - m)
    e = e.scatter(-1, labels, torch.zeros_like(labels, dtype=e.dtype))  # drop the label's own term
    return (m + torch.log1p(e.sum(-1, keepdim=True) + torch.expm1(-m))).squeeze(-1)


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean float64 cross-entropy over the batch dim, in nats; shape ``logits.shape[:-2]``.

    Differentiable: gradients flow back to ``logits`` in their own dtype.
    """
    return per_example_loss(logits, labels).mean(dim=-1)


def cross_entropy_float32(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy through a **float32** log-softmax, as the released ``helpers.py`` computes it (nats).

    ``-mean(gather(log_softmax(logits.float()), labels))``, all in float32: the correct class's log-probability
    rounds to 0 once its probability is within 2^-24 of 1, so a fit example's loss and its correct-class
    gradient are quantised to multiples of about 6e-8 (or vanish) and the train loss floors near 1e-7 with
    upward spikes (the "slingshots"; paper.md 2.3, ``docs/slingshots.md``). Only for studying that effect
    (``Config.loss_dtype = "float32"``); every other loss in mechgrok is :func:`cross_entropy`.

    Parameters
    ----------
    logits : torch.Tensor
        Shape (..., batch, n_classes), any float dtype; cast to float32 first.
    labels : torch.Tensor
        int64, shape (batch,) or broadcastable to ``logits.shape[:-1]``.

    Returns
    -------
    torch.Tensor
        float32, shape ``logits.shape[:-2]``.

    Examples
    --------
    >>> import torch
    >>> L = torch.tensor([[20.0, 0.0, 0.0]])
    >>> float(cross_entropy_float32(L, torch.tensor([0]))) == 0.0  # float64 gives log1p(2 e^-20) = 4.1e-9
    True
    """
    logp = torch.log_softmax(logits.to(torch.float32), dim=-1)
    labels = labels.expand(logits.shape[:-1]).unsqueeze(-1)
    return -logp.gather(-1, labels).squeeze(-1).mean(dim=-1)


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Fraction of rows whose argmax is the label; float64, shape ``logits.shape[:-2]``."""
    return (logits.argmax(dim=-1) == labels).to(torch.float64).mean(dim=-1)
