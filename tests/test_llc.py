"""The local learning coefficient (mechgrok.analyses.llc) and its batched SGLD sampler (mechgrok.analyses.sgld).

Known answers: linear regression (a regular model, LLC = d/2), a quartic singular model (LLC = d/4), Gaussian
posteriors whose localisation and weight-decay terms have closed forms; a step-by-step numpy reference of the
update; the fixture run (the loss at a checkpoint is the training loss the trainer logged); devinterp on the
same settings (skipped without devinterp 1.x).
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr

from mechgrok.config import Config
from mechgrok.errors import AnalysisError
from mechgrok.analyses.llc import (
    TrainLoss,
    calibrate_llc,
    default_nbeta,
    estimate_llc,
    llc_trajectory,
    recommend_settings,
    sweep_llc,
)
from mechgrok.models.transformer import forward, init_params
from mechgrok.analyses.sgld import chain_seeds, sgld_sample
from mechgrok.store import open_run

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "quick-run"


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """The SGLD loops here run thousands of tiny steps; extra threads only add contention on a shared machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def quick_run() -> xr.Dataset:
    if not FIXTURE.is_dir():
        pytest.skip(f"fixture run missing at {FIXTURE}")
    return open_run(FIXTURE)


def _orthonormal_design(n: int, d: int, seed: int) -> torch.Tensor:
    """(n, d) float64 design with X^T X / n = I exactly."""
    q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((n, d)))
    return torch.tensor(q * math.sqrt(n))


# ---------------------------------------------------------------------------------------------------------------
# Known answers
# ---------------------------------------------------------------------------------------------------------------
def test_linear_regression_llc_is_half_the_dimension():
    """A regular model: y = x.w + noise with d = 10 parameters has lambda = d / 2 = 5 at the least-squares fit."""
    d, n = 10, 200
    X = _orthonormal_design(n, d, 0)
    rng = np.random.default_rng(1)
    y = X @ torch.tensor(rng.standard_normal(d)) + torch.tensor(rng.standard_normal(n))
    w_hat = torch.linalg.lstsq(X, y[:, None]).solution[:, 0]

    def loss_fn(params, batch):
        return 0.5 * ((y - params["w"] @ X.T) ** 2).mean(dim=-1)  # Gaussian negative log-likelihood + const

    out = estimate_llc(loss_fn, {"w": w_hat}, epsilon=4e-5, nbeta=1000.0, gamma=1.0, num_chains=8,
                       num_burnin=300, num_draws=2000, seed=0)
    assert abs(float(out["llc_mean"]) - d / 2) <= 0.1 * d / 2
    assert int(out["n_diverged"]) == 0
    # w_hat is the global minimum: no draw can have a lower loss
    assert float(out["frac_below_init"]) == 0.0
    assert out.attrs["n_params"] == d and out.attrs["full_batch"] is True


def test_quartic_singular_model_llc_is_a_quarter_per_parameter():
    """A singular model: y = sum_i w_i^2 x_i, realisable with truth w = 0 and no noise.

    With X^T X / n = I the loss is K(w) = (1/2) sum_i w_i^4. Each coordinate is the normal crossing w^(2k), k = 2,
    whose RLCT is 1/(2k) = 1/4 (Watanabe 2009, "Algebraic Geometry and Statistical Learning Theory", ch. 2 and 6),
    and RLCTs of independent coordinates add, so lambda = d / 4 (a regular model would give d / 2). Directly:
    Z(t) = int exp(-t K(w)) dw = c t^(-d/4), so E[t K] = -t d/dt log Z = d / 4 exactly (without localisation).
    """
    d, n = 16, 64
    X = _orthonormal_design(n, d, 2)

    def loss_fn(params, batch):
        pred = (params["w"] ** 2) @ X.T
        return 0.5 * (pred**2).mean(dim=-1)

    out = estimate_llc(loss_fn, {"w": torch.zeros(d, dtype=torch.float64)}, epsilon=1e-4, nbeta=1e4, gamma=1.0,
                       num_chains=16, num_burnin=500, num_draws=3000, seed=0)
    assert abs(float(out["llc_mean"]) - d / 4) <= 0.1 * d / 4
    assert int(out["n_diverged"]) == 0


