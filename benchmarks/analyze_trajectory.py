"""Benchmark: the progress-measure suite over a paper-scale trajectory, against a notebook-style reference.

Run:  python benchmarks/analyze_trajectory.py [--checkpoints 401] [--reference-every 16] [--chunk 16] [--threads T]
                                              [--workers W] [--end low_precision|no_wd|random] [--store PATH]

The trajectory (p = 113, the paper's model: d_model 128, 4 heads of 32, d_mlp 512; epochs 0, 100, ..., 40,000)
interpolates linearly, weight by weight, between the paper's random initialisation and a trained end: by default
the authors' released ``low_precision_mod_addition.pth`` (beside the repository in ``../shared``; its logits reach
|L| ~ 250, which makes precision matter), else a second random model (``--end random``). ``--store`` takes an
existing trajectory instead (anything ``mechgrok.open_run`` reads). The key frequencies are found once at the last
checkpoint (``mechgrok.key_frequencies``, not timed) and used by both sides.

In one process it runs

(a) ``mechgrok.progress.progress_measures``: train/test loss and accuracy, restricted loss (all pairs and train),
    excluded loss and accuracy per key frequency and with all of them removed, Gini coefficients of the Fourier
    norms of W_E and W_logit, sums of squared weights, W_E Fourier norms -- one batched float64 forward pass per
    checkpoint, every measure derived from it;
(b) a straightforward reference in the style of the paper's notebook (paper.md 3.13): for each checkpoint, each
    metric function runs its own full forward pass (all three positions, as TransformerLens computes it) and its
    own projection (the u_k, v_k vectors of R^{p^2} built from an explicit 2D Fourier basis). It runs in float64:
    a float32 forward pass (as the notebook's) moves the losses of this trajectory by up to 2.5e-6 relative, so a
    float32 reference could not check agreement to 1e-6. (b) is timed on every
    ``--reference-every``-th checkpoint and its time extrapolated to the whole trajectory (``1``: all).

It asserts that (a) and (b) agree on every compared checkpoint (largest relative difference |a - b| / max(|a|,
|b|) at most 1e-6 for every measure), and prints the wall times and their ratio, the peak resident memory during
(a), and a FLOP-bound estimate: the FLOPs the suite performs divided by the float64 matrix-multiply rate measured
in the same run (``torch.mm`` on 2048 x 2048 matrices, just before and just after (a); the faster of the two),
with the ratio of (a) to it. The FLOPs counted are those the suite needs (its logit product over the p classes,
not the zero-padded columns it actually multiplies). Every timing on a shared machine is noisy: the load average
is printed before and after.
"""

from __future__ import annotations

import argparse
import math
import os
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data" / "nanda-saved-runs"
ENDS = {"low_precision": "low_precision_mod_addition.pth", "no_wd": "mod_addition_no_wd.pth"}
WEIGHTS = ("W_E", "W_pos", "W_Q", "W_K", "W_V", "W_O", "W_in", "b_in", "W_out", "b_out", "W_U")


# ------------------------------------------------------------------------------------------------------------
# the trajectory
# ------------------------------------------------------------------------------------------------------------
def build_trajectory(n: int, end: str):
    import mechgrok
    from mechgrok.config import preset
    from mechgrok.data import split_indices, train_mask
    from mechgrok.model import init_params
    from mechgrok.store.schema import build_dataset

    cfg = preset("paper")
    start = {k: v.numpy().astype(np.float64) for k, v in init_params(cfg).items()}
    if end == "random":
        other = init_params(cfg, generator=torch.Generator().manual_seed(12345))
        stop = {k: 3.0 * v.numpy().astype(np.float64) for k, v in other.items()}
        source = "a second random model (x3)"
    else:
        path = SHARED / ENDS[end]
        if not path.is_file():
            raise SystemExit(f"{path} not found; use --end random (or place ../shared beside the repository)")
        trained = mechgrok.open_run(path, seed=0, frac_train=0.3)
        stop = {k: trained[k].values[0].astype(np.float64) for k in WEIGHTS}
        source = f"the released {path.name}"
    frac = np.linspace(0.0, 1.0, n)
    weights = {}
    for k in WEIGHTS:
        shape = (n,) + (1,) * start[k].ndim
        weights[k] = ((1.0 - frac).reshape(shape) * start[k] + frac.reshape(shape) * stop[k]).astype(np.float32)
    train, _ = split_indices(cfg.p, cfg.frac_train, cfg.seed)
    ds = build_dataset(weights, np.arange(n) * 100, config=cfg.to_dict(), is_train=train_mask(cfg.p, train),
                       source_format="benchmark", p=cfg.p)
    return ds, f"linear from the paper's initialisation to {source}"


