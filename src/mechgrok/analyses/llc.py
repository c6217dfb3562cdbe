"""The local learning coefficient (LLC) as a progress measure, estimated by localised SGLD.

The LLC ``lambda(w*)`` of singular learning theory measures how degenerate the loss landscape is around a
trained point ``w*``: a regular model with d parameters has ``lambda = d / 2``, a singular one less. Lau et al.
(2023, "The Local Learning Coefficient: A Singularity-Aware Complexity Measure", arXiv 2308.12108) estimate it
from the localised, tempered posterior ``p(w) ~ exp(-nbeta L(w) - gamma/2 ||w - w*||^2)`` by

    lambda_hat(w*) = nbeta * ( E_w[ L(w) ] - L(w*) ),

the expectation taken over SGLD draws (:mod:`mechgrok.analyses.sgld`; ``beyond.md`` 1.2). Per chain ``c``:
``lambda_c = nbeta * (mean_t L_{c,t} - L(w*))``; the estimate is the mean over chains and its spread the standard
deviation over chains (ddof = 1). Chains that diverge are reported and left out of both, never averaged in.

Three layers:

* :func:`estimate_llc` and :func:`sweep_llc`: any model, given a batched loss function (used by the known-answer
  tests: linear regression, ``lambda = d/2``; a quartic singular model, ``lambda = d/4``);
* :func:`llc_trajectory`: the paper's transformer over a canonical trajectory (``checkpoint`` dim), on the
  training split, for the analysis pipeline (``mechgrok analyze --llc``);
* :func:`calibrate_llc` and :func:`recommend_settings`: an epsilon x nbeta sweep on one checkpoint and the
  settings it supports (flat trace, no divergence, few draws below the starting loss, an estimate that does not
  move when epsilon shrinks).

The loss for the transformer is the training loss exactly as the trainer computes it: the float64 cross-entropy
of the final-position logits over all ``d_vocab_out = p + 1`` classes (the ``=`` class included), averaged over
the training pairs (``mechgrok.train``; ``paper.md`` 2.1). The paper's analyses use p classes; the LLC must use the
loss the checkpoint was trained on, otherwise ``w*`` is not a minimum of it. See ``docs/llc.md`` for the settings
and the pitfalls.
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
import xarray as xr

from mechgrok.engine import Checkpoint, checkpoint_weights, run, select_epochs
from mechgrok.analyses.modular.grid import model_p
from mechgrok.tasks.modular_arithmetic import grid_labels, grid_tokens
from mechgrok.errors import AnalysisError
from mechgrok.tasks.loss import per_example_loss
from mechgrok.analyses.modular.loss_gradient import LossGradient
from mechgrok.models.transformer import WEIGHT_NAMES, forward
from mechgrok.analyses.sgld import GradFn, chain_seeds, sgld_sample

__all__ = [
    "DEFAULTS",
    "default_nbeta",
    "estimate_llc",
    "sweep_llc",
    "recommend_settings",
    "TrainLoss",
    "llc_trajectory",
    "calibrate_llc",
]

#: Default SGLD settings for the paper's transformer on the training split (see docs/llc.md, "Choosing the
#: settings"; calibrated on fixtures/quick-run with :func:`calibrate_llc`). ``nbeta=None`` means
#: :func:`default_nbeta` of the number of rows per step.
DEFAULTS: dict[str, Any] = {
    "epsilon": 3e-4,
    "gamma": 100.0,
    "nbeta": None,
    "weight_decay": 0.0,
    "num_chains": 4,
    "num_burnin": 200,
    "num_draws": 200,
    "steps_between_draws": 1,
    "batch_size": None,
    "divergence_factor": 100.0,
}

_REFERENCE = "Lau, Furman, Wang, Murfet & Wei 2023, arXiv 2308.12108"
_ESTIMATOR = "llc = nbeta * (mean over draws of the step's batch loss - full-data loss at the checkpoint), per chain"


def default_nbeta(n: int) -> float:
    """The default inverse temperature ``n / ln n`` (Lau et al. 2023; devinterp's ``default_nbeta``).

    Parameters
    ----------
    n : int
        Rows that each step's mean loss is taken over: the training-set size for full-batch sampling, the batch
        size for minibatch sampling (as devinterp does since its PR #69; ``beyond.md`` 1.2).

    Raises
    ------
    AnalysisError
        If ``n < 2``.
    """
    if n < 2:
        raise AnalysisError(f"the default nbeta n/ln(n) needs n >= 2 rows per step, got {n}")
    return float(n / math.log(n))


# ---------------------------------------------------------------------------------------------------------------
# Summaries of chains
# ---------------------------------------------------------------------------------------------------------------
def _summarize_group(
    losses: np.ndarray,
    draw_steps: np.ndarray,
    init_loss: np.ndarray,
    nbeta: np.ndarray,
    dead_at: np.ndarray,
    distance: np.ndarray,
    *,
    divergence_factor: float,
) -> dict[str, np.ndarray]:
    """Per-chain and pooled statistics of one group of chains that share their settings and centre."""
    # diverged chains overflow and produce all-NaN slices: the inf/NaN they give is the intended answer
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return _summarize_group_unguarded(losses, draw_steps, init_loss, nbeta, dead_at, distance,
                                          divergence_factor=divergence_factor)


def _summarize_group_unguarded(losses, draw_steps, init_loss, nbeta, dead_at, distance, *, divergence_factor):
    draws = losses[:, draw_steps]
    n_draws = draws.shape[1]
    excess = nbeta[:, None] * (losses - init_loss[:, None])  # LLC units, every step (burn-in included)
    excess_draws = excess[:, draw_steps]
    finite = np.isfinite(losses).all(axis=1) & (dead_at < 0)
    # typical excess of the calmest chain: a blown-up chain cannot raise its own threshold
    ref = float(np.median(excess_draws[finite], axis=1).min()) if finite.any() else 1.0
    ref = max(ref, 1.0)
    blown = np.array([bool(finite[c] and np.max(excess[c]) > divergence_factor * ref) for c in range(len(finite))])
    diverged = ~finite | blown
    q = max(1, n_draws // 4)
    llc_chain = nbeta * (draws.mean(axis=1) - init_loss)
    loss_first = draws[:, :q].mean(axis=1)
    loss_last = draws[:, -q:].mean(axis=1)
    below = np.where(np.isfinite(draws).all(axis=1), (draws < init_loss[:, None]).mean(axis=1), np.nan)
    dist = np.nanmean(distance, axis=1) if distance.size else np.full(len(finite), np.nan)
    ok = ~diverged
    n_ok = int(ok.sum())
    llc_mean = float(llc_chain[ok].mean()) if n_ok else np.nan
    llc_std = float(llc_chain[ok].std(ddof=1)) if n_ok > 1 else np.nan
    return {
        "llc_mean": np.float64(llc_mean),
        "llc_std": np.float64(llc_std),
        "n_diverged": np.int64(len(ok) - n_ok),
        "frac_below_init": np.float64(below[ok].mean() if n_ok else np.nan),
        "llc_drift": np.float64((nbeta[ok] * (loss_last[ok] - loss_first[ok])).mean() if n_ok else np.nan),
        "init_loss": np.float64(init_loss.mean()),
        "llc_chain": llc_chain,
        "diverged": diverged,
        "dead_at": dead_at.astype(np.int64),
        "frac_below_init_chain": below,
        "loss_mean_chain": draws.mean(axis=1),
        "loss_first_chain": loss_first,
        "loss_last_chain": loss_last,
        "distance_chain": dist,
        "loss_trace": draws,
    }


_SCALARS = ("llc_mean", "llc_std", "n_diverged", "frac_below_init", "llc_drift", "init_loss")
_PER_CHAIN = ("llc_chain", "diverged", "dead_at", "frac_below_init_chain", "loss_mean_chain", "loss_first_chain",
              "loss_last_chain", "distance_chain")
_VAR_ATTRS: dict[str, dict[str, str]] = {
    "llc_mean": {"long_name": "local learning coefficient, mean over non-diverged chains", "units": "1"},
    "llc_std": {"long_name": "standard deviation (ddof=1) of the per-chain LLC over non-diverged chains", "units": "1"},
    "n_diverged": {"long_name": "chains that diverged (NaN/Inf or a loss blow-up); left out of llc_mean/llc_std"},
    "frac_below_init": {"long_name": "fraction of draws whose loss is below the loss at the checkpoint (non-diverged chains)",
                        "units": "fraction"},
    "llc_drift": {"long_name": "nbeta * (mean loss over the last quarter of draws - over the first quarter), "
                  "mean over non-diverged chains; near 0 for a flat trace", "units": "1"},
    "init_loss": {"long_name": "full-data loss at the checkpoint L(w*)", "units": "nats"},
    "llc_chain": {"long_name": "per-chain LLC nbeta * (mean draw loss - L(w*))", "units": "1"},
    "diverged": {"long_name": "chain diverged (NaN/Inf loss, or a loss blow-up)"},
    "dead_at": {"long_name": "first step with a non-finite loss, -1 if none", "units": "steps"},
    "frac_below_init_chain": {"long_name": "per-chain fraction of draws below L(w*)", "units": "fraction"},
    "loss_mean_chain": {"long_name": "mean loss over the draws", "units": "nats"},
    "loss_first_chain": {"long_name": "mean loss over the first quarter of the draws", "units": "nats"},
    "loss_last_chain": {"long_name": "mean loss over the last quarter of the draws", "units": "nats"},
    "distance_chain": {"long_name": "mean Euclidean distance ||w - w*|| over the draws (all sampled weights)"},
    "loss_trace": {"long_name": "loss of the step's batch at each draw", "units": "nats"},
}


def _group_dataset(stats: Mapping[str, np.ndarray], *, keep_trace: bool) -> xr.Dataset:
    data: dict[str, Any] = {}
    for k in _SCALARS:
        data[k] = ((), stats[k], _VAR_ATTRS[k])
    for k in _PER_CHAIN:
        data[k] = (("chain",), np.asarray(stats[k]), _VAR_ATTRS[k])
    if keep_trace:
        data["loss_trace"] = (("chain", "draw"), np.asarray(stats["loss_trace"]), _VAR_ATTRS["loss_trace"])
    n_chain = len(stats["llc_chain"])
    coords = {"chain": np.arange(n_chain)}
    if keep_trace:
        coords["draw"] = np.arange(np.asarray(stats["loss_trace"]).shape[1])
    return xr.Dataset(data, coords=coords)


def _settings_attrs(**settings: Any) -> dict[str, Any]:
    """Settings as Zarr-safe attrs (no None)."""
    out: dict[str, Any] = {}
    for k, v in settings.items():
        if v is None:
            continue
        if isinstance(v, (np.floating, np.integer)):
            v = v.item()
        out[k] = v
    return out


def _check_counts(num_chains: int, num_burnin: int, num_draws: int, steps_between_draws: int) -> None:
    for label, value, low in (("num_chains", num_chains, 1), ("num_burnin", num_burnin, 0),
                              ("num_draws", num_draws, 1), ("steps_between_draws", steps_between_draws, 1)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise AnalysisError(f"{label} must be an integer >= {low}, got {value!r}")


def _replicate(params: Mapping[str, torch.Tensor], n: int) -> dict[str, torch.Tensor]:
    return {k: v.detach().unsqueeze(0).expand(n, *v.shape).clone() for k, v in params.items()}


# ---------------------------------------------------------------------------------------------------------------
# Generic estimator
# ---------------------------------------------------------------------------------------------------------------
def estimate_llc(
    loss_fn: Callable[[Mapping[str, torch.Tensor], Any], torch.Tensor],
    params: Mapping[str, torch.Tensor],
    *,
    epsilon: float | Sequence[float],
    nbeta: float | Sequence[float],
    gamma: float = 100.0,
    weight_decay: float = 0.0,
    num_chains: int = 4,
    num_burnin: int = 100,
    num_draws: int = 200,
    steps_between_draws: int = 1,
    seed: int = 0,
    batch_fn: Callable[[Sequence[torch.Generator]], Any] | None = None,
    init_loss: float | None = None,
    divergence_factor: float = 100.0,
    keep_trace: bool = False,
    grad_fn: GradFn | None = None,
) -> xr.Dataset:
    """Estimate the LLC of any model at ``params`` by localised SGLD (Lau et al. 2023; ``beyond.md`` 1.2).

    Parameters
    ----------
    loss_fn : callable
        ``loss_fn(params, batch) -> (chain,) float64`` mean loss per chain (nats for a log-likelihood), where
        ``params`` maps each name to a (chain, ...) tensor; ``batch`` is None for the full data set, else what
        ``batch_fn`` returned. See :func:`mechgrok.analyses.sgld.sgld_sample`.
    params : mapping of str to torch.Tensor
        The point ``w*`` (no chain dim), ideally a local minimum of the loss.
    epsilon : float or sequence of float
        SGLD step size; one value, or one per chain.
    nbeta : float or sequence of float
        Inverse temperature ``n * beta``; one value, or one per chain. Lau et al. use ``n / ln n``
        (:func:`default_nbeta`).
    gamma : float
        Localisation strength.
    weight_decay : float
        Extra ``weight_decay * w`` drift, for points that minimise ``L + (weight_decay / (2 nbeta)) ||w||^2`` rather
        than ``L`` (``beyond.md`` 1.7).
    num_chains, num_burnin, num_draws, steps_between_draws : int
        Chains; steps before the first draw; draws per chain; steps per draw.
    seed : int
        Chain ``c`` draws its noise from :func:`mechgrok.analyses.sgld.chain_seeds` ``(seed)[c]``.
    batch_fn : callable, optional
        Minibatch sampler ``batch_fn(generators) -> batch``; None samples with the full data set.
    init_loss : float, optional
        ``L(w*)``; computed on the full data set when omitted.
    divergence_factor : float
        A chain has blown up when ``nbeta * (L_t - L(w*))`` at any step exceeds this factor times
        ``max(1, the smallest per-chain median over the draws)``; it is then reported as diverged.
    keep_trace : bool
        Also return ``loss_trace`` (chain, draw).
    grad_fn : callable, optional
        The loss with a gradient computed without autograd (:func:`mechgrok.analyses.sgld.sgld_sample`); by default
        autograd through ``loss_fn``.

    Returns
    -------
    xarray.Dataset
        Scalars ``llc_mean``, ``llc_std`` (over non-diverged chains), ``n_diverged``, ``frac_below_init``,
        ``llc_drift``, ``init_loss``; per chain (dim ``chain``) ``llc_chain``, ``diverged``, ``dead_at``,
        ``frac_below_init_chain``, ``loss_mean_chain``, ``loss_first_chain``, ``loss_last_chain``,
        ``distance_chain``; ``loss_trace`` (chain, draw) with ``keep_trace``. Settings in ``attrs``.

    Raises
    ------
    AnalysisError
        On invalid settings or a ``loss_fn`` with the wrong output shape.
    """
    _check_counts(num_chains, num_burnin, num_draws, steps_between_draws)
    center = _replicate(params, num_chains)
    res = sgld_sample(
        loss_fn, center, epsilon=epsilon, nbeta=nbeta, gamma=gamma, weight_decay=weight_decay,
        num_burnin=num_burnin, num_draws=num_draws, steps_between_draws=steps_between_draws,
        seeds=chain_seeds(seed, num_chains=num_chains), batch_fn=batch_fn,
        init_loss=None if init_loss is None else np.full(num_chains, float(init_loss)), grad_fn=grad_fn,
    )
    stats = _summarize_group(res.losses, res.draw_steps, res.init_loss, res.nbeta, res.dead_at, res.distance,
                             divergence_factor=divergence_factor)
    out = _group_dataset(stats, keep_trace=keep_trace)
    out.attrs = _settings_attrs(
        title="local learning coefficient (SGLD)",
        estimator=_ESTIMATOR,
        reference=_REFERENCE,
        epsilon=json.dumps(res.epsilon.tolist()) if np.ptp(res.epsilon) else float(res.epsilon[0]),
        nbeta=json.dumps(res.nbeta.tolist()) if np.ptp(res.nbeta) else float(res.nbeta[0]),
        gamma=float(gamma), weight_decay=float(weight_decay), num_chains=int(num_chains),
        num_burnin=int(num_burnin), num_draws=int(num_draws), steps_between_draws=int(steps_between_draws),
        seed=int(seed), full_batch=batch_fn is None, divergence_factor=float(divergence_factor),
        n_params=int(res.n_params),
    )
    return out


def sweep_llc(
    loss_fn: Callable[[Mapping[str, torch.Tensor], Any], torch.Tensor],
    params: Mapping[str, torch.Tensor],
    *,
    epsilons: Sequence[float],
    nbetas: Sequence[float],
    gamma: float = 100.0,
    weight_decay: float = 0.0,
    num_chains: int = 2,
    num_burnin: int = 100,
    num_draws: int = 200,
    steps_between_draws: int = 1,
    seed: int = 0,
    batch_fn: Callable[[Sequence[torch.Generator]], Any] | None = None,
    divergence_factor: float = 100.0,
    keep_trace: bool = True,
    seed_keys: Sequence[int] = (),
    grad_fn: GradFn | None = None,
) -> xr.Dataset:
    """LLC estimates over an epsilon x nbeta grid at one point, all cells as one batched SGLD run.

    Every cell runs ``num_chains`` chains; the ``len(epsilons) * len(nbetas) * num_chains`` chains are one
    batched computation with per-chain step size and temperature (``beyond.md`` 1.3-1.4, devinterp's
    ``EpsilonBetaAnalyzer``).

    Parameters
    ----------
    loss_fn, params, gamma, weight_decay, num_burnin, num_draws, steps_between_draws, batch_fn, divergence_factor, grad_fn
        As for :func:`estimate_llc`.
    epsilons : sequence of float
        Step sizes (> 0), the ``epsilon`` dim.
    nbetas : sequence of float
        Inverse temperatures (> 0), the ``nbeta`` dim.
    num_chains : int
        Chains per cell.
    seed : int
        Chain seeds are ``chain_seeds(seed, *seed_keys)`` over all cells (cell-major).
    keep_trace : bool
        Keep ``loss_trace`` (epsilon, nbeta, chain, draw).
    seed_keys : sequence of int
        Extra keys for the seeds (e.g. the checkpoint's epoch).

    Returns
    -------
    xarray.Dataset
        The variables of :func:`estimate_llc` with leading dims (epsilon, nbeta), plus ``llc_over_nbeta``
        (epsilon, nbeta) = ``llc_mean / nbeta`` (the mean excess loss, nats), and the verdict of
        :func:`recommend_settings` (``healthy``, ``stable`` and the ``recommended_*`` attrs).

    Raises
    ------
    AnalysisError
        On empty or non-positive grids or invalid settings.
    """
    eps_grid = np.asarray(list(epsilons), dtype=np.float64)
    nb_grid = np.asarray(list(nbetas), dtype=np.float64)
    if eps_grid.size == 0 or nb_grid.size == 0 or (eps_grid <= 0).any() or (nb_grid <= 0).any():
        raise AnalysisError(f"epsilons and nbetas must be non-empty and positive, got {eps_grid.tolist()}, {nb_grid.tolist()}")
    if len(set(eps_grid.tolist())) != eps_grid.size or len(set(nb_grid.tolist())) != nb_grid.size:
        raise AnalysisError("epsilons and nbetas must not repeat values")
    _check_counts(num_chains, num_burnin, num_draws, steps_between_draws)
    n_e, n_b = eps_grid.size, nb_grid.size
    n_cells = n_e * n_b
    total = n_cells * num_chains
    eps_chain = np.repeat(np.repeat(eps_grid, n_b), num_chains)
    nb_chain = np.repeat(np.tile(nb_grid, n_e), num_chains)
    center = _replicate(params, total)
    res = sgld_sample(
        loss_fn, center, epsilon=eps_chain, nbeta=nb_chain, gamma=gamma, weight_decay=weight_decay,
        num_burnin=num_burnin, num_draws=num_draws, steps_between_draws=steps_between_draws,
        seeds=chain_seeds(seed, *seed_keys, num_chains=total), batch_fn=batch_fn, grad_fn=grad_fn,
    )
    cells = []
    for cell in range(n_cells):
        sl = slice(cell * num_chains, (cell + 1) * num_chains)
        stats = _summarize_group(res.losses[sl], res.draw_steps, res.init_loss[sl], res.nbeta[sl], res.dead_at[sl],
                                 res.distance[sl], divergence_factor=divergence_factor)
        cells.append(_group_dataset(stats, keep_trace=keep_trace))
    grid = xr.concat(cells, dim="cell", data_vars="all", coords="minimal", compat="override", join="override")
    grid = grid.assign_coords(cell=np.arange(n_cells))
    out = xr.Dataset(
        {name: (("epsilon", "nbeta", *grid[name].dims[1:]),
                grid[name].values.reshape(n_e, n_b, *grid[name].shape[1:]), grid[name].attrs)
         for name in grid.data_vars},
        coords={"epsilon": ("epsilon", eps_grid, {"long_name": "SGLD step size"}),
                "nbeta": ("nbeta", nb_grid, {"long_name": "inverse temperature n*beta"}),
                **{c: grid[c] for c in ("chain", "draw") if c in grid.coords}},
    )
    out["llc_over_nbeta"] = out["llc_mean"] / out["nbeta"]
    out["llc_over_nbeta"].attrs = {"long_name": "llc_mean / nbeta: mean excess loss of the draws", "units": "nats"}
    out.attrs = _settings_attrs(
        title="LLC calibration sweep (epsilon x nbeta)",
        estimator=_ESTIMATOR, reference=_REFERENCE, gamma=float(gamma), weight_decay=float(weight_decay),
        num_chains=int(num_chains), num_burnin=int(num_burnin), num_draws=int(num_draws),
        steps_between_draws=int(steps_between_draws), seed=int(seed), full_batch=batch_fn is None,
        divergence_factor=float(divergence_factor), n_params=int(res.n_params),
    )
    return recommend_settings(out)


def recommend_settings(
    sweep: xr.Dataset,
    *,
    max_frac_below: float = 0.1,
    drift_tol: float = 0.1,
    stability_tol: float = 0.2,
    target_nbeta: float | None = None,
) -> xr.Dataset:
    """Judge each cell of an epsilon x nbeta sweep and recommend one (``beyond.md`` 1.4).

    A cell is **healthy** when no chain diverged, the LLC is positive, at most ``max_frac_below`` of the draws
    lie below the starting loss, and the trace is flat: ``|llc_drift| <= max(drift_tol * llc_mean, 2 * llc_std)``.
    It is **stable** when it is healthy and so is the cell with the next smaller epsilon at the same nbeta, and
    their LLCs agree within ``max(stability_tol * llc_mean, 2 * sqrt(std_1^2 + std_2^2))`` (the estimate sits on
    the plateau in epsilon, so it is not a step-size artefact). The recommendation is a stable cell: the one
    with nbeta nearest ``target_nbeta`` on a log scale, then the smallest epsilon (every stable epsilon sits on
    the plateau; the smallest has the least step-size bias and the widest margin to divergence at the other
    checkpoints of the trajectory). If no cell is stable, the same rule over healthy cells, never one whose
    estimate disagrees with a healthy smaller-epsilon cell (the message then says the plateau is unconfirmed:
    sweep smaller epsilons or draw longer); if none qualifies, nothing.

    Parameters
    ----------
    sweep : xarray.Dataset
        Output of :func:`sweep_llc` / :func:`calibrate_llc` (dims epsilon, nbeta).
    max_frac_below, drift_tol, stability_tol : float
        Thresholds above.
    target_nbeta : float, optional
        Preferred nbeta; default ``attrs["default_nbeta"]`` when present, else the geometric middle of the grid.

    Returns
    -------
    xarray.Dataset
        ``sweep`` with ``healthy`` and ``stable`` (epsilon, nbeta) and attrs ``recommended_epsilon``,
        ``recommended_nbeta``, ``recommended_llc`` (NaN when nothing qualifies), ``recommendation`` (a sentence)
        and ``recommendation_rule``.

    Raises
    ------
    AnalysisError
        If ``sweep`` lacks the epsilon/nbeta dims or the LLC variables.
    """
    for name in ("llc_mean", "llc_std", "n_diverged", "frac_below_init", "llc_drift"):
        if name not in sweep or sweep[name].dims != ("epsilon", "nbeta"):
            raise AnalysisError(f"not an epsilon x nbeta sweep: variable {name!r} (epsilon, nbeta) is missing")
    m, s = sweep["llc_mean"].values, sweep["llc_std"].values
    s0 = np.nan_to_num(s, nan=0.0)
    with np.errstate(invalid="ignore"):
        healthy = ((sweep["n_diverged"].values == 0) & (m > 0) & (sweep["frac_below_init"].values <= max_frac_below)
                   & (np.abs(sweep["llc_drift"].values) <= np.maximum(drift_tol * m, 2 * s0)))
    healthy &= np.isfinite(m)
    eps = sweep["epsilon"].values
    nbs = sweep["nbeta"].values
    order = np.argsort(eps)
    stable = np.zeros_like(healthy)
    biased = np.zeros_like(healthy)  # healthy, but moves away from a healthy smaller-epsilon estimate
    for j in range(len(nbs)):
        for a, b in zip(order[1:], order[:-1]):  # a: larger epsilon, b: the next smaller one
            if healthy[a, j] and healthy[b, j]:
                tol = max(stability_tol * m[a, j], 2 * math.hypot(s0[a, j], s0[b, j]))
                stable[a, j] = abs(m[a, j] - m[b, j]) <= tol
                biased[a, j] = not stable[a, j]
    if target_nbeta is None:
        target_nbeta = float(sweep.attrs.get("default_nbeta", math.exp(np.mean(np.log(nbs)))))
    out = sweep.copy()
    out["healthy"] = (("epsilon", "nbeta"), healthy, {"long_name": "no divergence, LLC > 0, few draws below L(w*), flat trace"})
    out["stable"] = (("epsilon", "nbeta"), stable, {"long_name": "healthy and agrees with the next smaller epsilon"})
    pick = None
    # nbeta nearest the target first (keep the theory's temperature when it works), then the smallest epsilon
    # (least step-size bias and the widest margin to divergence at other checkpoints)
    for mask, kind in ((stable, "stable"), (healthy & ~biased, "healthy but not confirmed by a smaller epsilon")):
        if mask.any():
            cand = np.argwhere(mask)
            key = [(round(abs(math.log(nbs[j] / target_nbeta)), 9), eps[i]) for i, j in cand]
            i, j = cand[min(range(len(cand)), key=lambda q: key[q])]
            pick = (int(i), int(j), kind)
            break
    rule = (f"healthy: n_diverged == 0, llc_mean > 0, frac_below_init <= {max_frac_below}, "
            f"|llc_drift| <= max({drift_tol} * llc_mean, 2 * llc_std); stable: healthy and within "
            f"max({stability_tol} * llc_mean, 2 * combined std) of the healthy next smaller epsilon; pick a stable "
            f"cell (else a healthy one that no healthy smaller-epsilon cell contradicts) with nbeta nearest "
            f"{target_nbeta:.4g}, then the smallest epsilon")
    attrs = dict(out.attrs, recommendation_rule=rule)
    if pick is None:
        attrs.update(recommended_epsilon=float("nan"), recommended_nbeta=float("nan"), recommended_llc=float("nan"),
                     recommendation="no cell qualifies: draw longer (burn-in), lower epsilon, raise gamma, or add "
                                    "weight_decay, and re-sweep")
    else:
        i, j, kind = pick
        attrs.update(recommended_epsilon=float(eps[i]), recommended_nbeta=float(nbs[j]),
                     recommended_llc=float(m[i, j]),
                     recommendation=f"epsilon={eps[i]:.3g}, nbeta={nbs[j]:.4g} ({kind} cell; LLC {m[i, j]:.4g} "
                                    f"+/- {s0[i, j]:.2g})")
    out.attrs = attrs
    return out


# ---------------------------------------------------------------------------------------------------------------
# The paper's transformer on the training split
# ---------------------------------------------------------------------------------------------------------------
class TrainLoss:
    """Batched training loss of the paper's model: ``loss_fn(params, batch) -> (chain,) float64``.

    The float64 cross-entropy of the final-position logits over all ``d_vocab_out`` classes, averaged over the
    rows, exactly as :func:`mechgrok.train.train` computes it (``paper.md`` 2.1, 2.3). :meth:`gradient` is the
    ``grad_fn`` of :func:`mechgrok.analyses.sgld.sgld_sample`.

    Parameters
    ----------
    tokens : torch.Tensor
        int64, (n, 3): the training inputs ``[a, b, =]``.
    labels : torch.Tensor
        int64, (n,).
    batch_size : int, optional
        Rows per minibatch; None for full-batch sampling.
    gradient : {"manual", "autograd"}
        How :meth:`gradient` computes the gradient: ``"manual"`` (default) with
        :class:`mechgrok.analyses.modular.loss_gradient.LossGradient` (per-token tables and a hand-written backward pass, about
        twice as fast), ``"autograd"`` by autograd through :func:`mechgrok.models.transformer.forward`. Both give the same
        numbers up to float rounding.

    Raises
    ------
    AnalysisError
        If ``batch_size`` is not between 1 and the number of rows, ``gradient`` is unknown, or (manual) the rows
        are not ``[a, b, =]`` with one ``=`` token.

    Notes
    -----
    With minibatches each chain draws its own batch each step (see :meth:`batches`): ``batch`` is an int64
    (chain, batch_size) index tensor.
    """

    def __init__(self, tokens: torch.Tensor, labels: torch.Tensor, *, batch_size: int | None = None,
                 gradient: str = "manual"):
        n = int(tokens.shape[0])
        if batch_size is not None and not (isinstance(batch_size, (int, np.integer)) and 1 <= batch_size <= n):
            raise AnalysisError(f"batch_size must be an integer between 1 and the {n} training rows, got {batch_size!r}")
        if gradient not in ("manual", "autograd"):
            raise AnalysisError(f"gradient must be 'manual' or 'autograd', got {gradient!r}")
        self.tokens, self.labels = tokens, labels
        self.n = n
        self.batch_size = None if batch_size is None else int(batch_size)
        self.manual = LossGradient(tokens, labels) if gradient == "manual" else None

    @property
    def rows_per_step(self) -> int:
        """Rows each step's mean loss is taken over."""
        return self.n if self.batch_size is None else self.batch_size

    def to(self, device: torch.device | str) -> TrainLoss:
        """Move the rows to ``device`` (in place); returns self."""
        self.tokens, self.labels = self.tokens.to(device), self.labels.to(device)
        if self.manual is not None:
            self.manual.to(device)
        return self

    def batches(self) -> Callable[[Sequence[torch.Generator]], torch.Tensor] | None:
        """A fresh minibatch sampler for one SGLD run (None for full batch).

        Each call of the sampler returns the next int64 (chain, batch_size) row indices: chain ``c`` walks through
        its own random permutation of the rows (drawn from ``generators[c]``), a new one per pass, dropping the
        remainder of a pass.
        """
        if self.batch_size is None:
            return None
        n, m, device = self.n, self.batch_size, self.tokens.device
        state: dict[str, Any] = {"perm": None, "pos": 0}

        def batch_fn(generators: Sequence[torch.Generator]) -> torch.Tensor:
            perm = state["perm"]
            if perm is None or perm.shape[0] != len(generators) or state["pos"] + m > n:
                perm = torch.stack([torch.randperm(n, generator=g, device=g.device).to(device) for g in generators])
                state["perm"], state["pos"] = perm, 0
            idx = perm[:, state["pos"]:state["pos"] + m]
            state["pos"] += m
            return idx

        return batch_fn

    def __call__(self, params: Mapping[str, torch.Tensor], batch: torch.Tensor | None) -> torch.Tensor:
        """The mean loss per chain (nats), differentiable by autograd when ``params`` require gradients."""
        if self.manual is not None and not any(t.requires_grad for t in params.values()):
            return self.manual(params, None, batch)
        if batch is None:
            logits = forward(params, self.tokens).logits
        else:
            logits = torch.func.vmap(lambda p, t: forward(p, t).logits)(dict(params), self.tokens[batch])
        labels = self.labels if batch is None else self.labels[batch]
        return per_example_loss(logits, labels).mean(dim=-1)

    def gradient(self, params: Mapping[str, torch.Tensor], batch: torch.Tensor | None,
                 grads: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The mean loss per chain, with the gradient of its sum over chains written into ``grads``.

        ``grads`` holds tensors shaped like ``params`` (the ``grad_fn`` protocol of
        :func:`mechgrok.analyses.sgld.sgld_sample`).
        """
        if self.manual is not None:
            return self.manual(params, grads, batch)
        with torch.enable_grad():
            leaves = {k: v.detach().requires_grad_(True) for k, v in params.items()}
            loss = self(leaves, batch)
            for k, g in zip(leaves, torch.autograd.grad(loss.sum(), list(leaves.values()))):
                grads[k].copy_(g)
        return loss.detach()


def _train_loss_for(ds: xr.Dataset, *, batch_size: int | None, gradient: str) -> TrainLoss:
    p = model_p(ds)
    if "is_train" not in ds:
        raise AnalysisError("the trajectory has no training split (is_train); the LLC is measured on the training split")
    mask = np.asarray(ds["is_train"].values, dtype=bool)
    if mask.shape != (p, p) or not mask.any():
        raise AnalysisError(f"is_train must be a non-empty ({p}, {p}) mask, got shape {mask.shape}")
    try:
        operation = json.loads(ds.attrs.get("config_json", "{}")).get("operation", "add")
    except json.JSONDecodeError:
        operation = "add"
    idx = torch.from_numpy(np.flatnonzero(mask.ravel()))
    return TrainLoss(grid_tokens(p)[idx], grid_labels(p, operation)[idx], batch_size=batch_size, gradient=gradient)


def _select_checkpoints(ds: xr.Dataset, every: int, epochs: Sequence[int] | None) -> xr.Dataset:
    if "checkpoint" not in ds.dims:
        raise AnalysisError("the trajectory has no checkpoint dim")
    if epochs is not None:
        return select_epochs(ds, sorted({int(e) for e in epochs}))
    if isinstance(every, bool) or not isinstance(every, (int, np.integer)) or every < 1:
        raise AnalysisError(f"every must be a positive integer, got {every!r}")
    return ds.isel(checkpoint=slice(None, None, int(every)))


@dataclass
class _LLCKernel:
    """Engine kernel: one localised SGLD run (``num_chains`` chains) at a checkpoint; ``assemble`` stacks the
    per-checkpoint summaries of :func:`_summarize_group`."""

    fn: Callable[[Checkpoint], dict[str, np.ndarray]]
    keep_trace: bool
    name: str = "llc"
    weights: tuple[str, ...] | None = WEIGHT_NAMES
    needs: frozenset[str] = frozenset()

    def __call__(self, ck: Checkpoint) -> dict[str, np.ndarray]:
        return self.fn(ck)

    def assemble(self, values: dict[str, np.ndarray], checkpoint: xr.DataArray) -> xr.Dataset:
        n = len(checkpoint)
        parts = [_group_dataset({k: v[i] for k, v in values.items()}, keep_trace=self.keep_trace) for i in range(n)]
        return xr.concat(parts, dim="checkpoint", data_vars="all", coords="minimal", compat="override", join="override")


def llc_trajectory(
    ds: xr.Dataset,
    *,
    every: int = 1,
    epochs: Sequence[int] | None = None,
    epsilon: float = DEFAULTS["epsilon"],
    nbeta: float | None = DEFAULTS["nbeta"],
    gamma: float = DEFAULTS["gamma"],
    weight_decay: float = DEFAULTS["weight_decay"],
    num_chains: int = DEFAULTS["num_chains"],
    num_burnin: int = DEFAULTS["num_burnin"],
    num_draws: int = DEFAULTS["num_draws"],
    steps_between_draws: int = DEFAULTS["steps_between_draws"],
    batch_size: int | None = DEFAULTS["batch_size"],
    seed: int = 0,
    divergence_factor: float = DEFAULTS["divergence_factor"],
    keep_trace: bool = False,
    chunk: int = 1,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    gradient: str = "manual",
    progress: Callable[[int, int], None] | None = None,
) -> xr.Dataset:
    """The LLC of every (or every ``every``-th) checkpoint of a trajectory, on the training split.

    One localised SGLD run per checkpoint, started at and localised on the checkpoint's weights, with the same
    settings for all checkpoints so the curve is comparable (``beyond.md`` 1.7), checkpoint by checkpoint through
    :func:`mechgrok.engine.run`; the ``num_chains`` chains of a checkpoint run as one batched computation. Chain ``c`` of the checkpoint at epoch ``e`` is seeded
    from ``(seed, e, c)``, so a checkpoint's estimate does not depend on ``every``, ``epochs`` or ``chunk``.

    Parameters
    ----------
    ds : xarray.Dataset
        Canonical one-layer trajectory (``mechgrok.store.schema``) with ``attrs["p"]`` and ``is_train``.
    every : int
        Take checkpoints 0, every, 2*every, ... (positions along ``checkpoint``).
    epochs : sequence of int, optional
        Explicit checkpoint epochs instead of ``every``.
    epsilon : float
        SGLD step size.
    nbeta : float, optional
        Inverse temperature; default :func:`default_nbeta` of the rows per step (training-set size n for
        full batch, ``batch_size`` otherwise).
    gamma : float
        Localisation strength.
    weight_decay : float
        ``weight_decay * w`` drift (0 by default); see ``docs/llc.md`` on checkpoints trained with weight decay.
    num_chains, num_burnin, num_draws, steps_between_draws : int
        Chains per checkpoint; burn-in steps; draws per chain; steps per draw.
    batch_size : int, optional
        Minibatch rows per step; None (default) for full-batch SGLD.
    seed : int
        Base seed.
    divergence_factor : float
        Blow-up threshold, see :func:`estimate_llc`.
    keep_trace : bool
        Also return ``loss_trace`` (checkpoint, chain, draw).
    chunk : int
        Checkpoints whose weights are read at once (:func:`mechgrok.engine.run`); each checkpoint's chains run
        as one batched SGLD computation.
    dtype : torch.dtype
        dtype of the sampled weights (float32 as trained, or float64); the loss is float64 either way.
    device : str or torch.device
        Where to sample.
    gradient : {"manual", "autograd"}
        How the gradient is computed; see :class:`TrainLoss`.
    progress : callable, optional
        ``progress(done, total)`` after each chunk of checkpoints.

    Returns
    -------
    xarray.Dataset
        Over ``checkpoint`` (epochs; the selected checkpoints) and ``chain``: ``llc_mean``, ``llc_std``,
        ``n_diverged``, ``frac_below_init``, ``llc_drift``, ``init_loss`` (nats) per checkpoint; ``llc_chain``,
        ``diverged``, ``dead_at``, ``frac_below_init_chain``, ``loss_mean_chain``, ``loss_first_chain``,
        ``loss_last_chain``, ``distance_chain`` per checkpoint and chain; ``loss_trace`` with ``keep_trace``.
        ``attrs`` record every setting, the loss, the estimator and the divergence rule.

    Raises
    ------
    AnalysisError
        If the trajectory has no p, is multi-layer, lacks weights or the training split, or a setting is invalid.
    """
    _check_counts(num_chains, num_burnin, num_draws, steps_between_draws)
    if isinstance(chunk, bool) or not isinstance(chunk, (int, np.integer)) or chunk < 1:
        raise AnalysisError(f"chunk must be a positive integer, got {chunk!r}")
    for label, value in (("epsilon", epsilon), ("gamma", gamma), ("weight_decay", weight_decay)):
        if not (isinstance(value, (int, float, np.floating)) and math.isfinite(value)):
            raise AnalysisError(f"{label} must be a finite number, got {value!r}")
    if epsilon <= 0 or gamma < 0 or weight_decay < 0:
        raise AnalysisError(f"need epsilon > 0, gamma >= 0, weight_decay >= 0; got {epsilon}, {gamma}, {weight_decay}")
    sel = _select_checkpoints(ds, every, epochs)
    loss_fn = _train_loss_for(sel, batch_size=batch_size, gradient=gradient).to(device)
    nb = default_nbeta(loss_fn.rows_per_step) if nbeta is None else float(nbeta)
    if not (math.isfinite(nb) and nb > 0):
        raise AnalysisError(f"nbeta must be positive, got {nbeta!r}")
    missing = [n for n in WEIGHT_NAMES if n not in sel]
    if missing:
        raise AnalysisError(f"the trajectory lacks weights {missing}")

    epochs_sel = sel["checkpoint"].values.astype(np.int64)

    def one_checkpoint(ck: Checkpoint) -> dict[str, np.ndarray]:
        # chain c of the checkpoint at epoch e is seeded from (seed, e, c): independent of the selection and chunk
        center = {n: t.to(device=device, dtype=dtype).repeat_interleave(num_chains, dim=0) for n, t in ck.weights.items()}
        res = sgld_sample(
            loss_fn, center, epsilon=epsilon, nbeta=nb, gamma=gamma, weight_decay=weight_decay,
            num_burnin=num_burnin, num_draws=num_draws, steps_between_draws=steps_between_draws,
            seeds=chain_seeds(seed, ck.epoch, num_chains=num_chains), batch_fn=loss_fn.batches(),
            grad_fn=loss_fn.gradient,
        )
        return _summarize_group(res.losses, res.draw_steps, res.init_loss, res.nbeta, res.dead_at, res.distance,
                                divergence_factor=divergence_factor)

    kernel = _LLCKernel(one_checkpoint, keep_trace=keep_trace)
    report = None if progress is None else (lambda stage, done, total: progress(done, total))
    out = run(sel, [kernel], chunk=chunk, device="cpu", progress=report, stage="LLC")["llc"]
    out = out.assign_coords(checkpoint=("checkpoint", epochs_sel, {"units": "epochs", "long_name": "epoch of checkpoint"}))
    for name in out.data_vars:
        out[name].attrs = _VAR_ATTRS[name]
    out.attrs = _settings_attrs(
        title="local learning coefficient (SGLD) over checkpoints",
        description="LLC of each checkpoint on the training split",
        estimator=_ESTIMATOR,
        loss="float64 cross-entropy of the final-position logits over all d_vocab_out = p + 1 classes, mean over "
             "the training pairs (the trainer's loss)",
        divergence_rule=f"non-finite loss, or nbeta * (L_t - L(w*)) at any step > {divergence_factor} x "
                        "max(1, smallest per-chain median over the draws); diverged chains are left out of "
                        "llc_mean/llc_std and counted in n_diverged",
        reference=_REFERENCE,
        epsilon=float(epsilon), nbeta=float(nb), nbeta_rule="given" if nbeta is not None else "n/ln(n) of the rows per step",
        gamma=float(gamma), weight_decay=float(weight_decay), num_chains=int(num_chains), num_burnin=int(num_burnin),
        num_draws=int(num_draws), steps_between_draws=int(steps_between_draws),
        batch_size=int(loss_fn.rows_per_step), full_batch=batch_size is None, n_train=int(loss_fn.n),
        seed=int(seed), divergence_factor=float(divergence_factor), dtype=str(dtype).replace("torch.", ""),
        every=int(every) if epochs is None else 0,
    )
    return out


def calibrate_llc(
    ds: xr.Dataset,
    *,
    epoch: int | None = None,
    epsilons: Sequence[float] = (1e-5, 3e-5, 1e-4, 3e-4, 1e-3),
    nbetas: Sequence[float] | None = None,
    gamma: float = DEFAULTS["gamma"],
    weight_decay: float = DEFAULTS["weight_decay"],
    num_chains: int = 2,
    num_burnin: int = DEFAULTS["num_burnin"],
    num_draws: int = DEFAULTS["num_draws"],
    steps_between_draws: int = 1,
    batch_size: int | None = None,
    seed: int = 0,
    divergence_factor: float = DEFAULTS["divergence_factor"],
    keep_trace: bool = True,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    gradient: str = "manual",
    max_frac_below: float = 0.1,
    drift_tol: float = 0.1,
    stability_tol: float = 0.2,
) -> xr.Dataset:
    """Sweep epsilon x nbeta on one checkpoint and recommend SGLD settings (``beyond.md`` 1.4).

    All ``len(epsilons) * len(nbetas) * num_chains`` chains run as one batched computation. Keep the chosen
    settings for the whole trajectory; a late (grokked) checkpoint is the hardest case (sharpest minimum), so
    calibrate there (the default).

    Parameters
    ----------
    ds : xarray.Dataset
        Canonical trajectory (as for :func:`llc_trajectory`).
    epoch : int, optional
        The checkpoint's epoch; default the last checkpoint.
    epsilons : sequence of float
        Step sizes to try.
    nbetas : sequence of float, optional
        Inverse temperatures to try; default ``default_nbeta * (0.25, 1, 4)``.
    gamma, weight_decay, num_chains, num_burnin, num_draws, steps_between_draws, batch_size, seed,
    divergence_factor, dtype, device, gradient
        As for :func:`llc_trajectory` (``num_chains`` per cell).
    keep_trace : bool
        Keep ``loss_trace`` (epsilon, nbeta, chain, draw) for plotting.
    max_frac_below, drift_tol, stability_tol : float
        Passed to :func:`recommend_settings`.

    Returns
    -------
    xarray.Dataset
        The :func:`sweep_llc` grid with ``healthy``/``stable`` and the ``recommended_epsilon``,
        ``recommended_nbeta``, ``recommended_llc``, ``recommendation`` attrs; ``attrs["epoch"]`` and
        ``attrs["default_nbeta"]``.

    Raises
    ------
    AnalysisError
        If the epoch is not a checkpoint, or as for :func:`llc_trajectory`.
    """
    if "checkpoint" not in ds.dims:
        raise AnalysisError("the trajectory has no checkpoint dim")
    if epoch is None:
        epoch = int(ds["checkpoint"].values[-1])
    sel = _select_checkpoints(ds, 1, [int(epoch)])
    loss_fn = _train_loss_for(sel, batch_size=batch_size, gradient=gradient).to(device)
    nb0 = default_nbeta(loss_fn.rows_per_step)
    if nbetas is None:
        nbetas = (nb0 / 4, nb0, nb0 * 4)
    params = {n: t[0].to(device) for n, t in checkpoint_weights(sel, dtype=dtype).items()}
    sweep = sweep_llc(
        loss_fn, params, epsilons=epsilons, nbetas=nbetas, gamma=gamma, weight_decay=weight_decay,
        num_chains=num_chains, num_burnin=num_burnin, num_draws=num_draws, steps_between_draws=steps_between_draws,
        seed=seed, batch_fn=loss_fn.batches(), grad_fn=loss_fn.gradient,
        divergence_factor=divergence_factor, keep_trace=keep_trace, seed_keys=(int(epoch),),
    )
    sweep.attrs.update(epoch=int(epoch), default_nbeta=float(nb0), batch_size=int(loss_fn.rows_per_step),
                       n_train=int(loss_fn.n), title="LLC calibration sweep (epsilon x nbeta) on one checkpoint")
    return recommend_settings(sweep, max_frac_below=max_frac_below, drift_tol=drift_tol, stability_tol=stability_tol)
