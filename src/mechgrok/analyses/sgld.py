"""Localised stochastic-gradient Langevin dynamics (SGLD), many chains as one batched computation.

The sampler behind the local learning coefficient (:mod:`mechgrok.analyses.llc`; Lau et al. 2023, arXiv 2308.12108;
``beyond.md`` 1.2). Every chain ``c`` starts at its centre ``w*_c`` and follows

    w_{t+1} = w_t - (eps / 2) * [ nbeta * grad L_t(w_t) + gamma * (w_t - w*) + weight_decay * w_t ] + sqrt(eps) * xi_t,
    xi_t ~ N(0, I),

which samples (up to the step-size bias) the localised, tempered posterior

    p(w) ~ exp( -nbeta * L(w) - (gamma / 2) * ||w - w*||^2 - (weight_decay / 2) * ||w||^2 ).

``L_t`` is the mean loss over the batch of step ``t`` (the full data set when there is no minibatching). The
loss recorded for step ``t`` is the one whose gradient drives that step, i.e. evaluated at ``w_t`` **before** the
update (as devinterp records it).

Chains are a leading ``chain`` dim on every parameter tensor: one call of the user's ``loss_fn`` evaluates all
chains, and the gradient of the *sum* of the per-chain losses is each chain's own gradient (chains share no
weights). The step size, inverse temperature, localisation and weight decay may differ per chain, so a whole
calibration grid runs as one computation. Each chain draws its noise (and its minibatches) from its own
``torch.Generator``, seeded from ``seeds[c]``: at every step, first the minibatch (if any), then
``torch.randn(n_params)`` for the noise, in the flat order of the weights (the order of ``center``'s keys, each
weight flattened). A chain's path therefore does not depend on how many other chains run beside it or how they
are batched.

A chain whose loss becomes NaN or infinite (a non-finite gradient shows up as a non-finite loss one step later)
is frozen at its centre from that step on (so it cannot poison the arithmetic of the batch) and its later losses
are recorded as NaN; :attr:`SGLDResult.dead_at` says when. Whether a chain *diverged* in the wider sense (a loss blow-up) is judged from the losses by
:mod:`mechgrok.analyses.llc`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from mechgrok.errors import AnalysisError

__all__ = ["SGLDResult", "sgld_sample", "chain_seeds", "per_chain"]

#: ``loss_fn(params, batch) -> (chain,) float64``: ``params`` by name, each (chain, ...); ``batch`` is what
#: ``batch_fn`` returned, or None for the full data set.
LossFn = Callable[[Mapping[str, torch.Tensor], Any], torch.Tensor]
#: ``batch_fn(generators) -> batch``: one minibatch per chain, drawn from the chains' generators.
BatchFn = Callable[[Sequence[torch.Generator]], Any]
#: ``grad_fn(params, batch, grads) -> (chain,) float64``: the loss of ``loss_fn`` and, written into ``grads`` (tensors
#: shaped like ``params``), the gradient of its sum over chains, computed without autograd.
GradFn = Callable[[Mapping[str, torch.Tensor], Any, Mapping[str, torch.Tensor]], torch.Tensor]


@dataclass(frozen=True)
class SGLDResult:
    """What :func:`sgld_sample` returns (numpy arrays; one row per chain).

    Attributes
    ----------
    losses : numpy.ndarray
        float64, (chain, step): the batch loss (nats, or the units of ``loss_fn``) at every step, burn-in
        included, evaluated before the step is applied; NaN after a chain died.
    draw_steps : numpy.ndarray
        int64, (draw,): the steps whose losses are the draws (``num_burnin + (k + 1) * steps_between_draws - 1``).
    init_loss : numpy.ndarray
        float64, (chain,): the full-data loss at the centre.
    distance : numpy.ndarray
        float64, (chain, draw): Euclidean distance ``||w_t - w*||`` over all sampled weights at each draw.
    dead_at : numpy.ndarray
        int64, (chain,): first step whose loss was not finite, -1 if none.
    epsilon, nbeta, gamma, weight_decay : numpy.ndarray
        float64, (chain,): the settings each chain ran with.
    n_params : int
        Number of sampled weights per chain.
    final_params : dict of str to torch.Tensor
        The weights after the last step, (chain, ...).
    """

    losses: np.ndarray
    draw_steps: np.ndarray
    init_loss: np.ndarray
    distance: np.ndarray
    dead_at: np.ndarray
    epsilon: np.ndarray
    nbeta: np.ndarray
    gamma: np.ndarray
    weight_decay: np.ndarray
    n_params: int
    final_params: dict[str, torch.Tensor]

    @property
    def draws(self) -> np.ndarray:
        """float64, (chain, draw): the losses at the draws."""
        return self.losses[:, self.draw_steps]


def chain_seeds(seed: int, *keys: int, num_chains: int) -> list[int]:
    """Independent 63-bit seeds for ``num_chains`` chains, derived from ``seed`` and any integer ``keys``.

    ``numpy.random.SeedSequence([seed, *keys, c])`` for chain ``c``, so chain ``c`` of (seed, keys) is the same
    whatever ``num_chains`` is, and e.g. the epoch of a checkpoint as a key makes each checkpoint's chains
    independent of which other checkpoints are sampled.
    """
    out = []
    for c in range(num_chains):
        ss = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, *(int(k) & 0xFFFFFFFF for k in keys), c])
        out.append(int(ss.generate_state(1, dtype=np.uint64)[0] >> np.uint64(1)))
    return out


def per_chain(value: float | Sequence[float] | np.ndarray, num_chains: int, name: str) -> np.ndarray:
    """A setting as a float64 array of one value per chain (a scalar is repeated).

    Raises
    ------
    AnalysisError
        If ``value`` has neither one nor ``num_chains`` entries, or is not finite.
    """
    arr = np.asarray(value, dtype=np.float64)
    if arr.ndim == 0:
        arr = np.full(num_chains, float(arr))
    if arr.shape != (num_chains,):
        raise AnalysisError(f"{name} must be a number or one value per chain ({num_chains}), got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise AnalysisError(f"{name} must be finite, got {arr.tolist()}")
    return arr


def sgld_sample(
    loss_fn: LossFn,
    center: Mapping[str, torch.Tensor],
    *,
    epsilon: float | Sequence[float] | np.ndarray,
    nbeta: float | Sequence[float] | np.ndarray,
    gamma: float | Sequence[float] | np.ndarray,
    weight_decay: float | Sequence[float] | np.ndarray = 0.0,
    num_burnin: int,
    num_draws: int,
    steps_between_draws: int = 1,
    seeds: Sequence[int],
    batch_fn: BatchFn | None = None,
    init_loss: torch.Tensor | np.ndarray | None = None,
    grad_fn: GradFn | None = None,
) -> SGLDResult:
    """Run localised SGLD chains, all in one batched computation (``beyond.md`` 1.2; Lau et al. 2023, eq. 13).

    Parameters
    ----------
    loss_fn : callable
        ``loss_fn(params, batch) -> torch.Tensor`` of shape (chain,), float64, differentiable in ``params``.
        ``params`` maps each name of ``center`` to a (chain, ...) tensor; ``batch`` is None for the full data set
        (the initial loss and full-batch sampling) or whatever ``batch_fn`` returned.
    center : mapping of str to torch.Tensor
        The point each chain is localised at, ``w*``, with a leading ``chain`` dim on every tensor. Their dtype
        and device are those of the chains.
    epsilon : float or array of (chain,)
        Step size ``eps`` (> 0).
    nbeta : float or array of (chain,)
        Inverse temperature ``n * beta`` (> 0) that multiplies the gradient of the mean batch loss.
    gamma : float or array of (chain,)
        Localisation strength (>= 0).
    weight_decay : float or array of (chain,)
        Strength of the ``weight_decay * w`` drift (>= 0), i.e. a ``(weight_decay / 2) ||w||^2`` prior.
    num_burnin : int
        Steps before the first draw (>= 0).
    num_draws : int
        Number of draws per chain (>= 1).
    steps_between_draws : int
        Steps per draw (>= 1); the total is ``num_burnin + num_draws * steps_between_draws``.
    seeds : sequence of int
        One seed per chain for its noise (and minibatch) generator; see :func:`chain_seeds`.
    batch_fn : callable, optional
        ``batch_fn(generators) -> batch``, called once per step; None samples with the full data set.
    init_loss : tensor or array of (chain,), optional
        The full-data loss at the centre; computed with ``loss_fn(center, None)`` when omitted.
    grad_fn : callable, optional
        ``grad_fn(params, batch, grads) -> (chain,) float64``: the same loss as ``loss_fn`` with its gradient
        written into ``grads`` (views of one flat buffer, named and shaped like ``params``), e.g. a hand-written
        backward pass (:class:`mechgrok.analyses.modular.loss_gradient.LossGradient`). Used for every step instead of autograd.

    Returns
    -------
    SGLDResult

    Raises
    ------
    AnalysisError
        On inconsistent chain counts, non-positive step sizes or temperatures, negative localisation or weight
        decay, bad step counts, or a ``loss_fn`` that does not return one finite-or-NaN float per chain.
    """
    names = list(center)
    if not names:
        raise AnalysisError("sgld_sample needs at least one parameter tensor")
    n_chains = int(center[names[0]].shape[0]) if center[names[0]].dim() else 0
    if n_chains < 1 or any(t.dim() < 1 or t.shape[0] != n_chains for t in center.values()):
        raise AnalysisError("every centre tensor must have the same leading chain dim (>= 1)")
    if len(seeds) != n_chains:
        raise AnalysisError(f"got {len(seeds)} seeds for {n_chains} chains")
    eps = per_chain(epsilon, n_chains, "epsilon")
    nb = per_chain(nbeta, n_chains, "nbeta")
    gam = per_chain(gamma, n_chains, "gamma")
    wd = per_chain(weight_decay, n_chains, "weight_decay")
    if (eps <= 0).any() or (nb <= 0).any():
        raise AnalysisError(f"epsilon and nbeta must be positive, got epsilon={eps.tolist()}, nbeta={nb.tolist()}")
    if (gam < 0).any() or (wd < 0).any():
        raise AnalysisError(f"gamma and weight_decay must be >= 0, got gamma={gam.tolist()}, weight_decay={wd.tolist()}")
    for label, value, low in (("num_burnin", num_burnin, 0), ("num_draws", num_draws, 1),
                              ("steps_between_draws", steps_between_draws, 1)):
        if not isinstance(value, (int, np.integer)) or value < low:
            raise AnalysisError(f"{label} must be an integer >= {low}, got {value!r}")

    first = center[names[0]]
    dtype, device = first.dtype, first.device
    shapes = [tuple(center[n].shape[1:]) for n in names]
    sizes = [math.prod(s) for s in shapes]
    # all weights of a chain in one flat row; the named tensors are views of it
    w0 = torch.cat([center[n].detach().reshape(n_chains, -1).to(dtype) for n in names], dim=1)
    n_params = int(w0.shape[1])

    def as_params(flat: torch.Tensor) -> dict[str, torch.Tensor]:
        return {n: part.view(n_chains, *s) for n, part, s in zip(names, flat.split(sizes, dim=1), shapes)}

    def col(a: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(a, dtype=dtype, device=device)[:, None]

    eps_t, nb_t, gam_t, wd_t = col(eps), col(nb), col(gam), col(wd)
    sqrt_eps = eps_t.sqrt()
    gens = []
    for s in seeds:
        g = torch.Generator(device=device)
        g.manual_seed(int(s))
        gens.append(g)

    if init_loss is None:
        with torch.no_grad():
            init = _check_loss(loss_fn(as_params(w0), None), n_chains)
    else:
        init = torch.as_tensor(np.asarray(init_loss, dtype=np.float64) if not torch.is_tensor(init_loss) else init_loss)
        init = init.to(torch.float64).reshape(-1)
        if init.shape != (n_chains,):
            raise AnalysisError(f"init_loss must have one value per chain ({n_chains}), got shape {tuple(init.shape)}")

    total = int(num_burnin) + int(num_draws) * int(steps_between_draws)
    draw_steps = np.arange(int(num_draws), dtype=np.int64) * int(steps_between_draws) + int(num_burnin) + int(steps_between_draws) - 1
    is_draw = np.zeros(total, dtype=bool)
    is_draw[draw_steps] = True
    losses = torch.full((n_chains, total), float("nan"), dtype=torch.float64)
    distance = torch.full((n_chains, int(num_draws)), float("nan"), dtype=torch.float64)
    dead_at = np.full(n_chains, -1, dtype=np.int64)
    alive = torch.ones(n_chains, dtype=torch.bool, device=device)
    alive_cpu = torch.ones(n_chains, dtype=torch.bool)
    nan = torch.tensor(float("nan"), dtype=torch.float64)
    keep = 1.0 - 0.5 * eps_t * (gam_t + wd_t)  # the update as w * keep + w* * pull + g * step + xi * sqrt(eps)
    pull = 0.5 * eps_t * gam_t
    step = -0.5 * eps_t * nb_t

    w = w0.clone()
    grad_buf = torch.empty_like(w0) if grad_fn is not None else None
    # w and grad_buf are updated in place, so their named views stay valid for the whole run
    w_views = as_params(w)
    grad_views = as_params(grad_buf) if grad_fn is not None else None
    noise = torch.empty_like(w0)
    k = 0
    for t in range(total):
        batch = batch_fn(gens) if batch_fn is not None else None
        if grad_fn is not None:
            with torch.no_grad():
                loss = _check_loss(grad_fn(w_views, batch, grad_views), n_chains)
            grad = grad_buf
        else:
            leaf = w.detach().requires_grad_(True)
            loss = _check_loss(loss_fn(as_params(leaf), batch), n_chains)
            (grad,) = torch.autograd.grad(loss.sum(), leaf)
        with torch.no_grad():
            # a non-finite gradient makes the next loss non-finite, so checking the loss catches both
            loss_cpu = loss.detach().cpu()
            ok = torch.isfinite(loss_cpu)
            if not bool(ok.all()) and bool((alive_cpu & ~ok).any()):
                for c in torch.nonzero(alive_cpu & ~ok).flatten().tolist():
                    dead_at[c] = t
                alive_cpu &= ok
                alive = alive_cpu.to(device)
            losses[:, t] = torch.where(alive_cpu, loss_cpu, nan)
            if is_draw[t]:
                dist = torch.linalg.vector_norm(w - w0, dim=1, dtype=torch.float64).cpu()
                distance[:, k] = torch.where(alive_cpu, dist, nan)
                k += 1
            for row, g in zip(noise, gens):  # the same stream as torch.randn(n_params, generator=g)
                row.normal_(generator=g)
            # w - (eps/2) (nbeta g + gamma (w - w*) + wd w) + sqrt(eps) xi, in place
            w.mul_(keep).addcmul_(w0, pull).addcmul_(grad, step).addcmul_(noise, sqrt_eps)
            if not bool(alive_cpu.all()):
                w.copy_(torch.where(alive[:, None], w, w0))
    return SGLDResult(
        losses=losses.numpy(),
        draw_steps=draw_steps,
        init_loss=init.detach().cpu().numpy().astype(np.float64),
        distance=distance.numpy(),
        dead_at=dead_at,
        epsilon=eps,
        nbeta=nb,
        gamma=gam,
        weight_decay=wd,
        n_params=n_params,
        final_params={n: v.detach().clone() for n, v in as_params(w).items()},
    )


def _check_loss(loss: Any, n_chains: int) -> torch.Tensor:
    if not torch.is_tensor(loss) or loss.shape != (n_chains,):
        shape = tuple(loss.shape) if torch.is_tensor(loss) else type(loss).__name__
        raise AnalysisError(f"loss_fn must return a tensor of shape (chain,) = ({n_chains},), got {shape}")
    return loss.to(torch.float64)
