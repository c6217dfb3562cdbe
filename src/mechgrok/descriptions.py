"""Self-describing Datasets: the ``units`` and ``description`` shared across mechgrok's analyses.

Two rules, applied by :func:`describe` (from :func:`mechgrok.analyze` and :func:`mechgrok.write_analysis`, so
every coordinate of ``analysis.zarr`` carries both attrs):

- A coordinate such as ``checkpoint``, ``freq`` or ``fourier`` means the same in every analysis (one name per
  concept), so its attrs are written down once, in :data:`COORDINATES`.
- Flags, counts, indices and labels (bool, integer and string variables) are dimensionless: ``units = "1"``
  (the CF conventions' unit of a dimensionless number) where the analysis gave none.

Attrs an analysis sets itself are kept; a variable's ``description`` is its analysis' to give.

Sources: Nanda et al. (2023), "Progress measures for grokking via mechanistic interpretability", arXiv
2301.05217 (the Fourier basis, section 4.1 and Appendix A; the phases, section 5.2); TransformerLens names.
"""

from __future__ import annotations

import xarray as xr

__all__ = ["COORDINATES", "DIMENSIONLESS", "describe"]

_FREQ = "frequency index k = 1 .. (p - 1) / 2 of w_k = 2 pi k / p (Nanda et al. 2023, section 4.1)"

#: name -> {"units", "description"} of every coordinate shared across analyses.
COORDINATES: dict[str, dict[str, str]] = {
    "checkpoint": {"units": "epochs", "description": "training epoch at which the checkpoint was saved"},
    "epoch": {"units": "epochs", "description": "training epoch (one optimiser step per epoch: full-batch training)"},
    "freq": {"units": "1", "description": _FREQ},
    "key_freq": {"units": "1", "description": "a key frequency k (the frequencies the trained model uses)"},
    "cluster_freq": {"units": "1", "description": "frequency k of a neuron cluster; -1 for neurons in no cluster"},
    "fourier": {"units": "1", "description": "Fourier basis component: const, cos k, sin k (orthonormal, paper order)"},
    "fourier_freq": {"units": "1", "description": "frequency k of each Fourier component (0 for const)"},
    "fa": {"units": "1", "description": "Fourier component along the a input (const, cos k, sin k)"},
    "fb": {"units": "1", "description": "Fourier component along the b input (const, cos k, sin k)"},
    "freq_fa": {"units": "1", "description": "frequency k of each fa component (0 for const)"},
    "freq_fb": {"units": "1", "description": "frequency k of each fb component (0 for const)"},
    "a": {"units": "1", "description": "first input residue a (0 .. p - 1)"},
    "b": {"units": "1", "description": "second input residue b (0 .. p - 1)"},
    "c": {"units": "1", "description": "output class c (a residue, 0 .. p - 1; the = class dropped)"},
    "vocab": {"units": "1", "description": "input token id (residues 0 .. p - 1, then =)"},
    "vocab_out": {"units": "1", "description": "output class id of the unembedding"},
    "head": {"units": "1", "description": "attention head index"},
    "layer": {"units": "1", "description": "transformer block index"},
    "pos": {"units": "1", "description": "sequence position (a, b, =)"},
    "d_mlp": {"units": "1", "description": "MLP neuron index"},
    "d_model": {"units": "1", "description": "residual stream dimension"},
    "d_head": {"units": "1", "description": "dimension within an attention head"},
    "param": {"units": "1", "description": "parameter name (TransformerLens names: W_E, W_pos, W_Q, ...)"},
    "point": {"units": "1", "description": "boundary of the phases of grokking (Nanda et al. 2023, section 5.2)"},
    "check": {"units": "1", "description": "a check of a phase's signature (Nanda et al. 2023, section 5.2)"},
    "check_phase": {"units": "1", "description": "the phase whose signature the check tests"},
    "measure": {"units": "1", "description": "name of a progress measure"},
    "loss": {"units": "1", "description": "name of a loss curve"},
    "freq_to": {"units": "1", "description": "frequency k a vector moved to (the target of a switch)"},
    "key_freq_to": {"units": "1", "description": "key frequency k that squared-norm share flows to"},
    "family": {"units": "1", "description": "family of vectors whose Fourier alignment is tracked"},
    "component": {"units": "1", "description": "principal component of W_E (largest variance first)"},
    "triple": {"units": "1", "description": "index of a sampled triple (a, b, c) of residues"},
    "triple_a": {"units": "1", "description": "residue a of the triple"},
    "triple_b": {"units": "1", "description": "residue b of the triple"},
    "triple_c": {"units": "1", "description": "residue c of the triple"},
    "spike": {"units": "1", "description": "index of a loss spike (slingshot), in epoch order"},
}

#: The unit of a dimensionless number (flags, counts, indices, labels), as in the CF conventions.
DIMENSIONLESS = "1"


def describe(ds: xr.Dataset) -> xr.Dataset:
    """``ds`` with the shared attrs: each coordinate of :data:`COORDINATES` gets ``units`` and ``description``
    where it lacks them, and each bool, integer or string variable without units gets ``units = "1"``.

    Attrs a variable already has are kept; coordinates not in :data:`COORDINATES` are left alone.

    Parameters
    ----------
    ds : xarray.Dataset

    Returns
    -------
    xarray.Dataset
        A shallow copy (the data are shared).

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> ds = describe(xr.Dataset({"found": ("freq", np.array([True, False]))}, coords={"checkpoint": [0, 100], "freq": [1, 2]}))
    >>> ds["checkpoint"].attrs["units"], ds["freq"].attrs["units"], ds["found"].attrs["units"]
    ('epochs', '1', '1')
    """
    ds = ds.copy()
    for name, var in ds.variables.items():
        attrs = dict(var.attrs)
        known = COORDINATES.get(str(name)) if name in ds.coords else None
        if known is not None:
            attrs = {**known, **{k: v for k, v in attrs.items() if str(v).strip()}}
        if not str(attrs.get("units", "")).strip() and var.dtype.kind in "biuUSTO":
            attrs["units"] = DIMENSIONLESS
        if attrs != var.attrs:
            ds[name].attrs = attrs
    return ds
