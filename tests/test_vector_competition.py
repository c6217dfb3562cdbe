"""The vector-competition toy (rank-r matrix factorisation) and the generic bump detector.

References written here: the closed form of the symmetric flow (tasks.md 5) with scipy's expm, a plain-loop
Euler integrator, and plain-loop bump statistics.
"""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
from scipy.linalg import expm

import mechgrok
from mechgrok.analyses.bumps import bump_noise, find_bumps
from mechgrok.errors import AnalysisError
from mechgrok.toys.vector_competition import competition_bumps, competition_flow, rank_sweep


def _closed_form(A: np.ndarray, W0: np.ndarray, t: float) -> np.ndarray:
    """W W^T of dW/dt = (A - W W^T) W at time t (tasks.md 5), A symmetric positive definite."""
    eAt = expm(A * t)
    inner = np.eye(W0.shape[1]) + W0.T @ np.linalg.solve(A, expm(2 * A * t) - np.eye(len(A))) @ W0
    return eAt @ W0 @ np.linalg.solve(inner, W0.T @ eAt)


def test_rk4_matches_the_closed_form_of_the_symmetric_flow():
    rng = np.random.default_rng(3)
    d, r = 5, 2
    Q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    lam = np.array([2.0, 1.5, 1.0, 0.7, 0.4])
    a = Q * np.sqrt(lam)  # a = b, so A = a b^T = Q diag(lam) Q^T, symmetric positive definite
    W0 = rng.normal(0, 0.05, (d, r))
    flow = competition_flow(rank=r, d=d, target_rank=d, targets=(a, a), init=(W0, W0), t_max=4.0, dt=0.005,
                            save_every=100, method="rk4")
    A = a @ a.T
    worst = 0.0
    for ti, t in enumerate(flow["time"].values):
        X = flow["learned_a"].isel(time=ti).values.T  # (d, r)
        worst = max(worst, np.abs(X @ X.T - _closed_form(A, W0, float(t))).max())
    assert worst < 1e-8
    # the flow has moved far from the start: the check is not trivially passed at W ~ W0
    X = flow["learned_a"].isel(time=-1).values.T
    assert np.abs(X @ X.T - W0 @ W0.T).max() > 0.5
    # ã = b̃ throughout (the symmetric special case of the general flow)
    assert np.allclose(flow["learned_a"].values, flow["learned_b"].values, atol=1e-14)


def test_euler_matches_a_plain_loop_reference():
    rng = np.random.default_rng(0)
    d, r, steps, dt = 4, 3, 50, 0.02
    a, b = rng.normal(0, 0.5, (2, d, r))
    x0, y0 = rng.normal(0, 0.1, (2, d, r))
    flow = competition_flow(rank=r, d=d, targets=(a, b), init=(x0, y0), t_max=steps * dt, dt=dt, method="euler",
                            save_every=steps)
    X, Y = x0.copy(), y0.copy()
    for _ in range(steps):
        R = a @ b.T - sum(np.outer(X[:, j], Y[:, j]) for j in range(r))
        dX = np.stack([R @ Y[:, j] for j in range(r)], 1)
        dY = np.stack([R.T @ X[:, j] for j in range(r)], 1)
        X, Y = X + dt * dX, Y + dt * dY
    assert np.allclose(flow["learned_a"].isel(time=-1).values.T, X, atol=1e-13)
    c = np.array([[X[:, j] @ a[:, k] for k in range(r)] for j in range(r)])
    assert np.allclose(flow["alignment"].isel(time=-1).values, c, atol=1e-13)
    L = 0.5 * ((a @ b.T - X @ Y.T) ** 2).sum()
    assert flow["loss"].values[-1] == pytest.approx(L, rel=1e-12)


