"""Benchmark: the whole ``mechgrok.pipeline.analyze`` over a paper-scale trajectory, against a notebook-style reference.

Run:  python benchmarks/analyze_trajectory.py [--checkpoints 401] [--reference-every 16] [--chunk 16] [--threads T]
                                              [--device cpu|cuda] [--end low_precision|no_wd] [--store PATH]
                                              [--split-repeats 1]

The trajectory (p = 113, the paper's model: d_model 128, 4 heads of 32, d_mlp 512; epochs 0, 100, ..., 40,000)
interpolates linearly, weight by weight, between the paper's random initialisation and a trained end: the
authors' released ``low_precision_mod_addition.pth`` (default; beside the repository in ``../shared``; its logits
reach |L| ~ 250, which makes precision matter) or ``mod_addition_no_wd.pth`` (``--end no_wd``; train loss down to
1.7e-10). ``--store`` takes an existing trajectory instead (anything ``mechgrok.open_run`` reads). A trajectory
must have key frequencies at its last checkpoint: ``analyze`` refuses one without (which is why there is no
random end any more).

In one process it runs

(a) ``mechgrok.pipeline.analyze(ds, chunk=..., device=...)`` with every default analysis (key_frequencies,
    neurons, attention, logits, ablation with ``all_freqs`` and the 3 x 3 blocks, fourier_norms, measures,
    phases, reference): one float64 grid forward pass per checkpoint through ``mechgrok.engine.run``, every
    per-checkpoint analysis derived from it, plus the once-per-trajectory stages. It is timed whole (``--repeats``
    times; the fastest counts and every time is printed), with
    the peak resident memory (``VmHWM``, reset just before; the trajectory held in memory is included) and, from
    ``analyze``'s own progress reports, the time of its stages (key frequencies; the engine loop; assembly, Gini
    and phases; the reference-checkpoint views).
(a') the per-analysis split of the engine loop: ``mechgrok.engine.run(ds, [kernel])`` for each kernel of
    ``analyze`` alone (NeuronClusters, AttentionFit, LogitStructure, Ablation with ``all_freqs`` and
    ``block3x3``, FourierNorms, SumSquaredWeights), and the shared grid forward pass alone (a ``FunctionKernel``
    calling ``grid_pass``), with what ``analyze``'s kernels ask of it (``needs={"neuron_sums", "attn",
    "logit_sums"}``) and with what the logit structure and the ablation ask alone (``{"logit_sums"}``: the
    logits and their residue sums). A kernel's "marginal" time is its time alone less
    the grid pass it triggers; grid pass (with caches) plus the marginals should come close to the loop in (a).
    Each of these runs is repeated ``--split-repeats`` times and the fastest counts (on a busy machine a single
    run can be several times slower than the next, which makes marginals negative).
(b) a straightforward reference in the style of the paper's notebook (paper.md 3.13), extended to everything
    ``analyze`` computes per checkpoint: for each checkpoint, each metric function runs its own full forward
    pass (all three positions, as TransformerLens computes it), 19 per checkpoint:
      - the ablation group (16 passes): the ten metric functions of the previous version of this benchmark
        (train/test loss and accuracy, restricted loss on all pairs and on train, excluded loss and accuracy
        per key frequency and with all removed), and loss and accuracy on all pairs, restricted loss on test,
        restricted accuracy (3 splits, one pass), the excluded loss of every frequency (one pass; and its
        maximum), the 3 x 3-block ablation (loss and accuracy on each split, one pass) -- projections onto
        u_k, v_k in R^{p^2} built from an explicit 2D Fourier basis, the 3 x 3 blocks by an explicit 2D Fourier
        transform of the logits over (a, b) and back;
      - neurons: each neuron's FVE per frequency from an explicit 2D Fourier transform F A F^T of its
        (centred) activations over the grid; frac_explained and neuron_freq;
      - logits: alpha_k = <L, C_k> with the explicit unit-norm cubes C_k = cos(w_k (a + b - c)) held in memory
        for all k, as the notebook's ``cos_cube`` (646 MB in float64 at p = 113; built once, not timed);
      - attention: for every head and frequency a least-squares fit (``torch.linalg.lstsq``) of the attention
        from ``=`` to a on the regressors [1, cos w a - cos w b, sin w a - sin w b]; FVE = explained / total sum
        of squares; head_fve, head_freq;
      - weights (no forward pass): Fourier norms of W_E and W_logit through the explicit basis, their Gini
        coefficients by a plain loop, sums of squared weights.
    It runs in float64 on the same ``--device``: a float32 forward pass (as the notebook's) moves the losses of
    this trajectory by up to 2.5e-6 relative, so a float32 reference could not check agreement. Its
    cross-entropy is the label-relative log1p(sum_{c != label} exp(L_c - L_label)), not the notebook's
    log-softmax, which in float64 rounds 1 + t: the train loss of 1.7e-10 at the no_wd end came out 2e-8
    relative off with it (the excluded loss of the weakest frequency 5e-8), too coarse to check 1e-9. (b) is timed
    on every ``--reference-every``-th checkpoint (and the last), per analysis, and extrapolated to the whole
    trajectory (``1``: all). The once-per-trajectory stages (key frequencies, phases, reference views) are not
    in (b): (b) uses the key frequencies ``analyze`` found. That is conservative, (a) is charged for them.

It checks that (a) and (b) agree on every compared checkpoint, both being float64: every variable of the
ablation group, the Gini coefficients and sums of squared weights (measures), the Fourier norms, the neurons'
frac_explained and the heads' head_fve within 1e-9 of the reference (largest |a - b| / max(|a|, |b|),
elementwise), the logit alpha_k within 1e-9 of |L|_F (|a - b| / |L|_F: alpha_k is an inner product with a unit
cube, its rounding scales with |L|_F and many alpha_k are near 0), and the argmax frequencies (neuron_freq,
head_freq) exactly, except at near ties of the reference's FVE (within 1e-9 relative; e.g. a neuron active on
a single input has a flat spectrum; these are counted and printed).

It prints one table side by side: the stages and the per-analysis split of (a), (b) per analysis with the ratio
(b) / alone, and the totals; then the figures against their targets: the speed-up of (a) over (b) (target >=
50 x), the ratio of (a) to its FLOP bound (target <= 3), the peak RSS during (a) (target < 2 GB), the float64
matmul rates and the load average before and after. The FLOP bound is the FLOPs (a) needs
(the grid forward with its caches, useful logit columns only; the ablation measures, excluded variants of every
frequency and 3 x 3 blocks included; the FVE sums; the logit group sums and norms; the attention fit; the weight
measures; the Clock/Pizza metrics (the gradient symmetricity's forward and backward pass over its triples, the
circularity's SVD); the frequency alignment (the vector families, their SVD and Fourier transforms); the
once-per-trajectory key frequencies and reference views) divided by the float64 matrix-multiply
rate measured in the same run on the same device (``torch.mm`` on 2048 x 2048 matrices on the CPU, 8192 x 8192
on a GPU, just before and just after (a); the faster of the two). Every timing on a shared machine is noisy:
the load average is printed with each. The agreement is asserted last, after every figure is printed.
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data" / "nanda-saved-runs"
ENDS = {"low_precision": "low_precision_mod_addition.pth", "no_wd": "mod_addition_no_wd.pth"}
WEIGHTS = ("W_E", "W_pos", "W_Q", "W_K", "W_V", "W_O", "W_in", "b_in", "W_out", "b_out", "W_U")
TOLERANCE = 1e-9


# ------------------------------------------------------------------------------------------------------------
# the trajectory
# ------------------------------------------------------------------------------------------------------------
def build_trajectory(n: int, end: str):
    import mechgrok
    from mechgrok.config import preset
    from mechgrok.tasks.modular_arithmetic import split_indices, train_mask
    from mechgrok.models.transformer import init_params
    from mechgrok.store.schema import build_dataset

    cfg = preset("paper")
    start = {k: v.numpy().astype(np.float64) for k, v in init_params(cfg).items()}
    path = SHARED / ENDS[end]
    if not path.is_file():
        raise SystemExit(f"{path} not found; place ../shared beside the repository or pass --store")
    trained = mechgrok.open_run(path, seed=0, frac_train=0.3)
    stop = {k: trained[k].values[0].astype(np.float64) for k in WEIGHTS}
    frac = np.linspace(0.0, 1.0, n)
    weights = {}
    for k in WEIGHTS:
        shape = (n,) + (1,) * start[k].ndim
        weights[k] = ((1.0 - frac).reshape(shape) * start[k] + frac.reshape(shape) * stop[k]).astype(np.float32)
    train, _ = split_indices(cfg.p, cfg.frac_train, cfg.seed)
    ds = build_dataset(weights, np.arange(n) * 100, config=cfg.to_dict(), is_train=train_mask(cfg.p, train),
                       source_format="benchmark", p=cfg.p)
    return ds, f"linear from the paper's initialisation to the released {path.name}"


# ------------------------------------------------------------------------------------------------------------
# (b) the reference, one full forward pass per metric per checkpoint (float64)
# ------------------------------------------------------------------------------------------------------------
def full_forward(w: dict[str, torch.Tensor], tokens: torch.Tensor, cache: bool = False):
    """The paper's model at every position, as TransformerLens computes it; logits at the last position.

    With ``cache``: also ``{"mlp_post": (batch, d_mlp), "attn": (batch, head, key_pos)}`` at the last position
    (what ``run_with_cache`` gives, indexed at ``=``)."""
    x = w["W_E"][tokens] + w["W_pos"][: tokens.shape[1]]  # (batch, pos, d_model)
    q = torch.einsum("bpm,hmd->bhpd", x, w["W_Q"])
    k = torch.einsum("bpm,hmd->bhpd", x, w["W_K"])
    v = torch.einsum("bpm,hmd->bhpd", x, w["W_V"])
    scores = torch.einsum("bhqd,bhkd->bhqk", q, k) / math.sqrt(q.shape[-1])
    n = tokens.shape[1]
    causal = torch.tril(torch.ones(n, n, dtype=torch.bool, device=scores.device))
    pattern = scores.masked_fill(~causal, float("-inf")).softmax(-1)
    z = torch.einsum("bhqk,bhkd->bhqd", pattern, v)
    x = x + torch.einsum("bhqd,hdm->bqm", z, w["W_O"])
    post = torch.relu(x @ w["W_in"] + w["b_in"])
    x = x + post @ w["W_out"] + w["b_out"]
    logits = (x @ w["W_U"])[:, -1]
    if not cache:
        return logits
    return logits, {"mlp_post": post[:, -1], "attn": pattern[:, :, -1]}


#: The reference's metric functions by analysis (the group of ``analyze``'s output they are compared with).
GROUPS = {
    "ablation": ("loss_train", "loss_test", "acc_train", "acc_test", "loss_all", "acc_all", "trig_loss",
                 "trig_loss_train", "trig_loss_test", "trig_acc", "excluded_loss", "excluded_loss_full",
                 "excluded_acc", "excluded_acc_full", "excluded_loss_by_freq", "block3x3"),
    "neurons": ("neuron_fve",),
    "logits": ("logit_alpha",),
    "attention": ("attention_fit",),
    "fourier_norms": ("norms",),
    "measures": ("weight_measures",),
}
#: Full forward passes per checkpoint of the reference: one per metric function, the weight-only ones aside (19).
N_FORWARD = sum(len(GROUPS[g]) for g in ("ablation", "neurons", "logits", "attention"))


class Reference:
    """The notebook's metric functions for one trajectory; each call runs its own forward pass."""

    def __init__(self, p: int, is_train: np.ndarray, key_freqs: list[int], device: torch.device):
        self.p, self.key_freqs, self.dev = p, key_freqs, device
        K = (p - 1) // 2
        self.freqs = list(range(1, K + 1))
        a, b = np.meshgrid(np.arange(p), np.arange(p), indexing="ij")
        t = lambda x: torch.from_numpy(x).to(device)  # noqa: E731
        self.tokens = t(np.stack([a.ravel(), b.ravel(), np.full(p * p, p)], 1))
        self.labels = t((a.ravel() + b.ravel()) % p)
        self.train = t(is_train.ravel())
        self.all = torch.ones(p * p, dtype=torch.bool, device=device)
        # explicit orthonormal Fourier basis, rows [const, cos 1, sin 1, ...]
        x = np.arange(p)
        rows = [np.ones(p)]
        for f in self.freqs:
            rows += [np.cos(2 * np.pi * f * x / p), np.sin(2 * np.pi * f * x / p)]
        F = np.stack(rows)
        self.F = F / np.linalg.norm(F, axis=1, keepdims=True)
        self.Ft = t(self.F)
        # u_k = (B_{cos,cos} - B_{sin,sin}) / sqrt 2, v_k = (B_{sin,cos} + B_{cos,sin}) / sqrt 2 in R^{p^2}
        B = lambda f, g: np.outer(self.F[f], self.F[g]).ravel()  # noqa: E731
        self.uv = {f: (t((B(2 * f - 1, 2 * f - 1) - B(2 * f, 2 * f)) / math.sqrt(2)),
                       t((B(2 * f, 2 * f - 1) + B(2 * f - 1, 2 * f)) / math.sqrt(2)))
                   for f in self.freqs}
        # the 3 x 3 blocks I_k x I_k, I_k = {const, cos k, sin k}, k in K, as a mask over the 2D components
        keep = np.zeros((p, p), dtype=bool)
        for k in key_freqs:
            I = [0, 2 * k - 1, 2 * k]
            keep[np.ix_(I, I)] = True
        self.keep = t(keep.astype(np.float64))
        # the notebook's cos_cube: cos(w_k (a + b - c)) / |.|_F for every k, (K, p*p, p)
        cubes = torch.empty(K, p * p, p, dtype=torch.float64, device=device)
        abc = t(((a.ravel() + b.ravel())[:, None] - np.arange(p)[None, :]).astype(np.float64))
        for j, k in enumerate(self.freqs):
            c = torch.cos(2 * math.pi * k * abc / p)
            cubes[j] = c / c.norm()
        self.cubes = cubes
        # attention-fit regressors [1, cos w a - cos w b, sin w a - sin w b] for every k, (K, p*p, 3)
        X = []
        for k in self.freqs:
            wa, wb = 2 * np.pi * k * a.ravel() / p, 2 * np.pi * k * b.ravel() / p
            X.append(np.stack([np.ones(p * p), np.cos(wa) - np.cos(wb), np.sin(wa) - np.sin(wb)], 1))
        self.X = t(np.stack(X))

    def logits(self, w):
        return full_forward(w, self.tokens)[:, : self.p]  # '=' class dropped

    def run_with_cache(self, w):
        L, cache = full_forward(w, self.tokens, cache=True)
        return L[:, : self.p], cache

    def ce(self, L, rows):
        # label-relative: log1p(sum_{c != label} exp(L_c - L_label)). The notebook's float64 log-softmax rounds
        # 1 + t, so a loss of 1.7e-10 (the no_wd end) would only be good to about 1e-7 relative
        Lr, y = L[rows], self.labels[rows, None]
        d = Lr - Lr.gather(1, y)
        if float(d.max()) > 700.0:  # exp would overflow: the log-softmax is exact enough for such losses
            return float(-Lr.log_softmax(-1).gather(1, y).mean())
        return float(torch.log1p(torch.exp(d).scatter(1, y, 0.0).sum(-1)).mean())

    def acc(self, L, rows):
        return float((L[rows].argmax(-1) == self.labels[rows]).double().mean())

    def proj(self, L, freqs):
        out = torch.zeros_like(L)
        for f in freqs:
            for u in self.uv[f]:
                out += u[:, None] * (u @ L)[None, :]
        return out

    def restricted(self, L):
        P = self.proj(L, self.key_freqs)
        return P + (L - P).mean(0, keepdim=True)

    # the metric functions: losses (the ablation group)
    def loss_train(self, w):
        return self.ce(self.logits(w), self.train)

    def loss_test(self, w):
        return self.ce(self.logits(w), ~self.train)

    def acc_train(self, w):
        return self.acc(self.logits(w), self.train)

    def acc_test(self, w):
        return self.acc(self.logits(w), ~self.train)

    def loss_all(self, w):
        return self.ce(self.logits(w), self.all)

    def acc_all(self, w):
        return self.acc(self.logits(w), self.all)

    def trig_loss(self, w, rows=None):
        return self.ce(self.restricted(self.logits(w)), self.all if rows is None else rows)

    def trig_loss_train(self, w):
        return self.trig_loss(w, self.train)

    def trig_loss_test(self, w):
        return self.trig_loss(w, ~self.train)

    def trig_acc(self, w):
        Lr = self.restricted(self.logits(w))
        return [self.acc(Lr, rows) for rows in (self.all, self.train, ~self.train)]

    def excluded_loss(self, w):
        L = self.logits(w)
        return [self.ce(L - self.proj(L, [f]), self.train) for f in self.key_freqs]

    def excluded_loss_full(self, w):
        L = self.logits(w)
        return self.ce(L - self.proj(L, self.key_freqs), self.train)

    def excluded_acc(self, w):
        L = self.logits(w)
        return [self.acc(L - self.proj(L, [f]), self.train) for f in self.key_freqs]

    def excluded_acc_full(self, w):
        L = self.logits(w)
        return self.acc(L - self.proj(L, self.key_freqs), self.train)

    def excluded_loss_by_freq(self, w):
        L = self.logits(w)
        return [self.ce(L - self.proj(L, [f]), self.train) for f in self.freqs]

    def block3x3(self, w):
        p, F = self.p, self.Ft
        L = self.logits(w).reshape(p, p, p)
        hat = torch.einsum("fa,abc,gb->fgc", F, L, F)  # 2D Fourier transform over (a, b)
        L3 = torch.einsum("fa,fgc,gb->abc", F, hat * self.keep[:, :, None], F).reshape(p * p, p)
        out = {}
        for split, rows in (("all", self.all), ("train", self.train), ("test", ~self.train)):
            out[f"loss_{split}"], out[f"acc_{split}"] = self.ce(L3, rows), self.acc(L3, rows)
        return out

    # the other per-checkpoint analyses
    def neuron_fve(self, w):
        p, F = self.p, self.Ft
        _, cache = self.run_with_cache(w)
        A = cache["mlp_post"].reshape(p, p, -1)
        A = A - A.mean((0, 1))
        sq = torch.einsum("fa,abn,gb->fgn", F, A, F) ** 2  # each neuron's 2D Fourier transform, squared
        total = sq.sum((0, 1))
        fve = torch.stack([sq[[0, 2 * k - 1, 2 * k]][:, [0, 2 * k - 1, 2 * k]].sum((0, 1)) for k in self.freqs])
        fve = torch.where(total > 0, fve / total.clamp_min(1e-300), torch.zeros_like(fve))  # (K, neuron)
        best = fve.max(0)
        alive = best.values > 0
        return {"frac_explained": best.values.cpu().numpy(),
                "neuron_freq": torch.where(alive, best.indices + 1, -1).cpu().numpy(),
                "fve_all": fve.T.cpu().numpy()}  # (neuron, freq): to tell near ties from disagreements

    def logit_alpha(self, w):
        L = self.logits(w)
        return torch.einsum("kxc,xc->k", self.cubes, L).cpu().numpy()

    def attention_fit(self, w):
        _, cache = self.run_with_cache(w)
        y = cache["attn"][:, :, 0]  # (p*p, head): attention from '=' to the position of a
        K, n, h = len(self.freqs), y.shape[0], y.shape[1]
        coef = torch.linalg.lstsq(self.X, y.expand(K, n, h)).solution  # (K, 3, head)
        ybar = y.mean(0)
        explained = ((self.X @ coef - ybar) ** 2).sum(1)  # (K, head)
        total = ((y - ybar) ** 2).sum(0)
        fve = explained / total
        best = fve.max(0)
        return {"head_fve": torch.where(total > 0, best.values, float("nan")).cpu().numpy(),
                "head_freq": torch.where(total > 0, best.indices + 1, -1).cpu().numpy(),
                "fve_all": fve.T.cpu().numpy()}  # (head, freq)

    # weight-only measures
    @staticmethod
    def gini(c):
        c = np.sort(np.asarray(c, dtype=np.float64))
        n = c.size
        return 1.0 - 2.0 * sum(c[i] / c.sum() * (n - (i + 1) + 0.5) / n for i in range(n))

    def norms(self, w):
        p = self.p
        W_E = w["W_E"][:p].cpu().numpy()
        W_logit = (w["W_out"] @ w["W_U"][:, :p]).cpu().numpy()
        n_E = np.linalg.norm(self.F @ W_E, axis=1)  # per component, over d_model
        n_L = np.linalg.norm(W_logit @ self.F.T, axis=0)  # per component, over neurons
        per_freq = lambda n: np.sqrt(n[1::2] ** 2 + n[2::2] ** 2)  # noqa: E731
        return {"W_E_fourier_norm": n_E, "W_E_freq_norm": per_freq(n_E),
                "W_logit_fourier_norm": n_L, "W_logit_freq_norm": per_freq(n_L)}

    def weight_measures(self, w, norms):
        sq = [float((w[k] ** 2).sum()) for k in WEIGHTS]
        return {"gini_W_E_component": self.gini(norms["W_E_fourier_norm"]),
                "gini_W_E_freq": self.gini(norms["W_E_freq_norm"]),
                "gini_W_logit_component": self.gini(norms["W_logit_fourier_norm"]),
                "gini_W_logit_freq": self.gini(norms["W_logit_freq_norm"]),
                "sum_sq_weights": np.array(sq), "sum_sq_weights_total": sum(sq)}

    def measures(self, w, clock: Callable[[str, Callable[[], Any]], Any]) -> dict[tuple[str, str], Any]:
        """Every reference value of one checkpoint, keyed by (group of ``analyze``, variable); ``clock(group,
        fn)`` runs ``fn`` and charges its time to the group."""
        r: dict[tuple[str, str], Any] = {}
        ab = lambda name, fn: r.__setitem__(("ablation", name), clock("ablation", fn))  # noqa: E731
        ab("loss_train", lambda: self.loss_train(w))
        ab("loss_test", lambda: self.loss_test(w))
        ab("acc_train", lambda: self.acc_train(w))
        ab("acc_test", lambda: self.acc_test(w))
        ab("loss_all", lambda: self.loss_all(w))
        ab("acc_all", lambda: self.acc_all(w))
        ab("restricted_loss_all", lambda: self.trig_loss(w))
        ab("restricted_loss_train", lambda: self.trig_loss_train(w))
        ab("restricted_loss_test", lambda: self.trig_loss_test(w))
        accs = clock("ablation", lambda: self.trig_acc(w))
        for split, v in zip(("all", "train", "test"), accs):
            r[("ablation", f"restricted_acc_{split}")] = v
        ab("excluded_loss", lambda: np.array(self.excluded_loss(w)))
        ab("excluded_loss_full", lambda: self.excluded_loss_full(w))
        ab("excluded_acc", lambda: np.array(self.excluded_acc(w)))
        ab("excluded_acc_full", lambda: self.excluded_acc_full(w))
        ab("excluded_loss_by_freq", lambda: np.array(self.excluded_loss_by_freq(w)))
        r[("ablation", "excluded_loss_max")] = r[("ablation", "excluded_loss_by_freq")].max()
        for k, v in clock("ablation", lambda: self.block3x3(w)).items():
            r[("ablation", f"block3x3_{k}")] = v
        for k, v in clock("neurons", lambda: self.neuron_fve(w)).items():
            r[("neurons", k)] = v
        r[("logits", "alpha")] = clock("logits", lambda: self.logit_alpha(w))
        for k, v in clock("attention", lambda: self.attention_fit(w)).items():
            r[("attention", k)] = v
        norms = clock("fourier_norms", lambda: self.norms(w))
        for k, v in norms.items():
            r[("fourier_norms", k)] = v
        for k, v in clock("measures", lambda: self.weight_measures(w, norms)).items():
            r[("measures", k)] = v
        return r


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_reference(ds, key_freqs: list[int], idx: list[int], device: torch.device):
    """(b) on the checkpoints ``idx``: values stacked over them, seconds per group, setup seconds."""
    t0 = time.perf_counter()
    ref = Reference(int(ds.attrs["p"]), ds["is_train"].values, key_freqs, device)
    sync(device)
    setup = time.perf_counter() - t0
    times: dict[str, float] = {g: 0.0 for g in GROUPS}

    def clock(group: str, fn: Callable[[], Any]) -> Any:
        t = time.perf_counter()
        out = fn()
        sync(device)
        times[group] += time.perf_counter() - t
        return out

    rows = []
    with torch.no_grad():
        for i in idx:
            w = {k: torch.from_numpy(ds[k].values[i].astype(np.float64)).to(device) for k in WEIGHTS}
            rows.append(ref.measures(w, clock))
    del ref
    return {k: np.stack([np.asarray(r[k]) for r in rows]) for k in rows[0]}, times, setup


