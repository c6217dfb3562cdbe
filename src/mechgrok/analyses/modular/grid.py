"""The model on the whole p x p input grid of modular arithmetic (paper.md 3.3-3.4).

:func:`grid_forward` evaluates the one-layer model on every input ``[a, b, =]`` from per-token tables (exact
rearrangement, about 3 times fewer FLOPs than the model's own forward at the paper's widths). Inside the engine,
:func:`grid_pass` runs it once per checkpoint in float64 and every modular kernel (losses and ablations, neuron
clusters, attention fits, logit structure) reads from it. :func:`grid_activations` returns the activations as a
Dataset for a few checkpoints. Losses derived from the float64 logits match a float64 dense reference to about
1e-12 relative; ``grid_forward(..., dtype=torch.float32)`` exists only to study float32 rounding (paper.md 2.3).
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from typing import Collection, Mapping

import numpy as np
import torch
import xarray as xr
from einops import rearrange

from mechgrok.analyses.modular.fourier import fold_mod_p, residue_sums
from mechgrok.config import recorded
from mechgrok.errors import AnalysisError
from mechgrok.tasks.discrete_log import coordinates, operation_of
from mechgrok.engine import DEFAULT_CHUNK, Checkpoint, run
from mechgrok.models.transformer import WEIGHT_NAMES, ForwardOutput

__all__ = ["model_p", "GEMM_COLUMNS", "GridPass", "grid_pass", "grid_residue_sums", "grid_options", "GridActivations", "grid_activations",
           "grid_forward"]


def model_p(ds: xr.Dataset) -> int:
    """The modulus p of a trajectory (``attrs["p"]``).

    Raises
    ------
    AnalysisError
        If the Dataset has no p (not a modular-arithmetic model) or is multi-layer.
    """
    if "p" not in ds.attrs:
        raise AnalysisError("the trajectory has no modulus p (attrs['p']); the modular-arithmetic analyses need one")
    if int(ds.attrs.get("n_layers", 1)) != 1:
        raise AnalysisError("the paper's analyses apply to one-layer models only")
    return int(ds.attrs["p"])


#: The logits' matrix product is computed with a multiple of this many columns: float64 products of such
#: widths ran 1.2-1.7 x faster than with p = 113 columns on the benchmark machine (the BLAS kernel's register
#: block); the extra (zero) columns are dropped.
GEMM_COLUMNS = 24


@dataclass
class GridPass:
    """One checkpoint's float64 forward pass over the p x p grid, as kernels share it (:func:`grid_pass`).

    Attributes
    ----------
    p : int
    logits : torch.Tensor
        (p*p, p), rows a * p + b, the ``=`` class dropped. A view of reused work memory: valid while the
        checkpoint is being processed.
    mlp_post : torch.Tensor or None
        (p*p, d_mlp) ReLU activations at ``=``, when a kernel of the run needs ``"mlp_post"``.
    attn_pattern : torch.Tensor or None
        (p*p, head, 3) attention from ``=`` to positions a, b, ``=``, when a kernel needs ``"attn"``.
    resid_mid : torch.Tensor or None
        (p*p, d_model), when a kernel needs ``"resid_mid"``.
    neuron_sums : dict or None
        The level-set sums of the MLP activations (``neuron_sums`` of :func:`grid_forward`), when a kernel needs
        ``"neuron_sums"``; the activations themselves are then never stored.
    logit_sums : dict or None
        The logits' residue sums and squared norm (``logit_sums`` of :func:`grid_forward`), when a kernel needs
        ``"logit_sums"``.
    """

    p: int
    logits: torch.Tensor
    mlp_post: torch.Tensor | None = None
    attn_pattern: torch.Tensor | None = None
    resid_mid: torch.Tensor | None = None
    neuron_sums: dict[str, torch.Tensor] | None = None
    logit_sums: dict[str, torch.Tensor] | None = None


_LOCAL = threading.local()


def grid_pass(ck: Checkpoint) -> GridPass:
    """The grid forward pass of one checkpoint, computed once however many kernels ask for it.

    Runs :func:`grid_forward` in float64 on the checkpoint's device, with the caches that the run's kernels
    declared in their ``needs`` (``"mlp_post"``, ``"attn"``, ``"resid_mid"``). The logits are written into work
    memory reused from one checkpoint to the next (per thread), with ``W_U`` padded to a multiple of
    :data:`GEMM_COLUMNS` columns.

    Parameters
    ----------
    ck : mechgrok.engine.Checkpoint
        With ``attrs["p"]``.

    Returns
    -------
    GridPass
    """
    return ck.memo("grid_pass", lambda: _grid_pass(ck))


def grid_residue_sums(ck: Checkpoint) -> torch.Tensor:
    """G[s, c], the sums of the grid pass's logits over the pairs with (a + b) mod p = s, (p, p) float64;
    computed once per checkpoint however many kernels ask: by the grid pass itself, block by block while the
    logits are in cache, where a kernel of the run needs ``"logit_sums"``, else by
    :func:`mechgrok.analyses.modular.fourier.residue_sums` (the same additions in the same order)."""
    g = grid_pass(ck)
    if g.logit_sums is not None:
        return g.logit_sums["residue_sums"]
    return ck.memo("residue_sums", lambda: residue_sums(g.logits, g.p))


def grid_options(attrs: Mapping, p: int, device: str | torch.device = "cpu") -> dict:
    """The model variant and the operation coordinates of a trajectory, as options of :func:`grid_forward`.

    ``attn_coeff`` is the recorded attention rate (``Config.attn_coeff``, default 1); ``b_tokens`` re-indexes b
    for subtraction (-b mod p, :func:`mechgrok.tasks.discrete_log.coordinates`), so that every grid analysis
    sees the label (a + b) mod p. Every operation but add is analysed after
    :func:`mechgrok.tasks.discrete_log.coordinate_trajectory`, which re-indexes ``is_train`` alike (and, for
    mul and div, the weights by discrete logarithms).

    Raises
    ------
    AnalysisError
        For a sub, mul or div trajectory not in its coordinates, or an unknown operation.

    Examples
    --------
    >>> attrs = {"config_json": '{"operation": "sub", "attn_coeff": 0.5}', "operation_coordinates": "..."}
    >>> grid_options(attrs, 5)["b_tokens"].tolist()
    [0, 4, 3, 2, 1]
    """
    op = operation_of(attrs)
    if op in ("sub", "mul", "div") and "operation_coordinates" not in attrs:  # is_train is re-indexed there too
        raise AnalysisError(f"a {op} trajectory is analysed in its operation's coordinates: pass it through "
                            "mechgrok.tasks.discrete_log.coordinate_trajectory first")
    if op not in ("add", "sub"):
        raise AnalysisError(f"unknown operation {op!r}; known: add, sub, mul, div")
    b = None if op == "add" else torch.from_numpy(coordinates(p, op).b_tokens).to(device)
    return {"attn_coeff": float(recorded(attrs, "attn_coeff", 1.0)), "b_tokens": b}


def _grid_pass(ck: Checkpoint) -> GridPass:
    p = int(ck.attrs["p"])
    w = ck.weights
    n_cols = -(-p // GEMM_COLUMNS) * GEMM_COLUMNS
    d_model = w["W_U"].shape[-2]
    key = (p, n_cols, d_model, ck.device.type, ck.device.index)
    if getattr(_LOCAL, "key", None) != key:  # work memory of this thread, reused from checkpoint to checkpoint
        _LOCAL.key = key
        _LOCAL.logits = torch.empty(p * p * n_cols, dtype=torch.float64, device=ck.device)
        _LOCAL.W_U = torch.zeros(1, d_model, n_cols, dtype=torch.float64, device=ck.device)
    _LOCAL.W_U[..., :p] = w["W_U"][..., :p]
    caches = ck.needs & {"mlp_post", "attn", "resid_mid"}
    sums: dict[str, torch.Tensor] | None = {} if "neuron_sums" in ck.needs else None
    lsums: dict[str, torch.Tensor] | None = {} if "logit_sums" in ck.needs else None
    out = grid_forward({**w, "W_U": _LOCAL.W_U}, p, dtype=torch.float64, out=_LOCAL.logits, cache=caches,
                       neuron_sums=sums, logit_sums=lsums,
                       **ck.memo("grid_options", lambda: grid_options(ck.attrs, p, ck.device)))
    if lsums is not None:
        lsums["residue_sums"] = lsums["residue_sums"][:, :p]
    return GridPass(
        p=p,
        logits=out.logits[0, :, :p],
        mlp_post=out.mlp_post[0] if "mlp_post" in caches else None,
        attn_pattern=out.attn_pattern[0] if "attn" in caches else None,
        resid_mid=out.resid_mid[0] if "resid_mid" in caches else None,
        neuron_sums=sums,
        logit_sums=lsums,
    )


_ACTIVATION_DIMS = {
    "logits": ("checkpoint", "a", "b", "c"),
    "attn_to_a": ("checkpoint", "head", "a", "b"),
    "attn_to_b": ("checkpoint", "head", "a", "b"),
    "mlp_post": ("checkpoint", "a", "b", "d_mlp"),
    "resid_mid": ("checkpoint", "a", "b", "d_model"),
}


@dataclass
class GridActivations:
    """Engine kernel: the activations of :func:`grid_activations` at each checkpoint."""

    include: tuple[str, ...]
    name: str = "grid_activations"
    weights: tuple[str, ...] | None = WEIGHT_NAMES
    needs: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        bad = sorted(set(self.include) - {"logits", "attn", "mlp_post", "resid_mid"})
        if bad:
            raise AnalysisError(f"unknown activations {bad}; choose from logits, attn, mlp_post, resid_mid")
        self.needs = frozenset(self.include) - {"logits"}

    def __call__(self, ck: Checkpoint) -> dict[str, np.ndarray]:
        g = grid_pass(ck)
        p = g.p
        out = {}
        grid = "(a b) x -> a b x"  # rows a * p + b of the grid pass, as (a, b, ...)
        if "logits" in self.include:
            out["logits"] = rearrange(g.logits, grid, a=p).cpu().numpy().copy()  # the pass reuses its memory
        if "attn" in self.include:
            pat = rearrange(g.attn_pattern, "(a b) head pos -> pos head a b", a=p).cpu().numpy().copy()
            out["attn_to_a"], out["attn_to_b"] = pat[0], pat[1]
        if "mlp_post" in self.include:
            out["mlp_post"] = rearrange(g.mlp_post, grid, a=p).cpu().numpy().copy()
        if "resid_mid" in self.include:
            out["resid_mid"] = rearrange(g.resid_mid, grid, a=p).cpu().numpy().copy()
        return out

    def assemble(self, values: dict[str, np.ndarray], checkpoint: xr.DataArray) -> xr.Dataset:
        p = next(iter(values.values())).shape[-2 if "logits" not in values else -1]
        coords = {"checkpoint": checkpoint.values, "a": np.arange(p), "b": np.arange(p)}
        if "logits" in values:
            coords["c"] = np.arange(p)
        return xr.Dataset({k: (_ACTIVATION_DIMS[k], v) for k, v in values.items()}, coords=coords,
                          attrs={"description": "activations at the = position on the p x p grid (float64)"})


def grid_activations(
    ds: xr.Dataset,
    *,
    include: tuple[str, ...] = ("logits", "attn", "mlp_post"),
    chunk: int = DEFAULT_CHUNK,
    device: str | torch.device | None = "cpu",
) -> xr.Dataset:
    """Activations of every checkpoint on all p^2 inputs ``[a, b, =]``, from one float64 forward pass each.

    Everything is held in memory (about p^2 (d_mlp + p + 2 n_heads) * 8 bytes per checkpoint: 64 MB at the
    paper's widths); select a few checkpoints first (``ds.isel(checkpoint=[-1])``). The analyses never call
    this: their kernels take what they need from the shared pass (:func:`grid_pass`) checkpoint by checkpoint.

    Parameters
    ----------
    ds : xarray.Dataset
        Canonical one-layer trajectory with ``attrs["p"]``, already selected along ``checkpoint``.
    include : tuple of str
        Any of ``"logits"``, ``"attn"``, ``"mlp_post"``, ``"resid_mid"``.
    chunk : int
        Checkpoints whose weights are read at once (:func:`mechgrok.engine.run`).
    device : str, torch.device or None
        Where the pass runs (None: CUDA when available).

    Returns
    -------
    xarray.Dataset
        ``logits`` (checkpoint, a, b, c): float64 logits without the ``=`` class (c = 0..p-1);
        ``attn_to_a``, ``attn_to_b`` (checkpoint, head, a, b): attention from ``=`` to positions 0 and 1;
        ``mlp_post`` (checkpoint, a, b, d_mlp): ReLU activations at ``=``;
        ``resid_mid`` (checkpoint, a, b, d_model).

    Raises
    ------
    AnalysisError
        If the trajectory has no p, is multi-layer, lacks weights, no checkpoint is selected, or ``include``
        names an unknown activation.

    """
    model_p(ds)
    return run(ds, [GridActivations(tuple(include))], chunk=chunk, device=device)["grid_activations"]


#: Rows of the p x p grid per block in :func:`grid_forward` (a block's MLP activations stay in cache).
_GRID_BLOCK_ROWS = 512


def grid_forward(
    params: Mapping[str, torch.Tensor],
    p: int,
    *,
    cache: bool | Collection[str] = False,
    dtype: torch.dtype | None = None,
    out: torch.Tensor | None = None,
    neuron_sums: dict[str, torch.Tensor] | None = None,
    logit_sums: dict[str, torch.Tensor] | None = None,
    attn_coeff: float = 1.0,
    b_tokens: torch.Tensor | None = None,
) -> ForwardOutput:
    """Final-position forward pass on the whole p x p input grid ``[a, b, =]``, from per-token tables.

    The same function as ``forward(params, grid_tokens(p))`` (up to rounding), arranged for the grid. In a
    one-layer model the residual at ``=`` after attention is

        resid_mid[a, b] = x_= + sum_h (A_h0(a, b) OV_h(x_0[a]) + A_h1(a, b) OV_h(x_1[b]) + A_h2(a, b) OV_h(x_=)),

    with x_i[t] = W_E[t] + W_pos[i], OV_h(x) = x W_V[h] W_O[h] and A the attention pattern from ``=``. It is
    linear in per-token tables, so the MLP input ``resid_mid W_in + b_in`` and the direct path
    ``(resid_mid + b_out) W_U`` are combinations of (token, head) tables already multiplied through ``W_in``
    and ``W_U``: 2 n_heads + 1 terms per example instead of a (d_model x d_mlp) product. The only full-size
    product left is ``mlp_post @ (W_out W_U)`` (d_mlp x d_vocab_out), so a checkpoint costs about
    2 p^2 d_mlp d_vocab_out FLOPs instead of 2 p^2 (d_model^2 + 2 d_model d_mlp + d_model d_vocab_out). The
    rearrangement is exact in real arithmetic; it is not the approximation of uniform attention.

    Parameters
    ----------
    params : mapping of str to torch.Tensor
        Weights by TransformerLens name (:func:`param_shapes`), optionally with the same leading dims ``...``
        on every weight (e.g. a checkpoint dim). ``W_U`` may be sliced to fewer output columns (e.g.
        ``W_U[..., :p]`` to skip the ``=`` class); the logits have as many columns.
    p : int
        The modulus; the vocabulary holds the residues 0..p-1 and ``=`` (id p), ``n_ctx`` is 3.
    cache : bool or collection of str
        Also return the attention pattern, the MLP activations and ``resid_mid`` (True), or those named among
        ``"attn"``, ``"mlp_post"``, ``"resid_mid"``.
    dtype : torch.dtype, optional
        Arithmetic precision of every step (default: that of ``params["W_E"]``). float64 gives logits exact
        to about 1e-15 relative; float32 is twice as fast and about 1e-7 relative.
    out : torch.Tensor, optional
        A contiguous tensor of ``dtype`` to hold the logits, reused from call to call to spare fresh memory
        (one checkpoint: at least p * p * n_out elements); by default one is allocated.
    neuron_sums : dict, optional
        Filled (one checkpoint only) with what the neuron FVE needs, accumulated block by block while the MLP
        activations are in cache, so they are never stored: ``plus``, ``minus`` (x, d_mlp): sums over the pairs
        with a + b = x and a - b = x (mod p); ``rows`` (a, d_mlp), ``cols`` (b, d_mlp): sums over b and over a;
        ``energy`` (d_mlp,): the sum of squares (:func:`mechgrok.analyses.modular.neurons.fve_from_sums`).
    logit_sums : dict, optional
        Filled (one checkpoint only), block by block while the logits are in cache, with ``residue_sums``
        (p, n_out): the logits' sums over the pairs with (a + b) mod p = s, the additions of
        :func:`mechgrok.analyses.modular.fourier.residue_sums` in its order; and ``norm_sq`` (0-dim): the sum of
        the squared logits.
    attn_coeff : float
        The attention rate alpha of the Pizza family (``Config.attn_coeff``): attention = alpha * softmax +
        (1 - alpha). Models without ``=`` (``W_pos`` of 2 rows, inputs ``[a, b]`` read out at b) are
        recognised by their shapes; the pattern then has 2 positions.
    b_tokens : torch.Tensor, optional
        int64 (p,): the token at each grid column b (default: b itself); the operation coordinates of
        :mod:`mechgrok.tasks.discrete_log` (subtraction: ``-b mod p``), so that the label is (a + b) mod p.

    Returns
    -------
    ForwardOutput
        ``logits`` (..., p*p, n_out), rows in the order a * p + b as :func:`mechgrok.tasks.modular_arithmetic.grid_tokens`; with
        ``cache``: ``attn_pattern`` (..., p*p, head, pos), ``mlp_post`` (..., p*p, d_mlp), ``resid_mid``
        (..., p*p, d_model). ``resid_post`` is not computed (it would need the d_mlp x d_model product this
        function avoids); use :func:`forward` for it.

    Raises
    ------
    AnalysisError
        If ``out`` is given but is not a contiguous ``dtype`` tensor large enough for the logits.

    Notes
    -----
    For analysis only (in-place operations; no gradients): the trainer uses :func:`forward`. Checkpoints are
    computed one at a time in row blocks of about 512 pairs whose MLP activations stay in cache, so the results
    of a checkpoint do not depend on the other checkpoints passed with it.
    """
    lead = params["W_E"].shape[:-2]
    dtype = dtype or params["W_E"].dtype
    w = {k: params[k].reshape(-1, *params[k].shape[len(lead) :]) for k in WEIGHT_NAMES}
    C, h = w["W_Q"].shape[0], w["W_Q"].shape[1]
    m, f, n_out = w["W_E"].shape[-1], w["W_in"].shape[-1], w["W_U"].shape[-1]
    # each checkpoint's logits start on a 64-byte boundary: the matrix product's rounding can depend on the
    # alignment of its output, and the results must not depend on how checkpoints are batched
    n_el = p * p * n_out
    step = -(-n_el * dtype.itemsize // 64) * 64 // dtype.itemsize
    if out is None:
        out = torch.empty(C, step, dtype=dtype, device=params["W_E"].device)
    if out.dtype != dtype or not out.is_contiguous() or out.numel() < (C - 1) * step + n_el:
        raise AnalysisError(f"out must be a contiguous {dtype} tensor of at least {(C - 1) * step + n_el} elements")
    logits = out.view(-1).as_strided((C, p, p, n_out), (step, p * n_out, n_out, 1))
    caches = {"attn", "mlp_post", "resid_mid"} if cache is True else set(cache or ())
    bad = sorted(caches - {"attn", "mlp_post", "resid_mid"})
    if bad:
        raise AnalysisError(f"unknown caches {bad}; choose from attn, mlp_post, resid_mid")
    if (neuron_sums is not None or logit_sums is not None) and C != 1:
        raise AnalysisError(f"neuron_sums and logit_sums take one checkpoint at a time, got {C}")
    n_ctx = w["W_pos"].shape[-2]
    pattern = torch.empty(C, p, p, h, n_ctx, dtype=dtype, device=out.device) if "attn" in caches else None
    post_all = torch.empty(C, p, p, f, dtype=dtype, device=out.device) if "mlp_post" in caches else None
    want_mid = "resid_mid" in caches
    mid_all = torch.empty(C, p, p, m, dtype=dtype, device=out.device) if want_mid else None
    na = max(1, _GRID_BLOCK_ROWS // p)  # values of a per block
    width = f + n_out + (m if want_mid else 0)
    bufs = (torch.empty(na, p, width, dtype=dtype, device=out.device), torch.empty(p, na, width, dtype=dtype, device=out.device))
    # checkpoint by checkpoint, so that the results do not depend on how checkpoints are batched
    for c in range(C):
        # fresh (aligned) copies: vectorised kernels may round differently depending on the operands' alignment
        wc = {k: v[c].to(dtype, copy=True, memory_format=torch.contiguous_format) for k, v in w.items()}
        _grid_checkpoint(wc, p, na, bufs, logits[c], None if pattern is None else pattern[c],
                         None if post_all is None else post_all[c], None if mid_all is None else mid_all[c],
                         neuron_sums, attn_coeff, b_tokens, logit_sums)
    res = ForwardOutput(logits=logits.flatten(1, 2).reshape(*lead, p * p, n_out))
    if pattern is not None:
        res.attn_pattern = pattern.reshape(*lead, p * p, h, n_ctx)
    if post_all is not None:
        res.mlp_post = post_all.reshape(*lead, p * p, f)
    if mid_all is not None:
        res.resid_mid = mid_all.reshape(*lead, p * p, m)
    return res


def _tables_without_equals(w, p, want_mid, pattern, attn_coeff, b_tokens):
    """The attention and per-token tables of :func:`_grid_checkpoint` for inputs ``[a, b]`` read out at b.

    The query is b's (Zhong et al. 2023's models: no ``=`` token), so the score to a is bilinear in (a, b):
    resid_mid[a, b] = x_1[b] + sum_h (A_h0(a, b) OV_h(x_0[a]) + A_h1(a, b) OV_h(x_1[b])), with A the softmax
    over the two positions, alpha-mixed with 1 (``attn_coeff``). Returns A0, A1 (a, b, head), Y0 (a, head,
    width), Y1 (b, head, width) and base (b, width): the x_1[b] terms, which vary with b.
    """
    W_E, W_pos, W_Q, W_K, W_V, W_O, W_in, b_in, W_U, b_out = (
        w[k] for k in ("W_E", "W_pos", "W_Q", "W_K", "W_V", "W_O", "W_in", "b_in", "W_U", "b_out"))
    h, m, d_head = W_Q.shape[0], W_E.shape[-1], W_Q.shape[-1]
    x0 = W_E[:p] + W_pos[0]  # (a, d_model)
    x1 = W_E[:p] + W_pos[1]  # (b, d_model)
    x1 = x1 if b_tokens is None else x1[b_tokens]  # column j holds the token b_tokens[j] (operation coordinates)
    q = torch.einsum("bm,hmd->bhd", x1, W_Q) / math.sqrt(d_head)
    s0 = torch.einsum("ahd,bhd->abh", torch.einsum("am,hmd->ahd", x0, W_K), q)  # (a, b, head)
    s1 = (torch.einsum("bm,hmd->bhd", x1, W_K) * q).sum(-1)[None]  # (1, b, head)
    A0, A1 = torch.sigmoid(s0 - s1), torch.sigmoid(s1 - s0)  # the softmax over two positions
    if attn_coeff != 1:
        A0, A1 = A0 * attn_coeff + (1 - attn_coeff), A1 * attn_coeff + (1 - attn_coeff)
    if pattern is not None:
        pattern.copy_(torch.stack([A0, A1], -1))  # (a, b, head, pos)
    OV = (W_V @ W_O).transpose(0, 1).reshape(m, h * m)  # (d_model, head * d_model)
    outs = [W_in, W_U] + ([torch.eye(m, dtype=W_E.dtype, device=W_E.device)] if want_mid else [])

    def table(x: torch.Tensor) -> torch.Tensor:  # (token, head, width)
        ov = (x @ OV).reshape(x.shape[0] * h, m)
        return torch.cat([ov @ W_ for W_ in outs], -1).view(x.shape[0], h, -1)

    base = torch.cat([x1 @ W_in + b_in, (x1 + b_out) @ W_U] + ([x1] if want_mid else []), -1)
    return A0, A1, table(x0), table(x1), base


def _grid_checkpoint(w, p, na, bufs, logits, pattern, post_all, mid_all, sums=None, attn_coeff=1.0,
                     b_tokens=None, lsums=None) -> None:
    """:func:`grid_forward` for one checkpoint's weights ``w``; fills logits (a, b, n_out) and the caches."""
    W_E, W_pos, W_Q, W_K, W_V, W_O, W_in, b_in, W_out, b_out, W_U = (w[k] for k in WEIGHT_NAMES)
    keep_post = post_all is not None
    want_mid = mid_all is not None
    dtype = W_E.dtype
    h, d_head = W_Q.shape[0], W_Q.shape[-1]
    m, f, n_out = W_E.shape[-1], W_in.shape[-1], W_U.shape[-1]
    width = f + n_out + (m if want_mid else 0)
    if W_pos.shape[0] == 2:  # inputs [a, b] read out at b, no '=' (the Pizza models)
        A0, A1, Y0, Y1, base = _tables_without_equals(w, p, want_mid, pattern, attn_coeff, b_tokens)
    else:
        x0 = W_E[:p] + W_pos[0]  # (p, d_model): token at position 0 (a); position 1 (b) adds W_pos[1] - W_pos[0]
        xe = W_E[p] + W_pos[2]  # (d_model,): '=' at position 2
        # attention scores from '=' to each (position, token); softmax over the 3 positions of every pair
        q = torch.einsum("m,hmd->hd", xe, W_Q)
        kq = torch.einsum("hmd,hd->mh", W_K, q) / math.sqrt(d_head)  # (d_model, head)
        s0, s1, se = x0 @ kq, (x0 + (W_pos[1] - W_pos[0])) @ kq, xe @ kq  # (p, head), (p, head), (head,)
        s1 = s1 if b_tokens is None else s1[b_tokens]  # column j holds the token b_tokens[j] (operation coordinates)
        s0, s1 = s0[:, None], s1[None, :]  # broadcast to (a, b, head)
        top = torch.maximum(torch.maximum(s0, s1), se)
        e0, e1, e2 = torch.exp(s0 - top), torch.exp(s1 - top), torch.exp(se - top)
        z = e0 + e1 + e2
        A0 = e0.div_(z)  # (a, b, head): attention to a; to b batched over b; to '=' is 1 - A0 - A1
        A1 = e1.div_(z)
        if attn_coeff != 1:  # alpha softmax + (1 - alpha) (Zhong et al. 2023): the weights sum to 3 - 2 alpha
            A0.mul_(attn_coeff).add_(1 - attn_coeff)
            A1.mul_(attn_coeff).add_(1 - attn_coeff)
        if pattern is not None:
            A2 = e2.div_(z) if attn_coeff == 1 else e2.div_(z) * attn_coeff + (1 - attn_coeff)
            pattern.copy_(torch.stack([A0, A1, A2], -1))  # (a, b, head, pos)
        # per-token OV tables, through W_in (MLP input), W_U (direct logits) and, with cache, as they are;
        # x_1[t] = x_0[t] + (W_pos[1] - W_pos[0]) and the tables are linear: one table of tokens plus two rows
        OV = (W_V @ W_O).transpose(0, 1).reshape(m, h * m)  # (d_model, head * d_model)
        rows = torch.cat([x0, (W_pos[1] - W_pos[0])[None], xe[None]])  # (p + 2, d_model)
        ov = (rows @ OV).reshape((p + 2) * h, m)
        outs = [W_in, W_U] + ([torch.eye(m, dtype=dtype, device=W_E.device)] if want_mid else [])
        # columns [MLP pre-activation | direct logits | resid_mid] of each (token, head) table, with the '=' term
        # folded in through A_2 = 1 - A_0 - A_1: Y_i = table(x_i) - table(=), base = const + sum_h table(=)
        tab = torch.cat([ov @ W_ for W_ in outs], -1).view(p + 2, h, width)
        Y0 = tab[:p] - tab[p + 1]  # (p, head, width)
        Y1 = Y0 + tab[p] if b_tokens is None else (Y0 + tab[p])[b_tokens]
        base = torch.cat([xe @ W_in + b_in, (xe + b_out) @ W_U] + ([xe] if want_mid else [])) + (3 - 2 * attn_coeff) * tab[p + 1].sum(0)
    A1t = A1.transpose(0, 1).contiguous()  # (b, a, head)
    W_logit = W_out @ W_U  # (d_mlp, n_out)
    buf, tb = bufs
    # blocks of na values of a (all b): the block views are made up front, to keep the Python work per block small
    blocks = zip(A0.split(na), Y0.split(na), A1t.split(na, dim=1), logits.split(na),
                 post_all.split(na) if keep_post else [None] * p,
                 mid_all.split(na) if want_mid else [None] * p)
    if sums is not None:
        for key, rows in (("rows", p), ("cols", p)):
            sums[key] = torch.zeros(rows, f, dtype=dtype, device=W_E.device)
        sums["energy"] = torch.zeros(f, dtype=dtype, device=W_E.device)
        # level sets of a + b and a - b, unreduced: plus2[a + b] and minus2[p - 1 - a + b] (0..2p-2) take row a of
        # the activations as one contiguous slice each (index_add_ by (a + b) mod p row by row was 3x slower);
        # folded mod p after the loop
        plus2, minus2 = (torch.zeros(2 * p, f, dtype=dtype, device=W_E.device) for _ in range(2))
        sq = torch.empty(na * p, f, dtype=dtype, device=W_E.device)
    if lsums is not None:  # as fourier.residue_sums: row a adds to residues a..a + p - 1, folded mod p at the end
        G2 = torch.zeros(2 * p - 1, n_out, dtype=dtype, device=W_E.device)
        norm_sq = torch.zeros((), dtype=dtype, device=W_E.device)
    a0 = 0
    for A0b, Y0b, A1b, lg, post, mid in blocks:
        n = A0b.shape[0]
        o, t = (buf, tb) if n == na else (buf[:n], tb[:, :n])
        o.copy_(base.expand(n, p, width))
        o.baddbmm_(A0b, Y0b)  # sum_h A_0(a, b) Y0[a, h]
        torch.bmm(A1b, Y1, out=t)  # sum_h A_1(a, b) Y1[b, h], as (b, a)
        o += t.transpose(0, 1)
        if post is None:  # ReLU in place: the activations stay in the block, rows of stride width
            post = o[..., :f].clamp_min_(0.0)
        else:
            post = post[:n]
            torch.clamp_min(o[..., :f], 0.0, out=post)
        if mid is not None:
            mid.copy_(o[..., f + n_out :])
        direct = o[..., f : f + n_out].reshape(n * p, n_out)
        torch.addmm(direct, post.view(n * p, f), W_logit, out=lg.view(n * p, n_out))  # + mlp_post W_out W_U
        if lsums is not None:  # while the block's logits are in cache
            for j in range(n):
                G2[a0 + j : a0 + j + p] += lg[j]
            flat_lg = lg.reshape(-1)
            norm_sq += torch.dot(flat_lg, flat_lg)
        if sums is not None:  # the FVE's level-set sums, while the block is in cache
            flat = post.view(n * p, f)
            for j in range(n):
                a = a0 + j
                plus2[a : a + p] += post[j]
                minus2[p - 1 - a : 2 * p - 1 - a] += post[j]
            sums["rows"][a0 : a0 + n] = post.sum(1)
            sums["cols"] += post.sum(0)
            sums["energy"] += torch.mul(flat, flat, out=sq[: n * p]).sum(0)  # (vector_norm is 4x slower here)
        a0 += n
    if sums is not None:
        sums["plus"] = fold_mod_p(plus2, p)  # (a + b) mod p
        sums["minus"] = fold_mod_p(minus2.flip(0), p)  # flipped, row p + a - b: (a - b) mod p
    if lsums is not None:
        lsums["residue_sums"], lsums["norm_sq"] = fold_mod_p(G2, p), norm_sq
