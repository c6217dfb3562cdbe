"""Activations on the full p x p input grid, batched over checkpoints (paper.md 3.3-3.4).

One batched forward pass (:func:`mechgrok.model.grid_forward`, float64 by default, with a leading checkpoint dim)
over every (a, b) pair, in chunks of checkpoints so memory stays bounded. Losses derived from these logits are exact
to about 1e-12 relative in float64; ``dtype=torch.float32`` exists only to study float32 rounding (paper.md 2.3).
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import torch
import xarray as xr

from mechgrok.errors import AnalysisError
from mechgrok.model import WEIGHT_NAMES, grid_forward

__all__ = ["model_p", "select_checkpoints", "checkpoint_weights", "iter_checkpoint_chunks", "grid_activations"]


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


def select_checkpoints(ds: xr.Dataset, checkpoints: slice | list | None) -> xr.Dataset:
    """``ds.isel(checkpoint=checkpoints)`` with a clear error for positions that do not exist.

    Parameters
    ----------
    ds : xarray.Dataset
        A trajectory over ``checkpoint`` (whose coordinate holds the epochs).
    checkpoints : slice, list of int or None
        **Positions** along ``checkpoint`` (0 .. n-1, negative from the end), not epochs; None selects all. To
        select by epoch, use ``ds.sel(checkpoint=[...])`` before calling an analysis.

    Returns
    -------
    xarray.Dataset

    Raises
    ------
    AnalysisError
        If a position is out of range (the message shows the valid range and the epochs, since a common mistake
        is to pass epochs), or the selection is empty.

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> ds = xr.Dataset(coords={"checkpoint": [0, 100, 200]})
    >>> select_checkpoints(ds, [0, -1])["checkpoint"].values.tolist()
    [0, 200]
    """
    if checkpoints is None:
        return ds
    n = ds.sizes.get("checkpoint", 0)
    if not isinstance(checkpoints, slice):
        pos = np.atleast_1d(np.asarray(checkpoints))
        if pos.size == 0:
            raise AnalysisError("no checkpoints selected (checkpoints= is empty)")
        if pos.dtype.kind not in "iu":
            raise AnalysisError(f"checkpoints must be integer positions along 'checkpoint', got {list(pos)[:5]}")
        bad = pos[(pos >= n) | (pos < -n)]
        if bad.size:
            epochs = ds["checkpoint"].values
            span = f"epochs {int(epochs[0])}..{int(epochs[-1])}" if n else "no checkpoints"
            raise AnalysisError(
                f"checkpoint positions {bad.tolist()[:5]} are out of range 0..{n - 1} (the trajectory has {n} "
                f"checkpoints, {span}); checkpoints= takes positions, select epochs with ds.sel(checkpoint=[...])"
            )
    out = ds.isel(checkpoint=checkpoints)
    if out.sizes.get("checkpoint", 0) == 0:
        raise AnalysisError("no checkpoints selected")
    return out


def checkpoint_weights(ds: xr.Dataset, *, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """The weights of every checkpoint in ``ds`` as torch tensors with a leading checkpoint dim.

    Parameters
    ----------
    ds : xarray.Dataset
        Canonical trajectory (or a ``checkpoint`` slice of one); lazy variables are read here.
    dtype : torch.dtype
        float32 (default) or float64.

    Returns
    -------
    dict of str to torch.Tensor
        By TransformerLens name, shapes (checkpoint, ...) as in :func:`mechgrok.model.param_shapes`.

    Raises
    ------
    AnalysisError
        If a weight is missing.
    """
    missing = [n for n in WEIGHT_NAMES if n not in ds]
    if missing:
        raise AnalysisError(f"the trajectory lacks weights {missing}")
    return {n: torch.from_numpy(np.ascontiguousarray(ds[n].values)).to(dtype) for n in WEIGHT_NAMES}


def iter_checkpoint_chunks(ds: xr.Dataset, chunk: int) -> Iterator[xr.Dataset]:
    """Yield consecutive ``checkpoint`` slices of at most ``chunk`` checkpoints."""
    n = ds.sizes["checkpoint"]
    for start in range(0, n, max(1, int(chunk))):
        yield ds.isel(checkpoint=slice(start, start + chunk))


def grid_activations(
    ds: xr.Dataset,
    *,
    checkpoints: slice | list | None = None,
    chunk: int = 8,
    include: tuple[str, ...] = ("logits", "attn", "mlp_post"),
    dtype: torch.dtype = torch.float64,
) -> xr.Dataset:
    """Activations of every checkpoint on all p^2 inputs ``[a, b, =]``.

    Parameters
    ----------
    ds : xarray.Dataset
        Canonical one-layer trajectory with ``attrs["p"]``.
    checkpoints : slice or list, optional
        ``isel`` selection along ``checkpoint``; default all.
    chunk : int
        Checkpoints per batched forward pass (memory: about chunk * p^2 * (d_mlp + 2 d_model) * 8 bytes).
    include : tuple of str
        Any of ``"logits"``, ``"attn"``, ``"mlp_post"``, ``"resid_mid"``.
    dtype : torch.dtype
        Precision of the forward pass and of the returned activations: float64 (default; losses taken from
        these logits match a float64 dense reference to ~1e-12 relative) or float32 (to study its rounding).

    Returns
    -------
    xarray.Dataset
        ``logits`` (checkpoint, a, b, c): logits (of ``dtype``) without the ``=`` class (c = 0..p-1);
        ``attn_to_a``, ``attn_to_b`` (checkpoint, head, a, b): attention from ``=`` to positions 0 and 1;
        ``mlp_post`` (checkpoint, a, b, d_mlp): ReLU activations at ``=``;
        ``resid_mid`` (checkpoint, a, b, d_model).

    Raises
    ------
    AnalysisError
        If the trajectory has no p, is multi-layer, or lacks weights.
    """
    p = model_p(ds)
    ds = select_checkpoints(ds, checkpoints)
    parts: dict[str, list[np.ndarray]] = {k: [] for k in ("logits", "attn_to_a", "attn_to_b", "mlp_post", "resid_mid")}
    with torch.no_grad():
        for sub in iter_checkpoint_chunks(ds, chunk):
            w = checkpoint_weights(sub, dtype=dtype)
            c = sub.sizes["checkpoint"]
            # the grid forward pass from per-token tables; the '=' class is never needed here
            out = grid_forward({**w, "W_U": w["W_U"][..., :p]}, p, cache=any(k != "logits" for k in include))
            if "logits" in include:
                parts["logits"].append(out.logits[..., :p].reshape(c, p, p, p).numpy())
            if "attn" in include:
                pat = out.attn_pattern.reshape(c, p, p, -1, 3)
                parts["attn_to_a"].append(pat[..., 0].permute(0, 3, 1, 2).numpy())
                parts["attn_to_b"].append(pat[..., 1].permute(0, 3, 1, 2).numpy())
            if "mlp_post" in include:
                parts["mlp_post"].append(out.mlp_post.reshape(c, p, p, -1).numpy())
            if "resid_mid" in include:
                parts["resid_mid"].append(out.resid_mid.reshape(c, p, p, -1).numpy())
    dims = {
        "logits": ("checkpoint", "a", "b", "c"),
        "attn_to_a": ("checkpoint", "head", "a", "b"),
        "attn_to_b": ("checkpoint", "head", "a", "b"),
        "mlp_post": ("checkpoint", "a", "b", "d_mlp"),
        "resid_mid": ("checkpoint", "a", "b", "d_model"),
    }
    data = {k: (dims[k], np.concatenate(v)) for k, v in parts.items() if v}
    coords = {"checkpoint": ds["checkpoint"].values, "a": np.arange(p), "b": np.arange(p)}
    if "logits" in include:
        coords["c"] = np.arange(p)
    return xr.Dataset(data, coords=coords, attrs={"description": "activations at the = position on the p x p grid"})