@pytest.mark.parametrize("gamma, weight_decay", [(100.0, 0.0), (10.0, 50.0)])
def test_localisation_and_weight_decay_match_the_gaussian_chain(gamma, weight_decay):
    """L(w) = 1/2 sum h_i (w_i - m_i)^2 localised at w* = m. The drift is linear, so the SGLD chain itself has a
    Gaussian stationary law: precision a_i = nbeta h_i + gamma + weight_decay, mean m_i (nbeta h_i + gamma) / a_i,
    and (Euler with step eps) variance 1 / (a_i (1 - eps a_i / 4)); hence
    E[nbeta (L - L(w*))] = nbeta/2 sum h_i ((mean_i - m_i)^2 + var_i) in closed form."""
    h = np.array([0.5, 1.0, 2.0, 4.0])
    m = np.array([1.0, -0.5, 0.25, 2.0])
    nbeta, eps = 100.0, 2e-3
    ht, mt = torch.tensor(h), torch.tensor(m)

    def loss_fn(params, batch):
        return 0.5 * (ht * (params["w"] - mt) ** 2).sum(dim=-1)

    a = nbeta * h + gamma + weight_decay
    mean = m * (nbeta * h + gamma) / a
    var = 1 / (a * (1 - eps * a / 4))
    expected = nbeta / 2 * np.sum(h * ((mean - m) ** 2 + var))
    out = estimate_llc(loss_fn, {"w": mt}, epsilon=eps, nbeta=nbeta, gamma=gamma, weight_decay=weight_decay,
                       num_chains=8, num_burnin=200, num_draws=2000, seed=3)
    assert float(out["llc_mean"]) == pytest.approx(expected, rel=0.03)
    if weight_decay == 0:
        # localisation alone: sum nbeta h / (2 (nbeta h + gamma)), well below the regular d/2 = 2 for gamma = 100
        assert expected < 0.75 * len(h) / 2
    else:
        # weight decay pulls the chains off w* towards 0: the mean term dominates
        assert nbeta / 2 * np.sum(h * (mean - m) ** 2) > 5 * nbeta / 2 * np.sum(h * var)


