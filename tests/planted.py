"""A planted model: weights built by hand to run the paper's Fourier algorithm at chosen key frequencies.

:func:`planted_trajectory` returns a trajectory in the canonical schema (:mod:`mechgrok.store.schema`, built
with :func:`mechgrok.store.schema.build_dataset`), so every analysis can be checked against structure whose
answer is known: the key frequencies, every neuron's frequency (FVE > 0.95), each attention head's frequency
and phase, and logits that classify the whole p x p grid correctly with a small loss.

Construction (TransformerLens orientation, row vectors; ``K = freqs``, w_k = 2 pi k / p, ``N = n_phases``)
-------------------------------------------------------------------------------------------------------------
Residual dims (``d_model = 1 + 4 |K|``):

* ``eq`` (dim 0): 1 on the ``=`` token, 0 on the residues. It carries the query of the planted attention heads
  and the (negative) logit of the ``=`` class.
* ``in cos k`` / ``in sin k``: the embedding e_k(x) = (cos w_k x, sin w_k x) of residue x (the ``=`` row is 0).
  So ``W_E`` has Fourier norm only at the planted frequencies (norm sqrt(p/2) per cos / sin component).
* ``out cos k`` / ``out sin k``: written by the MLP, read by ``W_U``.

``W_pos`` is 0.

Attention. Head 0 is the *mixer*: ``W_Q = W_K = 0`` gives uniform attention 1/3 on (a, b, =);
``W_V[0]`` copies the ``in`` dims and ``W_O[0] = 3 I`` writes them back, so the residual at ``=`` after attention
holds e_k(a) + e_k(b) for every planted k (the hint of the brief: W_E is shared, so attention cannot separate
a from b linearly; summing them is enough). Heads 1.. are *planted attention heads* with ``W_V = W_O = 0``
(they do not change the output): head h reads frequency ``attn_freqs[h-1]`` = k with phase theta_h, with a
score from ``=`` to a residue x of ``attn_strength * cos(w_k (x + theta_h))`` and a score of ``-30`` to
``=`` itself, so

    attn_to_a = sigmoid(s(a) - s(b)) ~ 0.5 + (attn_strength / 4) (cos w_k(a + theta) - cos w_k(b + theta)),

the form of paper App. C.1.3 / Table 2 (FVE about 0.999 at ``attn_strength = 0.5``).

MLP. For each planted k and each bias beta_g in ``betas`` there are N neurons with phases phi_j = 2 pi j / N.
Neuron (k, g, j) reads u_j = (cos phi_j, sin phi_j) from the ``in`` dims of k and has bias beta_g:

    mlp_post = ReLU(cos(w_k a - phi_j) + cos(w_k b - phi_j) + beta_g),

a function of u = w_k a - phi_j and v = w_k b - phi_j whose 2D spectrum lies almost entirely in the 3 x 3 block
{const, cos k, sin k}^2 (the ReLU harmonics at 2k, 3k, ... are small): FVE = 0.962 at beta 0 and 0.967 at
beta 0.5 for every neuron, independent of p, k and phi_j (0.886 at beta -0.5). ``W_out`` writes
(2 r_g / N)(cos 2 phi_j, sin 2 phi_j) into the ``out`` dims of k and ``W_U`` reads them as
``scale * (cos w_k c, sin w_k c)``, so the neuron-logit map is

    W_logit[(k, g, j), c] = (2 scale r_g / N) cos(2 phi_j - w_k c),

whose Fourier transform over c is non-zero only at cos k / sin k. Summing over the N phases keeps only the
harmonics of the activation that turn like 2 phi: c_11 cos(u + v) (the wanted cos(w_k (a + b) - 2 phi)),
c_20 cos 2u + c_20 cos 2v and smaller ones (c_{3,-1} cos(3u - v), ...). The readout weights r_g (computed by
``_group_readout``) make sum_g r_g c_20(beta_g) = 0 and sum_g r_g c_11(beta_g) = 1, so

    logits[a, b, c] ~ scale * sum_k cos(w_k (a + b - c))      (residual terms below 5% of it for betas (0, 0.5)).

(A single bias group leaves (c_20 / c_11) [cos(w_k (2a - c)) + cos(w_k (2b - c))] in the logits, whose margin
collapses; this is why there are two groups.) The correct class c = a + b then has the largest logit for every
(a, b) (accuracy 1.0) with a margin of about scale * min_{d != 0} sum_k (1 - cos(w_k d)), which depends on the
frequency set; e.g. the loss on all pairs is 9e-4 for p = 23, K = {3, 7}, 1e-3 for p = 53, K = {5, 17, 22} and
6e-9 for p = 113, K = {14, 35, 41, 42, 52} at the default scale 20. The ``=`` class gets logit
``-2 |K| scale`` (below every residue class).

Trajectory. ``mix`` gives one checkpoint per value m: weights m * planted + (1 - m) * random, where the random
model is the paper's initialisation (:func:`mechgrok.models.transformer.init_params`, seed ``seed``). The default is a single
checkpoint with m = 1, i.e. exactly the planted model. ``loss_train``/``loss_test``/``acc_train``/``acc_test``
curves at the checkpoint epochs are computed from the weights (float64 over the p non-``=`` classes) on the
paper's split (``frac_train``, ``seed``).
"""

