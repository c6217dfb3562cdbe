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
  {0, 2k-1, 2k} of :func:`mechgrok.fourier.fourier_basis`), transform back and take the loss.

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

Speed (``_measures``). The logits are reordered by residue (row (s, a) is the pair (a, (s - a) mod p)), so
R_k[s, c] broadcasts over a, and the excluded losses use the label-shifted exponentials
E[s, a, c] = exp(L[s, a, c] - L[s, a, s]): the loss with R removed is log1p(sum_{c != s} E[s, a, c]
exp(R[s, s] - R[s, c])), so every excluded variant (each key frequency, all of them, and with ``all_freqs``
every frequency) comes from one batched matrix product instead of one log-softmax over the training pairs each.
Where those exponentials could overflow, the direct computation (``_measures_direct``) is used instead.
"""

from __future__ import annotations

import ctypes
import math
from typing import Any, Callable, Sequence

import numpy as np
import torch
import xarray as xr

from mechgrok.activations import select_checkpoints, checkpoint_weights, iter_checkpoint_chunks, model_p
from mechgrok.errors import AnalysisError
from mechgrok.fourier import check_odd_p, fourier_basis
from mechgrok.loss import per_example_loss
from mechgrok.model import grid_forward

__all__ = [
    "check_key_freqs",
    "sum_projection",
    "restricted_logits",
    "excluded_logits",
    "block3x3_logits",
    "logit_ablations",
    "ablation_losses",
    "prepare_trajectory",
]

_SPLITS = ("all", "train", "test")
_MALLOC_TRIM: Any = None


def _trim_heap() -> None:
    """Hand freed heap memory back to the OS after a chunk (glibc ``malloc_trim``; a no-op elsewhere).

    Each chunk allocates many temporaries below glibc's mmap threshold (32 MB), which stay in the heap arenas
    after they are freed; over hundreds of chunks the fragmented heap grows. Measured on a 401-checkpoint
    p = 113 trajectory held in memory (chunk 8): peak RSS 3.1 GB without trimming, 1.85 GB with it.
    """
    global _MALLOC_TRIM
    if _MALLOC_TRIM is None:
        try:
            _MALLOC_TRIM = ctypes.CDLL("libc.so.6").malloc_trim
        except (OSError, AttributeError):
            _MALLOC_TRIM = False
    if _MALLOC_TRIM:
        _MALLOC_TRIM(0)


# --------------------------------------------------------------------------------------------------------------
# validation
# --------------------------------------------------------------------------------------------------------------
def check_key_freqs(key_freqs: Sequence[int], p: int) -> list[int]:
    """Validate a set of key frequencies for modulus p and return it sorted.

    Parameters
    ----------
    key_freqs : sequence of int
        Frequencies k in 1..(p-1)/2.
    p : int
        Odd modulus.

    Returns
    -------
    list of int
        Sorted, unique.

    Raises
    ------
    AnalysisError
        If the set is empty, has a repeat or non-integer, or a frequency outside 1..(p-1)/2, or p is even.
    """
    check_odd_p(p)
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


def _split_masks(is_train: Any, p: int) -> dict[str, np.ndarray]:
    m = np.asarray(is_train.values if isinstance(is_train, xr.DataArray) else is_train)
    if m.shape != (p, p) or m.dtype != bool:
        raise AnalysisError(f"is_train must be a (p, p) = ({p}, {p}) bool array over (a, b), got {m.shape} {m.dtype}")
    return {"all": np.ones((p, p), dtype=bool), "train": m, "test": ~m}


# --------------------------------------------------------------------------------------------------------------
# tensor-level core (leading dims '...'; logits flattened to (..., p*p, p))
# --------------------------------------------------------------------------------------------------------------
def _residues(p: int) -> torch.Tensor:
    """s = (a + b) mod p for the flattened grid index a * p + b, int64 (p*p,)."""
    ar = torch.arange(p)
    return ((ar[:, None] + ar[None, :]) % p).reshape(-1)


def _trig(p: int, freqs: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """cos(w_k s), sin(w_k s), float64 (K, p) over residues s."""
    k = torch.tensor(list(freqs), dtype=torch.float64)[:, None]
    s = torch.arange(p, dtype=torch.float64)[None, :]
    ang = 2 * math.pi * k * s / p
    return torch.cos(ang), torch.sin(ang)


def _sum_projection_by_residue(L: torch.Tensor, p: int, freqs: Sequence[int]) -> torch.Tensor:
    """R_k[s, c] with P_k(L)[a, b, c] = R_k[(a + b) mod p, c].

    L: float64 (..., p*p, p). Returns float64 (..., K, p, p) over (freq, s, c).
    """
    s_idx = _residues(p)
    G = torch.zeros((*L.shape[:-2], p, p), dtype=L.dtype).index_add_(L.dim() - 2, s_idx, L)  # (..., s, c)
    cos, sin = _trig(p, freqs)  # (K, s)
    alpha = torch.einsum("ks,...sc->...kc", cos, G)
    beta = torch.einsum("ks,...sc->...kc", sin, G)
    return (2.0 / p**2) * (cos[:, :, None] * alpha[..., :, None, :] + sin[:, :, None] * beta[..., :, None, :])


def _block3x3(L: torch.Tensor, p: int, freqs: Sequence[int]) -> torch.Tensor:
    """Keep only the 2D Fourier components in the blocks I_k x I_k (k in freqs); float64 (..., p*p, p)."""
    F = torch.from_numpy(fourier_basis(p).values)
    J = [0] + [i for k in freqs for i in (2 * k - 1, 2 * k)]
    FJ = F[J]  # (m, x)
    m = len(J)
    keep = torch.zeros(m, m, dtype=torch.float64)
    keep[0, 0] = 1.0
    for j, k in enumerate(freqs):
        block = [0, 1 + 2 * j, 2 + 2 * j]
        for f in block:
            for g in block:
                keep[f, g] = 1.0
    lead = L.shape[:-2]
    # transform over a: (m, a) @ (..., a, b*c) -> (..., f, b, c)
    hat = (FJ @ L.reshape(*lead, p, p * p)).reshape(*lead, m, p, p)
    # transform over b: (..., f, c, b) @ (b, g) -> (..., f, c, g); keep the blocks
    hat = (hat.transpose(-1, -2) @ FJ.T) * keep[:, None, :]
    # back over b: (..., f, c, g) @ (g, b) -> (..., f, c, b); back over a: (a, f) @ (..., f, b*c)
    back = (hat @ FJ).transpose(-1, -2).reshape(*lead, m, p * p)
    back = FJ.T @ back
    return back.reshape(L.shape)


def _restricted_by_residue(L: torch.Tensor, p: int, freqs: Sequence[int]) -> torch.Tensor:
    """Restricted logits L_r[s, c] (they depend on (a, b) only through s); float64 (..., p, p)."""
    R = _sum_projection_by_residue(L, p, freqs).sum(dim=-3)  # (..., s, c): L_trig by residue
    # bias correction: + mean over (a, b) of (L - L_trig); each residue s holds p of the p^2 pairs
    return R + (L.mean(dim=-2) - R.mean(dim=-2))[..., None, :]


def _split_stats(pe: torch.Tensor, correct: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean loss and accuracy over a split; pe/correct (..., p*p), mask float64 (p*p,)."""
    n = mask.sum()
    return (pe * mask).sum(-1) / n, (correct.to(torch.float64) * mask).sum(-1) / n