# ------------------------------------------------------------------------------------------------------------
# (b) the reference, one full forward pass per metric per checkpoint (float64)
# ------------------------------------------------------------------------------------------------------------
def full_forward(w: dict[str, torch.Tensor], tokens: torch.Tensor) -> torch.Tensor:
    """The paper's model at every position, as TransformerLens computes it; logits at the last position."""
    x = w["W_E"][tokens] + w["W_pos"][: tokens.shape[1]]  # (batch, pos, d_model)
    q = torch.einsum("bpm,hmd->bhpd", x, w["W_Q"])
    k = torch.einsum("bpm,hmd->bhpd", x, w["W_K"])
    v = torch.einsum("bpm,hmd->bhpd", x, w["W_V"])
    scores = torch.einsum("bhqd,bhkd->bhqk", q, k) / math.sqrt(q.shape[-1])
    n = tokens.shape[1]
    scores = scores.masked_fill(~torch.tril(torch.ones(n, n, dtype=torch.bool)), float("-inf"))
    z = torch.einsum("bhqk,bhkd->bhqd", scores.softmax(-1), v)
    x = x + torch.einsum("bhqd,hdm->bqm", z, w["W_O"])
    x = x + torch.relu(x @ w["W_in"] + w["b_in"]) @ w["W_out"] + w["b_out"]
    return (x @ w["W_U"])[:, -1]


