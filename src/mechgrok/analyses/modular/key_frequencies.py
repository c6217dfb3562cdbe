"""Key frequencies: the frequencies a model uses, by a documented rule, with the evidence from three sources.

The paper names the key frequencies from the embedding (section 4.1: W_E has significant norm at 6
frequencies, 5 of which are used downstream), from the neuron-logit map (App. C.2: "nontrivial coefficients",
no threshold given) and, in its code, as the set of every neuron's argmax frequency (``shared/reference/paper.md``
3.3). The last, literal rule picks up stray frequencies from unclustered neurons: 4 on the released
low-precision model ({3, 6, 23, 39}, 3 having no neuron above FVE 0.85) and 8 on the no-weight-decay one.

**mechgrok's rule** (``RULE``), at one reference checkpoint (default: the last):

    k is a key frequency  iff  (neurons)  its neuron cluster (FVE >= 0.85, paper section 4.3) holds at least
                                          ``min_cluster_share`` of the neurons (default 2%), and
                               (W_logit)  its share of the squared Fourier norm of W_logit over the class
                                          axis is at least ``min_logit_share_factor`` (default 2) times the
                                          uniform share 1 / ((p-1)/2).

A frequency must both be computed by a sizeable group of neurons and be written to the logits. Clusters are
very unlikely by chance (a random neuron's FVE at its best frequency is far below 0.85), so the rule returns
the empty set before the circuit forms.

**Agreement.** Each source ranks the frequencies: neurons by cluster size, W_E and W_logit by their Fourier
norm share (:mod:`mechgrok.analyses.modular.fourier_norms`). A source agrees with the set K when its |K| top-ranked
frequencies are exactly K; ``agree`` is True when all three do (False for an empty set). On a well-grokked model they do (the planted
model, the quick fixture at 3000 epochs, the released no-weight-decay model); on the released float32
low-precision model the W_logit ranking puts 3 (no cluster) above 6, and ``agree`` is False.
"""

from __future__ import annotations

import numpy as np
import torch
import xarray as xr

from mechgrok.analyses.modular.grid import model_p
from mechgrok.errors import AnalysisError
from mechgrok.tasks.discrete_log import is_discrete_log
from mechgrok.analyses.modular.fourier import check_odd_p
from mechgrok.analyses.modular.fourier_norms import fourier_norms
from mechgrok.analyses.modular.neurons import PAPER_FVE_THRESHOLD, neuron_clusters

__all__ = ["RULE", "key_frequencies"]

RULE = (
    "k is key iff its neuron cluster (FVE >= {threshold}) holds >= {min_cluster_share:g} of the neurons "
    "and its W_logit Fourier norm share is >= {min_logit_share_factor:g} x the uniform share 1/{n_freq}"
)


def _top_set(values: np.ndarray, freqs: np.ndarray, n: int) -> set[int] | None:
    if n == 0:
        return None  # nothing to agree on: an empty set never "agrees"
    order = np.argsort(-values, kind="stable")
    return {int(f) for f in freqs[order[:n]]}