# ------------------------------------------------------------------------------------------------------------
# FLOPs, rates, memory
# ------------------------------------------------------------------------------------------------------------
def analyze_flops(p: int, d_model: int, n_heads: int, d_head: int, d_mlp: int, n_train_max: int, n_key: int,
                  n_params: int, n_triples: int = 100, n_components: int = 8) -> tuple[dict[str, float], dict[str, float]]:
    """FLOPs that ``analyze`` needs: per checkpoint by part, and once per trajectory (a multiply-add counts 2, an
    addition 1; the logits' useful p columns only, not the zero-padded ones the product multiplies)."""
    m, h, d, f = d_model, n_heads, d_head, d_mlp
    n, K = p * p, (p - 1) // 2
    width = f + p  # per-token table columns: MLP pre-activation | direct logits (analyze caches no resid_mid)
    tables = (h * m * d * m + (p + 2) * m * h * m + (p + 2) * h * m * width + f * m * p  # OV, tables, W_logit
              + (2 * p + 1) * m * h + 2 * m * h * d)  # attention scores from '='
    per_pair = f * p + 2 * h * width  # neuron-to-logit product; attention-weighted tables (a and b terms)
    grid = 2.0 * (tables + n * per_pair)
    variants = K + 1  # excluded losses: every frequency (all_freqs), then all key frequencies together
    mj = 2 * n_key + 1  # Fourier components kept by the 3 x 3 blocks
    ablation = 2.0 * (p**3  # group sums
                      + p * n_train_max * p * variants  # the excluded-loss product of every variant
                      + 4 * K * p * p  # projections R_k of every frequency
                      + 2 * mj * p**3 + 2 * mj * mj * p * p)  # 3 x 3 blocks: transform over a, b and back
    fve = 8.0 * n * f + 16.0 * K * p * f  # centring, sum of squares, 4 grid sums; cos/sin products of the sums
    logits = 6.0 * n * p + 4.0 * K * p * p  # group sums, |L|^2 and |L - mean|^2; cos/sin products
    attention = h * (6.0 * n + 4.0 * K * p)  # mean, centred squares, marginal sums; cos/sin products
    norms = 2.0 * (m * p * p + f * m * p + f * p * p)  # W_E and W_logit Fourier transforms, W_logit itself
    svd = 4.0 * m * m * p + 22.0 * p**3  # thin SVD with U and V of W_E[:p] (p <= d_model; Golub & Van Loan)
    # Clock/Pizza metrics: the GS forward pass over the triples (key/value tables over 3 positions x (2T + 1)
    # embedding rows, the query, W_O, the MLP and the unembedding at '=') and its backward (2x); the
    # circularity's SVD; the distance irrelevance's sums over a - b
    T = n_triples
    gs_forward = 2.0 * (3 * (2 * T + 1) * m * h * d * 2 + (2 * T + 1) * m * h * d + T * h * d * m
                        + 2 * T * m * f + T * m * (p + 1))
    algorithm = 3 * gs_forward + svd + 4.0 * n
    # frequency alignment: the four families' vectors (W_E W_in; W_E W_V W_O W_in per head; W_E; the SVD of
    # W_E), their Fourier transforms (matrix products with the p x p basis) and power, entropy, argmax
    n_vectors = f + h * f + m + n_components
    alignment = (2.0 * (p * m * f + h * m * d * m + h * p * m * m + h * p * m * f) + svd
                 + 2.0 * p * p * n_vectors + 8.0 * K * n_vectors)
    per = {"grid forward (with caches)": grid, "ablation measures": ablation, "neuron FVE sums": fve,
           "logit group sums": logits, "attention fit": attention, "weight measures": norms + 2.0 * n_params,
           "Clock/Pizza metrics": algorithm, "frequency alignment": alignment}
    once = {"key frequencies": grid + fve + norms,
            "reference views": grid + fve + 4.0 * p**4 + norms}  # + the logits' 2D Fourier transform
    return per, once


