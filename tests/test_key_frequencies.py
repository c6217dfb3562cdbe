"""Key frequencies by mechgrok's rule, with evidence and agreement (paper sections 4.1, 4.3, App. C.2)."""

from __future__ import annotations

import numpy as np
import pytest

from mechgrok.errors import AnalysisError
from mechgrok.analyses.modular.fourier_norms import fourier_norms
from mechgrok.analyses.modular.key_frequencies import key_frequencies
from mechgrok.analyses.modular.neurons import neuron_clusters
from mechgrok.store import open_run
from nanda import load_nanda_model
from planted import planted_trajectory

FIXTURE = __import__("pathlib").Path(__file__).resolve().parents[1] / "fixtures" / "quick-run"


@pytest.mark.parametrize(("p", "freqs"), [(23, (3, 7)), (31, (4, 9, 15)), (53, (5, 17, 22, 26))])
def test_planted_model_yields_exactly_its_frequencies(p, freqs):
    ds = planted_trajectory(p, freqs, mix=(0.0, 0.5, 1.0))
    out = key_frequencies(ds)
    assert out["key_freqs"].values.tolist() == sorted(freqs)
    assert out.attrs["key_freqs"] == sorted(freqs)
    assert out.attrs["reference_checkpoint"] == 200  # default: the last checkpoint
    assert bool(out["agree"]) and bool(out["agree_neurons"]) and bool(out["agree_W_E"]) and bool(out["agree_W_logit"])
    planted = np.isin(out["freq"].values, freqs)
    np.testing.assert_array_equal(out["is_key"].values, planted)
    assert (out["n_neurons"].values[planted] == 2 * 16).all()  # 16 phases x 2 bias groups per frequency
    assert out["n_neurons"].values[~planted].sum() == 0
    assert out["W_logit_share"].values[planted].sum() == pytest.approx(1.0, rel=1e-9)
    # the rule text carries its thresholds
    assert "0.85" in out.attrs["rule"] and "0.02" in out.attrs["rule"]
    assert out["is_key"].attrs["description"] == out.attrs["rule"]


def test_random_checkpoint_has_no_key_frequencies():
    ds = planted_trajectory(23, (3, 7), mix=(0.0, 1.0))
    out = key_frequencies(ds, reference=0)
    assert out["key_freqs"].size == 0 and out.attrs["reference_checkpoint"] == 0
    assert out["n_neurons"].values.sum() == 0
    assert not bool(out["agree"])  # nothing to agree on


def test_evidence_equals_the_component_analyses():
    ds = planted_trajectory(23, (3, 7), mix=(0.5, 1.0))
    clusters = neuron_clusters(ds)
    norms = fourier_norms(ds)
    out = key_frequencies(ds, reference=0, clusters=clusters, norms=norms)
    again = key_frequencies(ds, reference=0)
    for v in ("n_neurons", "W_E_share", "W_logit_share", "literal", "is_key"):
        np.testing.assert_allclose(out[v].values, again[v].values)
    c = clusters.sel(checkpoint=0)
    for k in out["freq"].values:
        assert out["n_neurons"].sel(freq=k) == int((c["cluster"].values == k).sum())
        assert bool(out["literal"].sel(freq=k)) == bool((c["neuron_freq"].values == k).any())
    n = norms.sel(checkpoint=0)
    np.testing.assert_allclose(out["W_E_share"].values, n["W_E_freq_norm"].values ** 2 / (n["W_E_freq_norm"].values ** 2).sum())


def test_key_frequency_errors():
    ds = planted_trajectory(23, (3, 7))
    with pytest.raises(AnalysisError, match="not a checkpoint"):
        key_frequencies(ds, reference=123)
    clusters = neuron_clusters(ds, threshold=0.9)
    with pytest.raises(AnalysisError, match="threshold"):
        key_frequencies(ds, clusters=clusters)


def test_quick_fixture():
    """Key frequencies of the quick run are {9, 17, 25} by FVE clusters and W_E norms."""
    ds = open_run(FIXTURE)
    last = key_frequencies(ds)
    assert last["key_freqs"].values.tolist() == [9, 17, 25]
    assert bool(last["agree"])
    assert last.attrs["literal_key_freqs"] == [9, 17, 25]
    early = key_frequencies(ds, reference=500)  # memorised, no circuit yet
    assert early["key_freqs"].size == 0
    assert len(early.attrs["literal_key_freqs"]) > 10  # the paper code's literal rule: stray frequencies


def test_released_low_precision_model():
    """Clusters 23, 6, 39 (README section 3); the literal rule adds 3, which has no neuron above FVE 0.85 but
    the third-largest W_logit norm: the sources disagree on this float32-loss run."""
    out = key_frequencies(load_nanda_model("low_precision_mod_addition.pth"))
    assert out["key_freqs"].values.tolist() == [6, 23, 39]
    assert out.attrs["literal_key_freqs"] == [3, 6, 23, 39]
    assert out.attrs["reference_checkpoint"] == 49999  # the source's own numbering (len(train_losses) - 1)
    assert bool(out["agree_neurons"]) and bool(out["agree_W_E"])
    assert not bool(out["agree_W_logit"]) and not bool(out["agree"])
    assert int(out["n_neurons"].sel(freq=3)) == 0
    assert float(out["W_logit_share"].sel(freq=3)) > float(out["W_logit_share"].sel(freq=6))


def test_released_no_wd_model():
    out = key_frequencies(load_nanda_model("mod_addition_no_wd.pth"))
    assert out["key_freqs"].values.tolist() == [36, 52]
    assert bool(out["agree"])
    assert len(out.attrs["literal_key_freqs"]) == 8  # 9, 24, 26, 28, 36, 41, 52, 53
    assert out["W_logit_share"].sel(freq=[36, 52]).sum() > 0.8