# ---------------------------------------------------------------------------------------------------------------
# The sampler itself
# ---------------------------------------------------------------------------------------------------------------
def test_update_matches_a_numpy_loop():
    """w <- w - eps/2 (nbeta grad L + gamma (w - w*) + wd w) + sqrt(eps) xi, with xi the chain's own N(0, I)
    draws in flat parameter order, and the recorded loss taken before each step."""
    rng = np.random.default_rng(5)
    A = rng.standard_normal((3, 3))
    H = A @ A.T + np.eye(3)
    Ht = torch.tensor(H)
    center = {"u": torch.tensor(rng.standard_normal((2, 2))), "v": torch.tensor(rng.standard_normal((2, 1)))}
    eps, nbeta, gamma, wd = np.array([1e-2, 3e-3]), np.array([5.0, 20.0]), 2.0, 0.7
    seeds = chain_seeds(11, num_chains=2)

    def loss_fn(params, batch):
        w = torch.cat([params["u"], params["v"]], dim=1)  # (chain, 3)
        return 0.5 * torch.einsum("ci,ij,cj->c", w, Ht, w)

    steps = 4
    res = sgld_sample(loss_fn, center, epsilon=eps, nbeta=nbeta, gamma=gamma, weight_decay=wd, num_burnin=1,
                      num_draws=steps - 1, seeds=seeds)
    for c in range(2):
        g = torch.Generator().manual_seed(seeds[c])
        w0 = np.concatenate([center["u"][c].numpy(), center["v"][c].numpy()])
        w = w0.copy()
        for t in range(steps):
            assert res.losses[c, t] == pytest.approx(0.5 * w @ H @ w, rel=1e-12)
            xi = torch.randn(3, generator=g, dtype=torch.float64).numpy()
            drift = nbeta[c] * (H @ w) + gamma * (w - w0) + wd * w
            w = w - eps[c] / 2 * drift + math.sqrt(eps[c]) * xi
        got = np.concatenate([res.final_params["u"][c].numpy(), res.final_params["v"][c].numpy()])
        np.testing.assert_allclose(got, w, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(res.init_loss[c], 0.5 * w0 @ H @ w0, rtol=1e-12)
    assert res.draw_steps.tolist() == [1, 2, 3]


def _quadratic(params, batch):
    return 0.5 * (params["w"] ** 2).sum(dim=-1)


def test_seeded_reproducible_and_chains_independent_of_their_number():
    w = {"w": torch.zeros(5, dtype=torch.float64)}
    kw = dict(epsilon=1e-2, nbeta=10.0, gamma=1.0, num_burnin=5, num_draws=20)
    a = estimate_llc(_quadratic, w, num_chains=2, seed=1, **kw)
    b = estimate_llc(_quadratic, w, num_chains=2, seed=1, **kw)
    c = estimate_llc(_quadratic, w, num_chains=3, seed=1, **kw)
    d = estimate_llc(_quadratic, w, num_chains=2, seed=2, **kw)
    np.testing.assert_array_equal(a["llc_chain"].values, b["llc_chain"].values)
    np.testing.assert_array_equal(a["llc_chain"].values, c["llc_chain"].values[:2])
    assert not np.allclose(a["llc_chain"].values, d["llc_chain"].values)
    assert a["llc_chain"].values[0] != a["llc_chain"].values[1]


def test_divergent_chains_are_reported_and_left_out():
    """Per-chain step sizes: chain 0 is stable, chain 1 overflows to NaN, chain 2 blows up but stays finite."""
    h = 100.0
    w = {"w": torch.zeros(4, dtype=torch.float64)}

    def loss_fn(params, batch):
        return 0.5 * h * (params["w"] ** 2).sum(dim=-1)

    # Euler factor |1 - eps * nbeta * h / 2|: 0.995 (stable), 499 (overflow in ~120 steps), 1.1 (slow blow-up)
    eps = [1e-4, 10.0, 4.2e-2]
    out = estimate_llc(loss_fn, w, epsilon=eps, nbeta=1.0, gamma=0.0, num_chains=3, num_burnin=0, num_draws=300,
                       seed=0)
    assert out["diverged"].values.tolist() == [False, True, True]
    assert int(out["n_diverged"]) == 2
    assert out["dead_at"].values[1] >= 0 and out["dead_at"].values[2] == -1
    assert np.isfinite(out["llc_chain"].values[2])
    assert float(out["llc_mean"]) == out["llc_chain"].values[0]
    assert math.isnan(float(out["llc_std"]))  # one healthy chain: no spread, and no silent averaging


def test_sampler_rejects_bad_input():
    w = {"w": torch.zeros(3)}
    with pytest.raises(AnalysisError, match="epsilon"):
        estimate_llc(_quadratic, w, epsilon=0.0, nbeta=1.0, num_chains=1, num_draws=2)
    with pytest.raises(AnalysisError, match="num_chains"):
        estimate_llc(_quadratic, w, epsilon=1e-3, nbeta=1.0, num_chains=0)
    with pytest.raises(AnalysisError, match="one value per chain"):
        estimate_llc(_quadratic, w, epsilon=[1e-3, 1e-3, 1e-3], nbeta=1.0, num_chains=2, num_draws=2)
    with pytest.raises(AnalysisError, match="shape"):
        estimate_llc(lambda p, b: p["w"].sum(), w, epsilon=1e-3, nbeta=1.0, num_chains=2, num_draws=2)
    with pytest.raises(AnalysisError, match="n >= 2"):
        default_nbeta(1)
    assert default_nbeta(1123) == pytest.approx(1123 / math.log(1123))


# ---------------------------------------------------------------------------------------------------------------
# Calibration
# ---------------------------------------------------------------------------------------------------------------
def test_sweep_recommends_a_healthy_stable_cell():
    d, n = 6, 100
    X = _orthonormal_design(n, d, 7)
    y = X @ torch.ones(d, dtype=torch.float64) + torch.tensor(np.random.default_rng(8).standard_normal(n))
    w_hat = torch.linalg.lstsq(X, y[:, None]).solution[:, 0]

    def loss_fn(params, batch):
        return 0.5 * ((y - params["w"] @ X.T) ** 2).mean(dim=-1)

    sweep = sweep_llc(loss_fn, {"w": w_hat}, epsilons=[2e-5, 6e-5, 3e-2], nbetas=[1000.0], gamma=1.0, num_chains=4,
                      num_burnin=300, num_draws=1500, seed=0)
    assert sweep["llc_mean"].dims == ("epsilon", "nbeta")
    assert sweep["loss_trace"].dims == ("epsilon", "nbeta", "chain", "draw")
    # 3e-2 * 1000 / 2 = 15 > 2: the Euler step is unstable, every chain diverges
    assert int(sweep["n_diverged"].sel(epsilon=3e-2, nbeta=1000.0)) == 4
    assert sweep["healthy"].values[:, 0].tolist() == [True, True, False]
    assert sweep["stable"].sel(epsilon=6e-5, nbeta=1000.0)
    assert sweep.attrs["recommended_epsilon"] == 6e-5 and sweep.attrs["recommended_nbeta"] == 1000.0
    assert abs(sweep.attrs["recommended_llc"] - d / 2) <= 0.1 * d / 2
    np.testing.assert_allclose(sweep["llc_over_nbeta"].values, sweep["llc_mean"].values / 1000.0)


def _planted_sweep(llc, drift=0.0, n_diverged=0):
    eps, nbs = [1e-5, 1e-4, 1e-3], [50.0, 200.0]
    shape = (3, 2)
    var = lambda v: (("epsilon", "nbeta"), np.broadcast_to(np.asarray(v, dtype=float), shape).copy())
    ds = xr.Dataset({"llc_mean": var(llc), "llc_std": var(0.5), "n_diverged": var(n_diverged),
                     "frac_below_init": var(0.0), "llc_drift": var(drift)},
                    coords={"epsilon": eps, "nbeta": nbs}, attrs={"default_nbeta": 200.0})
    return recommend_settings(ds)


def test_recommendation_rule_on_planted_sweeps():
    # stable cells exist: nbeta nearest the default (200), then the smallest stable epsilon; (1e-3, 50) jumps
    # from 10.5 to 30, a step-size artefact
    r = _planted_sweep([[10.0, 10.0], [10.5, 10.4], [30.0, 10.6]])
    assert r["stable"].values.tolist() == [[False, False], [True, True], [False, True]]
    assert (r.attrs["recommended_epsilon"], r.attrs["recommended_nbeta"]) == (1e-4, 200.0)
    assert r.attrs["recommended_llc"] == 10.4
    # at the default nbeta, a confirmed (stable) epsilon beats a smaller unconfirmed one
    r = _planted_sweep([[10.0, 10.0], [10.5, 10.4], [10.2, 10.6]], drift=[[0.0, 9.0], [0.0, 0.0], [0.0, 0.0]])
    assert r.attrs["recommended_nbeta"] == 200.0 and r.attrs["recommended_epsilon"] == 1e-3
    # only the largest epsilon has a flat trace: nothing confirms it, it is still the only candidate
    r = _planted_sweep([[10.0, 10.0], [10.5, 10.4], [30.0, 29.0]], drift=[[9.0, 9.0], [9.0, 9.0], [0.0, 0.0]])
    assert not r["stable"].values.any()
    assert r.attrs["recommended_epsilon"] == 1e-3 and "not confirmed" in r.attrs["recommendation"]
    # 1e-4 and 1e-3 are both flat but disagree: the larger one is biased and never chosen; the smaller wins
    r = _planted_sweep([[10.0, 10.0], [10.5, 10.4], [30.0, 29.0]], drift=[[9.0, 9.0], [0.0, 0.0], [0.0, 0.0]])
    assert r.attrs["recommended_epsilon"] == 1e-4 and r.attrs["recommended_nbeta"] == 200.0
    # every chain diverged: nothing to recommend
    r = _planted_sweep(np.nan, n_diverged=2)
    assert not r["healthy"].values.any() and math.isnan(r.attrs["recommended_epsilon"])
    with pytest.raises(AnalysisError, match="epsilon x nbeta"):
        recommend_settings(xr.Dataset({"llc_mean": ("x", [1.0])}))


# ---------------------------------------------------------------------------------------------------------------
# The paper's transformer
# ---------------------------------------------------------------------------------------------------------------
def test_hand_written_and_autograd_gradients_agree():
    """TrainLoss.gradient with gradient="manual" (mechgrok.analyses.modular.loss_gradient) and "autograd" (model.forward): the same
    loss and gradient, full batch and per-chain minibatches; and the same SGLD chains from either."""
    cfg = Config(p=11, frac_train=0.5, d_model=16, n_heads=2, d_head=8, d_mlp=24)
    gen = torch.Generator().manual_seed(0)
    stacks = [init_params(cfg, generator=gen) for _ in range(3)]
    params = {k: torch.stack([s[k] for s in stacks]).double() for k in stacks[0]}
    params = {k: v + 0.3 * torch.randn(v.shape, generator=gen, dtype=torch.float64) for k, v in params.items()}
    a = torch.randint(0, 11, (40,), generator=gen)
    b = torch.randint(0, 11, (40,), generator=gen)
    tok, labels = torch.stack([a, b, torch.full_like(a, 11)], dim=1), (a + b) % 11
    idx = torch.stack([torch.randperm(40, generator=gen)[:10] for _ in range(3)])
    for batch, batch_size in ((None, None), (idx, 10)):
        fast = TrainLoss(tok, labels, batch_size=batch_size)
        slow = TrainLoss(tok, labels, batch_size=batch_size, gradient="autograd")
        g_fast = {k: torch.empty_like(v) for k, v in params.items()}
        g_slow = {k: torch.empty_like(v) for k, v in params.items()}
        torch.testing.assert_close(fast.gradient(params, batch, g_fast), slow.gradient(params, batch, g_slow),
                                   rtol=1e-12, atol=0.0)
        torch.testing.assert_close(fast(params, batch), slow(params, batch), rtol=1e-12, atol=0.0)
        for k in params:
            torch.testing.assert_close(g_fast[k], g_slow[k], rtol=1e-10, atol=1e-13)
    center = {k: v[0] for k, v in params.items()}
    kw = dict(epsilon=1e-4, nbeta=20.0, gamma=100.0, num_chains=2, num_burnin=3, num_draws=5, seed=1)
    manual = TrainLoss(tok, labels)
    by_hand = estimate_llc(manual, center, grad_fn=manual.gradient, **kw)
    by_autograd = estimate_llc(TrainLoss(tok, labels, gradient="autograd"), center, **kw)
    np.testing.assert_allclose(by_hand["llc_chain"].values, by_autograd["llc_chain"].values, rtol=1e-9)
    with pytest.raises(AnalysisError, match="gradient must be"):
        TrainLoss(tok, labels, gradient="numerical")


def test_minibatches_are_per_chain_permutations():
    n, m = 23, 5
    tok = torch.zeros(n, 3, dtype=torch.int64)
    lf = TrainLoss(tok, torch.zeros(n, dtype=torch.int64), batch_size=m)
    gens = [torch.Generator().manual_seed(s) for s in (1, 2)]
    batch_fn = lf.batches()
    batches = torch.cat([batch_fn(gens) for _ in range(n // m)], dim=1)  # one pass: no repeats within a chain
    assert all(len(set(row.tolist())) == (n // m) * m for row in batches)
    assert batches[0].tolist() != batches[1].tolist()
    # a fresh sampler with fresh generators repeats the sequence (no state carried over between SGLD runs)
    again = lf.batches()([torch.Generator().manual_seed(s) for s in (1, 2)])
    assert again.tolist() == batches[:, :m].tolist()
    assert TrainLoss(tok, torch.zeros(n, dtype=torch.int64)).batches() is None
    with pytest.raises(AnalysisError, match="batch_size"):
        TrainLoss(tok, torch.zeros(n, dtype=torch.int64), batch_size=n + 1)


def test_trajectory_on_the_fixture(quick_run):
    kw = dict(num_chains=2, num_burnin=5, num_draws=10, epsilon=1e-4, seed=4)
    out = llc_trajectory(quick_run, epochs=[1000, 3000], **kw)
    assert out["llc_mean"].dims == ("checkpoint",)
    assert out["llc_chain"].dims == ("checkpoint", "chain")
    assert out["checkpoint"].values.tolist() == [1000, 3000]
    assert out["checkpoint"].attrs["units"] == "epochs"
    # the loss at the checkpoint is exactly the training loss the trainer logged (all p + 1 classes, float64)
    logged = quick_run["loss_train"].sel(epoch=[1000, 3000]).values
    np.testing.assert_allclose(out["init_loss"].values, logged, rtol=1e-4)
    assert out.attrs["n_train"] == int(quick_run["is_train"].sum())
    assert out.attrs["nbeta"] == pytest.approx(default_nbeta(out.attrs["n_train"]))
    assert np.isfinite(out["llc_mean"].values).all() and (out["n_diverged"].values == 0).all()
    # a checkpoint's estimate does not depend on which other checkpoints run, nor on the chunking
    alone = llc_trajectory(quick_run, epochs=[3000], **kw)
    np.testing.assert_array_equal(alone["llc_chain"].values[0], out["llc_chain"].values[1])
    chunked = llc_trajectory(quick_run, epochs=[1000, 3000], chunk=2, **kw)
    np.testing.assert_array_equal(chunked["llc_chain"].values, out["llc_chain"].values)  # checkpoint by checkpoint
    every = llc_trajectory(quick_run, every=30, keep_trace=True, **kw)
    assert every["checkpoint"].values.tolist() == [0, 1500, 3000]
    assert every["loss_trace"].dims == ("checkpoint", "chain", "draw")
    # minibatch SGLD: nbeta defaults to m / ln m of the batch size
    mb = llc_trajectory(quick_run, epochs=[3000], batch_size=256, **kw)
    assert mb.attrs["nbeta"] == pytest.approx(default_nbeta(256)) and mb.attrs["full_batch"] is False
    np.testing.assert_allclose(mb["init_loss"].values, logged[1:], rtol=1e-4)


def test_trajectory_rejects_bad_input(quick_run):
    with pytest.raises(AnalysisError, match="every"):
        llc_trajectory(quick_run, every=0)
    with pytest.raises(AnalysisError, match=r"no checkpoints at epochs \[7\]"):  # mechgrok.engine.select_epochs
        llc_trajectory(quick_run, epochs=[7])
    with pytest.raises(AnalysisError, match="is_train"):
        llc_trajectory(quick_run.drop_vars("is_train"), epochs=[3000])
    with pytest.raises(AnalysisError, match="epsilon"):
        llc_trajectory(quick_run, epochs=[3000], epsilon=-1.0)
    with pytest.raises(AnalysisError, match="batch_size"):
        llc_trajectory(quick_run, epochs=[3000], batch_size=10**6)
    no_p = quick_run.copy()
    no_p.attrs = {k: v for k, v in quick_run.attrs.items() if k != "p"}
    with pytest.raises(AnalysisError, match="modulus"):
        llc_trajectory(no_p, epochs=[3000])


def test_calibrate_on_a_fixture_checkpoint(quick_run):
    sweep = calibrate_llc(quick_run, epsilons=[1e-5, 1e-4], nbetas=[160.0], num_chains=2, num_burnin=3,
                          num_draws=8)
    assert sweep.attrs["epoch"] == 3000
    assert sweep.attrs["default_nbeta"] == pytest.approx(default_nbeta(sweep.attrs["n_train"]))
    assert sweep["llc_mean"].shape == (2, 1) and sweep["healthy"].dtype == bool
    assert "recommendation" in sweep.attrs and "recommendation_rule" in sweep.attrs


# ---------------------------------------------------------------------------------------------------------------
# Cross-check against devinterp (optional, test-only dependency)
# ---------------------------------------------------------------------------------------------------------------
def test_agrees_with_devinterp(quick_run):
    devinterp = pytest.importorskip("devinterp", reason="devinterp is not installed (optional cross-check)")
    try:
        from devinterp.optim.sgld import SGLD
        from devinterp.slt.sampler import estimate_learning_coeff_with_summary
    except ImportError:
        pytest.skip(f"devinterp {getattr(devinterp, '__version__', '?')} lacks the 1.x API "
                    "(estimate_learning_coeff_with_summary, optim.sgld.SGLD)")
    from torch.utils.data import DataLoader, TensorDataset

    from mechgrok.engine import checkpoint_weights
    from mechgrok.analyses.llc import _train_loss_for
    from mechgrok.tasks.loss import cross_entropy
    from mechgrok.models.transformer import Transformer

    epoch, eps, gamma, chains, burnin, draws = 3000, 3e-4, 100.0, 4, 50, 100
    cfg = Config.from_json(quick_run.attrs["config_json"])
    lf = _train_loss_for(quick_run, batch_size=None, gradient="manual")
    nbeta = default_nbeta(lf.n)
    ours = llc_trajectory(quick_run, epochs=[epoch], epsilon=eps, gamma=gamma, nbeta=nbeta, num_chains=chains,
                          num_burnin=burnin, num_draws=draws, seed=0).isel(checkpoint=0)

    model = Transformer(cfg)
    w = checkpoint_weights(quick_run.sel(checkpoint=[epoch]))
    with torch.no_grad():
        for name, t in model.params().items():
            t.copy_(w[name][0])
    loader = DataLoader(TensorDataset(lf.tokens, lf.labels), batch_size=lf.n, shuffle=False)

    def evaluate(model, data):
        x, y = data
        return cross_entropy(model(x).logits, y)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = estimate_learning_coeff_with_summary(
            model, loader, evaluate=evaluate, sampling_method=SGLD,
            optimizer_kwargs=dict(lr=eps, localization=gamma, nbeta=nbeta), num_chains=chains, num_draws=draws,
            num_burnin_steps=burnin, seed=0, verbose=False,
        )
    m1, s1 = float(ours["llc_mean"]), float(ours["llc_std"])
    m2, s2 = float(theirs["llc/mean"]), float(theirs["llc/std"])
    assert int(ours["n_diverged"]) == 0 and math.isfinite(m2)
    print(f"mechgrok {m1:.3f} +/- {s1:.3f}, devinterp {m2:.3f} +/- {s2:.3f}")
    assert abs(m1 - m2) <= 2 * max(s1, s2), (m1, s1, m2, s2)