def _measures_direct(
    logits: torch.Tensor,
    masks: dict[str, np.ndarray],
    key_freqs: Sequence[int],
    *,
    all_freqs: bool,
    block3x3: bool = True,
) -> dict[str, np.ndarray]:
    """Every loss measure from the logits of a chunk of checkpoints, one log-softmax per edited logit tensor.

    The straightforward formulation; :func:`_measures` computes the same numbers faster and falls back to this
    one where its exponentials could overflow. logits: (C, p*p, p) any float dtype, rows a * p + b. Returns
    numpy arrays keyed by output variable name.
    """
    p = logits.shape[-1]
    L = logits.to(torch.float64)
    labels = _residues(p)
    fm = {k: torch.from_numpy(v.reshape(-1).astype(np.float64)) for k, v in masks.items()}
    out: dict[str, np.ndarray] = {}

    # the model's own loss and accuracy
    pe = per_example_loss(L, labels)
    correct = L.argmax(-1) == labels
    for split in _SPLITS:
        loss, acc = _split_stats(pe, correct, fm[split])
        out[f"loss_{split}"], out[f"acc_{split}"] = loss.numpy(), acc.numpy()
    del pe, correct

    # restricted: logits depend on s only; the loss over a split weights each s by its count in the split
    Lr = _restricted_by_residue(L, p, key_freqs)  # (C, s, c)
    s_lab = torch.arange(p)
    pe_s = per_example_loss(Lr, s_lab)  # (C, s)
    corr_s = (Lr.argmax(-1) == s_lab).to(torch.float64)
    for split in _SPLITS:
        counts = torch.zeros(p, dtype=torch.float64).index_add_(0, labels, fm[split])
        n = counts.sum()
        out[f"restricted_loss_{split}"] = ((pe_s * counts).sum(-1) / n).numpy()
        out[f"restricted_acc_{split}"] = ((corr_s * counts).sum(-1) / n).numpy()

    # excluded: per key frequency and full, on the training split, no bias correction. The projections are
    # fitted on the full grid (R from all of L); only the training rows enter the loss, so only they are edited.
    train_rows = torch.from_numpy(np.flatnonzero(masks["train"].reshape(-1)))
    L_tr, lab_tr = L[:, train_rows], labels[train_rows]

    def train_stats(R_by_s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        Lx = L_tr - R_by_s[:, lab_tr]
        if lab_tr.numel() == 0:
            nan = torch.full(Lx.shape[:1], float("nan"), dtype=torch.float64)
            return nan, nan
        return per_example_loss(Lx, lab_tr).mean(-1), (Lx.argmax(-1) == lab_tr).to(torch.float64).mean(-1)

    R = _sum_projection_by_residue(L, p, key_freqs)  # (C, K, s, c)
    ex = [train_stats(R[:, j]) for j in range(len(key_freqs))]
    out["excluded_loss"] = torch.stack([e[0] for e in ex], -1).numpy()
    out["excluded_acc"] = torch.stack([e[1] for e in ex], -1).numpy()
    loss, acc = train_stats(R.sum(1))
    out["excluded_loss_full"], out["excluded_acc_full"] = loss.numpy(), acc.numpy()
    del R

    if all_freqs:
        every = list(range(1, (p - 1) // 2 + 1))
        R_all = _sum_projection_by_residue(L, p, every)
        out["excluded_loss_by_freq"] = torch.stack([train_stats(R_all[:, j])[0] for j in range(len(every))], -1).numpy()
        out["excluded_loss_max"] = out["excluded_loss_by_freq"].max(-1)
        del R_all
    del L_tr

    # 3 x 3-block ablation
    if block3x3:
        L3 = _block3x3(L, p, key_freqs)
        pe3 = per_example_loss(L3, labels)
        corr3 = L3.argmax(-1) == labels
        for split in _SPLITS:
            loss, acc = _split_stats(pe3, corr3, fm[split])
            out[f"block3x3_loss_{split}"], out[f"block3x3_acc_{split}"] = loss.numpy(), acc.numpy()
    return out


class _Plan:
    """Constants of :func:`_measures` for one (p, split, key frequencies, all_freqs): index maps, masks, trig."""

    def __init__(self, p: int, masks: dict[str, np.ndarray], key_freqs: Sequence[int], all_freqs: bool):
        self.p = p
        self.masks = masks
        self.key_freqs = list(key_freqs)
        self.all_freqs = all_freqs
        # residue order: row s * p + a holds the pair (a, b = (s - a) mod p), whose label is s
        s = torch.arange(p)[:, None]
        a = torch.arange(p)[None, :]
        self.perm = (a * p + (s - a) % p).reshape(-1)
        self.sidx = torch.arange(p)
        self.labels = _residues(p)
        perm = self.perm.numpy()
        self.mask_ab = {k: torch.from_numpy(v.reshape(-1).astype(np.float64)) for k, v in masks.items()}
        self.mask_s = {k: torch.from_numpy(v.reshape(-1)[perm].astype(np.float64).reshape(p, p))
                       for k, v in masks.items()}
        self.n = {k: float(v.sum()) for k, v in masks.items()}
        self.counts = {k: v.sum(1) for k, v in self.mask_s.items()}  # pairs of the split per residue s
        # the training pairs of each residue, padded to a common count with the index of an all-zero row (p*p)
        tr = masks["train"].reshape(-1)[perm].reshape(p, p)
        self.n_tr = int(tr.sum())
        width = max(1, int(tr.sum(1).max()))
        pad = np.full((p, width), p * p, dtype=np.int64)
        valid = np.zeros((p, width), dtype=bool)
        for s_ in range(p):
            rows = np.flatnonzero(tr[s_])
            pad[s_, : rows.size] = s_ * p + rows
            valid[s_, : rows.size] = True
        self.pad_idx = torch.from_numpy(pad.reshape(-1))
        self.pad_valid = torch.from_numpy(valid)
        self.pad_shape = (p, width)
        # frequencies whose projections are needed; the excluded variants are these plus "all key freqs" (full)
        self.freqs = list(range(1, (p - 1) // 2 + 1)) if all_freqs else self.key_freqs
        self.key_pos = [self.freqs.index(k) for k in self.key_freqs]
        self.cos, self.sin = _trig(p, self.freqs)  # (F, s)
        # 3 x 3 blocks: the kept components J and the (f, g) mask among them
        F = torch.from_numpy(fourier_basis(p).values)
        J = [0] + [i for k in self.key_freqs for i in (2 * k - 1, 2 * k)]
        self.FJ = F[J].contiguous()  # (m, x)
        m = len(J)
        keep = torch.zeros(m, m, dtype=torch.float64)
        keep[0, 0] = 1.0
        for j in range(len(self.key_freqs)):
            block = [0, 1 + 2 * j, 2 + 2 * j]
            keep[np.ix_(block, block)] = 1.0
        self.keep = keep

    def buffers(self) -> tuple[torch.Tensor, ...]:
        """Work buffers for :func:`_measures_one`, reusable from one checkpoint to the next (one set per thread):
        logits and exponentials in residue order, with one extra all-zero row (index p*p) that pads the
        training pairs of each residue to a common count; the padded training pairs; an excluded-logit table."""
        p, n = self.p, self.pad_shape[0] * self.pad_shape[1]
        return (torch.zeros(p * p + 1, p, dtype=torch.float64), torch.zeros(p * p + 1, p, dtype=torch.float64),
                torch.zeros(n, p, dtype=torch.float64), torch.zeros(n, p, dtype=torch.float64),
                torch.zeros(n, p, dtype=torch.float64))

    def measures(self, L: torch.Tensor, bufs: tuple[torch.Tensor, ...], *, block3x3: bool) -> dict[str, np.ndarray]:
        """The measures of one checkpoint from its logits (p*p, p): fast path, or the direct one on overflow."""
        one = _measures_one(L, self, bufs, block3x3=block3x3)
        if one is None:
            one = {k: v[0] for k, v in _measures_direct(L[None], self.masks, self.key_freqs,
                                                        all_freqs=self.all_freqs, block3x3=block3x3).items()}
        return one


def _measures(
    logits: torch.Tensor,
    masks: dict[str, np.ndarray],
    key_freqs: Sequence[int],
    *,
    all_freqs: bool,
    block3x3: bool = True,
) -> dict[str, np.ndarray]:
    """Every loss measure from the logits of a chunk of checkpoints (same outputs as :func:`_measures_direct`).

    logits: (C, p*p, p) any float dtype (a slice of wider logits is fine), rows a * p + b. Returns numpy arrays
    keyed by output variable name.

    Work per checkpoint, all float64: the logits are put in residue order (row (s, a) is the pair
    (a, (s - a) mod p), label s), so every projection R_k[s, c] broadcasts over a. With
    E[s, a, c] = exp(L[s, a, c] - L[s, a, s]) for c != s (0 at c = s),

    * the model's loss is log1p(sum_c E) (the label-shifted log-sum-exp; exact for tiny losses too);
    * the loss with R removed is log1p(sum_c E[s, a, c] exp(R[s, s] - R[s, c])), so the excluded losses of
      every frequency come from one batched matrix product of E (the training pairs, grouped by residue) with
      the (p x variants) table exp(R[s, s] - R[s, c]) of each residue, instead of one log-softmax over the
      training pairs per variant.

    Where those exponentials could overflow (a logit margin plus a projection range above 700 nats) the
    checkpoint is computed by :func:`_measures_direct` instead.
    """
    p = logits.shape[-1]
    plan = _Plan(p, masks, key_freqs, all_freqs)
    bufs = plan.buffers()
    rows = [plan.measures(logits[c], bufs, block3x3=block3x3) for c in range(logits.shape[0])]
    return {k: np.stack([r[k] for r in rows]) for k in rows[0]}


def _label_is_argmax(values: Callable[[], torch.Tensor], above: torch.Tensor, tied: torch.Tensor) -> torch.Tensor:
    """Whether argmax over c of V[s, i, c] is s (the first maximum, as torch.argmax), from a cheap comparison.

    ``above`` (s, i): the label's logit is known to beat every other class; ``tied``: undecided (a tie, or
    within rounding of one). Only for those rows is V = ``values()`` built and its argmax taken.
    """
    if bool(tied.any()):
        s, i = torch.nonzero(tied, as_tuple=True)
        above = above.clone()
        above[s, i] = values()[s, i].argmax(-1) == s
    return above


def _mean_over(x: torch.Tensor, weight: torch.Tensor, n: float) -> np.float64:
    """sum(x * weight) / n as a float64 scalar; NaN for an empty split."""
    return np.float64(float((x * weight).sum()) / n) if n > 0 else np.float64(np.nan)


def _measures_one(
    L: torch.Tensor, plan: _Plan, bufs: tuple[torch.Tensor, ...], *, block3x3: bool
) -> dict[str, np.ndarray] | None:
    """The measures of one checkpoint, logits (p*p, p); None where the exponentials could overflow."""
    p, sidx = plan.p, plan.sidx
    Lpad, Epad, L_tr, E_tr, V = bufs
    if L.dtype == torch.float64:
        torch.index_select(L, 0, plan.perm, out=Lpad[: p * p])
    else:
        Lpad[: p * p].copy_(L.index_select(0, plan.perm))
    Ls = Lpad[: p * p].view(p, p, p)  # (s, a, c)
    Ly = Ls.diagonal(dim1=0, dim2=2).T  # (s, a): the label logit L[s, a, s]
    margin = float((Ls.amax(-1) - Ly).max())
    G = Ls.sum(1)  # (s, c): group sums over the pairs with a + b = s
    alpha, beta = plan.cos @ G, plan.sin @ G  # (F, c)
    R = (2.0 / p**2) * (plan.cos[:, :, None] * alpha[:, None, :] + plan.sin[:, :, None] * beta[:, None, :])
    R_key = R[plan.key_pos].sum(0)  # (s, c): sum over the key frequencies
    Rv = torch.cat([R, R_key[None]])  # (variant, s, c): every frequency in plan.freqs, then the full set
    Rd = Rv.diagonal(dim1=1, dim2=2)  # (variant, s)
    if margin + float((Rd - Rv.amin(-1)).max()) > 700.0:
        return None
    out: dict[str, np.ndarray] = {}

    # the model's own loss and accuracy
    E = Epad[: p * p].view(p, p, p)
    torch.sub(Ls, Ly[:, :, None], out=E)
    np.exp(E.numpy(), out=E.numpy())
    E.diagonal(dim1=0, dim2=2).zero_()
    pe = torch.log1p(E.sum(-1))  # (s, a)
    E_max = E.amax(-1)  # > 1 where another class beats the label, < 1 where none reaches it
    correct = _label_is_argmax(lambda: Ls, E_max < 1.0, E_max == 1.0).to(torch.float64)
    for split in _SPLITS:
        m, n = plan.mask_s[split], plan.n[split]
        out[f"loss_{split}"], out[f"acc_{split}"] = _mean_over(pe, m, n), _mean_over(correct, m, n)

    # restricted: depends on (a, b) only through s; a split weights residue s by its number of pairs
    Lr = R_key + (G.sum(0) / p**2 - R_key.mean(0))
    pe_s = per_example_loss(Lr, sidx)
    corr_s = (Lr.argmax(-1) == sidx).to(torch.float64)
    for split in _SPLITS:
        cnt, n = plan.counts[split], plan.n[split]
        out[f"restricted_loss_{split}"] = _mean_over(pe_s, cnt, n)
        out[f"restricted_acc_{split}"] = _mean_over(corr_s, cnt, n)

    # excluded (training split, no bias correction): log1p(sum_c E[s, a, c] exp(R[s, s] - R[s, c]))
    nk = len(plan.key_pos)
    if plan.n_tr == 0:
        nan = np.float64(np.nan)
        out["excluded_loss"] = np.full(nk, np.nan)
        out["excluded_acc"] = np.full(nk, np.nan)
        out["excluded_loss_full"], out["excluded_acc_full"] = nan, nan
        if plan.all_freqs:
            out["excluded_loss_by_freq"] = np.full(len(plan.freqs), np.nan)
            out["excluded_loss_max"] = nan
    else:
        g = torch.exp(Rd[:, :, None] - Rv)  # (variant, s, c)
        torch.index_select(Epad, 0, plan.pad_idx, out=E_tr)
        E_tr = E_tr.view(*plan.pad_shape, p)  # (s, pair, c), padding rows 0
        T = torch.bmm(E_tr, g.permute(1, 2, 0))  # (s, pair, variant)
        ex = (torch.log1p(T) * plan.pad_valid[:, :, None]).sum((0, 1)).numpy() / plan.n_tr  # (variant,)
        torch.index_select(Lpad, 0, plan.pad_idx, out=L_tr)
        L_tr = L_tr.view(*plan.pad_shape, p)
        V = V.view(*plan.pad_shape, p)
        acc = []
        for j in [*plan.key_pos, len(plan.freqs)]:
            torch.sub(L_tr, Rv[j][:, None, :], out=V)  # (s, pair, c): the excluded logits of the training pairs
            vy = V.diagonal(dim1=0, dim2=2).T.clone()
            V.diagonal(dim1=0, dim2=2).fill_(-math.inf)
            other = V.amax(-1)  # best other class
            hit = _label_is_argmax(lambda: L_tr - Rv[j][:, None, :], vy > other, vy == other)
            acc.append(float((hit & plan.pad_valid).sum()) / plan.n_tr)
        out["excluded_loss"] = ex[plan.key_pos]
        out["excluded_acc"] = np.asarray(acc[:nk])
        out["excluded_loss_full"], out["excluded_acc_full"] = np.float64(ex[-1]), np.float64(acc[-1])
        if plan.all_freqs:
            out["excluded_loss_by_freq"] = ex[:-1].copy()
            out["excluded_loss_max"] = np.float64(ex[:-1].max())

    # 3 x 3-block ablation, on the pairs in (a, b) order
    if block3x3:
        FJ, m = plan.FJ, plan.FJ.shape[0]
        hat = (FJ @ L.to(torch.float64).reshape(p, p * p)).view(m, p, p)  # over a: (f, b, c)
        hat = (FJ @ hat) * plan.keep[:, :, None]  # over b: (f, g, c), only the kept blocks
        L3 = FJ.T @ (FJ.T @ hat).view(m, p * p)  # back over b, then over a: (a, b * c)
        L3 = L3.view(p * p, p)
        M3, arg3 = L3.max(-1)
        ex3 = torch.sub(L3, M3[:, None])
        np.exp(ex3.numpy(), out=ex3.numpy())
        pe3 = (M3 - L3.gather(1, plan.labels[:, None])[:, 0]) + torch.log(ex3.sum(-1))
        corr3 = (arg3 == plan.labels).to(torch.float64)
        for split in _SPLITS:
            m_, n = plan.mask_ab[split], plan.n[split]
            out[f"block3x3_loss_{split}"] = _mean_over(pe3, m_, n)
            out[f"block3x3_acc_{split}"] = _mean_over(corr3, m_, n)
    return out


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
        :func:`mechgrok.activations.grid_activations` returns them).
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
    labels = _residues(p)

    def fn(L: torch.Tensor, p: int) -> torch.Tensor:
        return _sum_projection_by_residue(L, p, [k])[..., 0, :, :][..., labels, :]

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
    labels = _residues(p)
    return _apply(
        logits,
        lambda L, p: _restricted_by_residue(L, p, ks)[..., labels, :],
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
    labels = _residues(p)
    return _apply(
        logits,
        lambda L, p: L - _sum_projection_by_residue(L, p, ks).sum(-3)[..., labels, :],
        "excluded_logits",
        {"key_freqs": ks, "units": "logit"},
    )


def block3x3_logits(logits: xr.DataArray, *, key_freqs: Sequence[int]) -> xr.DataArray:
    """The logits with every 2D Fourier component outside the key-frequency 3 x 3 blocks zeroed (paper 4.4).

    With L_hat[f, g, c] = sum_{a,b} F[f, a] F[g, b] L[a, b, c] (:func:`mechgrok.fourier.fft2d`), keep (f, g) iff
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
    return _apply(logits, lambda L, p: _block3x3(L, p, ks), "block3x3_logits", {"key_freqs": ks, "units": "logit"})


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
        ref = "paper 5.1; paper.md 3.7"
    elif name.startswith("block3x3_"):
        desc = f"{'loss' if units == 'nats' else 'accuracy'} on the {split} pairs with only the 2D Fourier 3x3 blocks I_k x I_k, k in K, kept"
        ref = "paper 4.4"
    elif name in ("excluded_loss", "excluded_acc"):
        desc = "train-split loss/accuracy with the cos/sin(w_k(a+b)) directions of one key frequency removed"
        ref = "paper 5.1; paper.md 3.8"
    elif name.endswith("_full"):
        desc = "train-split loss/accuracy with the cos/sin(w_k(a+b)) directions of every key frequency removed"
        ref = "paper 5.1, Fig. 7; paper.md 3.8"
    elif name == "excluded_loss_by_freq":
        desc = "train-split loss with the cos/sin(w_f(a+b)) directions of frequency f removed, every f"
        ref = "paper.md 3.8"
    else:  # excluded_loss_max
        desc = "maximum over all frequencies of the single-frequency excluded loss (model-independent variant)"
        ref = "paper 5.1, footnote 3"
    attrs = {"units": units, "description": desc, "paper_section": ref}
    if units == "nats":
        attrs["loss"] = _LOSS_DOC
    return attrs


def _to_dataset(
    parts: dict[str, list[np.ndarray]],
    checkpoint: xr.DataArray,
    key_freqs: list[int],
    p: int,
    attrs: dict[str, Any],
) -> xr.Dataset:
    data: dict[str, Any] = {}
    for name, chunks in parts.items():
        arr = np.concatenate(chunks, axis=0)
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
    if "excluded_loss_by_freq" in parts:
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
    chunk: int = 8,
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
    chunk : int
        Checkpoints read from ``logits`` at once; the measures are computed one checkpoint at a time in reused
        float64 buffers (about 2 p^3 * 8 bytes, 23 MB at p = 113).
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
    masks = _split_masks(is_train, p)
    da = logits.transpose("checkpoint", "a", "b", "c")
    parts: dict[str, list[np.ndarray]] = {}
    n = da.sizes["checkpoint"]
    if n == 0:
        raise AnalysisError("the logits have no checkpoints")
    step = max(1, int(chunk))
    with torch.no_grad():
        for start in range(0, n, step):
            vals = np.asarray(da.isel(checkpoint=slice(start, start + step)).values)
            L = torch.from_numpy(vals).reshape(vals.shape[0], p * p, p)
            for name, arr in _measures(L, masks, ks, all_freqs=all_freqs).items():
                parts.setdefault(name, []).append(arr)
            del L, vals
            _trim_heap()
    return _to_dataset(parts, da["checkpoint"], ks, p, _base_attrs(p, ks, reference_checkpoint, key_freq_rule))


def prepare_trajectory(
    ds: xr.Dataset, *, key_freqs: Sequence[int], checkpoints: slice | list | None
) -> tuple[xr.Dataset, int, list[int], dict[str, np.ndarray]]:
    """Validate a trajectory for the loss measures and select its checkpoints.

    Returns
    -------
    ds, p, key_freqs, masks
        The selected trajectory, the modulus, the checked key frequencies and the boolean split masks
        (``all``, ``train``, ``test``) over the p^2 grid rows.

    Raises
    ------
    AnalysisError
        If the trajectory has no (odd) p, is multi-layer, has no ``is_train``, no checkpoint is selected, or K is
        invalid.
    """
    p = model_p(ds)
    ks = check_key_freqs(key_freqs, p)
    if "is_train" not in ds:
        raise AnalysisError("the trajectory has no 'is_train' split; the train/test and excluded losses need it")
    masks = _split_masks(ds["is_train"], p)
    ds = select_checkpoints(ds, checkpoints)
    if ds.sizes.get("checkpoint", 0) == 0:
        raise AnalysisError("no checkpoints selected")
    return ds, p, ks, masks


def ablation_losses(
    ds: xr.Dataset,
    *,
    key_freqs: Sequence[int],
    checkpoints: slice | list | None = None,
    chunk: int = 8,
    all_freqs: bool = False,
    reference_checkpoint: int | None = None,
    key_freq_rule: str | None = None,
) -> xr.Dataset:
    """Loss, accuracy, restricted, excluded and 3 x 3-block losses over every checkpoint of a trajectory.

    One float64 forward pass over the p x p grid per checkpoint (:func:`mechgrok.model.grid_forward`, the same
    pass as :func:`mechgrok.activations.grid_activations`); every measure of :func:`logit_ablations` is derived
    from it, then the chunk is freed, so peak memory depends on ``chunk`` and p, not on the number of
    checkpoints. :func:`mechgrok.progress.progress_measures` gives the same losses from the same float64 pass.

    Parameters
    ----------
    ds : xarray.Dataset
        Canonical one-layer trajectory (``mechgrok.store``) with ``attrs["p"]`` and ``is_train`` (a, b).
    key_freqs : sequence of int
        The key frequencies K, fixed for every checkpoint (usually found at a reference checkpoint by
        :mod:`mechgrok.key_frequencies`).
    checkpoints : slice or list, optional
        ``isel`` selection along ``checkpoint``; default all.
    chunk : int
        Checkpoints per call of the forward pass (their float64 logits are held together: about 12 MB per
        checkpoint at p = 113, plus the work memory of :func:`logit_ablations`).
    all_freqs : bool
        Also the excluded loss for every frequency and its maximum (see :func:`logit_ablations`).
    reference_checkpoint : int, optional
        Epoch of the checkpoint K was taken from (attrs).
    key_freq_rule : str, optional
        Rule that chose K (attrs).

    Returns
    -------
    xarray.Dataset
        As :func:`logit_ablations`, over ``checkpoint`` with the epoch index coordinate of ``ds``.

    Raises
    ------
    AnalysisError
        If the trajectory has no p, is multi-layer, lacks weights or ``is_train``, or K is invalid.
    """
    ds, p, ks, masks = prepare_trajectory(ds, key_freqs=key_freqs, checkpoints=checkpoints)
    parts: dict[str, list[np.ndarray]] = {}
    with torch.no_grad():
        for sub in iter_checkpoint_chunks(ds, chunk):
            w = checkpoint_weights(sub, dtype=torch.float64)
            # float64 pass, the same as grid_activations; the '=' class is dropped
            logits = grid_forward({**w, "W_U": w["W_U"][..., :p]}, p).logits  # (C, p*p, p)
            del w
            for name, arr in _measures(logits, masks, ks, all_freqs=all_freqs).items():
                parts.setdefault(name, []).append(arr)
            del logits
            _trim_heap()
    attrs = _base_attrs(p, ks, reference_checkpoint, key_freq_rule)
    return _to_dataset(parts, ds["checkpoint"], ks, p, attrs)
