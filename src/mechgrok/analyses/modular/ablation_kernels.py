"""The per-checkpoint kernels of the Fourier-space ablations (torch, float64): the arithmetic behind
:mod:`mechgrok.analyses.modular.ablation`, whose module docstring gives the definitions and the implementation
notes (group sums over residues s = a + b, label-shifted exponentials, the direct fallback on overflow).

Tensors carry leading dims ``...`` and logits flattened to (..., p*p, p), rows a * p + b.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np
import torch

from mechgrok.analyses.modular.fourier import fourier_basis, residue_sums, residues, trig
from mechgrok.tasks.loss import per_example_loss

__all__ = [
    "SPLITS",
    "AblationPlan",
    "ablation_measures",
    "measures_direct",
    "sum_projection_by_residue",
    "keep_3x3_blocks",
    "restricted_by_residue",
]

#: The splits every loss is reported on.
SPLITS = ("all", "train", "test")


def sum_projection_by_residue(L: torch.Tensor, p: int, freqs: Sequence[int]) -> torch.Tensor:
    """R_k[s, c] with P_k(L)[a, b, c] = R_k[(a + b) mod p, c].

    L: float64 (..., p*p, p). Returns float64 (..., K, p, p) over (freq, s, c).
    """
    G = residue_sums(L, p)  # (..., s, c)
    cos, sin = trig(p, freqs)  # (K, s)
    alpha = torch.einsum("ks,...sc->...kc", cos, G)
    beta = torch.einsum("ks,...sc->...kc", sin, G)
    return (2.0 / p**2) * (cos[:, :, None] * alpha[..., :, None, :] + sin[:, :, None] * beta[..., :, None, :])


def keep_3x3_blocks(L: torch.Tensor, p: int, freqs: Sequence[int]) -> torch.Tensor:
    """Keep only the 2D Fourier components in the blocks I_k x I_k (k in freqs); float64 (..., p*p, p)."""
    F = torch.from_numpy(fourier_basis(p, even_order=p % 2 == 0).values)  # even: discrete-log coordinates
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


def restricted_by_residue(L: torch.Tensor, p: int, freqs: Sequence[int]) -> torch.Tensor:
    """Restricted logits L_r[s, c] (they depend on (a, b) only through s); float64 (..., p, p)."""
    R = sum_projection_by_residue(L, p, freqs).sum(dim=-3)  # (..., s, c): L_trig by residue
    # bias correction: + mean over (a, b) of (L - L_trig); each residue s holds p of the p^2 pairs
    return R + (L.mean(dim=-2) - R.mean(dim=-2))[..., None, :]


def split_stats(pe: torch.Tensor, correct: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean loss and accuracy over a split; pe/correct (..., p*p), mask float64 (p*p,)."""
    n = mask.sum()
    return (pe * mask).sum(-1) / n, (correct.to(torch.float64) * mask).sum(-1) / n


