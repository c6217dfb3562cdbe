"""Vector competition in modular addition: Fourier alignments of the vector families, bumps of N_k, the
evidence and verdicts, dominant-frequency switches, and their place in ``analyze``, the report and figures.

References written here: plain loops over tokens, neurons and heads with cos/sin vectors built in the test, and
planted trajectories whose N_k has a known bump made by a known process.
"""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

import mechgrok
from mechgrok.analyses.modular.competition import competition_summary, frequency_switches, vector_competition
from mechgrok.analyses.modular.frequency_alignment import frequency_alignment
from mechgrok.errors import AnalysisError
from planted import random_trajectory

from conftest import REPO

FLOAT32_RUN = REPO / "fixtures" / "quick-run-float32"


def _cos_sin(p: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    x = np.arange(p)
    return np.sqrt(2 / p) * np.cos(2 * np.pi * k * x / p), np.sqrt(2 / p) * np.sin(2 * np.pi * k * x / p)


def test_frequency_alignment_against_plain_loops():
    p = 7
    ds = random_trajectory(p, 2, d_model=5, n_heads=2, d_head=3, d_mlp=4, seed=2)
    fa = frequency_alignment(ds, n_components=5)
    K = (p - 1) // 2
    for t in range(2):
        W_E = ds["W_E"].values[t].astype(np.float64)[:p]
        W_in = ds["W_in"].values[t].astype(np.float64)
        W_V, W_O = ds["W_V"].values[t].astype(np.float64), ds["W_O"].values[t].astype(np.float64)
        for j in range(4):
            w = np.array([sum(W_E[x, m] * W_in[m, j] for m in range(5)) for x in range(p)])
            for k in range(1, K + 1):
                c, s = _cos_sin(p, k)
                power = (c @ w) ** 2 + (s @ w) ** 2
                assert float(fa["neuron_in_power"][t, j, k - 1]) == pytest.approx(power, rel=1e-5, abs=1e-9)
                assert float(fa["neuron_in_alignment"][t, j, k - 1]) == pytest.approx(np.sqrt(power / (w @ w)), rel=1e-5)
            for h in range(2):
                ov = np.array([sum(W_E[x, m] * W_V[h, m, e] * W_O[h, e, n] * W_in[n, j]
                                   for m in range(5) for e in range(3) for n in range(5)) for x in range(p)])
                c, s = _cos_sin(p, 2)
                assert float(fa["neuron_ov_power"][t, h, j, 1]) == pytest.approx((c @ ov) ** 2 + (s @ ov) ** 2, rel=1e-5, abs=1e-9)
        rows = np.array([[sum((v @ W_E[:, m]) ** 2 for v in _cos_sin(p, k)) for k in range(1, K + 1)] for m in range(5)])
        assert np.allclose(fa["W_E_rows_N"][t].values, rows.sum(0), rtol=1e-10)
    # N_k of W_E's rows is the squared per-frequency embedding norm (an independent analysis)
    fn = mechgrok.fourier_norms(ds, include=("W_E",))
    assert np.allclose(fa["W_E_rows_N"].values, fn["W_E_freq_norm"].values ** 2, rtol=1e-10)
    # all principal directions together carry the same power as the rows (a rotation of d_model)
    assert np.allclose(fa["W_E_pca_N"].values, fa["W_E_rows_N"].values, rtol=1e-8)
    q = fa["neuron_in_power"].values.astype(np.float64)
    q = q / q.sum(-1, keepdims=True)
    assert np.allclose(fa["neuron_in_entropy"].values, -(q * np.log(q)).sum(-1), rtol=1e-5)
    assert np.array_equal(fa["neuron_in_dominant_freq"].values, q.argmax(-1) + 1)


def _planted(amps: dict[tuple[int, int], list[float]], *, p: int = 11, d_mlp: int = 4) -> xr.Dataset:
    """W_E[:p] = I, and neuron j's input map = sum_k amps[j, k](t) cos_k: the power of (j, k) is amps^2."""
    T = len(next(iter(amps.values())))
    W_E = np.zeros((T, p + 1, p))
    W_E[:, :p, :p] = np.eye(p)
    W_in = np.zeros((T, p, d_mlp))
    for (j, k), a in amps.items():
        W_in[:, :, j] += np.outer(a, _cos_sin(p, k)[0])
    return xr.Dataset({"W_E": (("checkpoint", "vocab", "d_model"), W_E),
                       "W_in": (("checkpoint", "d_model", "d_mlp"), W_in)},
                      coords={"checkpoint": np.arange(T) * 100}, attrs={"p": p})


def _verdict(amps, k=1):
    fa = frequency_alignment(_planted(amps), families=("neuron_in",))
    return vector_competition(fa, key_freqs=[k, 2]).sel(family="neuron_in", key_freq=k)


def test_planted_competition_bump():
    # neurons 0 and 1 both grow on k = 1; after epoch 400 neuron 0 realigns to k = 2 while neuron 1 catches up
    row = _verdict({(0, 1): [0.1, 0.5, 1, 1.5, 2, 1.5, 1, 0.5, 0], (1, 1): [0.1, 0.5, 1, 1.5, 2, 2.1, 2.2, 2.2, 2.2],
                    (0, 2): [0, 0, 0, 0, 0, 1, 1.5, 2, 2.5], (2, 3): [1.0] * 9})
    assert bool(row["is_bump"]) and int(row["peak_epoch"]) == 400
    # N_1 = 8 at the peak and 2.2^2 at the end: h = 8 - 4.84
    assert float(row["prominence"]) == pytest.approx(8 - 4.84)
    assert float(row["realign_share"]) == pytest.approx(1.0)
    assert float(row["gainer_share"]) == pytest.approx(0.84 / 4)
    assert int(row["flux_to"]) == 2 and float(row["flux_out"]) > 0
    assert str(row["verdict"].values) == "competition"


def test_planted_cleanup_bump():
    up = np.array([0.1, 1, 2, 3, 3.2, 2.5, 2, 1.6, 1.5])
    row = _verdict({(j, k): list(up * (1 + 0.1 * j) * (1 if k == 1 else 0.5)) for j in range(4) for k in (1, 2)})
    assert bool(row["is_bump"]) and int(row["peak_epoch"]) == 400
    assert float(row["realign_share"]) == 0 and float(row["retained_spread"]) == pytest.approx(0, abs=1e-6)  # powers are stored as float32
    assert float(row["norm_change"]) < 0
    assert str(row["verdict"].values) == "cleanup"


def test_planted_within_neuron_bump():
    # every neuron grows k = 1 and k = 2 together; then k = 1 decays inside each neuron, k = 2 stays
    row = _verdict({**{(j, 1): [0.1, 0.5, 1, 1.5, 2, 1.5, 1, 0.5, 0.1] for j in range(4)},
                    **{(j, 2): [0.1, 0.5, 1, 1.5, 2, 2, 2, 2, 2] for j in range(4)}})
    assert bool(row["is_bump"]) and float(row["within_share"]) == pytest.approx(1.0)
    assert str(row["verdict"].values) == "within-neuron"


def test_no_bump_when_monotone():
    row = _verdict({(0, 1): list(np.linspace(0.1, 2, 9)), (1, 2): [1.0] * 9})
    assert not bool(row["is_bump"]) and str(row["verdict"].values) == "no bump"


def test_frequency_switches_against_a_plain_loop():
    rng = np.random.default_rng(5)
    P = rng.random((12, 6, 4)) ** 4
    da = xr.DataArray(P, dims=("checkpoint", "neuron", "freq"), coords={"checkpoint": np.arange(12) * 10, "freq": [1, 2, 3, 4]})
    s = frequency_switches(da, switch_floor=0.2, hysteresis=2)
    share = P / P.sum(-1, keepdims=True)
    for j in range(6):
        cur, n, last = int(P[0, j].argmax()), 0, -1
        for t in range(1, 12):
            new = int(P[t, j].argmax())
            if (new != cur and t + 2 <= 12 and int(P[t + 1, j].argmax()) == new and share[t, j, new] >= 0.2
                    and share[t - 1, j, cur] >= 0.2):
                n, last, cur = n + 1, t * 10, new
        assert int(s["n_switches"][j]) == n and int(s["last_switch_epoch"][j]) == last
    assert int(s["switch_matrix"].sum()) == int(s["n_switches"].sum())


def test_vector_competition_errors():
    fa = frequency_alignment(_planted({(0, 1): [0.1, 1.0, 0.5]}), families=("neuron_in",))
    with pytest.raises(AnalysisError, match="not among"):
        vector_competition(fa, key_freqs=[9])
    with pytest.raises(AnalysisError, match="at least 3"):
        vector_competition(fa.isel(checkpoint=[0, 1]))
    with pytest.raises(AnalysisError, match="unknown vector families"):
        frequency_alignment(_planted({(0, 1): [1.0]}), families=("W_Q",))


def test_analyze_float32_run_gives_the_bump_table_and_slingshots(tmp_path):
    from mechgrok.figures.competition import fig_competition_bumps, fig_slingshots

    ds = mechgrok.open_run(FLOAT32_RUN)
    tree = mechgrok.analyze(ds, analyses=["competition", "slingshots"], device="cpu")
    comp = tree["competition"].to_dataset()
    keys = [int(k) for k in tree.attrs["key_freqs"]]
    assert comp["verdict"].dims == ("family", "key_freq") and comp["key_freq"].values.tolist() == keys
    assert set(comp["family"].values) == {"neuron_in", "neuron_ov", "W_E_rows", "W_E_pca"}
    assert comp["is_bump"].any()  # N_k bumps on the key frequencies
    for v in comp.data_vars:
        assert "units" in comp[v].attrs and "description" in comp[v].attrs, v
    summary = mechgrok.summarise(tree)
    assert len(summary["competition"]["table"]) == 4 * len(keys)
    assert summary["slingshots"]["n_spikes"] >= 1
    md = mechgrok.report_markdown(summary)
    assert "## Vector competition" in md and "## Slingshots" in md
    fig_competition_bumps(tree).savefig(tmp_path / "c.png")
    fig_slingshots(tree).savefig(tmp_path / "s.png")
    # written and read back
    mechgrok.write_analysis(tree, tmp_path / "a.zarr")
    back = mechgrok.open_analysis(tmp_path / "a.zarr")
    again = mechgrok.summarise(back)
    assert again["competition"] == summary["competition"] and again["slingshots"] == summary["slingshots"]
    assert competition_summary(back["competition"].to_dataset())["table"][0]["family"] == "neuron_in"


def test_fixture_analysis_has_the_competition_table(fixture_analysis):
    comp = fixture_analysis["competition"].to_dataset()
    assert comp["key_freq"].values.tolist() == [int(k) for k in fixture_analysis.attrs["key_freqs"]]
    # the quick run's neuron input maps have a bump of N_k on every key frequency
    assert bool(comp["is_bump"].sel(family="neuron_in").all())
    assert "slingshots" in fixture_analysis.children
    assert int(fixture_analysis["slingshots"]["n_spikes"]) == 0  # float64 training: none


def test_vector_bumps_in_blocks_equal_one_call(fixture_run, monkeypatch):
    """vector_competition judges the per-vector series in blocks of vectors (bounded memory); the blocks must not
    change any result: the same table with blocks of 3 vectors as with all vectors at once."""
    from mechgrok.analyses.modular import competition

    fa = frequency_alignment(mechgrok.open_run(fixture_run).isel(checkpoint=slice(None, None, 4)))
    keys = [9, 17, 25]
    monkeypatch.setattr(competition, "_VECTOR_BLOCK", 10**9)
    whole = vector_competition(fa, key_freqs=keys)
    monkeypatch.setattr(competition, "_VECTOR_BLOCK", 3)
    blocks = vector_competition(fa, key_freqs=keys)
    xr.testing.assert_identical(whole, blocks)
    assert int(whole["n_vector_bumps"].sum()) > 0  # the comparison covers detected bumps, not only empty tables


def test_alignments_derived_by_blocks_equal_the_stored_ones(fixture_run, monkeypatch):
    """`mechgrok analyze` keeps the per-vector squared norms instead of the alignments A_jk and vector_competition
    derives A_jk from the powers block by block (and only the key columns for the flux): the same table as from
    the stored alignments, and the stored ones are sqrt(power / norm^2) by a plain loop."""
    from mechgrok.analyses.modular import competition

    fa = frequency_alignment(mechgrok.open_run(fixture_run).isel(checkpoint=slice(None, None, 4)))
    P, nsq = fa["neuron_in_power"].values, fa["neuron_in_vector_norm_sq"].values
    t, j = 3, 7
    want = [np.sqrt(P[t, j, k] / nsq[t, j]) for k in range(P.shape[-1])]
    np.testing.assert_allclose(fa["neuron_in_alignment"].values[t, j], want, rtol=1e-6)
    keys = [9, 17, 25]
    stored = vector_competition(fa, key_freqs=keys)
    monkeypatch.setattr(competition, "_VECTOR_BLOCK", 5)
    derived = vector_competition(fa.drop_vars([v for v in fa.data_vars if v.endswith("_alignment")]), key_freqs=keys)
    xr.testing.assert_allclose(stored, derived, rtol=1e-6)
    assert int(stored["n_vector_bumps"].sum()) > 0 and float(stored["neuron_in_flux"].sum()) > 0
