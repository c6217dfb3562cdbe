"""Every progress measure of a trajectory in one pass over its checkpoints (Nanda et al. 2023, section 5.1, Fig. 7).

The paper's notebook (paper.md 3.13) loads each of ~400 checkpoints and runs one full forward pass over the p x p
grid *per metric*, and its cosine cube alone is 323 MB. :func:`progress_measures` computes the whole suite with

* **one forward pass per checkpoint**: :func:`mechgrok.model.grid_forward`, which evaluates the model on the grid
  from per-token tables, so the only full-size product is the neuron-to-logit one (about 3 times fewer FLOPs
  than the model's own forward pass at the paper's widths), in row blocks that stay in cache;
* **every loss measure derived from those logits** (:func:`mechgrok.ablation._measures`): the model's loss and
  accuracy, the restricted loss from group sums over the residues s = a + b (p x p work per checkpoint, not
  p^2 x p), the excluded losses of all variants from one batched matrix product, no (freq, p^2, p) cube;
* **the weight-only measures from the same chunk of weights**: Fourier norms of ``W_E`` and ``W_logit``, their Gini
  coefficients, sums of squared weights.

Precision: the forward pass runs in float64 (the tables, the MLP activations and the logits). A float32 pass is
twice as fast but its logits carry relative errors of ~1e-7 times their size, which at the large logits of a
grokked model (|L| ~ 250 at the end of the benchmark trajectory) move tiny losses by more than 1e-6 relative;
all losses are float64 (paper.md 2.3). Memory does not grow with the number of checkpoints: weights are read
``chunk`` checkpoints at a time and the work memory (about 60 MB at p = 113) is reused from one checkpoint to the
next.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
import xarray as xr

from mechgrok.ablation import _base_attrs, _Plan, _to_dataset, _trim_heap, prepare_trajectory
from mechgrok.activations import checkpoint_weights, iter_checkpoint_chunks
from mechgrok.errors import AnalysisError
from mechgrok.fourier import fourier_basis
from mechgrok.fourier_norms import _component_norms, _norms_dataset
from mechgrok.measures import _gini_vars
from mechgrok.model import WEIGHT_NAMES, grid_forward

__all__ = ["progress_measures"]

#: The logits' matrix product is computed with a multiple of this many columns (see :func:`progress_measures`).
_GEMM_COLUMNS = 24


def progress_measures(
    ds: xr.Dataset,
    *,
    key_freqs: Sequence[int],
    checkpoints: slice | list | None = None,
    chunk: int = 16,
    all_freqs: bool = False,
    block3x3: bool = False,
    reference_checkpoint: int | None = None,
    key_freq_rule: str | None = None,
    workers: int = 1,
) -> xr.Dataset:
    """The paper's progress measures at every checkpoint, from one float64 forward pass per checkpoint.

    Paper section 5.1 and Fig. 7 (paper.md 3.7-3.10, 3.13). The values equal those of
    :func:`mechgrok.ablation.ablation_losses` (losses), :func:`mechgrok.measures.weight_measures` and
    :func:`mechgrok.fourier_norms.fourier_norms`: every one of them runs the same float64 forward pass
    (:func:`mechgrok.model.grid_forward`), so the losses agree to rounding (~1e-12 relative).

    Parameters
    ----------
    ds : xarray.Dataset
        Canonical one-layer trajectory (:mod:`mechgrok.store`) with ``attrs["p"]`` (odd), ``is_train`` (a, b)
        and every weight.
    key_freqs : sequence of int
        The key frequencies K (1..(p-1)/2), fixed for every checkpoint (usually found at a reference checkpoint
        by :mod:`mechgrok.key_frequencies`).
    checkpoints : slice or list, optional
        ``isel`` selection along ``checkpoint``; default all.
    chunk : int
        Checkpoints whose weights are read at once (memory: about 1 MB each at the paper's widths, plus about
        60 MB per worker at p = 113, independent of the number of checkpoints).
    all_freqs : bool
        Also the single-frequency excluded loss of every frequency (``excluded_loss_by_freq``) and its maximum
        (``excluded_loss_max``, paper footnote 3).
    block3x3 : bool
        Also the 3 x 3-block ablation (paper 4.4; not a progress measure).
    reference_checkpoint : int, optional
        Epoch of the checkpoint K was taken from (recorded in attrs).
    key_freq_rule : str, optional
        The rule that chose K (recorded in attrs).
    workers : int
        Checkpoints computed at the same time, each on one thread. With ``workers > 1`` torch's intra-op
        parallelism is set to one thread while they run (and restored after), so the many small operations of
        a checkpoint need no synchronisation between cores; this can help on a machine shared with other jobs.
        The default (1) computes one checkpoint at a time with torch's own threads, which measured faster on an
        idle 2-core machine. The results do not depend on it.

    Returns
    -------
    xarray.Dataset
        Over ``checkpoint`` (epochs, the index coordinate of ``ds``); losses in nats (float64 cross-entropy over
        the p non-``=`` classes), accuracies as fractions:

        ``loss_{all,train,test}``, ``acc_{all,train,test}``
            The model's own loss and accuracy on each split.
        ``restricted_loss_{all,train,test}``, ``restricted_acc_{all,train,test}``
            Logits kept on the constant and cos/sin(w_k(a + b)), k in K (paper.md 3.7).
        ``excluded_loss``, ``excluded_acc`` (checkpoint, key_freq); ``excluded_loss_full``, ``excluded_acc_full``
            Training split, with one / all key frequencies removed (paper.md 3.8).
        ``excluded_loss_by_freq`` (checkpoint, freq), ``excluded_loss_max``
            With ``all_freqs``.
        ``block3x3_loss_*``, ``block3x3_acc_*``
            With ``block3x3``.
        ``gini_W_E_component``, ``gini_W_E_freq``, ``gini_W_logit_component``, ``gini_W_logit_freq``
            Gini coefficients of the Fourier norms (paper.md 3.9; variants as :func:`mechgrok.measures.fourier_gini`).
        ``sum_sq_weights`` (checkpoint, param), ``sum_sq_weights_total``
            Sums of squared weights (paper.md 3.10).
        ``W_E_fourier_norm``, ``W_logit_fourier_norm`` (checkpoint, fourier); ``*_freq_norm``, ``*_freq_share``
            (checkpoint, freq)
            Fourier norms as :func:`mechgrok.fourier_norms.fourier_norms` (paper Fig. 3).

        attrs: ``p``, ``key_freqs``, ``key_freq_rule``, ``reference_checkpoint`` (if given), the loss rules and
        the Gini variants.

    Raises
    ------
    AnalysisError
        If the trajectory has no (odd) p, is multi-layer, lacks a weight or ``is_train``, no checkpoint is
        selected, or K is invalid.
    """
    ds, p, ks, masks = prepare_trajectory(ds, key_freqs=key_freqs, checkpoints=checkpoints)
    F = fourier_basis(p).values
    plan = _Plan(p, masks, ks, all_freqs)
    local = threading.local()
    # logits of the p non-'=' classes, computed as a multiple of 24 columns (zero columns of W_U added): float64
    # matrix products with such widths ran 1.2-1.7 x faster than with p = 113 columns on the benchmark machine
    # (the width of the BLAS kernel's register block); the extra columns are dropped
    n_cols = -(-p // _GEMM_COLUMNS) * _GEMM_COLUMNS

    def checkpoint_losses(w: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
        # one float64 forward pass, then every loss measure from it
        if not hasattr(local, "bufs"):  # work memory of this thread, reused from checkpoint to checkpoint
            local.bufs = plan.buffers()
            local.logits = torch.empty(p * p * n_cols, dtype=torch.float64)
            local.W_U = torch.zeros(1, w["W_U"].shape[-2], n_cols, dtype=torch.float64)
        local.W_U[..., :p] = w["W_U"][..., :p]
        with torch.no_grad():
            logits = grid_forward({**w, "W_U": local.W_U}, p, dtype=torch.float64, out=local.logits).logits
            return plan.measures(logits[0, :, :p], local.bufs, block3x3=block3x3)  # (p*p, p)

    def weight_only(w: dict[str, torch.Tensor], n_ck: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        sq = np.stack([np.sum(w[n].numpy().reshape(n_ck, -1).astype(np.float64) ** 2, axis=1) for n in WEIGHT_NAMES],
                      axis=1)
        return sq, _component_norms({n: w[n].numpy() for n in ("W_E", "W_out", "W_U")}, p, F, ("W_E", "W_logit"))

    rows: list[dict[str, np.ndarray]] = []
    norms: dict[str, list[np.ndarray]] = {"W_E": [], "W_logit": []}
    sum_sq: list[np.ndarray] = []
    with _workers(workers) as run:
        for sub in iter_checkpoint_chunks(ds, chunk):
            w = checkpoint_weights(sub)  # as stored (float32), (C, ...); the pass below is float64; raises for a missing weight
            n_ck = sub.sizes["checkpoint"]
            rows += run(checkpoint_losses, [({k: v[c : c + 1] for k, v in w.items()},) for c in range(n_ck)])
            sq, comps = weight_only(w, n_ck)
            sum_sq.append(sq)
            for name, arr in comps.items():
                norms[name].append(arr)
            del w
            _trim_heap()
    losses = {k: [np.stack([r[k] for r in rows])] for k in rows[0]}
    ck = ds["checkpoint"]
    out = _to_dataset(losses, ck, ks, p, {})
    norm_ds = _norms_dataset({n: np.concatenate(v) for n, v in norms.items()}, np.asarray(ck.values), p)
    arr = np.concatenate(sum_sq)
    weights = xr.Dataset(
        {
            **_gini_vars(norm_ds, "W_E", p),
            **_gini_vars(norm_ds, "W_logit", p),
            "sum_sq_weights": (
                ("checkpoint", "param"),
                arr,
                {"description": "sum of squared entries of each parameter", "units": "weight^2",
                 "paper_section": "paper.md 3.10"},
            ),
            "sum_sq_weights_total": (
                ("checkpoint",),
                arr.sum(1),
                {"description": "total sum of squared weights (all parameters)", "units": "weight^2",
                 "paper_section": "paper 5.1, Fig. 7"},
            ),
        },
        coords={"checkpoint": np.asarray(ck.values), "param": np.array(list(WEIGHT_NAMES), dtype=object)},
    )
    out = xr.merge([out, weights, norm_ds], combine_attrs="drop", join="exact")
    out["checkpoint"].attrs = dict(ck.attrs)
    attrs: dict[str, Any] = _base_attrs(p, ks, reference_checkpoint, key_freq_rule)
    attrs.update(
        title="mechgrok progress measures",
        forward_pass="one float64 pass per checkpoint (mechgrok.model.grid_forward)",
        gini_rule="Hurley & Rickard (2009) G = 1 - 2 sum_i (c_(i)/||c||_1)((N - i + 1/2)/N), c sorted ascending",
        gini_variants="component: N = p norms incl. const; freq: N = (p-1)/2 norms sqrt(cos^2+sin^2), const excluded",
        W_logit="W_out @ W_U[:, :p] (d_mlp, p), Fourier along the output axis",
    )
    if not block3x3:
        attrs.pop("block3x3_rule", None)
    out.attrs = attrs
    return out


@contextmanager
def _workers(n: int) -> Iterator[Callable[[Callable[..., Any], list[tuple]], list[Any]]]:
    """``run(fn, [args, ...]) -> [fn(*args), ...]`` on ``n`` threads with single-threaded torch operations."""
    n = int(n)
    if n <= 1:
        yield lambda fn, jobs: [fn(*a) for a in jobs]
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with ThreadPoolExecutor(max_workers=n) as pool:
            yield lambda fn, jobs: list(pool.map(lambda a: fn(*a), jobs))
    finally:
        torch.set_num_threads(before)
