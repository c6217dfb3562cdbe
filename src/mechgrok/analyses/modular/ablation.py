"""Fourier-space ablations of the logits: restricted loss, excluded loss and the 3 x 3-block ablation.

Nanda et al. (2023) measure how much of the model's performance lives in the key frequencies K by editing the
logits L[a, b, c] over the full p x p input grid (c = 0..p-1, the ``=`` class dropped) in the Fourier basis and
re-measuring the loss (paper section 5.1, Appendix C.2; paper.md 3.7, 3.8, 4.2):

* **Restricted loss** (paper 5.1; notebook ``trig_loss``): keep only the directions cos(w_k(a + b)) and
  sin(w_k(a + b)) for k in K, plus the constant (bias correction), and take the loss. With the unit vectors of
  R^{p^2}

      u_k[a, b] = (sqrt 2 / p) cos(w_k (a + b)),   v_k[a, b] = (sqrt 2 / p) sin(w_k (a + b)),   w_k = 2 pi k / p,

  the projection of each logit column c is P_k(L) = u_k u_k^T L + v_k v_k^T L, and the restricted logits are
  L_r = sum_{k in K} P_k(L) + mean_{(a,b)}(L - sum_{k in K} P_k(L)) (the mean is taken per c).
* **Excluded loss** (paper 5.1; ``calculate_excluded_loss``): remove the same directions, keep everything else,
  no bias correction, and take the loss on the **training** split: L - P_k(L) for each key frequency and
  L - sum_{k in K} P_k(L) for all of them together ("full"). Optionally for every frequency 1..(p-1)/2 and
  the maximum over them (paper footnote 3, the model-independent variant).
* **3 x 3-block ablation** (paper 4.4, 7.24e-8 for the mainline model): 2D-Fourier-transform L over (a, b),
  keep only the components (f, g) in I_k x I_k for some k in K, with I_k = {const, cos k, sin k} (indices
  {0, 2k-1, 2k} of :func:`mechgrok.analyses.modular.fourier.fourier_basis`), transform back and take the loss.

Every loss is a float64 log-softmax cross-entropy over the p non-``=`` classes (paper.md 2.3), in nats; every
accuracy a fraction. The projections need the logits on **all** p^2 inputs even when a loss is taken on one
split (paper.md pitfall 8).

Implementation. No p^2 x p^2 matrix and no (freq, p^2, p) cube is formed. Because u_k and v_k depend on (a, b)
only through s = (a + b) mod p, u_k^T L = (sqrt 2 / p) sum_s cos(w_k s) G[s, c] with the group sums
G[s, c] = sum_{a + b = s mod p} L[a, b, c], and P_k(L)[a, b, c] = R_k[(a + b) mod p, c] with
R_k[s, c] = (2 / p^2) (cos(w_k s) sum_t cos(w_k t) G[t, c] + sin(w_k s) sum_t sin(w_k t) G[t, c]). The
restricted logits therefore depend on (a, b) only through s, so the restricted loss costs O(p^2) per checkpoint
after the group sums. Each checkpoint's logits come from **one** forward pass, from which every measure here is
derived; checkpoints are processed in chunks so memory stays bounded.

Speed (``ablation_measures``). The logits are reordered by residue (row (s, a) is the pair (a, (s - a) mod p)), so
R_k[s, c] broadcasts over a, and the excluded losses use the label-shifted exponentials
E[s, a, c] = exp(L[s, a, c] - L[s, a, s]): the loss with R removed is log1p(sum_{c != s} E[s, a, c]
exp(R[s, s] - R[s, c])), so every excluded variant (each key frequency, all of them, and with ``all_freqs``
every frequency) comes from one batched matrix product instead of one log-softmax over the training pairs each.
Where those exponentials could overflow, the direct computation (``measures_direct``) is used instead.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch
import xarray as xr

from mechgrok.analyses.modular.ablation_kernels import (
    AblationPlan,
    ablation_measures,
    keep_3x3_blocks,
    restricted_by_residue,
    sum_projection_by_residue,
)
from mechgrok.analyses.modular.fourier import check_odd_p, residues
from mechgrok.analyses.modular.grid import grid_pass, grid_residue_sums, model_p
from mechgrok.engine import DEFAULT_CHUNK, Checkpoint, Progress, run
from mechgrok.errors import AnalysisError
from mechgrok.models.transformer import WEIGHT_NAMES
from mechgrok.tasks.discrete_log import is_discrete_log

__all__ = [
    "check_key_freqs",
    "split_masks",
    "sum_projection",
    "restricted_logits",
    "excluded_logits",
    "block3x3_logits",
    "logit_ablations",
    "ablation_losses",
    "Ablation",
]

# --------------------------------------------------------------------------------------------------------------
# validation
# --------------------------------------------------------------------------------------------------------------
def check_key_freqs(key_freqs: Sequence[int], p: int, *, even_order: bool = False) -> list[int]:
    """Validate a set of key frequencies for modulus p and return it sorted.

    Parameters
    ----------
    key_freqs : sequence of int
        Frequencies k in 1..(p-1)/2.
    p : int
        Odd modulus (or, with ``even_order``, the even order of the discrete-log coordinates of mul and div,
        :mod:`mechgrok.tasks.discrete_log`).
    even_order : bool
        Accept an even p.

    Returns
    -------
    list of int
        Sorted, unique.

    Raises
    ------
    AnalysisError
        If the set is empty, has a repeat or non-integer, or a frequency outside 1..(p-1)/2, or p is even.
    """
    check_odd_p(p, even_order=even_order)
    try:
        ks = [int(k) for k in key_freqs]
    except (TypeError, ValueError):
        raise AnalysisError(f"key frequencies must be integers, got {key_freqs!r}") from None
    if any(int(k) != k for k in key_freqs):
        raise AnalysisError(f"key frequencies must be integers, got {list(key_freqs)}")
    if not ks:
        raise AnalysisError("the set of key frequencies is empty")
    if len(set(ks)) != len(ks):
        raise AnalysisError(f"key frequencies repeat: {ks}")
    bad = [k for k in ks if not 1 <= k <= (p - 1) // 2]
    if bad:
        raise AnalysisError(f"key frequencies {bad} are outside 1..{(p - 1) // 2} for p={p}")
    return sorted(ks)


def _check_logits(logits: xr.DataArray) -> int:
    if not isinstance(logits, xr.DataArray):
        raise AnalysisError(f"logits must be an xarray.DataArray with dims (..., a, b, c), got {type(logits).__name__}")
    for d in ("a", "b", "c"):
        if d not in logits.dims:
            raise AnalysisError(f"logits lack the dim {d!r} (dims are {logits.dims}); expected (..., a, b, c)")
    p = logits.sizes["a"]
    if logits.sizes["b"] != p or logits.sizes["c"] != p:
        raise AnalysisError(
            f"logits must be (..., a=p, b=p, c=p) without the '=' class, got a={p}, b={logits.sizes['b']}, "
            f"c={logits.sizes['c']}"
        )
    check_odd_p(p)
    return p


def split_masks(is_train: Any, p: int) -> dict[str, np.ndarray]:
    """The boolean masks ``all``, ``train``, ``test`` over the (a, b) grid from ``is_train`` (a, b).

    Raises
    ------
    AnalysisError
        If ``is_train`` is not a (p, p) bool array.
    """
    m = np.asarray(is_train.values if isinstance(is_train, xr.DataArray) else is_train)
    if m.shape != (p, p) or m.dtype != bool:
        raise AnalysisError(f"is_train must be a (p, p) = ({p}, {p}) bool array over (a, b), got {m.shape} {m.dtype}")
    return {"all": np.ones((p, p), dtype=bool), "train": m, "test": ~m}


# --------------------------------------------------------------------------------------------------------------
# xarray-level operators on logits
# --------------------------------------------------------------------------------------------------------------
def _apply(logits: xr.DataArray, fn, name: str, attrs: dict[str, Any]) -> xr.DataArray:
    p = _check_logits(logits)
    lead = [d for d in logits.dims if d not in ("a", "b", "c")]
    da = logits.transpose(*lead, "a", "b", "c")
    L = torch.from_numpy(np.asarray(da.values, dtype=np.float64)).reshape(*da.shape[:-3], p * p, p)
    res = fn(L, p).reshape(da.shape).numpy()
    return xr.DataArray(res, dims=da.dims, coords=da.coords, name=name, attrs=attrs).transpose(*logits.dims)


def sum_projection(logits: xr.DataArray, *, freq: int) -> xr.DataArray:
    """Projection P_k(L) of the logits onto cos(w_k(a + b)) and sin(w_k(a + b)) (paper.md 3.7, step 2).

    Parameters
    ----------
    logits : xarray.DataArray
        Dims (..., a, b, c) with a = b = c = p (odd), the ``=`` class already dropped (as
        :func:`mechgrok.analyses.modular.grid.grid_activations` returns them).
    freq : int
        The frequency k in 1..(p-1)/2.

    Returns
    -------
    xarray.DataArray
        float64, same dims and coords: P_k(L) = u_k u_k^T L + v_k v_k^T L, column by column (per c and per
        leading index). It depends on (a, b) only through (a + b) mod p.

    Raises
    ------
    AnalysisError
        If the dims or sizes are wrong, p is even, or the frequency is out of range.
    """
    p = _check_logits(logits)
    (k,) = check_key_freqs([freq], p)
    labels = residues(p)

    def fn(L: torch.Tensor, p: int) -> torch.Tensor:
        return sum_projection_by_residue(L, p, [k])[..., 0, :, :][..., labels, :]

    return _apply(logits, fn, "sum_projection", {"freq": k, "units": "logit"})


def restricted_logits(logits: xr.DataArray, *, key_freqs: Sequence[int]) -> xr.DataArray:
    """The restricted logits L_r = sum_k P_k(L) + mean_(a,b)(L - sum_k P_k(L)) (paper 5.1; paper.md 3.7).

    Parameters
    ----------
    logits : xarray.DataArray
        Dims (..., a, b, c), a = b = c = p (odd), the ``=`` class dropped.
    key_freqs : sequence of int
        The key frequencies K, each in 1..(p-1)/2.

    Returns
    -------
    xarray.DataArray
        float64, same dims and coords. Only the constant and cos/sin(w_k (a + b)), k in K, survive (2|K| + 1
        directions of R^{p^2} per column c); the mean over (a, b) is kept per c (bias correction).

    Raises
    ------
    AnalysisError
        Bad dims or sizes, even p, bad key frequencies.
    """
    p = _check_logits(logits)
    ks = check_key_freqs(key_freqs, p)
    labels = residues(p)
    return _apply(
        logits,
        lambda L, p: restricted_by_residue(L, p, ks)[..., labels, :],
        "restricted_logits",
        {"key_freqs": ks, "units": "logit"},
    )


def excluded_logits(logits: xr.DataArray, *, key_freqs: Sequence[int]) -> xr.DataArray:
    """The excluded logits L - sum_k P_k(L), no bias correction (paper 5.1; paper.md 3.8).

    Parameters
    ----------
    logits : xarray.DataArray
        Dims (..., a, b, c), a = b = c = p (odd), the ``=`` class dropped.
    key_freqs : sequence of int
        The frequencies to remove (one for the per-frequency excluded loss, all of K for the full one).

    Returns
    -------
    xarray.DataArray
        float64, same dims and coords.

    Raises
    ------
    AnalysisError
        Bad dims or sizes, even p, bad key frequencies.
    """
    p = _check_logits(logits)
    ks = check_key_freqs(key_freqs, p)
    labels = residues(p)
    return _apply(
        logits,
        lambda L, p: L - sum_projection_by_residue(L, p, ks).sum(-3)[..., labels, :],
        "excluded_logits",
        {"key_freqs": ks, "units": "logit"},
    )


def block3x3_logits(logits: xr.DataArray, *, key_freqs: Sequence[int]) -> xr.DataArray:
    """The logits with every 2D Fourier component outside the key-frequency 3 x 3 blocks zeroed (paper 4.4).

    With L_hat[f, g, c] = sum_{a,b} F[f, a] F[g, b] L[a, b, c] (:func:`mechgrok.analyses.modular.fourier.fft2d`), keep (f, g) iff
    f and g both lie in I_k = {0, 2k-1, 2k} for one k in K, and transform back.

    Parameters
    ----------
    logits : xarray.DataArray
        Dims (..., a, b, c), a = b = c = p (odd), the ``=`` class dropped.
    key_freqs : sequence of int
        The key frequencies K.

    Returns
    -------
    xarray.DataArray
        float64, same dims and coords.

    Raises
    ------
    AnalysisError
        Bad dims or sizes, even p, bad key frequencies.
    """
    p = _check_logits(logits)
    ks = check_key_freqs(key_freqs, p)
    return _apply(logits, lambda L, p: keep_3x3_blocks(L, p, ks), "block3x3_logits", {"key_freqs": ks, "units": "logit"})


# --------------------------------------------------------------------------------------------------------------
# Datasets of measures
# --------------------------------------------------------------------------------------------------------------
_LOSS_DOC = "float64 log-softmax cross-entropy over the p non-'=' classes"


def _var_attrs(name: str) -> dict[str, Any]:
    split = name.rsplit("_", 1)[-1]
    units = "nats" if "_loss" in name or name.startswith("loss") else "fraction"
    if name.startswith(("loss_", "acc_")):
        desc = f"the model's {'loss' if units == 'nats' else 'accuracy'} on the {split} pairs"
        ref = "paper 5.1"
    elif name.startswith("restricted_"):
        desc = f"restricted {'loss' if units == 'nats' else 'accuracy'} on the {split} pairs: logits kept on const + cos/sin(w_k(a+b)), k in K"
        ref = "paper 5.1"
    elif name.startswith("block3x3_"):
        desc = f"{'loss' if units == 'nats' else 'accuracy'} on the {split} pairs with only the 2D Fourier 3x3 blocks I_k x I_k, k in K, kept"
        ref = "paper 4.4"
    elif name in ("excluded_loss", "excluded_acc"):
        desc = "train-split loss/accuracy with the cos/sin(w_k(a+b)) directions of one key frequency removed"
        ref = "paper 5.1"
    elif name.endswith("_full"):
        desc = "train-split loss/accuracy with the cos/sin(w_k(a+b)) directions of every key frequency removed"
        ref = "paper 5.1, Fig. 7"
    elif name == "excluded_loss_by_freq":
        desc = "train-split loss with the cos/sin(w_f(a+b)) directions of frequency f removed, every f"
        ref = "paper 5.1"
    else:  # excluded_loss_max
        desc = "maximum over all frequencies of the single-frequency excluded loss (model-independent variant)"
        ref = "paper 5.1, footnote 3"
    attrs = {"units": units, "description": desc, "paper_section": ref}
    if units == "nats":
        attrs["loss"] = _LOSS_DOC
    return attrs


def _to_dataset(
    values: dict[str, np.ndarray],
    checkpoint: xr.DataArray,
    key_freqs: list[int],
    p: int,
    attrs: dict[str, Any],
) -> xr.Dataset:
    data: dict[str, Any] = {}
    for name, arr in values.items():
        if name in ("excluded_loss", "excluded_acc"):
            dims: tuple[str, ...] = ("checkpoint", "key_freq")
        elif name == "excluded_loss_by_freq":
            dims = ("checkpoint", "freq")
        else:
            dims = ("checkpoint",)
        data[name] = (dims, arr, _var_attrs(name))
    coords: dict[str, Any] = {
        "checkpoint": ("checkpoint", np.asarray(checkpoint.values), dict(checkpoint.attrs)),
        "key_freq": ("key_freq", np.asarray(key_freqs, dtype=np.int64)),
    }
    if "excluded_loss_by_freq" in values:
        coords["freq"] = ("freq", np.arange(1, (p - 1) // 2 + 1, dtype=np.int64))
    return xr.Dataset(data, coords=coords, attrs=attrs)


def _base_attrs(p: int, ks: list[int], reference_checkpoint: int | None, key_freq_rule: str | None) -> dict[str, Any]:
    attrs: dict[str, Any] = {
        "title": "mechgrok Fourier-space ablation losses",
        "p": int(p),
        "key_freqs": [int(k) for k in ks],
        "key_freq_rule": key_freq_rule if key_freq_rule is not None else "given by the caller",
        "loss": _LOSS_DOC + " (nats); accuracies are fractions of pairs",
        "restricted_loss_rule": "const (mean over (a,b) per c) + cos/sin(w_k(a+b)), k in key_freqs; CE on the split",
        "excluded_loss_rule": "L - sum P_k(L), no bias correction, training split",
        "block3x3_rule": "2D Fourier components (f,g) in I_k x I_k, I_k = {const, cos k, sin k}, k in key_freqs",
    }
    if reference_checkpoint is not None:
        attrs["reference_checkpoint"] = int(reference_checkpoint)
    return attrs


def logit_ablations(
    logits: xr.DataArray,
    *,
    is_train: xr.DataArray | np.ndarray,
    key_freqs: Sequence[int],
    all_freqs: bool = False,
    reference_checkpoint: int | None = None,
    key_freq_rule: str | None = None,
) -> xr.Dataset:
    """Every Fourier-space loss measure from logits already computed on the full grid (paper 4.4, 5.1).

    Use this when the logits are at hand (e.g. computed once per chunk for several analyses);
    :func:`ablation_losses` runs the forward passes itself.

    Parameters
    ----------
    logits : xarray.DataArray
        Dims (checkpoint, a, b, c), a = b = c = p (odd), the ``=`` class dropped
        (``grid_activations(ds, include=("logits",))["logits"]``).
    is_train : xarray.DataArray or numpy.ndarray
        (a, b) bool membership of the training split; the test split is its complement.
    key_freqs : sequence of int
        The key frequencies K (1..(p-1)/2), fixed for every checkpoint.
    all_freqs : bool
        Also compute the single-frequency excluded loss for every frequency (``excluded_loss_by_freq``) and its
        maximum (``excluded_loss_max``, paper footnote 3). Costs (p-1)/2 extra log-softmaxes per checkpoint.
    reference_checkpoint : int, optional
        Epoch of the checkpoint K was taken from (recorded in attrs).
    key_freq_rule : str, optional
        The rule that chose K (recorded in attrs).

    Returns
    -------
    xarray.Dataset
        Over ``checkpoint`` (the epoch of each checkpoint), losses in nats (float64), accuracies as fractions:

        ``loss_{all,train,test}``, ``acc_{all,train,test}``
            The model's own; note these are over p classes, unlike the training curves (p + 1 classes).
        ``restricted_loss_{all,train,test}``, ``restricted_acc_{all,train,test}``
            Restricted loss (paper.md 3.7) on each split; the projection always uses all p^2 pairs.
        ``excluded_loss``, ``excluded_acc`` (checkpoint, key_freq)
            Single-key-frequency excluded loss on the train split (paper.md 3.8).
        ``excluded_loss_full``, ``excluded_acc_full``
            All key frequencies removed, train split (paper Fig. 7).
        ``block3x3_loss_{all,train,test}``, ``block3x3_acc_{all,train,test}``
            The 3 x 3-block ablation (paper 4.4).
        ``excluded_loss_by_freq`` (checkpoint, freq), ``excluded_loss_max``
            With ``all_freqs`` only.

        attrs: ``key_freqs``, ``key_freq_rule``, ``reference_checkpoint`` (if given), ``p`` and the rules.

    Raises
    ------
    AnalysisError
        Bad dims or sizes, even p, bad key frequencies, or an ``is_train`` of the wrong shape.
    """
    p = _check_logits(logits)
    if "checkpoint" not in logits.dims:
        raise AnalysisError(f"logits need a 'checkpoint' dim, got dims {logits.dims}")
    ks = check_key_freqs(key_freqs, p)
    masks = split_masks(is_train, p)
    da = logits.transpose("checkpoint", "a", "b", "c")
    if da.sizes["checkpoint"] == 0:
        raise AnalysisError("the logits have no checkpoints")
    L = torch.from_numpy(np.asarray(da.values, dtype=np.float64)).reshape(da.sizes["checkpoint"], p * p, p)
    with torch.no_grad():
        values = ablation_measures(L, masks, ks, all_freqs=all_freqs)
    return _to_dataset(values, da["checkpoint"], ks, p, _base_attrs(p, ks, reference_checkpoint, key_freq_rule))


@dataclass
class Ablation:
    """Engine kernel (:mod:`mechgrok.engine`): every loss measure of a checkpoint from its shared grid pass.

    Build it with :meth:`for_trajectory`; :func:`ablation_losses`, :func:`mechgrok.analyses.modular.progress.progress_measures`
    and :func:`mechgrok.pipeline.analyze` run it. The measures are computed on the CPU in float64 work memory
    reused from checkpoint to checkpoint (one set per thread; about 2 p^3 * 8 bytes, 23 MB at p = 113); on a GPU
    the forward pass runs there and its logits (p^3 * 8 bytes) are copied back.
    """

    plan: AblationPlan
    block3x3: bool
    attrs: dict[str, Any]
    name: str = "ablation"
    weights: tuple[str, ...] | None = WEIGHT_NAMES
    needs: frozenset[str] = frozenset({"logit_sums"})
    _local: threading.local = field(default_factory=threading.local, repr=False)

    @classmethod
    def for_trajectory(
        cls,
        ds: xr.Dataset,
        *,
        key_freqs: Sequence[int],
        all_freqs: bool = False,
        block3x3: bool = True,
        reference_checkpoint: int | None = None,
        key_freq_rule: str | None = None,
    ) -> "Ablation":
        """The kernel for a trajectory: checks p, the key frequencies and the split.

        Raises
        ------
        AnalysisError
            If the trajectory has no (odd) p, is multi-layer, has no ``is_train``, or K is invalid.
        """
        p = model_p(ds)
        ks = check_key_freqs(key_freqs, p, even_order=is_discrete_log(ds.attrs))
        if "is_train" not in ds:
            raise AnalysisError("the trajectory has no 'is_train' split; the train/test and excluded losses need it")
        masks = split_masks(ds["is_train"], p)
        attrs = _base_attrs(p, ks, reference_checkpoint, key_freq_rule)
        if not block3x3:
            attrs.pop("block3x3_rule", None)
        return cls(plan=AblationPlan(p, masks, ks, all_freqs), block3x3=block3x3, attrs=attrs)

    def __call__(self, ck: Checkpoint) -> dict[str, np.ndarray]:
        if not hasattr(self._local, "bufs"):
            self._local.bufs = self.plan.buffers()
        logits, G = grid_pass(ck).logits, grid_residue_sums(ck)
        if logits.device.type != "cpu":
            logits, G = logits.cpu(), G.cpu()
        return self.plan.measures(logits, self._local.bufs, block3x3=self.block3x3, G=G)

    def assemble(self, values: dict[str, np.ndarray], checkpoint: xr.DataArray) -> xr.Dataset:
        return _to_dataset(values, checkpoint, self.plan.key_freqs, self.plan.p, dict(self.attrs))


def ablation_losses(
    ds: xr.Dataset,
    *,
    key_freqs: Sequence[int],
    all_freqs: bool = False,
    block3x3: bool = True,
    reference_checkpoint: int | None = None,
    key_freq_rule: str | None = None,
    chunk: int = DEFAULT_CHUNK,
    device: str | torch.device | None = "cpu",
    progress: Progress | bool | None = None,
) -> xr.Dataset:
    """Loss, accuracy, restricted, excluded and 3 x 3-block losses over every checkpoint of a trajectory.

    One float64 forward pass over the p x p grid per checkpoint (:func:`mechgrok.analyses.modular.grid.grid_pass`)
    through :func:`mechgrok.engine.run`; every measure of :func:`logit_ablations` is derived from it. Memory
    does not grow with the number of checkpoints. Losses match a float64 dense reference to about 1e-12 relative.

    Parameters
    ----------
    ds : xarray.Dataset
        Canonical one-layer trajectory (``mechgrok.store``) with ``attrs["p"]`` and ``is_train`` (a, b), selected
        along ``checkpoint`` by the caller (``ds.isel(checkpoint=[-1])``, ``ds.sel(checkpoint=[...])``).
    key_freqs : sequence of int
        The key frequencies K, fixed for every checkpoint (usually found at a reference checkpoint by
        :func:`mechgrok.analyses.modular.key_frequencies.key_frequencies`).
    all_freqs : bool
        Also the excluded loss for every frequency and its maximum (see :func:`logit_ablations`).
    block3x3 : bool
        Also the 3 x 3-block ablation (paper 4.4).
    reference_checkpoint : int, optional
        Epoch of the checkpoint K was taken from (attrs).
    key_freq_rule : str, optional
        Rule that chose K (attrs).
    chunk : int
        Checkpoints whose weights are read at once.
    device : str, torch.device or None
        Where the forward pass runs (None: CUDA when available).
    progress : callable or bool, optional
        ``progress(stage, done, total)`` after each chunk of checkpoints, or True for a rich bar
        (:func:`mechgrok.engine.run`).

    Returns
    -------
    xarray.Dataset
        As :func:`logit_ablations`, over ``checkpoint`` with the epoch coordinate of ``ds``.

    Raises
    ------
    AnalysisError
        If the trajectory has no p, is multi-layer, lacks weights or ``is_train``, no checkpoint is selected, or K
        is invalid.

    Examples
    --------
    >>> import mechgrok
    >>> ds = mechgrok.open_run("fixtures/quick-run").isel(checkpoint=[-1])
    >>> out = mechgrok.ablation_losses(ds, key_freqs=[9, 17, 25])
    >>> float(out["restricted_loss_test"][0]) < float(out["loss_test"][0])
    True
    """
    kernel = Ablation.for_trajectory(ds, key_freqs=key_freqs, all_freqs=all_freqs, block3x3=block3x3,
                                     reference_checkpoint=reference_checkpoint, key_freq_rule=key_freq_rule)
    return run(ds, [kernel], chunk=chunk, device=device, progress=progress, stage="ablation")["ablation"]