def key_frequencies(
    ds: xr.Dataset,
    *,
    reference: int | None = None,
    threshold: float = PAPER_FVE_THRESHOLD,
    min_cluster_share: float = 0.02,
    min_logit_share_factor: float = 2.0,
    clusters: xr.Dataset | None = None,
    norms: xr.Dataset | None = None,
    device: str | torch.device | None = "cpu",
) -> xr.Dataset:
    """The key frequencies at a reference checkpoint, with the rule, the evidence per frequency and agreement.

    Parameters
    ----------
    ds : xarray.Dataset
        Canonical one-layer trajectory with an odd ``attrs["p"]``.
    reference : int, optional
        Epoch (a ``checkpoint`` label) of the reference checkpoint; default the last checkpoint.
    threshold : float
        Neuron FVE threshold of the clusters (paper: 0.85).
    min_cluster_share : float
        Minimum share of neurons in a frequency's cluster.
    min_logit_share_factor : float
        Minimum W_logit norm share, as a multiple of the uniform share 1 / ((p-1)/2).
    clusters : xarray.Dataset, optional
        :func:`mechgrok.analyses.modular.neurons.neuron_clusters` output containing the reference checkpoint (saves the
        forward pass); its threshold must equal ``threshold``.
    norms : xarray.Dataset, optional
        :func:`mechgrok.analyses.modular.fourier_norms.fourier_norms` output containing the reference checkpoint.
    device : str, torch.device or None
        Where the reference checkpoint's forward pass runs (None: CUDA when available).

    Returns
    -------
    xarray.Dataset
        ``key_freqs`` (key): the set, ascending int. Evidence per frequency (freq = 1..(p-1)/2):
        ``n_neurons`` (neurons in the cluster), ``neuron_share``, ``W_E_share``, ``W_logit_share`` (fractions),
        ``literal`` (bool: the argmax frequency of at least one neuron, the paper code's rule), ``is_key``
        (bool). Scalars: ``agree``, ``agree_neurons``, ``agree_W_E``, ``agree_W_logit`` (bool; False when the
        set is empty).
        attrs: ``rule`` (text with the thresholds), ``reference_checkpoint`` (epoch), ``key_freqs`` and
        ``literal_key_freqs`` (lists of int), ``threshold``, ``min_cluster_share``, ``min_logit_share``.

    Raises
    ------
    AnalysisError
        If p is missing or even, the reference epoch is not a checkpoint, an option is out of range, or the
        given ``clusters`` lack the reference checkpoint or used another threshold.
    """
    p = check_odd_p(model_p(ds), even_order=is_discrete_log(ds.attrs))
    n_freq = (p - 1) // 2
    if not 0 <= min_cluster_share <= 1 or min_logit_share_factor < 0:
        raise AnalysisError("min_cluster_share must lie in [0, 1] and min_logit_share_factor be >= 0")
    epochs = ds["checkpoint"].values
    ref = int(epochs[-1]) if reference is None else int(reference)
    if ref not in set(epochs.tolist()):
        raise AnalysisError(f"reference epoch {ref} is not a checkpoint of the trajectory")
    sub = ds.sel(checkpoint=[ref])
    if clusters is None:
        clusters = neuron_clusters(sub, threshold=threshold, device=device)
    elif abs(float(clusters.attrs.get("threshold", threshold)) - threshold) > 1e-12:
        raise AnalysisError(f"the given clusters used threshold {clusters.attrs.get('threshold')}, not {threshold}")
    if ref not in set(clusters["checkpoint"].values.tolist()):
        raise AnalysisError(f"the given clusters lack the reference checkpoint {ref}")
    if norms is None:
        norms = fourier_norms(sub)
    if ref not in set(norms["checkpoint"].values.tolist()):
        raise AnalysisError(f"the given Fourier norms lack the reference checkpoint {ref}")
    c = clusters.sel(checkpoint=ref)
    n = norms.sel(checkpoint=ref)
    freqs = np.arange(1, n_freq + 1)
    d_mlp = c.sizes["d_mlp"]
    n_neurons = c["cluster_sizes"].sel(cluster_freq=freqs).values.astype(np.int64)
    neuron_share = n_neurons / d_mlp
    W_E_share = n["W_E_freq_share"].sel(freq=freqs).values
    W_logit_share = n["W_logit_freq_share"].sel(freq=freqs).values
    literal = np.isin(freqs, c["neuron_freq"].values)
    min_logit_share = min_logit_share_factor / n_freq
    is_key = (neuron_share >= min_cluster_share) & (n_neurons > 0) & (W_logit_share >= min_logit_share)
    key = freqs[is_key]
    K = set(key.tolist())
    agree_neurons = _top_set(n_neurons.astype(float), freqs, len(K)) == K
    agree_W_E = _top_set(W_E_share, freqs, len(K)) == K
    agree_W_logit = _top_set(W_logit_share, freqs, len(K)) == K
    rule = RULE.format(
        threshold=threshold,
        min_cluster_share=min_cluster_share,
        min_logit_share_factor=min_logit_share_factor,
        n_freq=n_freq,
    )
    return xr.Dataset(
        {
            "key_freqs": (("key_freq",), key.astype(np.int64), {"description": "the key frequencies"}),
            "n_neurons": (("freq",), n_neurons, {"description": f"neurons in the cluster (FVE >= {threshold})"}),
            "neuron_share": (("freq",), neuron_share, {"description": "share of the neurons in the cluster", "units": "fraction"}),
            "W_E_share": (("freq",), W_E_share, {"description": "share of W_E's squared Fourier norm", "units": "fraction"}),
            "W_logit_share": (("freq",), W_logit_share, {"description": "share of W_logit's squared Fourier norm", "units": "fraction"}),
            "literal": (("freq",), literal, {"description": "argmax frequency of at least one neuron (paper code's rule)"}),
            "is_key": (("freq",), is_key, {"description": rule}),
            "agree": ((), bool(agree_neurons and agree_W_E and agree_W_logit), {"description": "all three sources rank K on top"}),
            "agree_neurons": ((), bool(agree_neurons), {"description": "the largest neuron clusters are K"}),
            "agree_W_E": ((), bool(agree_W_E), {"description": "the largest W_E Fourier shares are at K"}),
            "agree_W_logit": ((), bool(agree_W_logit), {"description": "the largest W_logit Fourier shares are at K"}),
        },
        coords={"freq": freqs, "key_freq": key.astype(np.int64)},
        attrs={
            "description": "key frequencies with their evidence (paper sections 4.1, 4.3, App. C.2)",
            "rule": rule,
            "reference_checkpoint": ref,
            "key_freqs": [int(k) for k in key],
            "literal_key_freqs": [int(k) for k in freqs[literal]],
            "threshold": float(threshold),
            "min_cluster_share": float(min_cluster_share),
            "min_logit_share": float(min_logit_share),
            "agreement": "a source agrees when its |K| top-ranked frequencies are exactly K",
        },
    )
