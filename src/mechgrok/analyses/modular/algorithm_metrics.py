"""Which algorithm forms: the Clock-versus-Pizza metrics of Zhong et al. (2023) at every checkpoint.

Zhong, Liu, Tegmark & Andreas, "The Clock and the Pizza: Two Stories in Mechanistic Explanation of Neural
Networks" (NeurIPS 2023), section 4 and their ``code/eval-main.ipynb`` (``shared/reference/tasks.md`` section 4,
``beyond.md`` section 2). Both algorithms start from circular embeddings; the Clock (the paper's algorithm of
Nanda et al.) multiplies the two angles, so its correct logit cos(w(a + b - c)) does not depend on a - b; the
Pizza averages the two embeddings, so its correct logit scales with |cos(w(a - b)/2)| and its gradients with
respect to the two embeddings are equal.

**Distance irrelevance** (DI). With L[a, b] the logit of the correct class of each pair,

    DI = mean_d std_{(a, b): a - b = d} L[a, b] / std_{a, b} L[a, b]

(population standard deviations, the notebook's ``np.std``). For odd p the pairs with a - b = d are indexed
by s = a + b, so this is the notebook's mean over d of the std over s of L[s, d]. Clock: near 1 (the
logit does not vary with the distance); Pizza: small.

**Gradient symmetricity** (GS). For a set S of triples (a, b, c),

    GS = mean_{(a, b, c) in S} cos(dQ_abc / dE_a, dQ_abc / dE_b)

with Q_abc the logit of class c on input (a, b) and E_a, E_b the input embeddings at positions 0 and 1 (before
the positional embedding is added). S is the authors' (``GS_SEED``, ``GS_TRIPLES``): the lexicographic list of
all p^3 triples shuffled by ``random.Random(42)``, the first 100 kept, so c is not required to be the answer.
The gradients of the 100 triples come from one batched backward pass: each triple gets its own copies of the
two embedding rows (a vocabulary of 2 x 100 rows plus ``=``), so each row's gradient is exactly one triple's at
one position. Pizza: near 1 (at alpha = 0 with ``=``, exactly 1: the network is a function of E_a + E_b);
Clock: lower.

**Circularity**. The top 4 principal components of the centred embedding (tokens x d_model; tokens 0..p-1),
each a vector v over tokens scaled to sum_t v[t]^2 = 1/p; its score is min(1, 2 max_k |sum_t v[t]
exp(-2 pi i k t / p)|^2) over the frequencies k = 1..p-1, and circularity is the mean over the 4. The notebook
takes the max over multipliers m of |sum_t v[t m mod p] exp(2 pi i t / p)|^2, which for a prime p is the same
maximum (t m runs over the residues, |S_m| = |DFT_k(v)| with k = m^-1), computed here as one FFT. A pure
sinusoid scores 1: the filter for "is it a circle algorithm at all".

**Operations**. The metrics are computed in the operation's coordinates (:mod:`mechgrok.tasks.discrete_log`):
for subtraction b is re-indexed to -b (the grid pass does it), so the label is i + j and the distance i - j;
for multiplication and division :func:`algorithm_metrics` first re-indexes the trajectory by discrete logs, so
the three metrics are those of the (p-1) x (p-1) grid of non-zero residues, tokens and triples over them,
circularity over Z_(p-1).

Read along training (``docs/algorithms.md``): during memorisation DI and GS describe a lookup table (no
circle: low circularity); the point where GS settles (near 1 or well below) relative to circuit formation says
when the model commits to a Pizza or a Clock. The metrics are descriptive coordinates, not a taxonomy (an
OpenReview counterpoint argues the two are one "approximate CRT", ``beyond.md`` 2.5).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import numpy as np
import torch
import xarray as xr

from mechgrok.analyses.modular.fourier import residues
from mechgrok.analyses.modular.frequency_alignment import singular_vectors
from mechgrok.analyses.modular.grid import grid_pass, model_p
from mechgrok.config import recorded
from mechgrok.engine import DEFAULT_CHUNK, Checkpoint, run
from mechgrok.errors import AnalysisError
from mechgrok.models.transformer import WEIGHT_NAMES, forward
from mechgrok.tasks.discrete_log import coordinate_trajectory, operation_of

__all__ = [
    "GS_TRIPLES",
    "GS_SEED",
    "CIRCULARITY_COMPONENTS",
    "gradient_triples",
    "distance_irrelevance",
    "gradient_symmetricity",
    "circularity",
    "AlgorithmMetrics",
    "algorithm_metrics",
]

#: Number of (a, b, c) triples of the gradient symmetricity (the authors').
GS_TRIPLES = 100
#: Seed of the authors' ``random.Random`` shuffle of the triples.
GS_SEED = 42
#: Principal components of the embedding the circularity averages over.
CIRCULARITY_COMPONENTS = 4


def gradient_triples(p: int, *, n: int = GS_TRIPLES, seed: int = GS_SEED) -> np.ndarray:
    """The authors' triples of the gradient symmetricity: all p^3 (a, b, c) in lexicographic order, shuffled
    by ``random.Random(seed)``, the first ``n``.

    Bit-identical to ``xs = [(a, b, c) for a in range(p) for b in range(p) for c in range(p)];
    random.Random(seed).shuffle(xs); xs[:n]`` (Zhong et al. 2023, ``code/eval-main.ipynb``), without building
    the list: the Mersenne Twister words of the seeded generator are drawn in bulk by
    :class:`numpy.random.MT19937` (same algorithm, state copied from ``random.Random(seed).getstate()``), the
    swap targets of every step of CPython's Fisher-Yates ``shuffle`` (its ``_randbelow``: the top
    ``bit_length`` bits of a word, redrawn while out of range) are found block-wise by
    :func:`_shuffle_swap_targets`, and only the first ``n`` positions are traced back through the swaps by
    :func:`_shuffled_sources`. The triple at lexicographic index x is (x // p^2, (x // p) mod p, x mod p).
    About 0.07 s instead of 1 s for p = 113, n = 100; for p^3 >= 2^32 (``getrandbits`` would join several
    words) it falls back to shuffling the list.

    Parameters
    ----------
    p : int
        Residues 0..p-1 for each of a, b, c.
    n : int
        Triples kept (at most p^3).
    seed : int
        Seed of ``random.Random``.

    Returns
    -------
    numpy.ndarray
        int64 (n, 3): columns a, b, c.

    Examples
    --------
    >>> xs = [(a, b, c) for a in range(5) for b in range(5) for c in range(5)]
    >>> random.Random(42).shuffle(xs)
    >>> gradient_triples(5, n=3).tolist() == [list(t) for t in xs[:3]]
    True
    >>> gradient_triples(5, n=3).shape
    (3, 3)
    """
    q = len(range(p))
    total = q**3
    keep = len(range(total)[: min(int(n), total)])
    if total >= 1 << 32:
        xs = [(a, b, c) for a in range(p) for b in range(p) for c in range(p)]
        random.Random(seed).shuffle(xs)
        return np.asarray(xs[:keep], dtype=np.int64).reshape(-1, 3)
    x = _shuffled_sources(total, keep, random.Random(seed))
    return np.stack([x // (q * q), (x // q) % q, x % q], axis=1).astype(np.int64, copy=False)


def _shuffle_swap_targets(total: int, rng: random.Random) -> np.ndarray:
    """The swap targets of ``rng.shuffle`` on a list of ``total < 2^32`` items, without advancing ``rng``.

    CPython 3.11's ``shuffle`` swaps x[i] and x[j] for i = total-1 down to 1, with j = ``_randbelow(i + 1)``:
    for the bound m = i + 1 and k = m.bit_length(), r = ``getrandbits(k)`` = (next 32-bit word) >> (32 - k),
    redrawn while r >= m, each draw one word. Within a run of bounds with the same k the words map to fixed r,
    so a block of L words (L at most the steps left at this k: no block crosses a power of two) drawn while the
    bound is m is settled at once: during the block the bound lies in [m - L + 1, m], so r <= m - L is
    accepted, r >= m rejected, and the few words in between are settled in order (bound = m minus the
    acceptances before them). Blocks of about 2^(k/2 + 2) words leave a handful of those per block.

    Parameters
    ----------
    total : int
        Length of the shuffled list, 0 <= total < 2^32.
    rng : random.Random
        The generator, in the state ``shuffle`` would start from (only read).

    Returns
    -------
    numpy.ndarray
        int64 (total,): j of step i at index i (j <= i); index 0 holds 0 (no step).
    """
    key = rng.getstate()[1]
    bits = np.random.MT19937()
    bits.state = {
        "bit_generator": "MT19937",
        "state": {"key": np.asarray(key[:-1], dtype=np.uint32), "pos": key[-1]},
    }
    out = np.zeros(total, dtype=np.int64)
    words = np.empty(0, dtype=np.uint64)
    at = 0
    m = total  # the bound of the next step, i = m - 1
    while m >= 2:
        k = m.bit_length()
        size = min(1 << (k // 2 + 2), m - (1 << (k - 1)) + 1)
        if at + size > words.size:  # at most 2 words per step expected; draw ahead in bulk
            words = np.concatenate([words[at:], bits.random_raw(size + m + m // 2)])
            at = 0
        r = words[at : at + size] >> np.uint64(32 - k)
        at += size
        accepted = r <= m - size
        unsure = np.flatnonzero((r > m - size) & (r < m))
        if unsure.size:
            before = np.cumsum(accepted)  # sure acceptances up to each word (an unsure word is not one)
            extra = 0
            for u in unsure.tolist():
                if int(r[u]) < m - int(before[u]) - extra:
                    accepted[u] = True
                    extra += 1
        j = r[accepted]
        out[m - j.size : m] = j[::-1]
        m -= j.size
    return out


def _shuffled_sources(total: int, keep: int, rng: random.Random) -> np.ndarray:
    """Which original index ends at each of the first ``keep`` positions after ``rng.shuffle`` of a list of
    ``total < 2^32`` items, without performing the swaps.

    With J[i] the swap target of step i (:func:`_shuffle_swap_targets`; steps run i = total-1 down to 1, and
    J[i] <= i), position t is only touched by step t and by the steps i > t with J[i] = t. So the value at
    position t just before step t is W[t] = W[nxt(t)], nxt(t) the smallest i > t with J[i] = t (the latest
    such swap), or t itself when there is none; and position v ends with what step v took from position J[v]:
    W[m(v)], m(v) the smallest i > v with J[i] = J[v], or J[v] when there is none (a step 0 with J[0] = 0 makes
    this hold for v = 0). The chains of nxt are short (at most 21 links for p = 113, seed 42).

    Parameters
    ----------
    total : int
        Length of the shuffled list, 0 <= total < 2^32.
    keep : int
        Leading positions wanted, 0 <= keep <= total.
    rng : random.Random
        The generator, in the state ``shuffle`` would start from (only read).

    Returns
    -------
    numpy.ndarray
        int64 (keep,): the original index of the item at each position.
    """
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    swap = _shuffle_swap_targets(total, rng)
    steps = np.arange(total)
    nxt = np.full(total, total, dtype=np.int64)  # total: none
    moved = swap < steps
    np.minimum.at(nxt, swap[moved], steps[moved])
    # m(v) for v < keep: the next step after v (in i) with the same target; targets J[v] <= v < keep
    near = np.flatnonzero(swap < keep)
    order = near[np.argsort(swap[near], kind="stable")]
    same = swap[order[1:]] == swap[order[:-1]]
    head, tail = order[:-1][same], order[1:][same]
    wanted = head < keep
    later = np.full(keep, total, dtype=np.int64)
    later[head[wanted]] = tail[wanted]
    out = swap[:keep].copy()
    live = np.flatnonzero(later < total)
    node = later[live]
    while live.size:
        ahead = nxt[node]
        done = ahead >= total
        out[live[done]] = node[done]
        live, node = live[~done], ahead[~done]
    return out


def distance_irrelevance(correct: torch.Tensor, p: int) -> torch.Tensor:
    """Distance irrelevance from the correct-class logits over the grid (module docstring).

    Parameters
    ----------
    correct : torch.Tensor
        (..., p*p): the logit of each pair's correct class, rows a * p + b (in the operation's coordinates:
        the label is (a + b) mod p).
    p : int
        The modulus (the order of the group in the coordinates; any p >= 2).

    Returns
    -------
    torch.Tensor
        (...,) float64: mean over d of the std over the pairs with a - b = d, over the std over all pairs; NaN
        for logits constant over the grid.

    Examples
    --------
    >>> import torch
    >>> x = torch.arange(5, dtype=torch.float64)
    >>> a, b = x.repeat_interleave(5), x.repeat(5)
    >>> clock = torch.cos(2 * torch.pi * (a + b) / 5)  # depends on a + b only
    >>> round(float(distance_irrelevance(clock, 5)), 6)
    1.0
    >>> round(float(distance_irrelevance(torch.cos(2 * torch.pi * (a - b) / 5), 5)), 6)  # on a - b only
    0.0
    """
    L = correct.to(torch.float64)
    d = residues(p, sign=-1, device=L.device)  # a - b mod p of each row
    zeros = L.new_zeros((*L.shape[:-1], p))
    count = torch.zeros(p, dtype=torch.float64, device=L.device).index_add_(0, d, torch.ones_like(d, dtype=torch.float64))
    mean_d = zeros.index_add(-1, d, L) / count
    var_d = zeros.index_add(-1, d, L.square()) / count - mean_d.square()
    std_d = var_d.clamp_min(0).sqrt()
    return std_d.mean(-1) / L.std(-1, correction=0)


def gradient_symmetricity(
    weights: dict[str, torch.Tensor], triples: torch.Tensor, *, attn_coeff: float = 1.0
) -> torch.Tensor:
    """Cosine of the gradients of logit c with respect to the embeddings of a and of b, for each triple.

    One batched backward pass (module docstring): the model's own :func:`~mechgrok.models.transformer.forward`
    on a vocabulary of the triples' embedding rows, so each row's gradient is one triple's at one position.

    Parameters
    ----------
    weights : dict of str to torch.Tensor
        Weights by TransformerLens name with the same leading dims on each (e.g. (1, ...) for one checkpoint as
        :class:`~mechgrok.engine.Checkpoint` holds them, (c, ...) for a chunk), ``W_pos`` of 3 rows (``[a, b, =]``, logit at ``=``) or
        2 (``[a, b]``, logit at b).
    triples : torch.Tensor
        int64 (T, 3): a, b, c.
    attn_coeff : float
        The model's attention rate alpha.

    Returns
    -------
    torch.Tensor
        (..., T) float64 cosines (leading dims those of the weights; NaN where a gradient is 0); GS is
        their mean.

    Examples
    --------
    >>> import torch
    >>> from mechgrok.config import Config
    >>> from mechgrok.models.transformer import init_params
    >>> cfg = Config(p=5, d_model=8, n_heads=2, d_head=4, d_mlp=16, frac_train=0.5, attn_coeff=0.0)
    >>> w = {k: v.double()[None] for k, v in init_params(cfg).items()}
    >>> cos = gradient_symmetricity(w, torch.tensor([[1, 2, 3], [4, 4, 0]]), attn_coeff=0.0)
    >>> [round(float(c), 12) for c in cos[0]]  # constant attention with '=': a function of E_a + E_b
    [1.0, 1.0]
    """
    W_E = weights["W_E"]
    n_ctx = weights["W_pos"].shape[-2]
    a, b, c = triples.to(W_E.device).unbind(-1)
    T = a.shape[0]
    extra = W_E[..., W_E.shape[-2] - 1 :, :] if n_ctx == 3 else W_E[..., :0, :]  # '=' (the last token)
    with torch.enable_grad():
        rows = torch.cat([W_E[..., a, :], W_E[..., b, :], extra], dim=-2).detach().requires_grad_(True)
        ar = torch.arange(T, device=W_E.device)
        cols = [ar, ar + T] + ([torch.full_like(ar, 2 * T)] if n_ctx == 3 else [])
        out = forward({**weights, "W_E": rows}, torch.stack(cols, dim=-1), attn_coeff=attn_coeff)
        out.logits[..., ar, c].sum().backward()
    g = rows.grad
    ga, gb = g[..., :T, :], g[..., T : 2 * T, :]
    return (ga * gb).sum(-1) / (ga.norm(dim=-1) * gb.norm(dim=-1))


def circularity(W_E: torch.Tensor, p: int, *, k: int = CIRCULARITY_COMPONENTS) -> tuple[torch.Tensor, torch.Tensor]:
    """Circularity of the embedding: how much of each top principal component is one sinusoid over the tokens.

    Parameters
    ----------
    W_E : torch.Tensor
        (..., vocab, d_model); its first p rows are the residues (in the operation's coordinates).
    p : int
        Tokens taken (and the length of the DFT).
    k : int
        Principal components (the authors': 4).

    Returns
    -------
    score : torch.Tensor
        (..., k) float64: min(1, 2 max_f |DFT_f(v)|^2) of each component v scaled to sum v^2 = 1/p;
        circularity is its mean over the last dim.
    freq : torch.Tensor
        (..., k) int64: the frequency f in 1..p//2 attaining the max (f and p - f are one frequency).

    Examples
    --------
    >>> import torch
    >>> t = torch.arange(7, dtype=torch.float64)
    >>> W = torch.stack([torch.cos(2 * torch.pi * 3 * t / 7), torch.sin(2 * torch.pi * 3 * t / 7),
    ...                  torch.cos(2 * torch.pi * t / 7), torch.sin(2 * torch.pi * t / 7)], -1) * torch.tensor([4, 4, 1, 1])
    >>> score, freq = circularity(W, 7)
    >>> [round(float(s), 12) for s in score], freq.tolist()
    ([1.0, 1.0, 1.0, 1.0], [3, 3, 1, 1])
    """
    X = W_E[..., :p, :].to(torch.float64)
    X = X - X.mean(dim=-2, keepdim=True)
    U, _ = singular_vectors(X, k)  # (..., p, k): the leading principal components over tokens
    v = U.transpose(-1, -2) / np.sqrt(p)  # (..., k, p), sum v^2 = 1/p
    power = torch.fft.fft(v, dim=-1).abs().square()[..., 1:]  # frequencies 1..p-1
    best, arg = power.max(dim=-1)
    f = arg + 1
    return torch.clamp(2 * best, max=1.0), torch.minimum(f, p - f)


@dataclass
class AlgorithmMetrics:
    """Engine kernel (:mod:`mechgrok.engine`): DI, GS and circularity of one checkpoint, from the shared grid
    pass (DI), one batched backward pass over the triples (GS) and the embedding (circularity).

    Build it with :meth:`for_trajectory` (the triples are drawn once, there).
    """

    p: int
    triples: np.ndarray
    attn_coeff: float = 1.0
    rule: str = ""
    name: str = "algorithm"
    weights: tuple[str, ...] | None = WEIGHT_NAMES
    needs: frozenset[str] = field(default_factory=frozenset)

    @classmethod
    def for_trajectory(cls, ds: xr.Dataset, *, n_triples: int = GS_TRIPLES, seed: int = GS_SEED) -> "AlgorithmMetrics":
        """The kernel for a trajectory in its operation's coordinates (other than add, through
        :func:`~mechgrok.tasks.discrete_log.coordinate_trajectory` first).

        Raises
        ------
        AnalysisError
            If the trajectory has no p, is multi-layer, or is a sub, mul or div trajectory not in its coordinates.
        """
        p = model_p(ds)
        op = operation_of(ds.attrs)
        if op != "add" and "operation_coordinates" not in ds.attrs:
            raise AnalysisError(f"a {op} trajectory is analysed in its operation's coordinates: use "
                                "algorithm_metrics(), or mechgrok.tasks.discrete_log.coordinate_trajectory first")
        rule = (f"GS over the first {n_triples} of the p^3 triples (a, b, c) shuffled by random.Random({seed}); "
                f"circularity over the top {CIRCULARITY_COMPONENTS} principal components of W_E[:p]; DI and "
                "circularity with population standard deviations; " + ds.attrs.get("operation_coordinates", f"operation {op}"))
        return cls(p=p, triples=gradient_triples(p, n=n_triples, seed=seed),
                   attn_coeff=float(recorded(ds.attrs, "attn_coeff", 1.0)), rule=rule)

    def __call__(self, ck: Checkpoint) -> dict[str, np.ndarray]:
        g = grid_pass(ck)
        correct = g.logits.gather(-1, residues(self.p, device=g.logits.device)[:, None])[:, 0]
        # fresh (aligned) copies: a checkpoint's weights are views into its chunk, and the autograd pass's
        # rounding can depend on where its operands sit in memory
        w = {k: v.clone() for k, v in ck.weights.items()}
        cos = gradient_symmetricity(w, torch.from_numpy(self.triples), attn_coeff=self.attn_coeff)[0]
        score, freq = circularity(w["W_E"][0], self.p)
        return {
            "distance_irrelevance": distance_irrelevance(correct, self.p).cpu().numpy(),
            "gradient_cosine": cos.detach().cpu().numpy(),
            "circularity_component": score.cpu().numpy(),
            "circularity_freq": freq.cpu().numpy(),
        }

    def assemble(self, values: dict[str, np.ndarray], checkpoint: xr.DataArray) -> xr.Dataset:
        cos = values["gradient_cosine"]
        comp = values["circularity_component"]
        ck = ("checkpoint",)
        data = {
            "distance_irrelevance": (ck, values["distance_irrelevance"], {
                "units": "fraction", "description": "mean over d of std over pairs with a - b = d of the correct "
                "logit, over its std over all pairs (Zhong et al. 2023); Clock ~ 1, Pizza small"}),
            "gradient_symmetricity": (ck, np.nanmean(cos, axis=-1) if cos.size else np.full(len(cos), np.nan), {
                "units": "cosine", "description": "mean over the triples of cos(dQ_abc/dE_a, dQ_abc/dE_b) "
                "(Zhong et al. 2023); Pizza ~ 1, Clock lower"}),
            "circularity": (ck, comp.mean(axis=-1), {
                "units": "fraction", "description": "mean over the top principal components of W_E of the power "
                "share of their best frequency, min(1, 2 max_f |DFT_f(v)|^2) with sum v^2 = 1/p"}),
            "gradient_cosine": (("checkpoint", "triple"), cos, {
                "units": "cosine", "description": "cos(dQ_abc/dE_a, dQ_abc/dE_b) of each triple"}),
            "circularity_component": (("checkpoint", "component"), comp, {
                "units": "fraction", "description": "circularity score of each principal component"}),
            "circularity_freq": (("checkpoint", "component"), values["circularity_freq"].astype(np.int64), {
                "units": "frequency", "description": "best frequency of each principal component (1..p//2)"}),
        }
        coords = {"checkpoint": checkpoint.values, "triple": np.arange(len(self.triples)),
                  "triple_a": ("triple", self.triples[:, 0]), "triple_b": ("triple", self.triples[:, 1]),
                  "triple_c": ("triple", self.triples[:, 2]), "component": np.arange(comp.shape[-1])}
        out = xr.Dataset(data, coords=coords)
        out["checkpoint"].attrs = dict(checkpoint.attrs)
        out.attrs = {"title": "Clock vs Pizza metrics (Zhong et al. 2023)", "rule": self.rule, "p": self.p,
                     "attn_coeff": self.attn_coeff}
        return out


def algorithm_metrics(
    ds: xr.Dataset,
    *,
    n_triples: int = GS_TRIPLES,
    seed: int = GS_SEED,
    chunk: int = DEFAULT_CHUNK,
    device: str | torch.device | None = "cpu",
) -> xr.Dataset:
    """Distance irrelevance, gradient symmetricity and circularity at every checkpoint (module docstring).

    Zhong et al. (2023), section 4 and ``code/eval-main.ipynb``. One pass of :func:`mechgrok.engine.run`; a mul
    or div trajectory is re-indexed by discrete logarithms first (:mod:`mechgrok.tasks.discrete_log`).

    Parameters
    ----------
    ds : xarray.Dataset
        Canonical one-layer modular trajectory with ``attrs["p"]`` (any model of the family: with or without
        ``=``, any attention rate, recorded in its config), selected along ``checkpoint`` by the caller.
    n_triples, seed : int
        The triples of the gradient symmetricity (the authors': 100, 42).
    chunk : int
        Checkpoints whose weights are read at once.
    device : str, torch.device or None
        Where the passes run (None: CUDA when available).

    Returns
    -------
    xarray.Dataset
        ``distance_irrelevance``, ``gradient_symmetricity``, ``circularity`` (checkpoint); ``gradient_cosine``
        (checkpoint, triple) with the triples as coordinates ``triple_a``, ``triple_b``, ``triple_c``;
        ``circularity_component`` and ``circularity_freq`` (checkpoint, component). attrs ``rule``, ``p``,
        ``attn_coeff``.

    Raises
    ------
    AnalysisError
        If the trajectory has no p, is multi-layer, lacks weights, or no checkpoint is selected.

    Examples
    --------
    >>> import mechgrok
    >>> m = algorithm_metrics(mechgrok.open_run("fixtures/quick-run").isel(checkpoint=[-1]), n_triples=10)
    >>> bool(m["circularity"].item() > 0.9)
    True
    """
    ds = coordinate_trajectory(ds)
    kernel = AlgorithmMetrics.for_trajectory(ds, n_triples=n_triples, seed=seed)
    return run(ds, [kernel], chunk=chunk, device=device)["algorithm"]
