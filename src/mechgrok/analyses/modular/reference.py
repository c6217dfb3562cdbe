"""Views of the reference checkpoint that the figures show (Nanda et al. 2023, Figs. 3-5, 8)."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import xarray as xr

__all__ = ["reference_views"]


def reference_views(ref_ds: xr.Dataset, *, key_freqs: Sequence[int],
                    neurons_per_cluster: int = 4) -> xr.Dataset:
    """What the figures show of the reference checkpoint (paper Figs. 3-5, 8).

    Parameters
    ----------
    ref_ds : xarray.Dataset
        The trajectory reduced to one checkpoint (``checkpoint`` dim of length 1).
    key_freqs : sequence of int
        The key frequencies (to pick example neurons from their clusters).
    neurons_per_cluster : int
        Example neurons per key-frequency cluster (the most explained ones).

    Returns
    -------
    xarray.Dataset
        Without the ``checkpoint`` dim (its epoch is ``attrs["checkpoint"]``):
        ``logits_fourier_norm`` (fa, fb): ||L_hat[f, g, :]|| over the output class (paper Fig. 4c);
        ``neuron_acts`` (example, a, b): post-ReLU activations of example neurons (Fig. 4b);
        ``neuron_fourier`` (example, fa, fb): their centred 2D Fourier spectra (absolute values);
        ``example_neuron``, ``example_freq`` (example): which neuron, of which cluster;
        ``neuron_fve`` (d_mlp, freq), ``neuron_freq``, ``frac_explained``, ``cluster`` (d_mlp): the clustering;
        ``W_logit_fourier`` (fourier, d_mlp): W_logit in the Fourier basis along the output (Fig. 5b);
        ``W_attn`` (head, vocab), ``W_attn_fourier`` (head, fourier): the attention scores from ``=`` (Fig. 8;
        absent for models without ``=``, whose query is b's);
        ``attn_to_a`` (head, a, b): attention from ``=`` to a over the grid.
    """
    from mechgrok.analyses.modular.grid import grid_activations
    from mechgrok.analyses.modular.effective_weights import effective_weights
    from mechgrok.analyses.modular.fourier import fft1d, fft2d
    from mechgrok.analyses.modular.neurons import clusters_from_fve, frequency_fve
    from mechgrok.tasks.discrete_log import is_discrete_log

    act = grid_activations(ref_ds, include=("logits", "mlp_post", "attn")).isel(checkpoint=0)
    epoch = int(ref_ds["checkpoint"].values[0])
    even = is_discrete_log(ref_ds.attrs)  # mul and div: the even order p - 1 (mechgrok.tasks.discrete_log)
    lf = fft2d(act["logits"].astype(np.float64), even_order=even)
    logits_fourier_norm = np.sqrt((lf**2).sum("c")).transpose("fa", "fb")
    cl = clusters_from_fve(frequency_fve(act["mlp_post"].expand_dims(checkpoint=[epoch]), even_order=even)).isel(checkpoint=0)
    examples, example_freq = [], []
    for k in key_freqs:
        members = np.flatnonzero(cl["cluster"].values == k)
        order = members[np.argsort(-cl["frac_explained"].values[members])]
        for nidx in order[:neurons_per_cluster]:
            examples.append(int(nidx))
            example_freq.append(int(k))
    acts = act["mlp_post"].isel(d_mlp=examples).rename(d_mlp="example").transpose("example", "a", "b")
    centred = acts - acts.mean(("a", "b"))
    spectra = np.abs(fft2d(centred, even_order=even)).transpose("example", "fa", "fb")
    has_eq = ref_ds.sizes.get("pos", 3) == 3  # W_attn is the score from '=' (none without it: Pizza models)
    eff = effective_weights(ref_ds, include=("W_logit", "W_attn") if has_eq else ("W_logit",)).isel(checkpoint=0)
    W_logit_fourier = fft1d(eff["W_logit"], "c", even_order=even).transpose("fourier", "d_mlp")
    out = xr.Dataset(
        {
            "logits_fourier_norm": logits_fourier_norm,
            "neuron_acts": acts.drop_vars([c for c in acts.coords if c not in ("a", "b")]),
            "neuron_fourier": spectra.drop_vars([c for c in spectra.coords if c not in ("fa", "fb", "freq_fa", "freq_fb")]),
            "example_neuron": ("example", np.asarray(examples, dtype=np.int64)),
            "example_freq": ("example", np.asarray(example_freq, dtype=np.int64)),
            "neuron_fve": cl["fve"].drop_vars([c for c in cl["fve"].coords if c not in ("freq",)]),
            "neuron_freq": cl["neuron_freq"].drop_vars("checkpoint", errors="ignore"),
            "frac_explained": cl["frac_explained"].drop_vars("checkpoint", errors="ignore"),
            "cluster": cl["cluster"].drop_vars("checkpoint", errors="ignore"),
            "W_logit_fourier": W_logit_fourier.drop_vars([c for c in W_logit_fourier.coords if c not in ("fourier", "freq")]),
            "attn_to_a": act["attn_to_a"].drop_vars("checkpoint", errors="ignore"),
        },
        attrs={
            "description": "views of the reference checkpoint for the figures (paper Figs. 3-5, 8)",
            "checkpoint": epoch,
            "key_freqs": [int(k) for k in key_freqs],
            "W_attn_scaled": int(eff.attrs.get("scaled", 1)),
        },
    )
    if has_eq:
        W_attn_fourier = fft1d(eff["W_attn"].rename(vocab="x"), "x", even_order=even)
        out["W_attn"] = eff["W_attn"].drop_vars("checkpoint", errors="ignore")
        out["W_attn_fourier"] = W_attn_fourier.drop_vars([c for c in W_attn_fourier.coords if c not in ("fourier", "freq")])
    for name, units, description in _VIEW_ATTRS:  # the views computed elsewhere carry none of their own
        if name in out:
            out[name].attrs = {"units": units, "description": description, **out[name].attrs}
    return out.drop_vars([c for c in ("checkpoint",) if c in out.coords])


#: (name, units, description) of the views that :func:`reference_views` takes from other analyses.
_VIEW_ATTRS = (
    ("logits_fourier_norm", "logits", "norm over the output class of the 2D Fourier transform of the logits (Fig. 4c)"),
    ("neuron_acts", "activation", "post-ReLU activations of the example neurons over the input grid (Fig. 4b)"),
    ("neuron_fourier", "activation", "absolute centred 2D Fourier spectra of the example neurons"),
    ("example_neuron", "1", "index of each example neuron"),
    ("example_freq", "1", "frequency of the cluster each example neuron belongs to"),
    ("W_logit_fourier", "logits per activation", "W_logit = W_out W_U in the Fourier basis along the output (Fig. 5b)"),
    ("W_attn", "attention score", "attention score from = to each token (Fig. 8)"),
    ("W_attn_fourier", "attention score", "W_attn in the Fourier basis along the token"),
    ("attn_to_a", "attention probability", "attention from = to a over the input grid (a, b)"),
)


