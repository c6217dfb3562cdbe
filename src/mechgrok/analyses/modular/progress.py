"""Every progress measure of a trajectory in one pass over its checkpoints (Nanda et al. 2023, section 5.1, Fig. 7).

The paper's notebook (paper.md 3.13) loads each of ~400 checkpoints and runs one full forward pass over the p x p
grid *per metric*, and its cosine cube alone is 323 MB. :func:`progress_measures` computes the whole suite with

* **one forward pass per checkpoint**: :func:`mechgrok.analyses.modular.grid.grid_forward`, which evaluates the model on the grid
  from per-token tables, so the only full-size product is the neuron-to-logit one (about 3 times fewer FLOPs
  than the model's own forward pass at the paper's widths), in row blocks that stay in cache;
* **every loss measure derived from those logits** (the :class:`~mechgrok.analyses.modular.ablation.Ablation` kernel,
  :class:`~mechgrok.analyses.modular.ablation_kernels.AblationPlan`): the model's loss and
  accuracy, the restricted loss from group sums over the residues s = a + b (p x p work per checkpoint, not
  p^2 x p), the excluded losses of all variants from one batched matrix product, no (freq, p^2, p) cube;
* **the weight-only measures in the same pass**: Fourier norms of ``W_E`` and ``W_logit``, their Gini
  coefficients, sums of squared weights.

All of it is one :func:`mechgrok.engine.run` over the kernels ``Ablation``, ``FourierNorms`` and ``SumSquaredWeights``
(``mechgrok analyze`` runs the same kernels, with more, in its one pass).

Precision: the forward pass runs in float64 (the tables, the MLP activations and the logits). A float32 pass is
twice as fast but its logits carry relative errors of ~1e-7 times their size, which at the large logits of a
grokked model (|L| ~ 250 at the end of the benchmark trajectory) move tiny losses by more than 1e-6 relative;
all losses are float64 (paper.md 2.3). Memory does not grow with the number of checkpoints: weights are read
``chunk`` checkpoints at a time and the work memory (about 60 MB at p = 113) is reused from one checkpoint to the
next.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
import xarray as xr

from mechgrok.analyses.measures import SumSquaredWeights
from mechgrok.analyses.modular.ablation import Ablation
from mechgrok.analyses.modular.fourier_gini import gini_dataset
from mechgrok.analyses.modular.fourier_norms import FourierNorms
from mechgrok.engine import DEFAULT_CHUNK, Progress, run


__all__ = ["progress_measures"]



def progress_measures(
    ds: xr.Dataset,
    *,
    key_freqs: Sequence[int],
    all_freqs: bool = False,
    block3x3: bool = False,
    reference_checkpoint: int | None = None,
    key_freq_rule: str | None = None,
    chunk: int = DEFAULT_CHUNK,
    device: str | torch.device | None = "cpu",
    workers: int = 1,
    progress: Progress | bool | None = None,
) -> xr.Dataset:
    """The paper's progress measures at every checkpoint, from one float64 forward pass per checkpoint.

    Paper section 5.1 and Fig. 7 (paper.md 3.7-3.10, 3.13). The values equal those of
    :func:`mechgrok.analyses.modular.ablation.ablation_losses` (losses), :func:`mechgrok.analyses.modular.fourier_gini.weight_measures` and
    :func:`mechgrok.analyses.modular.fourier_norms.fourier_norms`: every one of them runs the same float64 forward pass
    (:func:`mechgrok.analyses.modular.grid.grid_forward`), so the losses agree to rounding (~1e-12 relative).

    Parameters
    ----------
    ds : xarray.Dataset
        Canonical one-layer trajectory (:mod:`mechgrok.store`) with ``attrs["p"]`` (odd), ``is_train`` (a, b)
        and every weight.
    key_freqs : sequence of int
        The key frequencies K (1..(p-1)/2), fixed for every checkpoint (usually found at a reference checkpoint
        by :mod:`mechgrok.analyses.modular.key_frequencies`).
    all_freqs : bool
        Also the single-frequency excluded loss of every frequency (``excluded_loss_by_freq``) and its maximum
        (``excluded_loss_max``, paper footnote 3).
    block3x3 : bool
        Also the 3 x 3-block ablation (paper 4.4; not a progress measure).
    reference_checkpoint : int, optional
        Epoch of the checkpoint K was taken from (recorded in attrs).
    key_freq_rule : str, optional
        The rule that chose K (recorded in attrs).
    chunk : int
        Checkpoints whose weights are read at once (memory: about 1 MB each at the paper's widths, plus about
        60 MB per worker at p = 113, independent of the number of checkpoints).
    device : str, torch.device or None
        Where the forward pass runs (None: CUDA when available); the losses are taken on the CPU in float64.
    workers : int
        Checkpoints computed at the same time, each on one thread. With ``workers > 1`` torch's intra-op
        parallelism is set to one thread while they run (and restored after), so the many small operations of
        a checkpoint need no synchronisation between cores; this can help on a machine shared with other jobs.
        The default (1) computes one checkpoint at a time with torch's own threads, which measured faster on an
        idle 2-core machine. The results do not depend on it.
    progress : callable or bool, optional
        ``progress(stage, done, total)`` after each chunk of checkpoints, or True for a rich bar
        (:func:`mechgrok.engine.run`).

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
            Gini coefficients of the Fourier norms (paper.md 3.9; variants as :func:`mechgrok.analyses.modular.fourier_gini.fourier_gini`).
        ``sum_sq_weights`` (checkpoint, param), ``sum_sq_weights_total``
            Sums of squared weights (paper.md 3.10).
        ``W_E_fourier_norm``, ``W_logit_fourier_norm`` (checkpoint, fourier); ``*_freq_norm``, ``*_freq_share``
            (checkpoint, freq)
            Fourier norms as :func:`mechgrok.analyses.modular.fourier_norms.fourier_norms` (paper Fig. 3).

        attrs: ``p``, ``key_freqs``, ``key_freq_rule``, ``reference_checkpoint`` (if given), the loss rules and
        the Gini variants.

    Raises
    ------
    AnalysisError
        If the trajectory has no (odd) p, is multi-layer, lacks a weight or ``is_train``, no checkpoint is
        selected, or K is invalid.
    """
    kernels = [
        Ablation.for_trajectory(ds, key_freqs=key_freqs, all_freqs=all_freqs, block3x3=block3x3,
                                reference_checkpoint=reference_checkpoint, key_freq_rule=key_freq_rule),
        FourierNorms.for_trajectory(ds),
        SumSquaredWeights.for_trajectory(ds),
    ]
    res = run(ds, kernels, chunk=chunk, device=device, workers=workers, progress=progress, stage="progress measures")
    losses, norms = res["ablation"], res["fourier_norms"]
    out = xr.merge([losses, gini_dataset(norms), res["sum_sq_weights"], norms], combine_attrs="drop", join="exact")
    out["checkpoint"].attrs = dict(ds["checkpoint"].attrs)
    attrs: dict[str, Any] = dict(losses.attrs)
    attrs.update(
        title="mechgrok progress measures",
        forward_pass="one float64 pass per checkpoint (mechgrok.analyses.modular.grid.grid_pass)",
        gini_rule="Hurley & Rickard (2009) G = 1 - 2 sum_i (c_(i)/||c||_1)((N - i + 1/2)/N), c sorted ascending",
        gini_variants="component: N = p norms incl. const; freq: N = (p-1)/2 norms sqrt(cos^2+sin^2), const excluded",
        W_logit="W_out @ W_U[:, :p] (d_mlp, p), Fourier along the output axis",
    )
    out.attrs = attrs
    return out
