"""Vector competition in the rank-r matrix-factorisation toy (Jermyn & Shlegeris 2022, "Multi-Component Learning
and S-Curves", and its comment thread; ``shared/reference/beyond.md`` 3.1-3.2, 3.5; ``tasks.md`` 5).

**Model.** A target A = sum_k a_k b_k^T (d x d, ``target_rank`` terms) is fitted by Ã = sum_j ã_j b̃_j^T
(``rank`` learned pairs) under L = 1/2 ||A - Ã||_F^2. With the residual R = A - Ã, gradient flow is

    dã_j/dt = R b̃_j,    db̃_j/dt = R^T ã_j,

integrated by explicit Euler or classical Runge-Kutta 4 with a fixed step ``dt`` (flow-time units). For r = 1 it
is the rank-1 flow of the post; for ã_j = b̃_j and a symmetric A it is the symmetric flow dW/dt = (A - W W^T) W
whose closed form (tasks.md 5) the tests check to 1e-8.

**Set-up** (seeded, ``numpy.random.default_rng(seed)``): the target vectors a_k, b_k have i.i.d. N(0, 1/d)
entries (norm about 1, not orthogonalised: their strengths differ), drawn first; then the learned vectors have
i.i.d. N(0, init_scale^2 / d) entries (small initialisation, so each run starts with the norm-decay phase, in
which ||ã_j|| shrinks while its alignment is about 1/sqrt(d)).

**Alignment** ("Inner Product w/Truth", beyond.md 3.3): c_jk(t) = <ã_j(t), a_k>, and the normalised
c_jk / (||ã_j|| ||a_k||). The pair (ã_j, b̃_j) -> (-ã_j, -b̃_j) leaves Ã unchanged, so bumps are sought in |c_jk|.

**Claim reproduced** (:func:`rank_sweep`): bumps (|c_jk| rises, peaks and falls while ã_j realigns to another
target) appear only for rank > 1; they peak after the norm-decay phase, at high alignment.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import xarray as xr

from mechgrok.analyses.bumps import find_bumps
from mechgrok.errors import AnalysisError

__all__ = ["competition_flow", "competition_bumps", "rank_sweep", "METHODS"]

#: Integrators of :func:`competition_flow`.
METHODS = ("rk4", "euler")


def _field(A: np.ndarray, X: np.ndarray, Y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    R = A - X @ np.swapaxes(Y, -1, -2)
    return R @ Y, np.swapaxes(R, -1, -2) @ X


def _integrate(A, X, Y, *, dt: float, steps: int, save_every: int, method: str):
    saved = [(0, X, Y)]
    for i in range(1, steps + 1):
        if method == "euler":
            dX, dY = _field(A, X, Y)
            X, Y = X + dt * dX, Y + dt * dY
        else:
            k1 = _field(A, X, Y)
            k2 = _field(A, X + 0.5 * dt * k1[0], Y + 0.5 * dt * k1[1])
            k3 = _field(A, X + 0.5 * dt * k2[0], Y + 0.5 * dt * k2[1])
            k4 = _field(A, X + dt * k3[0], Y + dt * k3[1])
            X = X + dt / 6.0 * (k1[0] + 2 * k2[0] + 2 * k3[0] + k4[0])
            Y = Y + dt / 6.0 * (k1[1] + 2 * k2[1] + 2 * k3[1] + k4[1])
        if i % save_every == 0 or i == steps:
            saved.append((i, X, Y))
    return saved


def competition_flow(
    *,
    rank: int = 4,
    d: int = 10,
    target_rank: int | None = None,
    seed: int | Sequence[int] = 0,
    init_scale: float = 1e-2,
    t_max: float = 40.0,
    dt: float = 0.01,
    method: str = "rk4",
    save_every: int = 10,
    targets: tuple[np.ndarray, np.ndarray] | None = None,
    init: tuple[np.ndarray, np.ndarray] | None = None,
) -> xr.Dataset:
    """Integrate the rank-r matrix-factorisation gradient flow and record alignments and loss (beyond.md 3.2).

    Parameters
    ----------
    rank : int
        Number r of learned pairs (ã_j, b̃_j).
    d : int
        Dimension of the vectors.
    target_rank : int, optional
        Number of target pairs (a_k, b_k); default ``rank``.
    seed : int or sequence of int
        Seed of the targets and the initialisation; a sequence integrates every seed at once and adds a
        ``seed`` dim.
    init_scale : float
        Standard deviation times sqrt(d) of the initial learned entries (small: a norm-decay phase first).
    t_max, dt : float
        Flow time to integrate and the fixed step (flow-time units).
    method : {"rk4", "euler"}
        Classical Runge-Kutta 4 (default; global error O(dt^4)) or explicit Euler (O(dt)).
    save_every : int
        Record every ``save_every`` steps (and the last).
    targets : tuple of numpy.ndarray, optional
        ``(a, b)``, each (d, target_rank): fixed targets instead of random ones (same for every seed).
    init : tuple of numpy.ndarray, optional
        ``(ã(0), b̃(0))``, each (d, rank): a fixed initialisation instead of a random one.

    Returns
    -------
    xarray.Dataset
        Over (``seed``,) ``time`` (flow time), ``learned`` (j), ``target`` (k), ``d``:
        ``alignment`` (time, learned, target): c_jk = <ã_j, a_k>; ``alignment_normalised``: c_jk / (||ã_j||
        ||a_k||); ``learned_norm`` (time, learned): ||ã_j||; ``loss`` (time): 1/2 ||A - Ã||_F^2;
        ``learned_a``, ``learned_b`` (time, learned, d): ã_j, b̃_j; ``target_a``, ``target_b`` (target, d).
        Attrs: the set-up (rank, d, dt, method, init_scale, seeds, rules).

    Raises
    ------
    AnalysisError
        For a non-positive size or step, an unknown method, or targets/init of the wrong shape.

    Examples
    --------
    >>> ds = competition_flow(rank=2, d=6, seed=0, t_max=30.0, dt=0.02)
    >>> ds["alignment"].dims, ds.sizes["time"]
    (('time', 'learned', 'target'), 151)
    >>> bool(ds["loss"][-1] < 1e-6 * ds["loss"][0])
    True
    """
    tr = rank if target_rank is None else int(target_rank)
    if min(rank, d, tr, save_every) < 1 or not dt > 0 or not t_max > 0:
        raise AnalysisError(f"rank, d, target_rank, save_every, dt and t_max must be positive, got rank={rank}, d={d}, "
                            f"target_rank={tr}, save_every={save_every}, dt={dt}, t_max={t_max}")
    if method not in METHODS:
        raise AnalysisError(f"unknown integrator {method!r}; known: {', '.join(METHODS)}")
    seeds = [int(seed)] if np.ndim(seed) == 0 else [int(s) for s in seed]
    if not seeds:
        raise AnalysisError("no seeds given")
    a_all, b_all, x_all, y_all = [], [], [], []
    for s in seeds:
        rng = np.random.default_rng(s)
        a, b = rng.normal(0.0, 1.0 / np.sqrt(d), (2, d, tr))
        x0, y0 = rng.normal(0.0, init_scale / np.sqrt(d), (2, d, rank))
        if targets is not None:
            a, b = (np.asarray(t, dtype=np.float64) for t in targets)
        if init is not None:
            x0, y0 = (np.asarray(t, dtype=np.float64) for t in init)
        for name, arr, shape in (("targets", a, (d, tr)), ("targets", b, (d, tr)), ("init", x0, (d, rank)),
                                 ("init", y0, (d, rank))):
            if arr.shape != shape:
                raise AnalysisError(f"{name} must hold two arrays of shape {shape}, got {arr.shape}")
        a_all.append(a), b_all.append(b), x_all.append(x0), y_all.append(y0)
    a, b = np.stack(a_all), np.stack(b_all)  # (seed, d, target)
    A = a @ np.swapaxes(b, -1, -2)
    steps = max(1, int(round(t_max / dt)))
    saved = _integrate(A, np.stack(x_all), np.stack(y_all), dt=dt, steps=steps, save_every=int(save_every),
                       method=method)
    time = np.array([i * dt for i, _, _ in saved])
    X = np.stack([x for _, x, _ in saved], 1)  # (seed, time, d, learned)
    Y = np.stack([y for _, _, y in saved], 1)
    c = np.swapaxes(X, -1, -2) @ a[:, None]  # (seed, time, learned, target)
    xn = np.linalg.norm(X, axis=-2)  # (seed, time, learned)
    an = np.linalg.norm(a, axis=-2)  # (seed, target)
    with np.errstate(invalid="ignore", divide="ignore"):
        cn = c / (xn[..., :, None] * an[:, None, None, :])
    R = A[:, None] - X @ np.swapaxes(Y, -1, -2)
    loss = 0.5 * (R**2).sum((-1, -2))
    sd = ("seed",)
    ds = xr.Dataset(
        {
            "alignment": (sd + ("time", "learned", "target"), c,
                          {"units": "", "description": "c_jk = <ã_j, a_k> (Inner Product w/Truth)"}),
            "alignment_normalised": (sd + ("time", "learned", "target"), cn,
                                     {"units": "cosine", "description": "c_jk / (||ã_j|| ||a_k||)"}),
            "learned_norm": (sd + ("time", "learned"), xn, {"units": "", "description": "||ã_j||"}),
            "loss": (sd + ("time",), loss, {"units": "", "description": "1/2 ||A - Ã||_F^2"}),
            "learned_a": (sd + ("time", "learned", "d"), np.swapaxes(X, -1, -2), {"units": "", "description": "ã_j"}),
            "learned_b": (sd + ("time", "learned", "d"), np.swapaxes(Y, -1, -2), {"units": "", "description": "b̃_j"}),
            "target_a": (sd + ("target", "d"), np.swapaxes(a, -1, -2), {"units": "", "description": "a_k"}),
            "target_b": (sd + ("target", "d"), np.swapaxes(b, -1, -2), {"units": "", "description": "b_k"}),
        },
        coords={"seed": seeds, "time": ("time", time, {"units": "flow time"}), "learned": np.arange(rank),
                "target": np.arange(tr), "d": np.arange(d)},
        attrs={
            "title": "mechgrok vector-competition toy (rank-r matrix-factorisation gradient flow)",
            "rank": int(rank), "d": int(d), "target_rank": int(tr), "init_scale": float(init_scale),
            "dt": float(dt), "t_max": float(steps * dt), "method": method, "save_every": int(save_every),
            "flow": "dã_j/dt = R b̃_j, db̃_j/dt = R^T ã_j, R = A - sum_j ã_j b̃_j^T (beyond.md 3.2)",
            "targets_rule": "given" if targets is not None else "a_k, b_k i.i.d. N(0, 1/d) entries, drawn first",
            "init_rule": "given" if init is not None else "ã_j, b̃_j i.i.d. N(0, init_scale^2/d) entries, seeded",
            "source": "Jermyn & Shlegeris 2022, Multi-Component Learning and S-Curves; beyond.md 3.2",
        },
    )
    return ds if np.ndim(seed) else ds.isel(seed=0, drop=True)


def competition_bumps(
    ds: xr.Dataset, *, min_relative: float = 0.05, noise_factor: float = 3.0
) -> xr.Dataset:
    """Bumps of the toy's alignments |c_jk(t)| (beyond.md 3.3) with the evidence of the post's comment thread.

    Parameters
    ----------
    ds : xarray.Dataset
        A :func:`competition_flow` result (with or without ``seed``).
    min_relative, noise_factor : float
        The bump rule of :func:`mechgrok.analyses.bumps.find_bumps` (noise pooled across seeds).

    Returns
    -------
    xarray.Dataset
        :func:`~mechgrok.analyses.bumps.find_bumps` over (``seed``,) ``learned``, ``target`` with
        ``realigns_to``, plus ``peak_alignment_normalised`` (|c_jk| / (||ã_j|| ||a_k||) at t*, cosine),
        ``norm_decay_end`` (flow time of the minimum of ||ã_j||: the end of the norm-decay phase) and
        ``after_norm_decay`` (t* after it).

    Raises
    ------
    AnalysisError
        If ``ds`` lacks the toy's variables.

    Examples
    --------
    >>> b = competition_bumps(competition_flow(rank=1, d=6, seed=0, t_max=30.0, dt=0.02))
    >>> int(b["is_bump"].sum())
    0
    """
    missing = [v for v in ("alignment", "alignment_normalised", "learned_norm") if v not in ds]
    if missing:
        raise AnalysisError(f"not a vector-competition flow: lacks {missing}")
    seed_dim = "seed" if "seed" in ds.dims else None
    x = abs(ds["alignment"])
    x.attrs = {"units": ""}
    out = find_bumps(x, dim="time", min_relative=min_relative, noise_factor=noise_factor, seed_dim=seed_dim,
                     target_dim="target" if ds.sizes["target"] > 1 else None)
    cn = abs(ds["alignment_normalised"]).isel(time=out["peak_index"])
    decay_end = ds["time"].values[ds["learned_norm"].argmin("time").values]
    dims = [d for d in ds["learned_norm"].dims if d != "time"]
    out["peak_alignment_normalised"] = (cn.dims, cn.values, {"units": "cosine", "description": "|c_jk| / (||ã_j|| ||a_k||) at t*"})
    out["norm_decay_end"] = (dims, decay_end, {"units": "flow time", "description": "time of the minimum of ||ã_j|| (end of the norm-decay phase)"})
    out["after_norm_decay"] = out["peak_time"] > out["norm_decay_end"]
    out["after_norm_decay"].attrs = {"units": "", "description": "t* after the end of the norm-decay phase"}
    return out


def rank_sweep(
    *,
    ranks: Sequence[int] = (1, 2, 3, 4),
    seeds: Sequence[int] = tuple(range(20)),
    d: int = 10,
    init_scale: float = 1e-2,
    t_max: float = 40.0,
    dt: float = 0.01,
    method: str = "rk4",
    save_every: int = 10,
    min_relative: float = 0.05,
    noise_factor: float = 3.0,
) -> xr.Dataset:
    """Bumps per rank and seed: the claim that bumps appear only for rank > 1 (beyond.md 3.1, 3.5).

    Every (rank, seed) is a :func:`competition_flow` with ``target_rank = rank``, scored by
    :func:`competition_bumps`.

    Parameters
    ----------
    ranks, seeds : sequence of int
        The ranks r and the seeds.
    d, init_scale, t_max, dt, method, save_every
        As in :func:`competition_flow`.
    min_relative, noise_factor : float
        The bump rule (:func:`mechgrok.analyses.bumps.find_bumps`).

    Returns
    -------
    xarray.Dataset
        Over (``rank``, ``seed``): ``n_bumps`` (bumping (j, k) pairs), ``has_bump``, ``max_relative_height``
        (fraction), ``bump_peak_alignment`` (mean normalised alignment at the bumps' peaks, cosine; NaN without
        bumps), ``bumps_after_norm_decay`` (fraction of bumps peaking after the norm-decay phase), ``final_loss``;
        over ``rank``: ``fraction_with_bump``. Attrs: the set-up and the bump rule.

    Raises
    ------
    AnalysisError
        For an invalid set-up (:func:`competition_flow`).

    Examples
    --------
    >>> sw = rank_sweep(ranks=(1, 3), seeds=(0, 1), d=6, t_max=30.0, dt=0.02)
    >>> sw["fraction_with_bump"].values.tolist()
    [0.0, 1.0]
    """
    rows = []
    for r in ranks:
        flow = competition_flow(rank=int(r), d=d, seed=list(seeds), init_scale=init_scale, t_max=t_max, dt=dt,
                                method=method, save_every=save_every)
        b = competition_bumps(flow, min_relative=min_relative, noise_factor=noise_factor)
        flag = b["is_bump"]
        nb = flag.sum(("learned", "target"))
        with np.errstate(invalid="ignore"):
            peak_al = b["peak_alignment_normalised"].where(flag).mean(("learned", "target"))
            after = b["after_norm_decay"].where(flag).mean(("learned", "target"))
        rows.append(xr.Dataset({
            "n_bumps": nb,
            "has_bump": nb > 0,
            "max_relative_height": b["relative_height"].max(("learned", "target")),
            "bump_peak_alignment": peak_al,
            "bumps_after_norm_decay": after,
            "final_loss": flow["loss"].isel(time=-1, drop=True),
        }))
    out = xr.concat(rows, dim=xr.DataArray(list(ranks), dims="rank", name="rank"), coords="minimal")
    out["fraction_with_bump"] = out["has_bump"].mean("seed")
    attrs = {
        "n_bumps": ("", "number of (learned j, target k) pairs whose |c_jk| has a bump"),
        "has_bump": ("", "n_bumps > 0"),
        "max_relative_height": ("fraction", "largest h / |c_jk|(t*) over (j, k)"),
        "bump_peak_alignment": ("cosine", "mean normalised alignment at the peaks of the bumps"),
        "bumps_after_norm_decay": ("fraction", "share of bumps peaking after the norm-decay phase"),
        "final_loss": ("", "1/2 ||A - Ã||_F^2 at t_max"),
        "fraction_with_bump": ("fraction", "share of seeds with at least one bump"),
    }
    for k, (u, desc) in attrs.items():
        out[k].attrs = {"units": u, "description": desc}
    out.attrs = {"title": "mechgrok vector-competition rank sweep", "d": int(d), "init_scale": float(init_scale),
                 "t_max": float(t_max), "dt": float(dt), "method": method, "min_relative": float(min_relative),
                 "noise_factor": float(noise_factor), "rule": b.attrs["rule"],
                 "source": "beyond.md 3.1-3.5 (bumps only for rank > 1)"}
    return out