from __future__ import annotations

import json
import math
from typing import Sequence

import numpy as np
import torch
import xarray as xr

from mechgrok.config import Config
from mechgrok.errors import ConfigError
from mechgrok.tasks.modular_arithmetic import grid_labels, grid_tokens, split_indices, train_mask
from mechgrok.tasks.loss import accuracy, cross_entropy
from mechgrok.models.transformer import forward, init_params
from mechgrok.store.schema import build_dataset

__all__ = ["planted_weights", "planted_trajectory", "random_trajectory"]


def _default_thetas(p: int, attn_freqs: Sequence[int]) -> list[float]:
    """theta_h = (0.37 + 1.3 h) mod (p / k_h) for the planted heads h = 1, 2, ..."""
    return [(0.37 + 1.3 * h) % (p / k) for h, k in enumerate(attn_freqs, start=1)]


def _group_readout(betas: Sequence[float], grid: int = 256) -> np.ndarray:
    """Readout weight r_g of each neuron group so that sum_g r_g ReLU(cos u + cos v + beta_g) has a zero
    cos(2u) harmonic (and cos(2v)) and a unit cos(u + v) harmonic (computed on a fine (u, v) grid)."""
    t = 2 * np.pi * np.arange(grid) / grid
    u, v = np.meshgrid(t, t, indexing="ij")
    c20, c11 = [], []
    for beta in betas:
        c = np.fft.fft2(np.maximum(np.cos(u) + np.cos(v) + beta, 0.0)) / grid**2
        c20.append(2 * c[2, 0].real)
        c11.append(2 * c[1, 1].real)
    c20, c11 = np.array(c20), np.array(c11)
    if len(betas) == 1:
        return np.array([1.0 / c11[0]])
    # minimum-norm r with c20 . r = 0 and c11 . r = 1
    A = np.stack([c20, c11])
    return np.linalg.lstsq(A, np.array([0.0, 1.0]), rcond=None)[0]


