"""Test helper: the paper authors' released mod-113 models as canonical trajectories (one checkpoint each).

A small local loader, to be swapped for the store's own loader of the original layout when it lands. It follows
``shared/reference/paper.md`` section 5.4: ``torch.load(weights_only=True, map_location="cpu")``, take
``["model"]``, transpose the last two axes of ``W_E``, ``W_Q``, ``W_K``, ``W_V``, ``W_in`` and ``W_out``, split
``W_O`` (d_model, n_heads * d_head) into (n_heads, d_head, d_model), keep ``W_U``/``W_pos``/``b_in``/``b_out``,
and drop the ``mask`` buffer. The result is built with :func:`mechgrok.store.schema.build_dataset` (p = 113).

The files live beside the repository in ``../shared/data/nanda-saved-runs``; :func:`nanda_path` skips the
calling test (with the reason) where they are absent. They are never copied into the repository.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr

from mechgrok.config import Config
from mechgrok.store.schema import build_dataset

__all__ = ["SHARED_RUNS", "nanda_path", "load_nanda_model"]

SHARED_RUNS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "nanda-saved-runs"

#: What is known of each released mod-113 run (README of the shared folder, section 3). ``frac_train`` of the
#: low-precision run is not stored anywhere (0.3 is the paper's default); that of the no-wd run is inferred.
_KNOWN = {
    "mod_addition_no_wd.pth": dict(weight_decay=0.0, num_epochs=5000, frac_train=0.9),
    "low_precision_mod_addition.pth": dict(weight_decay=1.0, num_epochs=50000, frac_train=0.3),
}


def nanda_path(name: str) -> Path:
    """Path of a released file; ``pytest.skip`` where the shared data folder or the file is absent."""
    path = SHARED_RUNS / name
    if not path.is_file():
        pytest.skip(f"released run {name} not found at {path} (../shared is absent on this machine)")
    return path


def _to_tl(sd: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """Original ("column") layout -> TransformerLens names and orientation (paper.md 5.4)."""
    t = {k: v.detach().to("cpu", torch.float32).numpy() for k, v in sd.items()}
    n_heads, d_head, d_model = t["blocks.0.attn.W_Q"].shape
    W_O = t["blocks.0.attn.W_O"]  # (d_model, n_heads * d_head); TL W_O[h, j, m] = W_O[m, h * d_head + j]
    return {
        "W_E": t["embed.W_E"].T,
        "W_pos": t["pos_embed.W_pos"],
        "W_Q": t["blocks.0.attn.W_Q"].transpose(0, 2, 1),
        "W_K": t["blocks.0.attn.W_K"].transpose(0, 2, 1),
        "W_V": t["blocks.0.attn.W_V"].transpose(0, 2, 1),
        "W_O": W_O.reshape(d_model, n_heads, d_head).transpose(1, 2, 0),
        "W_in": t["blocks.0.mlp.W_in"].T,
        "b_in": t["blocks.0.mlp.b_in"],
        "W_out": t["blocks.0.mlp.W_out"].T,
        "b_out": t["blocks.0.mlp.b_out"],
        "W_U": t["unembed.W_U"],
    }


def load_nanda_model(name: str) -> xr.Dataset:
    """A released mod-113 model as a one-checkpoint canonical trajectory.

    Parameters
    ----------
    name : str
        ``"mod_addition_no_wd.pth"`` or ``"low_precision_mod_addition.pth"``.

    Returns
    -------
    xarray.Dataset
        Weights in TransformerLens orientation with a ``checkpoint`` dim of length 1 (the final epoch:
        4999 + 1 = 5000 for no-wd, 50000 for low-precision), ``attrs["p"] = 113``. No curves and no split
        (neither split is stored in the files).
    """
    path = nanda_path(name)
    obj = torch.load(path, weights_only=True, map_location="cpu")
    weights = _to_tl(obj["model"])
    epoch = int(obj["epoch"]) + 1 if "epoch" in obj else len(obj["train_losses"])
    known = _KNOWN.get(name, {})
    cfg = Config(p=113, d_model=128, n_heads=4, d_head=32, d_mlp=512, **known)
    return build_dataset(
        {k: v[None] for k, v in weights.items()},
        [epoch],
        config=cfg.to_dict(),
        source_format="nanda-original",
        source_files=[str(path)],
        p=113,
    )