class Reference:
    """The notebook's metric functions for one trajectory; each call runs its own forward pass."""

    def __init__(self, p: int, is_train: np.ndarray, key_freqs: list[int]):
        self.p, self.key_freqs = p, key_freqs
        a, b = np.meshgrid(np.arange(p), np.arange(p), indexing="ij")
        self.tokens = torch.from_numpy(np.stack([a.ravel(), b.ravel(), np.full(p * p, p)], 1))
        self.labels = torch.from_numpy((a.ravel() + b.ravel()) % p)
        self.train = torch.from_numpy(is_train.ravel())
        # explicit orthonormal Fourier basis, rows [const, cos 1, sin 1, ...]
        x = np.arange(p)
        rows = [np.ones(p)]
        for f in range(1, (p - 1) // 2 + 1):
            rows += [np.cos(2 * np.pi * f * x / p), np.sin(2 * np.pi * f * x / p)]
        F = np.stack(rows)
        self.F = F / np.linalg.norm(F, axis=1, keepdims=True)
        # u_k = (B_{cos,cos} - B_{sin,sin}) / sqrt 2, v_k = (B_{sin,cos} + B_{cos,sin}) / sqrt 2 in R^{p^2}
        B = lambda f, g: np.outer(self.F[f], self.F[g]).ravel()  # noqa: E731
        self.uv = {f: (torch.from_numpy((B(2 * f - 1, 2 * f - 1) - B(2 * f, 2 * f)) / math.sqrt(2)),
                       torch.from_numpy((B(2 * f, 2 * f - 1) + B(2 * f - 1, 2 * f)) / math.sqrt(2)))
                   for f in key_freqs}

    def logits(self, w):
        return full_forward(w, self.tokens)[:, : self.p]  # '=' class dropped

    def ce(self, L, rows):
        logp = L[rows].log_softmax(-1)
        return float(-logp.gather(1, self.labels[rows, None]).mean())

    def acc(self, L, rows):
        return float((L[rows].argmax(-1) == self.labels[rows]).double().mean())

    def proj(self, L, freqs):
        out = torch.zeros_like(L)
        for f in freqs:
            for u in self.uv[f]:
                out += u[:, None] * (u @ L)[None, :]
        return out

    # the metric functions
    def train_loss(self, w):
        return self.ce(self.logits(w), self.train)

    def test_loss(self, w):
        return self.ce(self.logits(w), ~self.train)

    def train_acc(self, w):
        return self.acc(self.logits(w), self.train)

    def test_acc(self, w):
        return self.acc(self.logits(w), ~self.train)

    def trig_loss(self, w, rows=None):
        L = self.logits(w)
        P = self.proj(L, self.key_freqs)
        Lr = P + (L - P).mean(0, keepdim=True)
        return self.ce(Lr, torch.ones(self.p**2, dtype=torch.bool) if rows is None else rows)

    def trig_loss_train(self, w):
        return self.trig_loss(w, self.train)

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

    # weight-only metrics
    @staticmethod
    def gini(c):
        c = np.sort(np.asarray(c, dtype=np.float64))
        n = c.size
        return 1.0 - 2.0 * sum(c[i] / c.sum() * (n - (i + 1) + 0.5) / n for i in range(n))

    def norms(self, w):
        p = self.p
        W_E = w["W_E"][:p].numpy()
        W_logit = (w["W_out"] @ w["W_U"][:, :p]).numpy()
        n_E = np.linalg.norm(self.F @ W_E, axis=1)  # per component, over d_model
        n_L = np.linalg.norm(W_logit @ self.F.T, axis=0)  # per component, over neurons
        per_freq = lambda n: np.sqrt(n[1::2] ** 2 + n[2::2] ** 2)  # noqa: E731
        return n_E, per_freq(n_E), n_L, per_freq(n_L)

    def measures(self, w) -> dict[str, np.ndarray]:
        n_E, f_E, n_L, f_L = self.norms(w)
        sq = [float((w[k] ** 2).sum()) for k in WEIGHTS]
        return {
            "loss_train": self.train_loss(w), "loss_test": self.test_loss(w),
            "acc_train": self.train_acc(w), "acc_test": self.test_acc(w),
            "restricted_loss_all": self.trig_loss(w), "restricted_loss_train": self.trig_loss_train(w),
            "excluded_loss": np.array(self.excluded_loss(w)), "excluded_loss_full": self.excluded_loss_full(w),
            "excluded_acc": np.array(self.excluded_acc(w)), "excluded_acc_full": self.excluded_acc_full(w),
            "gini_W_E_component": self.gini(n_E), "gini_W_E_freq": self.gini(f_E),
            "gini_W_logit_component": self.gini(n_L), "gini_W_logit_freq": self.gini(f_L),
            "sum_sq_weights": np.array(sq), "sum_sq_weights_total": sum(sq),
            "W_E_fourier_norm": n_E, "W_E_freq_norm": f_E,
        }


def run_reference(ds, key_freqs: list[int], idx: list[int]) -> tuple[dict[str, np.ndarray], float]:
    ref = Reference(int(ds.attrs["p"]), ds["is_train"].values, key_freqs)
    rows = []
    t0 = time.perf_counter()
    with torch.no_grad():
        for i in idx:
            w = {k: torch.from_numpy(ds[k].values[i].astype(np.float64)) for k in WEIGHTS}
            rows.append(ref.measures(w))
    dt = time.perf_counter() - t0
    return {k: np.stack([np.asarray(r[k]) for r in rows]) for k in rows[0]}, dt


# ------------------------------------------------------------------------------------------------------------
# FLOPs, rates, memory
# ------------------------------------------------------------------------------------------------------------
def suite_flops(p: int, d_model: int, n_heads: int, d_head: int, d_mlp: int, n_train_max: int, n_key: int) -> float:
    """Multiply-add FLOPs (x2) per checkpoint of progress_measures: forward pass, measures, weight measures."""
    m, h, f, n = d_model, n_heads, d_mlp, p * p
    width = f + p
    tables = h * m * d_head * m + (p + 2) * m * h * m + (p + 2) * h * m * width + f * m * p + 2 * p * m * h
    per_pair = f * p + 2 * h * width  # neuron-to-logit product; attention-weighted tables (a and b terms)
    measures = p * p * p * 1 + p * n_train_max * p * (n_key + 1)  # group sums; the excluded-loss product
    weights = m * p * p + f * m * p + f * p * p  # W_E and W_logit Fourier transforms, W_logit itself
    return 2.0 * (tables + n * per_pair + measures + weights)


def notebook_flops(p: int, d_model: int, n_heads: int, d_head: int, d_mlp: int, n_forward: int) -> float:
    """FLOPs of the reference: n_forward full-sequence forward passes over the p^2 inputs per checkpoint."""
    m, h, d, f = d_model, n_heads, d_head, d_mlp
    per_pos = 3 * m * h * d + h * d * m + 2 * m * f + m * (p + 1) + 2 * h * d * 3
    return 2.0 * n_forward * p * p * 3 * per_pos


def matmul_rate(dtype: torch.dtype, size: int = 2048, reps: int = 5) -> float:
    a = torch.randn(size, size, dtype=dtype)
    b = torch.randn(size, size, dtype=dtype)
    a @ b
    best = math.inf
    for _ in range(reps):
        t = time.perf_counter()
        a @ b
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


# ------------------------------------------------------------------------------------------------------------
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoints", type=int, default=401)
    ap.add_argument("--reference-every", type=int, default=16, help="time (b) on every k-th checkpoint (1: all)")
    ap.add_argument("--chunk", type=int, default=16, help="checkpoints per batched forward pass in (a)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--workers", type=int, default=1, help="checkpoints computed side by side in (a)")
    ap.add_argument("--end", choices=["low_precision", "no_wd", "random"], default="low_precision")
    ap.add_argument("--store", type=Path, default=None, help="an existing trajectory instead of the synthetic one")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from mechgrok.key_frequencies import key_frequencies
    from mechgrok.progress import progress_measures

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.2f} (1 min)")
    t = time.perf_counter()
    if args.store is not None:
        import mechgrok

        ds = mechgrok.open_run(args.store).load()
        what = str(args.store)
    else:
        ds, what = build_trajectory(args.checkpoints, args.end)
    n, p = ds.sizes["checkpoint"], int(ds.attrs["p"])
    print(f"trajectory: {n} checkpoints, p = {p}, {what} ({time.perf_counter() - t:.1f} s to build)")
    kf = key_frequencies(ds, reference=int(ds["checkpoint"].values[-1]))
    key = [int(k) for k in kf["key_freqs"].values]
    print(f"key frequencies (last checkpoint): {key}" if key else
          f"no key frequencies at the last checkpoint; using the paper's {(key := [14, 35, 41, 42, 52])}")

    rate_before = matmul_rate(torch.float64)

    # (a)
    reset_peak_rss()
    t = time.perf_counter()
    got = progress_measures(ds, key_freqs=key, chunk=args.chunk, workers=args.workers)
    t_a = time.perf_counter() - t
    peak = peak_rss_bytes()
    rate_after = matmul_rate(torch.float64)
    rate64 = max(rate_before, rate_after)  # the faster of the two: the smaller, stricter bound
    print(f"float64 matmul rate (2048^3, best of 5): {rate_before / 1e9:.1f} GFLOP/s before (a), "
          f"{rate_after / 1e9:.1f} after")
    print(f"(a) mechgrok progress_measures: {t_a:.2f} s for {n} checkpoints ({1e3 * t_a / n:.1f} ms each), "
          f"peak RSS {peak / 2**30:.2f} GiB (trajectory in memory included)")

    # (b)
    idx = list(range(0, n, max(1, args.reference_every)))
    if idx[-1] != n - 1:
        idx.append(n - 1)
    ref, t_b_part = run_reference(ds, key, idx)
    t_b = t_b_part * n / len(idx)
    est = "" if len(idx) == n else f" (timed on {len(idx)} checkpoints: {t_b_part:.1f} s, extrapolated)"
    print(f"(b) notebook-style reference, float64, 10 forward passes per checkpoint: {t_b:.1f} s{est}")

    # agreement
    worst_all = 0.0
    print(f"\nagreement on {len(idx)} checkpoints, max |a - b| / max(|a|, |b|):")
    for name, want in ref.items():
        have = got[name].isel(checkpoint=idx).values
        if name == "sum_sq_weights":
            have = got[name].sel(param=list(WEIGHTS)).isel(checkpoint=idx).values
        scale = np.maximum(np.abs(have), np.abs(want))
        rel = np.where(scale > 0, np.abs(have - want) / np.where(scale > 0, scale, 1.0), 0.0)
        worst = float(rel.max())
        worst_all = max(worst_all, worst)
        print(f"  {name:24s} {worst:9.2e}   (values {float(np.min(want)):.3g} .. {float(np.max(want)):.3g})")
    assert worst_all <= 1e-6, f"(a) and (b) disagree: max relative difference {worst_all:.2e} > 1e-6"
    print(f"all measures agree: max relative difference {worst_all:.2e} <= 1e-6")

    cfg = {"d_model": ds.sizes["d_model"], "n_heads": ds.sizes["head"], "d_head": ds.sizes["d_head"],
           "d_mlp": ds.sizes["d_mlp"]}
    is_train = ds["is_train"].values
    s = (np.arange(p)[:, None] + np.arange(p)[None, :]) % p
    n_train_max = int(np.bincount(s[is_train], minlength=p).max())
    flops = suite_flops(p, n_train_max=n_train_max, n_key=len(key), **cfg) * n
    bound = flops / rate64
    nb = notebook_flops(p, n_forward=10, **cfg) * n
    m, f = cfg["d_model"], cfg["d_mlp"]
    final = 2.0 * p * p * (cfg["n_heads"] * cfg["d_head"] * m + 2 * m * f + m * (p + 1))
    print(f"\nFLOPs of (a): {flops / 1e12:.3f} TFLOP, {flops / n / 1e9:.2f} GFLOP per checkpoint (one pass of "
          f"mechgrok.model.forward: {final / 1e9:.2f}; one full-sequence pass: "
          f"{notebook_flops(p, n_forward=1, **cfg) / 1e9:.1f}; (b): {nb / n / 1e9:.0f})")
    print(f"FLOP-bound estimate at {rate64 / 1e9:.1f} GFLOP/s (float64): {bound:.2f} s;  "
          f"(a) / bound = {t_a / bound:.2f}")
    print(f"\n(a) vs (b): {t_b / t_a:.1f} x faster")
    checks = [
        ("(a) at least 10 x faster than (b)", t_b / t_a >= 10),
        ("(a) under 60 s", t_a < 60),
        ("(a) within 3 x of the FLOP bound", t_a / bound <= 3),
        ("peak memory under 4 GB", peak < 4e9),
    ]
    for label, ok in checks:
        print(f"  [{'ok' if ok else 'MISSED'}] {label}")
    print(f"load average after: {os.getloadavg()[0]:.2f} (1 min)")


if __name__ == "__main__":
    main()