def test_rank_sweep_bumps_only_above_rank_one():
    sw = rank_sweep(ranks=(1, 2, 4), seeds=range(20))
    frac = sw["fraction_with_bump"].sel(rank=[1, 2, 4]).values
    assert frac[0] == 0.0  # no bump at rank 1, in any of 20 seeds
    assert frac[1] > 0.5 and frac[2] > 0.5  # bumps in most runs at rank >= 2
    assert int(sw["n_bumps"].sel(rank=1).sum()) == 0
    with_bumps = sw["has_bump"].sel(rank=4)
    # bumps go with growing vectors: after the norm-decay phase, at high alignment (beyond.md 3.1)
    assert float(sw["bumps_after_norm_decay"].sel(rank=4).where(with_bumps).min()) == 1.0
    assert float(sw["bump_peak_alignment"].sel(rank=4).where(with_bumps).mean()) > 0.4
    assert float(sw["final_loss"].sel(rank=2).max()) < 1e-6


def test_bumping_vectors_realign_while_another_catches_up():
    flow = competition_flow(rank=4, seed=list(range(20)))
    b = competition_bumps(flow)
    c = abs(flow["alignment"]).isel(time=-1)
    flagged = np.argwhere(b["is_bump"].values)
    assert len(flagged) > 20
    caught = 0
    for s, j, k in flagged:
        assert float(b["realign_gain"].values[s, j, k]) > 0  # it rises toward another target after the peak
        assert int(b["realigns_to"].values[s, j, k]) != k
        end = c.values[s]
        caught += any(end[jj, k] > end[j, k] for jj in range(4) if jj != j)
    assert caught / len(flagged) > 0.8  # the Jermyn picture: another learned vector takes over the target


def test_find_bumps_against_plain_statistics_and_noise():
    rng = np.random.default_rng(1)
    t = np.linspace(0, 10, 201)
    bumpy = 1.0 + 0.3 * np.exp(-((t - 4) ** 2)) + rng.normal(0, 0.01, (20, t.size))
    flat = 1.0 + rng.normal(0, 0.01, (20, t.size))
    x = xr.DataArray(np.stack([bumpy, flat], 1), dims=("seed", "kind", "time"), coords={"time": t})
    b = find_bumps(x, dim="time", seed_dim="seed")
    assert b["is_bump"].sel(kind=0).all() and not b["is_bump"].sel(kind=1).any()
    for s in range(3):
        for kind in range(2):
            v = x.values[s, kind]
            i = int(np.argmax(v))
            assert float(b["peak_time"][s, kind]) == t[i]
            assert float(b["prominence"][s, kind]) == pytest.approx(v[i] - max(v[0], v[-1]))
            assert float(b["relative_height"][s, kind]) == pytest.approx((v[i] - max(v[0], v[-1])) / v[i])
    # the noise level is the planted one, pooled across seeds (one threshold per kind)
    noise = bump_noise(x, dim="time", seed_dim="seed")
    assert np.allclose(noise.sel(kind=1).values, noise.sel(kind=1).values[0])
    assert float(noise.sel(kind=1)[0]) == pytest.approx(0.01, rel=0.25)
    assert abs(float(b["peak_time"].sel(kind=0).median()) - 4.0) < 0.2


def test_monotone_and_end_peaks_are_not_bumps():
    t = np.arange(30.0)
    x = xr.DataArray(np.stack([np.tanh(t / 5), np.exp(-t / 5), np.where(t < 29, 0.0, 1.0)]), dims=("s", "time"))
    assert not find_bumps(x, dim="time")["is_bump"].any()


def test_find_bumps_errors():
    x = xr.DataArray(np.ones((2, 5)), dims=("a", "time"))
    with pytest.raises(AnalysisError, match="no dim"):
        find_bumps(x, dim="epoch")
    with pytest.raises(AnalysisError, match="NaN"):
        find_bumps(x.where(x.a == 0), dim="time")
    with pytest.raises(AnalysisError, match="odd window"):
        find_bumps(x, dim="time", smooth=4)
    with pytest.raises(AnalysisError, match="at least 3"):
        find_bumps(x.isel(time=[0, 1]), dim="time")
    with pytest.raises(AnalysisError, match="unknown integrator"):
        competition_flow(rank=2, method="leapfrog")


def test_public_namespace():
    for name in ("competition_flow", "competition_bumps", "rank_sweep", "find_bumps"):
        assert name in dir(mechgrok) and callable(getattr(mechgrok, name))