def measures_direct(
    logits: torch.Tensor,
    masks: dict[str, np.ndarray],
    key_freqs: Sequence[int],
    *,
    all_freqs: bool,
    block3x3: bool = True,
) -> dict[str, np.ndarray]:
    """Every loss measure from the logits of a chunk of checkpoints, one log-softmax per edited logit tensor.

    The straightforward formulation; :func:`ablation_measures` computes the same numbers faster and falls back to this
    one where its exponentials could overflow. logits: (C, p*p, p) any float dtype, rows a * p + b. Returns
    numpy arrays keyed by output variable name.
    """
    p = logits.shape[-1]
    L = logits.to(torch.float64)
    labels = residues(p)
    fm = {k: torch.from_numpy(v.reshape(-1).astype(np.float64)) for k, v in masks.items()}
    out: dict[str, np.ndarray] = {}

    # the model's own loss and accuracy
    pe = per_example_loss(L, labels)
    correct = L.argmax(-1) == labels
    for split in SPLITS:
        loss, acc = split_stats(pe, correct, fm[split])
        out[f"loss_{split}"], out[f"acc_{split}"] = loss.numpy(), acc.numpy()
    del pe, correct

    # restricted: logits depend on s only; the loss over a split weights each s by its count in the split
    Lr = restricted_by_residue(L, p, key_freqs)  # (C, s, c)
    s_lab = torch.arange(p)
    pe_s = per_example_loss(Lr, s_lab)  # (C, s)
    corr_s = (Lr.argmax(-1) == s_lab).to(torch.float64)
    for split in SPLITS:
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

    R = sum_projection_by_residue(L, p, key_freqs)  # (C, K, s, c)
    ex = [train_stats(R[:, j]) for j in range(len(key_freqs))]
    out["excluded_loss"] = torch.stack([e[0] for e in ex], -1).numpy()
    out["excluded_acc"] = torch.stack([e[1] for e in ex], -1).numpy()
    loss, acc = train_stats(R.sum(1))
    out["excluded_loss_full"], out["excluded_acc_full"] = loss.numpy(), acc.numpy()
    del R

    if all_freqs:
        every = list(range(1, (p - 1) // 2 + 1))
        R_all = sum_projection_by_residue(L, p, every)
        out["excluded_loss_by_freq"] = torch.stack([train_stats(R_all[:, j])[0] for j in range(len(every))], -1).numpy()
        out["excluded_loss_max"] = out["excluded_loss_by_freq"].max(-1)
        del R_all

    # 3 x 3-block ablation
    if block3x3:
        L3 = keep_3x3_blocks(L, p, key_freqs)
        pe3 = per_example_loss(L3, labels)
        corr3 = L3.argmax(-1) == labels
        for split in SPLITS:
            loss, acc = split_stats(pe3, corr3, fm[split])
            out[f"block3x3_loss_{split}"], out[f"block3x3_acc_{split}"] = loss.numpy(), acc.numpy()
    return out


class AblationPlan:
    """Constants of :func:`ablation_measures` for one (p, split, key frequencies, all_freqs): index maps, masks, trig."""

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
        self.labels = residues(p)
        perm = self.perm.numpy()
        self.mask_ab = {k: torch.from_numpy(v.reshape(-1).astype(np.float64)) for k, v in masks.items()}
        self.n = {k: float(v.sum()) for k, v in masks.items()}
        self.counts = {k: torch.from_numpy(v.reshape(-1)[perm].astype(np.float64).reshape(p, p).sum(1))
                       for k, v in masks.items()}  # pairs of the split per residue s
        # the training pairs of each residue, padded to a common count
        tr = masks["train"].reshape(-1)[perm].reshape(p, p)
        self.n_tr = int(tr.sum())
        width = max(1, int(tr.sum(1).max()))
        pad = np.full((p, width), p * p, dtype=np.int64)
        valid = np.zeros((p, width), dtype=bool)
        for s_ in range(p):
            rows = np.flatnonzero(tr[s_])
            pad[s_, : rows.size] = perm[s_ * p + rows]  # rows a * p + b of the pairs in (a, b) order
            valid[s_, : rows.size] = True
        self.pad_idx = torch.from_numpy(np.where(valid, pad, 0).reshape(-1))  # padding: any row (masked out)
        self.pad_valid = torch.from_numpy(valid)
        self.pad_shape = (p, width)
        # frequencies whose projections are needed; the excluded variants are these plus "all key freqs" (full)
        self.freqs = list(range(1, (p - 1) // 2 + 1)) if all_freqs else self.key_freqs
        self.key_pos = [self.freqs.index(k) for k in self.key_freqs]
        self.cos, self.sin = trig(p, self.freqs)  # (F, s)
        # 3 x 3 blocks: the kept components J and the (f, g) mask among them
        F = torch.from_numpy(fourier_basis(p, even_order=p % 2 == 0).values)  # even: discrete-log coordinates
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
        """Work buffers for :func:`measures_one`, reusable from one checkpoint to the next (one set per thread):
        the exponentials of the logits (then the 3 x 3-block logits); the training pairs of each residue, padded to
        a common count (logits and exponentials); an excluded-logit table; the projections R of every variant and
        their exponential table."""
        p, n = self.p, self.pad_shape[0] * self.pad_shape[1]
        variants = len(self.freqs) + 1
        # reused work memory: fresh tensors of p^3 elements cost more in page faults than the arithmetic on them
        return (torch.zeros(p * p, p, dtype=torch.float64),
                torch.zeros(n, p, dtype=torch.float64), torch.zeros(n, p, dtype=torch.float64),
                torch.zeros(n, p, dtype=torch.float64), torch.zeros(variants, p, p, dtype=torch.float64),
                torch.zeros(variants, p, p, dtype=torch.float64))

    def measures(self, L: torch.Tensor, bufs: tuple[torch.Tensor, ...], *, block3x3: bool,
                 G: torch.Tensor | None = None) -> dict[str, np.ndarray]:
        """The measures of one checkpoint from its logits (p*p, p): fast path, or the direct one on overflow.
        ``G``: the logits' residue sums (:func:`~mechgrok.analyses.modular.fourier.residue_sums`) where known."""
        one = measures_one(L, self, bufs, block3x3=block3x3, G=G)
        if one is None:
            one = {k: v[0] for k, v in measures_direct(L[None], self.masks, self.key_freqs,
                                                        all_freqs=self.all_freqs, block3x3=block3x3).items()}
        return one


def ablation_measures(
    logits: torch.Tensor,
    masks: dict[str, np.ndarray],
    key_freqs: Sequence[int],
    *,
    all_freqs: bool,
    block3x3: bool = True,
) -> dict[str, np.ndarray]:
    """Every loss measure from the logits of a chunk of checkpoints (same outputs as :func:`measures_direct`).

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
    checkpoint is computed by :func:`measures_direct` instead.
    """
    p = logits.shape[-1]
    plan = AblationPlan(p, masks, key_freqs, all_freqs)
    bufs = plan.buffers()
    rows = [plan.measures(logits[c], bufs, block3x3=block3x3) for c in range(logits.shape[0])]
    return {k: np.stack([r[k] for r in rows]) for k in rows[0]}


def label_is_argmax(values: Callable[[], torch.Tensor], above: torch.Tensor, tied: torch.Tensor,
                    labels: torch.Tensor | None = None) -> torch.Tensor:
    """Whether argmax over c of V[..., c] is the label (the first maximum, as torch.argmax), from a cheap comparison.

    ``above`` (...): the label's logit is known to beat every other class; ``tied``: undecided (a tie, or
    within rounding of one). Only for those rows is V = ``values()`` built and its argmax taken. ``labels`` (...):
    the label of each row; by default the first index (V[s, i, c] has label s).
    """
    if bool(tied.any()):
        at = torch.nonzero(tied, as_tuple=True)
        label = at[0] if labels is None else labels[at]
        above = above.clone()
        above[at] = values()[at].argmax(-1) == label
    return above


def mean_over(x: torch.Tensor, weight: torch.Tensor, n: float) -> np.float64:
    """sum(x * weight) / n as a float64 scalar; NaN for an empty split."""
    return np.float64(float((x * weight).sum()) / n) if n > 0 else np.float64(np.nan)


def _rows_by_a(L: torch.Tensor) -> torch.Tensor:
    """Logits (p*p, p), rows a * p + b, as a (p, p * W) matrix, row a holding b * W + c: without a copy where L is
    the first p columns of contiguous rows of width W (the grid pass's padded logits; the extra columns only
    produce extra output columns of a product over a, which are dropped), else as a contiguous (p, p * p) copy."""
    n, p = L.shape
    W = L.stride(0)
    if (L.dtype == torch.float64 and L.stride(1) == 1 and W >= p
            and L.untyped_storage().nbytes() >= (L.storage_offset() + n * W) * L.element_size()):
        return L.as_strided((n // p, p * W), (p * W, 1))
    return L.to(torch.float64).reshape(n // p, p * p)


def measures_one(
    L: torch.Tensor, plan: AblationPlan, bufs: tuple[torch.Tensor, ...], *, block3x3: bool,
    G: torch.Tensor | None = None,
) -> dict[str, np.ndarray] | None:
    """The measures of one checkpoint, logits (p*p, p); None where the exponentials could overflow. ``G``: the
    logits' residue sums (s, c), if already computed."""
    p, sidx, labels = plan.p, plan.sidx, plan.labels
    E, L_tr, E_tr, V, Rv, g = bufs
    L = L if L.dtype == torch.float64 else L.to(torch.float64)
    Ly = L.gather(1, labels[:, None])  # (pair, 1): the label logit L[a, b, (a + b) mod p]
    G = residue_sums(L, p) if G is None else G  # (s, c): group sums over the pairs with a + b = s
    # R_k[s, c] = (2 / p^2) (cos_k[s] alpha_k[c] + sin_k[s] beta_k[c]): a batch of rank-2 products, written
    # into Rv (variant, s, c): every frequency in plan.freqs, then the full set of key frequencies
    nf = len(plan.freqs)
    trig_s = torch.stack([plan.cos, plan.sin], -1)  # (F, s, 2)
    coef = torch.stack([plan.cos @ G, plan.sin @ G], 1).mul_(2.0 / p**2)  # (F, 2, c): alpha_k, beta_k
    torch.bmm(trig_s, coef, out=Rv[:nf])
    R_key = torch.sum(Rv[plan.key_pos], 0, out=Rv[nf])  # (s, c): sum over the key frequencies
    Rd = Rv.diagonal(dim1=1, dim2=2)  # (variant, s)
    spread = float((Rd - Rv.amin(-1)).max())  # the largest range of a projection, >= 0
    if spread > 700.0:
        return None
    out: dict[str, np.ndarray] = {}

    # the model's own loss and accuracy
    torch.sub(L, Ly, out=E).exp_()  # (pair, c) (torch's vectorised exp: 4x numpy's on AVX2)
    E.scatter_(1, labels[:, None], 0.0)
    E_max = E.amax(-1)  # > 1 where another class beats the label, < 1 where none reaches it
    # the largest logit margin max(0, L[s, a, c] - L[s, a, s]) is log(max E, 1) (inf where E overflowed);
    # the excluded losses multiply E by exponentials of up to the projections' range
    if math.log(max(float(E_max.max()), 1.0)) + spread > 700.0:
        return None
    pe = torch.log1p(E.sum(-1))  # (s, a)
    correct = label_is_argmax(lambda: L, E_max < 1.0, E_max == 1.0, labels).to(torch.float64)
    for split in SPLITS:
        m, n = plan.mask_ab[split], plan.n[split]
        out[f"loss_{split}"], out[f"acc_{split}"] = mean_over(pe, m, n), mean_over(correct, m, n)

    # restricted: depends on (a, b) only through s; a split weights residue s by its number of pairs
    Lr = R_key + (G.sum(0) / p**2 - R_key.mean(0))
    pe_s = per_example_loss(Lr, sidx)
    corr_s = (Lr.argmax(-1) == sidx).to(torch.float64)
    for split in SPLITS:
        cnt, n = plan.counts[split], plan.n[split]
        out[f"restricted_loss_{split}"] = mean_over(pe_s, cnt, n)
        out[f"restricted_acc_{split}"] = mean_over(corr_s, cnt, n)

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
        torch.sub(Rd[:, :, None], Rv, out=g).exp_()  # (variant, s, c)
        torch.index_select(E, 0, plan.pad_idx, out=E_tr)
        E_tr = E_tr.view(*plan.pad_shape, p)  # (s, pair, c); padding rows are masked out below
        T = torch.bmm(E_tr, g.permute(1, 2, 0))  # (s, pair, variant)
        ex = (torch.log1p(T) * plan.pad_valid[:, :, None]).sum((0, 1)).numpy() / plan.n_tr  # (variant,)
        torch.index_select(L, 0, plan.pad_idx, out=L_tr)
        L_tr = L_tr.view(*plan.pad_shape, p)
        V = V.view(*plan.pad_shape, p)
        acc = []
        for j in [*plan.key_pos, len(plan.freqs)]:
            torch.sub(L_tr, Rv[j][:, None, :], out=V)  # (s, pair, c): the excluded logits of the training pairs
            vy = V.diagonal(dim1=0, dim2=2).T.clone()
            V.diagonal(dim1=0, dim2=2).fill_(-math.inf)
            other = V.amax(-1)  # best other class
            hit = label_is_argmax(lambda: L_tr - Rv[j][:, None, :], vy > other, vy == other)
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
        hat = (FJ @ _rows_by_a(L)).view(m, p, -1)[..., :p]  # over a: (f, b, c)
        hat = (FJ @ hat) * plan.keep[:, :, None]  # over b: (f, g, c), only the kept blocks
        L3 = E.view(p, p * p)  # the exponentials are no longer needed: their memory holds L3
        torch.mm(FJ.T, (FJ.T @ hat).view(m, p * p), out=L3)  # back over b, then over a: (a, b * c)
        L3 = L3.view(p * p, p)
        M3, arg3 = L3.max(-1)
        ly3 = L3.gather(1, plan.labels[:, None])[:, 0]
        ex3 = L3.sub_(M3[:, None]).exp_()
        pe3 = (M3 - ly3) + torch.log(ex3.sum(-1))
        corr3 = (arg3 == plan.labels).to(torch.float64)
        for split in SPLITS:
            m_, n = plan.mask_ab[split], plan.n[split]
            out[f"block3x3_loss_{split}"] = mean_over(pe3, m_, n)
            out[f"block3x3_acc_{split}"] = mean_over(corr3, m_, n)
    return out