def notebook_flops(p: int, d_model: int, n_heads: int, d_head: int, d_mlp: int, n_forward: int) -> float:
    """FLOPs of n_forward full-sequence forward passes over the p^2 inputs."""
    m, h, d, f = d_model, n_heads, d_head, d_mlp
    per_pos = 3 * m * h * d + h * d * m + 2 * m * f + m * (p + 1) + 2 * h * d * 3
    return 2.0 * n_forward * p * p * 3 * per_pos


def matmul_rate(device: torch.device, reps: int = 5) -> float:
    """float64 ``torch.mm`` rate (FLOP/s), best of ``reps``: 2048^2 matrices on the CPU, 8192^2 on a GPU."""
    size = 8192 if device.type == "cuda" else 2048
    a = torch.randn(size, size, dtype=torch.float64, device=device)
    b = torch.randn(size, size, dtype=torch.float64, device=device)
    a @ b
    sync(device)
    best = math.inf
    for _ in range(reps):
        t = time.perf_counter()
        a @ b
        sync(device)
        best = min(best, time.perf_counter() - t)
    return 2.0 * size**3 / best


def reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def peak_rss_bytes() -> float:
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return float(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    return float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def load() -> str:
    return "{:.2f} / {:.2f} / {:.2f}".format(*os.getloadavg())


# ------------------------------------------------------------------------------------------------------------
# agreement
# ------------------------------------------------------------------------------------------------------------
def rel_diff(have: np.ndarray, want: np.ndarray) -> float:
    """max |a - b| / max(|a|, |b|), elementwise (0 where both are 0 or both NaN; inf where one only is NaN)."""
    have, want = np.asarray(have, dtype=np.float64), np.asarray(want, dtype=np.float64)
    if have.shape != want.shape:
        raise AssertionError(f"shapes differ: analyze {have.shape}, reference {want.shape}")
    scale = np.maximum(np.abs(have), np.abs(want))
    with np.errstate(invalid="ignore", divide="ignore"):
        rel = np.where(scale > 0, np.abs(have - want) / np.where(scale > 0, scale, 1.0), 0.0)
    both = np.isnan(have) & np.isnan(want)
    rel = np.where(both, 0.0, np.where(np.isnan(rel), np.inf, rel))
    return float(rel.max()) if rel.size else 0.0


#: Argmax frequencies, compared by equality; a disagreement counts only where it is not a near tie of the
#: reference's FVE (within TOLERANCE relative: e.g. a neuron active on one input has a flat spectrum).
ARGMAX = {("neurons", "neuron_freq"), ("attention", "head_freq")}


def argmax_flips(have: np.ndarray, want: np.ndarray, fve: np.ndarray) -> tuple[int, int]:
    """(disagreements, disagreements that are not near ties) of argmax frequencies (1-based; -1: none) with the
    reference's FVE per frequency ``fve`` (..., freq)."""
    differ = have != want
    best = fve.max(-1)
    at_have = np.take_along_axis(fve, np.clip(have - 1, 0, None)[..., None], -1)[..., 0]
    tie = (have >= 1) & (at_have >= best - TOLERANCE * np.abs(best))
    return int(differ.sum()), int((differ & ~tie).sum())


# ------------------------------------------------------------------------------------------------------------
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoints", type=int, default=401)
    ap.add_argument("--reference-every", type=int, default=16, help="time (b) on every k-th checkpoint (1: all)")
    ap.add_argument("--chunk", type=int, default=16, help="checkpoints whose weights are read at once")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--device", default="cpu", help="where analyze, the split and (b) run: cpu (default) or cuda")
    ap.add_argument("--end", choices=sorted(ENDS), default="low_precision")
    ap.add_argument("--store", type=Path, default=None, help="an existing trajectory instead of the synthetic one")
    ap.add_argument("--split-repeats", type=int, default=1,
                    help="runs of each kernel alone in the per-analysis split; the fastest counts")
    ap.add_argument("--repeats", type=int, default=1,
                    help="runs of the whole analyze (a); the fastest counts, every one is printed")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    import mechgrok
    from mechgrok.analyses.measures import SumSquaredWeights
    from mechgrok.analyses.modular.ablation import Ablation
    from mechgrok.analyses.modular.attention import AttentionFit
    from mechgrok.analyses.modular.fourier_norms import FourierNorms
    from mechgrok.analyses.modular.grid import grid_pass
    from mechgrok.analyses.modular.logits import LogitStructure
    from mechgrok.analyses.modular.neurons import NeuronClusters
    from mechgrok.engine import FunctionKernel, resolve_device, run
    from mechgrok.pipeline import analyze

    from mechgrok.errors import AnalysisError

    try:
        dev = resolve_device(args.device)
    except AnalysisError as e:
        raise SystemExit(str(e)) from None
    load_start = load()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, device {dev}"
          + (f" ({torch.cuda.get_device_name(dev)})" if dev.type == "cuda" else "")
          + f"; load average {load_start} (1 / 5 / 15 min)")
    t = time.perf_counter()
    if args.store is not None:
        ds = mechgrok.open_run(args.store).load()
        what = str(args.store)
    else:
        ds, what = build_trajectory(args.checkpoints, args.end)
    n, p = ds.sizes["checkpoint"], int(ds.attrs["p"])
    print(f"trajectory: {n} checkpoints, p = {p}, {what} ({time.perf_counter() - t:.1f} s to build)")

    # (a) the whole analyze, --repeats times; the fastest counts (its stages too), the peak memory is the largest
    rate_before = matmul_rate(dev)
    load_before = load()
    runs: list[tuple[float, list[tuple[str, float]], float]] = []  # (seconds, progress marks, start)
    peak = 0
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    tree = None
    for _ in range(max(1, args.repeats)):
        marks: list[tuple[str, float]] = []
        tree = None  # the previous run's result is not held during the next
        gc.collect()
        reset_peak_rss()
        t0 = time.perf_counter()
        tree = analyze(ds, chunk=args.chunk, device=dev,
                       progress=lambda stage, done, total: marks.append((stage, time.perf_counter())))
        sync(dev)
        runs.append((time.perf_counter() - t0, marks, t0))
        peak = max(peak, peak_rss_bytes())
    t_a, marks, t0 = min(runs, key=lambda r: r[0])
    all_a = ", ".join(f"{r[0]:.2f}" for r in runs)
    peak_dev = torch.cuda.max_memory_allocated(dev) if dev.type == "cuda" else None
    load_after_a = load()
    rate_after = matmul_rate(dev)
    rate64 = max(rate_before, rate_after)  # the faster of the two: the smaller, stricter bound
    key = [int(k) for k in tree.attrs["key_freqs"]]
    print(f"(a) mechgrok.pipeline.analyze: {t_a:.2f} s for {n} checkpoints ({1e3 * t_a / n:.1f} ms each)"
          + (f", fastest of {len(runs)} runs ({all_a} s)" if len(runs) > 1 else "")
          + f"; analyses {', '.join(tree.attrs['analyses'])}; key frequencies {key}")
    stages: list[tuple[str, float | None]] = []
    prev = t0
    for label, stage in (("key frequencies (once)", "key frequencies"),
                         ("engine loop (every kernel, one pass)", "checkpoints"),
                         ("assembly, Gini, phases", "phases"),
                         ("reference views (once)", "reference checkpoint")):
        ends = [tm for s, tm in marks if s == stage]
        stages.append((label, ends[-1] - prev if ends else None))
        prev = ends[-1] if ends else prev
    stages.append(("result tree", t0 + t_a - prev))
    t_loop = dict(stages)["engine loop (every kernel, one pass)"]

    # (a') the per-analysis split: each kernel alone through the engine, and the shared grid pass alone
    def timed(kernel) -> float:
        best = math.inf
        for _ in range(max(1, args.split_repeats)):
            t = time.perf_counter()
            run(ds, [kernel], chunk=args.chunk, device=dev)
            sync(dev)
            best = min(best, time.perf_counter() - t)
        return best

    grid_only = lambda ck: (grid_pass(ck), {})[1]  # noqa: E731
    t_grid = {"caches": timed(FunctionKernel("grid_pass", grid_only,
                                             needs=frozenset({"neuron_sums", "attn", "logit_sums"}))),
              "logits": timed(FunctionKernel("grid_pass", grid_only, needs=frozenset({"logit_sums"})))}
    split = [  # (group, kernel, the grid pass it triggers)
        ("neurons", NeuronClusters(keep_fve=False), "caches"),
        ("attention", AttentionFit(), "caches"),
        ("logits", LogitStructure(key_freqs=key), "logits"),
        ("ablation", Ablation.for_trajectory(ds, key_freqs=key, all_freqs=True, block3x3=True), "logits"),
        ("fourier_norms", FourierNorms.for_trajectory(ds), None),
        ("measures", SumSquaredWeights.for_trajectory(ds), None),
    ]
    alone = {g: timed(k) for g, k, _ in split}
    marginal = {g: alone[g] - (t_grid[v] if v else 0.0) for g, _, v in split}

    # (b)
    idx = list(range(0, n, max(1, args.reference_every)))
    if idx[-1] != n - 1:
        idx.append(n - 1)
    ref, ref_times, setup = run_reference(ds, key, idx, dev)
    scale = n / len(idx)
    t_b_part = sum(ref_times.values())
    t_b = t_b_part * scale
    load_end = load()

    # agreement
    print(f"\nagreement on {len(idx)} checkpoints ({', '.join(str(int(ds['checkpoint'].values[i])) for i in idx)}), "
          f"max |a - b| / max(|a|, |b|):")
    worst_all, worst_name, flips, untied = 0.0, "", [], 0
    logit_norm = np.sqrt(tree["logits"]["logit_norm_sq"].isel(checkpoint=idx).values)[:, None]
    for (group, name), want in ref.items():
        if name == "fve_all":
            continue
        have = tree[group][name]
        if name == "sum_sq_weights":
            have = have.sel(param=list(WEIGHTS))
        have = have.isel(checkpoint=idx).values
        label, note = f"{group}/{name}", ""
        if (group, name) in ARGMAX:
            bad, real = argmax_flips(have, want, ref[(group, "fve_all")])
            untied += real
            flips.append(f"{label}: {bad} of {want.size} differ, {real} outside near ties")
            print(f"  {label:38s} {real:9d}   (argmax frequency: {bad} of {want.size} differ, {bad - real} of "
                  "them near ties of the reference's FVE)")
            continue
        if (group, name) == ("logits", "alpha"):
            # alpha_k = <C_k, L> with unit C_k: its rounding scales with |L|_F, not with alpha_k (many are ~0)
            worst = float(np.max(np.abs(have - want) / logit_norm))
            note = ", |a - b| / |L|_F"
        else:
            worst = rel_diff(have, want)
        if worst > worst_all:
            worst_all, worst_name = worst, label
        print(f"  {label:38s} {worst:9.2e}   (values {float(np.nanmin(want)):.3g} .. "
              f"{float(np.nanmax(want)):.3g}{note})")

    # FLOPs
    cfg = {"d_model": ds.sizes["d_model"], "n_heads": ds.sizes["head"], "d_head": ds.sizes["d_head"],
           "d_mlp": ds.sizes["d_mlp"]}
    is_train = ds["is_train"].values
    s = (np.arange(p)[:, None] + np.arange(p)[None, :]) % p
    n_train_max = int(np.bincount(s[is_train], minlength=p).max())
    n_params = int(sum(np.prod(ds[k].shape[1:]) for k in WEIGHTS))
    per, once = analyze_flops(p, n_train_max=n_train_max, n_key=len(key), n_params=n_params, **cfg)
    flops = n * sum(per.values()) + sum(once.values())
    bound = flops / rate64
    nb = notebook_flops(p, n_forward=N_FORWARD, **cfg)
    print(f"\nFLOPs of (a): {flops / 1e12:.3f} TFLOP; per checkpoint {sum(per.values()) / 1e9:.3f} GFLOP ("
          + ", ".join(f"{k} {v / 1e9:.3f}" for k, v in per.items()) + "); once "
          + ", ".join(f"{k} {v / 1e9:.2f}" for k, v in once.items()) + " GFLOP")
    print(f"(b): {N_FORWARD} full-sequence forward passes per checkpoint, {nb / 1e9:.0f} GFLOP "
          f"({notebook_flops(p, n_forward=1, **cfg) / 1e9:.1f} each), plus its transforms")
    print(f"float64 matmul rate ({'8192' if dev.type == 'cuda' else '2048'}^3, best of 5): "
          f"{rate_before / 1e9:.1f} GFLOP/s before (a), {rate_after / 1e9:.1f} after; FLOP bound "
          f"{bound:.2f} s at {rate64 / 1e9:.1f} GFLOP/s")

    # the table
    ck = f"{len(idx)} ck"
    best = f", fastest of {args.split_repeats}" if args.split_repeats > 1 else ""
    print(f"\n{'':44s}{'mechgrok (s)' + best:>32s}   {'notebook-style reference (s)':>30s}")
    print(f"{'part':44s}{'in analyze':>11s}{'alone':>10s}{'marginal':>11s}   "
          f"{'timed, ' + ck:>14s}{'all ' + str(n) + ' ck':>12s}{'ratio':>8s}")
    f_ = lambda x, w=10, d=2: f"{x:{w}.{d}f}" if x is not None else " " * w  # noqa: E731
    ratio = lambda r: f"{r:7.1f}x" if r < 10 else f"{r:7.0f}x"  # noqa: E731
    for label, dt in stages:
        print(f"{label:44s}{f_(dt, 11)}")
        if label.startswith("engine loop"):
            print(f"{'  grid forward, every sum and attn':44s}{'':11s}{f_(t_grid['caches'])}")
            print(f"{'  grid forward, logits and their sums':44s}{'':11s}{f_(t_grid['logits'])}")
            for g, k, _ in split:
                rb = ref_times[g] * scale
                print(f"{'  ' + g + ' (' + type(k).__name__ + ')':44s}{'':11s}{f_(alone[g])}{f_(marginal[g], 11)}   "
                      f"{f_(ref_times[g], 14)}{f_(rb, 12, 1)}{ratio(rb / alone[g])}")
            parts = t_grid["caches"] + sum(marginal.values())
            print(f"{'  grid with caches + the marginals':44s}{'':11s}{f_(parts)}{'':11s}   "
                  f"{'(loop in analyze: ' + (f'{t_loop:.2f}' if t_loop is not None else '?') + ')':>26s}")
    print(f"{'total':44s}{f_(t_a, 11)}{'':21s}   {f_(t_b_part, 14)}{f_(t_b, 12, 1)}{ratio(t_b / t_a)}")
    print(f"(b): reference setup (basis, cubes, regressors; not counted) {setup:.1f} s; (b) excludes the "
          "once-per-trajectory stages, which (a) includes")

    # the figures against their targets
    gb = peak / 1e9
    rows = [
        ("analyze, whole", f"{t_a:.2f} s ({1e3 * t_a / n:.1f} ms per checkpoint)"
                           + (f"; fastest of {len(runs)}: {all_a} s" if len(runs) > 1 else ""), "", None),
        ("notebook-style reference", f"{t_b:.1f} s" + ("" if len(idx) == n else
                                                      f" (extrapolated from {len(idx)} checkpoints, {t_b_part:.1f} s)"),
         "", None),
        ("speed-up of analyze over it", f"{t_b / t_a:.1f} x", ">= 50 x", t_b / t_a >= 50),
        ("analyze / FLOP bound", f"{t_a / bound:.2f} ({flops / 1e12:.3f} TFLOP / {rate64 / 1e9:.1f} GFLOP/s = "
                                 f"{bound:.2f} s)", "<= 3", t_a / bound <= 3),
        ("peak RSS during analyze", f"{gb:.2f} GB ({peak / 2**30:.2f} GiB; trajectory included)", "< 2 GB", gb < 2),
        ("agreement, worst (rel.)", f"{worst_all:.2e} ({worst_name})", f"<= {TOLERANCE:g}", worst_all <= TOLERANCE),
        ("argmax frequencies", "; ".join(flips), "0 outside near ties", untied == 0),
        ("float64 matmul rate", f"{rate_before / 1e9:.1f} GFLOP/s before (a), {rate_after / 1e9:.1f} after", "", None),
        ("load average (1/5/15 min)", f"start {load_start}; before (a) {load_before}; after (a) {load_after_a}; "
                                      f"end {load_end}", "", None),
    ]
    if peak_dev is not None:
        rows.insert(5, ("peak GPU memory during analyze", f"{peak_dev / 1e9:.2f} GB", "", None))
    print()
    for label, value, target, ok in rows:
        mark = "" if ok is None else ("  [ok]" if ok else "  [MISSED]")
        print(f"{label:32s} {value}" + (f"   target {target}{mark}" if target else ""))
    assert worst_all <= TOLERANCE, (f"(a) and (b) disagree: max relative difference {worst_all:.2e} "
                                    f"({worst_name}) > {TOLERANCE:g}")
    assert untied == 0, f"(a) and (b) disagree on {untied} argmax frequencies outside near ties"
    print(f"all compared values agree within {TOLERANCE:g} (worst {worst_all:.2e}, {worst_name}); argmax "
          "frequencies agree outside near ties")


if __name__ == "__main__":
    main()