def planted_weights(
    p: int,
    freqs: Sequence[int],
    *,
    n_phases: int = 16,
    betas: Sequence[float] = (0.0, 0.5),
    scale: float = 20.0,
    attn_freqs: Sequence[int] | None = None,
    attn_thetas: Sequence[float] | None = None,
    attn_strength: float = 0.5,
) -> tuple[dict[str, np.ndarray], Config]:
    """The planted model's weights (TransformerLens names and orientation, float32) and its Config.

    Parameters are those of :func:`planted_trajectory`. ``attn_freqs`` defaults to ``freqs`` (one planted head
    per frequency, after the mixer head 0); ``attn_thetas`` defaults to theta_h = (0.37 + 1.3 h) mod (p / k).
    """
    freqs = [int(k) for k in freqs]
    if len(set(freqs)) != len(freqs) or not freqs or any(not 1 <= k <= (p - 1) // 2 for k in freqs):
        raise ConfigError(f"freqs must be distinct integers in 1..{(p - 1) // 2}, got {freqs}")
    attn_freqs = list(freqs) if attn_freqs is None else [int(k) for k in attn_freqs]
    if any(k not in freqs for k in attn_freqs):
        raise ConfigError("planted attention heads can only read planted frequencies")
    if attn_thetas is None:
        attn_thetas = _default_thetas(p, attn_freqs)
    if n_phases < 8:
        raise ConfigError(f"n_phases must be at least 8, got {n_phases}")
    nf, n_heads = len(freqs), 1 + len(attn_freqs)
    d_model, d_head, d_mlp = 1 + 4 * nf, 2 * nf, nf * n_phases * len(betas)
    EQ = 0

    def in_dims(i: int) -> tuple[int, int]:
        return 1 + 2 * i, 2 + 2 * i

    def out_dims(i: int) -> tuple[int, int]:
        return 1 + 2 * nf + 2 * i, 2 + 2 * nf + 2 * i

    x = np.arange(p)
    W_E = np.zeros((p + 1, d_model))
    W_E[p, EQ] = 1.0
    W_U = np.zeros((d_model, p + 1))
    W_U[EQ, p] = -2.0 * nf * scale
    W_in = np.zeros((d_model, d_mlp))
    b_in = np.zeros(d_mlp)
    W_out = np.zeros((d_mlp, d_model))
    phis = 2 * np.pi * np.arange(n_phases) / n_phases
    readout = _group_readout(betas)
    for i, k in enumerate(freqs):
        w = 2 * np.pi * k / p
        ci, si = in_dims(i)
        co, so = out_dims(i)
        W_E[:p, ci], W_E[:p, si] = np.cos(w * x), np.sin(w * x)
        W_U[co, :p], W_U[so, :p] = scale * np.cos(w * x), scale * np.sin(w * x)
        for g, (beta, r) in enumerate(zip(betas, readout)):
            start = (i * len(betas) + g) * n_phases
            neurons = slice(start, start + n_phases)
            W_in[ci, neurons], W_in[si, neurons] = np.cos(phis), np.sin(phis)
            b_in[neurons] = beta
            W_out[neurons, co] = 2 * r / n_phases * np.cos(2 * phis)
            W_out[neurons, so] = 2 * r / n_phases * np.sin(2 * phis)
    W_Q = np.zeros((n_heads, d_model, d_head))
    W_K = np.zeros((n_heads, d_model, d_head))
    W_V = np.zeros((n_heads, d_model, d_head))
    W_O = np.zeros((n_heads, d_head, d_model))
    for i in range(nf):  # head 0: uniform attention, copies e(a) + e(b) + e(=) = e(a) + e(b)
        for j, dim in enumerate(in_dims(i)):
            W_V[0, dim, 2 * i + j] = 1.0
            W_O[0, 2 * i + j, dim] = 3.0
    root = math.sqrt(d_head)
    for h, (k, theta) in enumerate(zip(attn_freqs, attn_thetas), start=1):
        w = 2 * np.pi * k / p
        ci, si = in_dims(freqs.index(k))
        W_Q[h, EQ, 0] = 1.0
        # score(x) = q . key(x) / sqrt(d_head) = strength * (cos wx cos w theta - sin wx sin w theta)
        W_K[h, ci, 0] = attn_strength * math.cos(w * theta) * root
        W_K[h, si, 0] = -attn_strength * math.sin(w * theta) * root
        W_K[h, EQ, 0] = -30.0 * root  # the = position: score -30
    weights = {
        "W_E": W_E,
        "W_pos": np.zeros((3, d_model)),
        "W_Q": W_Q,
        "W_K": W_K,
        "W_V": W_V,
        "W_O": W_O,
        "W_in": W_in,
        "b_in": b_in,
        "W_out": W_out,
        "b_out": np.zeros(d_model),
        "W_U": W_U,
    }
    cfg = Config(p=p, d_model=d_model, n_heads=n_heads, d_head=d_head, d_mlp=d_mlp, preset=None)
    return {k: v.astype(np.float32) for k, v in weights.items()}, cfg


def planted_trajectory(
    p: int,
    freqs: Sequence[int],
    *,
    n_phases: int = 16,
    betas: Sequence[float] = (0.0, 0.5),
    scale: float = 20.0,
    attn_freqs: Sequence[int] | None = None,
    attn_thetas: Sequence[float] | None = None,
    attn_strength: float = 0.5,
    mix: Sequence[float] = (1.0,),
    epochs: Sequence[int] | None = None,
    frac_train: float = 0.3,
    seed: int = 0,
) -> xr.Dataset:
    """A trajectory whose (last) checkpoint implements the Fourier algorithm at ``freqs`` (see module doc).

    Parameters
    ----------
    p : int
        Odd modulus.
    freqs : sequence of int
        The planted key frequencies, distinct, in 1..(p-1)/2 (accuracy 1.0 for prime p; the margin, hence
        the loss, depends on the set: see the module docstring).
    n_phases : int
        Neurons per frequency and bias group (``d_mlp = len(freqs) * len(betas) * n_phases``); 8 or more.
    betas : sequence of float
        Bias of each neuron group (one group of ``n_phases`` neurons per frequency and bias); the default
        (0, 0.5) gives FVE 0.962 / 0.967 and lets the readout cancel the cos(w (2a - c)) terms.
    scale : float
        Logit amplitude per frequency: logits ~ scale * sum_k cos(w_k (a + b - c)).
    attn_freqs, attn_thetas, attn_strength
        The planted attention heads 1.. (head 0 is the uniform mixer): frequency, phase theta (in residues)
        and score amplitude of each.
    mix : sequence of float
        One checkpoint per value m: m * planted + (1 - m) * random init (seed ``seed``).
    epochs : sequence of int, optional
        Epoch of each checkpoint; default 0, 100, 200, ...
    frac_train, seed : float, int
        The split (paper procedure) stored in ``is_train`` and used for the curves.

    Returns
    -------
    xarray.Dataset
        Canonical trajectory (``attrs["p"] = p``), with extra attrs ``planted_freqs``, ``planted_attn_freqs``,
        ``planted_attn_thetas`` and ``planted_betas`` (JSON lists).
    """
    weights, cfg = planted_weights(
        p,
        freqs,
        n_phases=n_phases,
        betas=betas,
        scale=scale,
        attn_freqs=attn_freqs,
        attn_thetas=attn_thetas,
        attn_strength=attn_strength,
    )
    cfg = cfg.replace(frac_train=frac_train, seed=seed, model_seed=seed)
    noise = {k: v.numpy() for k, v in init_params(cfg).items()}
    mix = np.asarray(mix, dtype=np.float64)
    stacked = {k: np.stack([m * weights[k] + (1 - m) * noise[k] for m in mix]).astype(np.float32) for k in weights}
    epochs = np.arange(len(mix)) * 100 if epochs is None else np.asarray(epochs, dtype=np.int64)
    train, test = split_indices(p, frac_train, seed)
    tokens, labels = grid_tokens(p), grid_labels(p)
    with torch.no_grad():
        logits = forward({k: torch.from_numpy(v) for k, v in stacked.items()}, tokens).logits[..., :p]
    curves = {}
    for name, idx in (("train", train), ("test", test)):
        idx_t = torch.from_numpy(idx)
        curves[f"loss_{name}"] = (epochs, np.array([float(cross_entropy(lg[idx_t], labels[idx_t])) for lg in logits]))
        curves[f"acc_{name}"] = (epochs, np.array([float(accuracy(lg[idx_t], labels[idx_t])) for lg in logits]))
    ds = build_dataset(
        stacked,
        epochs,
        config=cfg.to_dict(),
        curves=curves,
        is_train=train_mask(p, train),
        source_format="planted",
        p=p,
    )
    attn_freqs = list(freqs) if attn_freqs is None else list(attn_freqs)
    if attn_thetas is None:
        attn_thetas = _default_thetas(p, attn_freqs)
    ds.attrs.update(
        planted_freqs=json.dumps([int(k) for k in freqs]),
        planted_attn_freqs=json.dumps([int(k) for k in attn_freqs]),
        planted_attn_thetas=json.dumps([float(t) for t in attn_thetas]),
        planted_betas=json.dumps([float(b) for b in betas]),
    )
    return ds


def random_trajectory(
    p: int = 7,
    n_checkpoints: int = 3,
    *,
    d_model: int = 8,
    n_heads: int = 2,
    d_head: int = 4,
    d_mlp: int = 12,
    seed: int = 0,
    std: float = 1.0,
) -> xr.Dataset:
    """A small trajectory of independent random models (the paper's initialisation times ``std``), for
    comparisons with dense references. Epochs 0, 10, 20, ...; biases are random too (non-zero)."""
    cfg = Config(p=p, d_model=d_model, n_heads=n_heads, d_head=d_head, d_mlp=d_mlp, model_seed=seed)
    gen = torch.Generator().manual_seed(seed)
    stacks: dict[str, list[np.ndarray]] = {}
    for _ in range(n_checkpoints):
        params = init_params(cfg, generator=gen)
        params["b_in"] = 0.3 * torch.randn(params["b_in"].shape, generator=gen)
        params["b_out"] = 0.3 * torch.randn(params["b_out"].shape, generator=gen)
        for k, v in params.items():
            stacks.setdefault(k, []).append(std * v.numpy())
    weights = {k: np.stack(v) for k, v in stacks.items()}
    train, _ = split_indices(p, cfg.frac_train, cfg.seed)
    return build_dataset(
        weights,
        np.arange(n_checkpoints) * 10,
        config=cfg.to_dict(),
        is_train=train_mask(p, train),
        source_format="random",
        p=p,
    )


def paper_state_dict(*, p: int = 7, d_model: int = 8, n_heads: int = 2, d_head: int = 4, d_mlp: int = 16, seed: int = 0):
    """A random state dict in the paper's original layout (paper.md 5.2)."""
    g = torch.Generator().manual_seed(seed)
    return {
        "embed.W_E": torch.randn(d_model, p + 1, generator=g),
        "pos_embed.W_pos": torch.randn(3, d_model, generator=g),
        "blocks.0.attn.W_K": torch.randn(n_heads, d_head, d_model, generator=g),
        "blocks.0.attn.W_Q": torch.randn(n_heads, d_head, d_model, generator=g),
        "blocks.0.attn.W_V": torch.randn(n_heads, d_head, d_model, generator=g),
        "blocks.0.attn.W_O": torch.randn(d_model, n_heads * d_head, generator=g),
        "blocks.0.attn.mask": torch.tril(torch.ones(3, 3)),
        "blocks.0.mlp.W_in": torch.randn(d_mlp, d_model, generator=g),
        "blocks.0.mlp.b_in": torch.randn(d_mlp, generator=g),
        "blocks.0.mlp.W_out": torch.randn(d_model, d_mlp, generator=g),
        "blocks.0.mlp.b_out": torch.randn(d_model, generator=g),
        "unembed.W_U": torch.randn(d_model, p + 1, generator=g),
    }
