"""Which process makes the bumps of modular addition: vector competition, within-neuron frequency competition or
weight-decay cleanup (beyond.md 3.4, 4.2-4.3; docs/competition.md).

In the rank-r toy (:mod:`mechgrok.toys.vector_competition`) a bump is *competition among vectors*: a learned
vector's alignment with a target rises, peaks and falls as it realigns to another target. In modular addition
the per-frequency aggregates N_k(t) of the vector families (:mod:`~.frequency_alignment`) show bumps on every
key frequency, and the comment thread asks whether that is the same competition. For every family and key
frequency k this module finds the bump of N_k (:func:`mechgrok.analyses.bumps.find_bumps`) and decomposes its
decline from the peak t* to the last checkpoint t_e into the per-vector powers P_jk = ||P_{F_k} w_j||^2:

* loss_j = max(0, P_jk(t*) - P_jk(t_e)), L = sum_j loss_j; gain_j = max(0, -(P_jk(t*) - P_jk(t_e)));
* **realign share**: the share of L carried by vectors whose power at another frequency rose over
  [t*, t_e] by at least ``realign_fraction`` (0.5) of what they lost at k (A_jk falls **while** A_jk' rises);
* **gainer share**: sum_j gain_j / L, the k-power that other vectors took over ("the other catches up");
* **retained spread**: the P_jk(t*)-weighted standard deviation of the retained fractions
  clip(P_jk(t_e) / P_jk(t*), 0, 2): 0 when every vector shrinks by the same factor (uniform decay), about 0.5
  when half the vectors lose everything and half keep it;
* **within share**: the share of L carried by non-realigning vectors whose spectral entropy fell by at least
  ``entropy_drop`` (0.1 nats) and whose dominant frequency at t_e is not k (inside the vector, k lost to
  another frequency it already carried; He et al. 2026);
* **norm change**: the relative change of the family's total sum_j ||w_j||^2 over [t*, t_e];
* **other rise**: sum_{k' != k} max(0, N_k'(t_e) - N_k'(t*)) / L;
* **flux** Phi_{k->k'} = sum_j max(0, -dA_jk) max(0, dA_jk') per checkpoint interval (finite differences of the
  normalised alignments between consecutive checkpoints), summed over (t*, t_e]: ``flux_out`` over k' and the
  k' receiving most, ``flux_to``.

**Verdicts** (thresholds are parameters, recorded in the attrs):

* ``competition`` (across vectors, the Jermyn analogue): (realign share >= 0.5 or gainer share >= 0.5) and
  retained spread >= 0.25;
* ``within-neuron``: within share >= 0.5;
* ``cleanup`` (weight decay): realign share < 0.5, within share < 0.5 (each vector's spectrum keeps its shape),
  retained spread < 0.25, norm change < 0 and other rise < 0.5.

A row may support several (joined by "+"), none ("undetermined"), or have no bump ("no bump"). The LLC part of
the cleanup signature (beyond.md 3.4) is not used: the LLC is optional and sparse over checkpoints.

**Dominant-frequency switches** (beyond.md 4.3): per vector, k*_j(t) = argmax_k P_jk(t) changes between
consecutive checkpoints, with the old and the new frequency each holding at least ``switch_floor`` (0.2) of the
vector's Fourier power at their checkpoint, and the new one persisting ``hysteresis`` (2) checkpoints.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import xarray as xr

from mechgrok.analyses.bumps import find_bumps
from mechgrok.analyses.modular.frequency_alignment import FAMILY_DIMS, alignment_from_power
from mechgrok.errors import AnalysisError

__all__ = ["vector_competition", "competition_dataset", "competition_summary", "frequency_switches", "VERDICT_RULES"]

#: The verdict rules, as recorded in the result's attrs.
VERDICT_RULES = {
    "competition": "(realign_share >= share or gainer_share >= share) and retained_spread >= spread",
    "within-neuron": "within_share >= share",
    "cleanup": "realign_share < share and within_share < share and retained_spread < spread and norm_change < 0 "
               "and other_rise < share",
}


def _families(fa: xr.Dataset) -> list[str]:
    fams = [f for f in FAMILY_DIMS if f"{f}_power" in fa]
    if not fams:
        raise AnalysisError("not a frequency_alignment result: no '<family>_power' variables")
    return fams


def frequency_switches(
    power: xr.DataArray, *, switch_floor: float = 0.2, hysteresis: int = 2
) -> xr.Dataset:
    """Switches of each vector's dominant frequency over checkpoints (beyond.md 4.3).

    Parameters
    ----------
    power : xarray.DataArray
        Fourier powers over (``checkpoint``, vector dims..., ``freq``), e.g. ``neuron_in_power`` of
        :func:`~mechgrok.analyses.modular.frequency_alignment.frequency_alignment`.
    switch_floor : float
        Share of the vector's Fourier power the old and the new dominant frequency must each hold.
    hysteresis : int
        Checkpoints the new dominant frequency must persist (including the switch).

    Returns
    -------
    xarray.Dataset
        ``n_switches`` (vector dims), ``last_switch_epoch`` (vector dims; -1 for none) and ``switch_matrix``
        (``freq``, ``freq_to``): how many switches went from each frequency to each other.

    Raises
    ------
    AnalysisError
        If ``power`` lacks ``checkpoint`` or ``freq``.

    Examples
    --------
    One vector whose power moves from frequency 1 to 2 at epoch 20:

    >>> import numpy as np, xarray as xr
    >>> P = xr.DataArray([[[1.0, 0.1]], [[1.0, 0.2]], [[0.2, 1.0]], [[0.1, 1.0]]], dims=("checkpoint", "neuron", "freq"),
    ...                  coords={"checkpoint": [0, 10, 20, 30], "freq": [1, 2]})
    >>> s = frequency_switches(P)
    >>> int(s["n_switches"][0]), int(s["last_switch_epoch"][0]), s["switch_matrix"].values.tolist()
    (1, 20, [[0, 1], [0, 0]])
    """
    if "checkpoint" not in power.dims or "freq" not in power.dims:
        raise AnalysisError(f"power needs dims 'checkpoint' and 'freq', has {power.dims}")
    vd = [d for d in power.dims if d not in ("checkpoint", "freq")]
    P = np.asarray(power.transpose("checkpoint", *vd, "freq").values)
    T, K = P.shape[0], P.shape[-1]
    P = P.reshape(T, -1, K)
    tot = P.sum(-1, dtype=np.float64).astype(P.dtype)  # (T, J)
    safe = np.where(tot > 0, tot, 1)
    dom = P.argmax(-1)  # (T, J)
    top = np.where(tot > 0, np.take_along_axis(P, dom[..., None], -1)[..., 0] / safe, 0)  # share of the dominant one
    J = P.shape[1]
    n_sw = np.zeros(J, dtype=np.int64)
    last = np.full(J, -1, dtype=np.int64)
    mat = np.zeros((K, K), dtype=np.int64)
    epochs = np.asarray(power["checkpoint"].values)
    m = max(1, int(hysteresis))
    cur = dom[0].copy()
    for t in range(1, T):
        new = dom[t]
        persists = np.ones(J, dtype=bool)
        for s in range(t, min(T, t + m)):
            persists &= dom[s] == new
        if t + m > T:  # not enough checkpoints left to confirm
            persists &= False
        old_share = np.where(tot[t - 1] > 0, P[t - 1, np.arange(J), cur] / safe[t - 1], 0)
        ok = (new != cur) & persists & (top[t] >= switch_floor) & (old_share >= switch_floor)
        idx = np.flatnonzero(ok)
        np.add.at(mat, (cur[idx], new[idx]), 1)
        n_sw[idx] += 1
        last[idx] = epochs[t]
        cur[idx] = new[idx]
    shape = power.transpose("checkpoint", *vd, "freq").shape[1:-1]
    coords = {d: power[d] for d in vd if d in power.coords}
    freq = power["freq"].values
    return xr.Dataset(
        {
            "n_switches": (vd, n_sw.reshape(shape), {"units": "", "description": "dominant-frequency switches"}),
            "last_switch_epoch": (vd, last.reshape(shape), {"units": "epochs", "description": "epoch of the last switch (-1: none)"}),
            "switch_matrix": (("freq", "freq_to"), mat, {"units": "", "description": "switches from freq to freq_to"}),
        },
        coords={**coords, "freq": freq, "freq_to": freq},
        attrs={"switch_floor": float(switch_floor), "hysteresis": int(m),
               "rule": "k*_j = argmax_k P_jk changes, old and new share >= switch_floor, new persists hysteresis checkpoints"},
    )


#: Vectors per call of :func:`find_bumps` in :func:`vector_competition`: the detector works in float64 on whole
#: series, so the 2,048 OV-path vectors (x 56 frequencies x 401 checkpoints) at once took several GB.
_VECTOR_BLOCK = 128


def _vector_bumps(A: Callable[[int, int], np.ndarray], J: int, epochs: np.ndarray, freqs: np.ndarray,
                  **options) -> tuple[np.ndarray, np.ndarray]:
    """``is_bump`` and ``realigns_to`` (vector, freq) of every alignment series, by :func:`find_bumps` on blocks
    of vectors: ``A(lo, hi)`` gives the alignments (checkpoint, vector lo..hi-1, freq) of a block (each series is
    judged alone, so blocks change nothing)."""
    is_bump = np.zeros((J, len(freqs)), dtype=bool)
    realigns_to = np.zeros((J, len(freqs)), dtype=np.asarray(freqs).dtype)
    for lo in range(0, J, _VECTOR_BLOCK):
        block = xr.DataArray(A(lo, lo + _VECTOR_BLOCK), dims=("checkpoint", "vector", "freq"),
                             coords={"checkpoint": epochs, "freq": freqs})
        ab = find_bumps(block, dim="checkpoint", target_dim="freq", **options)
        is_bump[lo : lo + _VECTOR_BLOCK] = ab["is_bump"].transpose("vector", "freq").values
        realigns_to[lo : lo + _VECTOR_BLOCK] = ab["realigns_to"].transpose("vector", "freq").values
    return is_bump, realigns_to


def _alignments(fa: xr.Dataset, fam: str, P: np.ndarray) -> Callable[..., np.ndarray]:
    """``A(lo, hi, cols=slice(None))``: the alignments (checkpoint, vector lo..hi-1, freq[cols]) of a family, as
    stored or, where the result holds ``f_vector_norm_sq`` instead (``mechgrok analyze``), derived from the powers
    ``P`` for just those vectors and frequencies."""
    vd = FAMILY_DIMS[fam]
    T, K = P.shape[0], P.shape[-1]
    if f"{fam}_alignment" in fa:
        stored = np.asarray(fa[f"{fam}_alignment"].transpose("checkpoint", *vd, "freq").values).reshape(T, -1, K)
        return lambda lo, hi, cols=slice(None): stored[:, lo:hi][:, :, cols]
    if f"{fam}_vector_norm_sq" not in fa:
        raise AnalysisError(f"not a frequency_alignment result: {fam} has neither '{fam}_alignment' nor "
                            f"'{fam}_vector_norm_sq'")
    nsq = np.asarray(fa[f"{fam}_vector_norm_sq"].transpose("checkpoint", *vd).values).reshape(T, -1)
    return lambda lo, hi, cols=slice(None): alignment_from_power(P[:, lo:hi][:, :, cols], nsq[:, lo:hi])


def _flux(align: np.ndarray) -> np.ndarray:
    """Phi[t, k, k'] = sum_j max(0, -dA_jk) max(0, dA_jk') over interval t-1 -> t (0 at t = 0); A (T, J, key freq)."""
    n = align.shape[-1]
    dA = np.diff(align.astype(np.float64), axis=0)
    down, up = np.maximum(-dA, 0.0), np.maximum(dA, 0.0)
    phi = np.einsum("tjk,tjl->tkl", down, up)
    for i in range(n):
        phi[:, i, i] = 0.0
    return np.concatenate([np.zeros((1, n, n)), phi], 0)


def vector_competition(
    fa: xr.Dataset,
    *,
    key_freqs: Sequence[int] | None = None,
    min_relative: float = 0.05,
    noise_factor: float = 3.0,
    realign_fraction: float = 0.5,
    entropy_drop: float = 0.1,
    share: float = 0.5,
    spread: float = 0.25,
    switch_floor: float = 0.2,
    hysteresis: int = 2,
) -> xr.Dataset:
    """Bumps of N_k and A_jk in every vector family, the evidence, and a verdict per (family, key frequency).

    Parameters
    ----------
    fa : xarray.Dataset
        :func:`~mechgrok.analyses.modular.frequency_alignment.frequency_alignment` over at least 3 checkpoints.
    key_freqs : sequence of int, optional
        The frequencies of the table and of the flux (default: every frequency).
    min_relative, noise_factor : float
        The bump rule (:func:`mechgrok.analyses.bumps.find_bumps`).
    realign_fraction, entropy_drop, share, spread : float
        The evidence and verdict thresholds (module docstring).
    switch_floor : float
        Share of power for a dominant-frequency switch (:func:`frequency_switches`).
    hysteresis : int
        Checkpoints a new dominant frequency must persist.

    Returns
    -------
    xarray.Dataset
        The verdict table over (``family``, ``key_freq``): ``is_bump``, ``peak_epoch`` (epochs),
        ``relative_height``, ``prominence`` (weight^2), ``realign_share``, ``gainer_share``, ``retained_spread``,
        ``within_share``, ``norm_change``, ``other_rise`` (fractions), ``flux_out`` (fraction^2), ``flux_to``,
        ``n_vector_bumps`` (vectors whose A_jk has a bump), ``supports_competition``, ``supports_within``,
        ``supports_cleanup`` (bool) and ``verdict`` (str). Per family f: ``f_N_bump``, ``f_N_peak_epoch``
        (``freq``: every frequency), ``f_flux`` (checkpoint, key_freq, key_freq_to; fraction^2 per checkpoint
        interval), ``f_realign_matrix`` (``freq``, ``freq_to``: bumping vectors of A_jk by the frequency they
        realign to), ``f_mean_entropy`` (checkpoint; power-weighted mean spectral entropy, nats),
        ``f_n_switches`` (the family's vector dims), ``f_switch_matrix`` (freq, freq_to). Attrs: every
        threshold and rule.

    Raises
    ------
    AnalysisError
        If ``fa`` has no family, fewer than 3 checkpoints, or a key frequency it lacks.

    Examples
    --------
    A planted neuron family over 5 checkpoints: neuron 0 carries frequency 1, grows, then moves to frequency 2
    (competition); neuron 1 holds frequency 1 throughout:

    >>> import numpy as np, xarray as xr
    >>> P = np.zeros((5, 2, 2))
    >>> P[:, 0, 0] = [0.1, 1.0, 2.0, 0.5, 0.0]; P[:, 0, 1] = [0.0, 0.0, 0.0, 1.5, 2.0]; P[:, 1, 0] = 1.0
    >>> fa = xr.Dataset({"neuron_in_power": (("checkpoint", "neuron", "freq"), P),
    ...                  "neuron_in_alignment": (("checkpoint", "neuron", "freq"), np.sqrt(P / P.sum(-1, keepdims=True))),
    ...                  "neuron_in_norm_sq": ("checkpoint", P.sum((1, 2))),
    ...                  "neuron_in_entropy": (("checkpoint", "neuron"), np.zeros((5, 2)))},
    ...                 coords={"checkpoint": [0, 10, 20, 30, 40], "freq": [1, 2]})
    >>> vc = vector_competition(fa, key_freqs=[1])
    >>> str(vc["verdict"].sel(family="neuron_in", key_freq=1).values), int(vc["peak_epoch"].sel(family="neuron_in", key_freq=1))
    ('competition', 20)
    """
    fams = _families(fa)
    T = fa.sizes.get("checkpoint", 0)
    if T < 3:
        raise AnalysisError(f"vector competition needs at least 3 checkpoints, got {T}")
    freqs = np.asarray(fa["freq"].values)
    keys = freqs if key_freqs is None else np.asarray([int(k) for k in key_freqs], dtype=np.int64)
    missing = sorted(set(keys.tolist()) - set(freqs.tolist()))
    if missing:
        raise AnalysisError(f"key frequencies {missing} are not among the trajectory's frequencies 1..{freqs[-1]}")
    kidx = np.searchsorted(freqs, keys)
    epochs = np.asarray(fa["checkpoint"].values)
    table_vars = ("is_bump", "peak_epoch", "relative_height", "prominence", "realign_share", "gainer_share",
                  "retained_spread", "within_share", "norm_change", "other_rise", "flux_out", "flux_to",
                  "n_vector_bumps", "supports_competition", "supports_within", "supports_cleanup", "verdict")
    rows: dict[str, list] = {v: [] for v in table_vars}
    extra: dict[str, tuple] = {}
    for fam in fams:
        vd = FAMILY_DIMS[fam]
        power_da = fa[f"{fam}_power"].transpose("checkpoint", *vd, "freq")
        P = np.asarray(power_da.values).reshape(T, -1, len(freqs))  # float32 as stored (large for neuron_ov)
        A = _alignments(fa, fam, P)
        H = np.asarray(fa[f"{fam}_entropy"].transpose("checkpoint", *vd).values, dtype=np.float64).reshape(T, -1)
        nsq = np.asarray(fa[f"{fam}_norm_sq"].values, dtype=np.float64)
        N_vals = fa[f"{fam}_N"].transpose("checkpoint", "freq").values if f"{fam}_N" in fa else P.sum(1, dtype=np.float64)
        N = xr.DataArray(N_vals, dims=("checkpoint", "freq"), coords={"checkpoint": epochs, "freq": freqs},
                         attrs={"units": "weight^2"})
        nb = find_bumps(N, dim="checkpoint", min_relative=min_relative, noise_factor=noise_factor)
        a_bump, a_to = _vector_bumps(A, P.shape[1], epochs, freqs, min_relative=min_relative, noise_factor=noise_factor)
        realign_mat = np.zeros((len(freqs), len(freqs)), dtype=np.int64)
        vi, ki = np.nonzero(a_bump)
        np.add.at(realign_mat, (ki, np.searchsorted(freqs, a_to[vi, ki])), 1)
        flux = _flux(A(0, P.shape[1], kidx))  # the key frequencies' columns only
        te = T - 1
        for i, k in zip(kidx, keys):
            bump = bool(nb["is_bump"].values[i])
            ts = int(nb["peak_index"].values[i])
            ev = _evidence(P, H, nsq, ts, te, i, realign_fraction, entropy_drop)
            fl = flux[ts + 1 :, list(kidx).index(i), :].sum(0)
            comp = (ev["realign_share"] >= share or ev["gainer_share"] >= share) and ev["retained_spread"] >= spread
            within = ev["within_share"] >= share
            clean = (ev["realign_share"] < share and ev["within_share"] < share and ev["retained_spread"] < spread
                     and ev["norm_change"] < 0 and ev["other_rise"] < share)
            supported = [n for n, ok in (("competition", comp), ("within-neuron", within), ("cleanup", clean)) if ok]
            row = {
                "is_bump": bump, "peak_epoch": int(epochs[ts]), "relative_height": float(nb["relative_height"].values[i]),
                "prominence": float(nb["prominence"].values[i]), **ev,
                "flux_out": float(fl.sum()), "flux_to": int(keys[int(fl.argmax())]) if fl.sum() > 0 else -1,
                "n_vector_bumps": int(a_bump[:, i].sum()),
                "supports_competition": bump and comp, "supports_within": bump and within,
                "supports_cleanup": bump and clean,
                "verdict": ("+".join(supported) or "undetermined") if bump else "no bump",
            }
            for v in table_vars:
                rows[v].append(row[v])
        sw = frequency_switches(power_da, switch_floor=switch_floor, hysteresis=hysteresis)
        tot = P.sum(-1, dtype=np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean_h = (H * tot).sum(-1) / tot.sum(-1)
        extra[f"{fam}_N_bump"] = (("freq",), nb["is_bump"].values, {"units": "", "description": f"N_k of {fam} has a bump ({nb.attrs['rule']})"})
        extra[f"{fam}_N_peak_epoch"] = (("freq",), nb["peak_time"].values, {"units": "epochs", "description": f"peak epoch of N_k of {fam}"})
        extra[f"{fam}_flux"] = (("checkpoint", "key_freq", "key_freq_to"), flux, {
            "units": "fraction^2 per checkpoint interval",
            "description": "Phi_{k->k'} = sum_j max(0, -dA_jk) max(0, dA_jk') over the interval ending at the checkpoint"})
        extra[f"{fam}_realign_matrix"] = (("freq", "freq_to"), realign_mat, {
            "units": "", "description": "vectors whose A_jk has a bump, by k and the k' they realign to"})
        extra[f"{fam}_mean_entropy"] = (("checkpoint",), mean_h, {"units": "nats", "description": "power-weighted mean spectral entropy of the vectors"})
        extra[f"{fam}_n_switches"] = (vd, sw["n_switches"].values, {
            "units": "", "description": f"dominant-frequency switches per vector ({sw.attrs['rule']})"})
        extra[f"{fam}_switch_matrix"] = (("freq", "freq_to"), sw["switch_matrix"].values, {
            "units": "", "description": "dominant-frequency switches from freq_all to freq_all_to"})
    nf, nk = len(fams), len(keys)
    units = {"peak_epoch": "epochs", "prominence": "weight^2", "flux_out": "fraction^2", "verdict": ""}
    desc = {
        "is_bump": "N_k has a bump", "peak_epoch": "t*, the peak of N_k", "relative_height": "h / N_k(t*)",
        "prominence": "h = N_k(t*) - max(N_k(t_0), N_k(t_end))",
        "realign_share": "share of the decline carried by vectors realigning to another frequency",
        "gainer_share": "k-power gained by other vectors / the decline", "retained_spread": "weighted std of P_jk(t_e)/P_jk(t*)",
        "within_share": "share of the decline carried by vectors whose spectrum narrowed onto another frequency",
        "norm_change": "relative change of the family's total squared norm over [t*, t_e]",
        "other_rise": "rise of the other frequencies' N / the decline", "flux_out": "sum of Phi_{k->k'} over (t*, t_e] and k'",
        "flux_to": "the key frequency receiving most flux (-1: none)", "n_vector_bumps": "vectors whose A_jk has a bump",
        "supports_competition": VERDICT_RULES["competition"], "supports_within": VERDICT_RULES["within-neuron"],
        "supports_cleanup": VERDICT_RULES["cleanup"], "verdict": "the hypotheses supported, or 'undetermined' / 'no bump'",
    }
    data = {}
    for v in table_vars:
        arr = np.asarray(rows[v], dtype=object if v == "verdict" else None).reshape(nf, nk)
        data[v] = (("family", "key_freq"), arr.astype(str) if v == "verdict" else arr,
                   {"units": units.get(v, "" if v.startswith(("is_", "supports", "n_", "flux_to")) else "fraction"),
                    "description": desc[v]})
    out = xr.Dataset({**data, **extra}, coords={
        "family": fams, "key_freq": keys, "key_freq_to": keys, "freq": freqs, "freq_to": freqs,
        "checkpoint": ("checkpoint", epochs, dict(fa["checkpoint"].attrs))})
    out.attrs = {
        "title": "mechgrok vector competition in modular addition",
        "key_freqs": [int(k) for k in keys],
        "bump_rule": nb.attrs["rule"], "min_relative": float(min_relative), "noise_factor": float(noise_factor),
        "realign_fraction": float(realign_fraction), "entropy_drop": float(entropy_drop), "share": float(share),
        "spread": float(spread), "switch_floor": float(switch_floor), "hysteresis": int(hysteresis),
        "verdict_rules": "; ".join(f"{k}: {v}" for k, v in VERDICT_RULES.items()),
        "decline_window": "from the peak t* of N_k to the last checkpoint t_e",
        "source": "Jermyn & Shlegeris 2022, Multi-Component Learning and S-Curves (AI Alignment Forum) and its comment thread; the discriminating tests are mechgrok's",
    }
    return out


def _evidence(P: np.ndarray, H: np.ndarray, nsq: np.ndarray, ts: int, te: int, i: int,
              realign_fraction: float, entropy_drop: float) -> dict[str, float]:
    """The decline of N_k (k at index i) over [ts, te] decomposed over vectors; P (T, J, K), H (T, J)."""
    P0, P1 = P[ts].astype(np.float64), P[te].astype(np.float64)  # (J, K)
    Pk0, Pk1 = P0[:, i], P1[:, i]
    delta = Pk0 - Pk1
    loss, gain = np.maximum(delta, 0.0), np.maximum(-delta, 0.0)
    L = loss.sum()
    nan = float("nan")
    if not L > 0:
        return {"realign_share": nan, "gainer_share": nan, "retained_spread": nan, "within_share": nan,
                "norm_change": nan, "other_rise": nan}
    rise = P1 - P0  # (J, K)
    rise[:, i] = -np.inf
    realign = (loss > 0) & (rise.max(-1) >= realign_fraction * loss)
    dominant_end = P1.argmax(-1)
    within = (loss > 0) & ~realign & (H[te] <= H[ts] - entropy_drop) & (dominant_end != i)
    w = Pk0 / Pk0.sum() if Pk0.sum() > 0 else np.zeros_like(Pk0)
    r = np.clip(np.divide(Pk1, Pk0, out=np.ones_like(Pk0), where=Pk0 > 0), 0.0, 2.0)
    mean_r = (w * r).sum()
    N0, N1 = P0.sum(0), P1.sum(0)
    other = np.delete(np.maximum(N1 - N0, 0.0), i).sum()
    return {
        "realign_share": float(loss[realign].sum() / L),
        "gainer_share": float(gain.sum() / L),
        "retained_spread": float(np.sqrt((w * (r - mean_r) ** 2).sum())),
        "within_share": float(loss[within].sum() / L),
        "norm_change": float((nsq[te] - nsq[ts]) / nsq[ts]) if nsq[ts] > 0 else nan,
        "other_rise": float(other / L),
    }


def competition_dataset(fa: xr.Dataset, *, key_freqs: Sequence[int] | None = None, **options) -> xr.Dataset:
    """What ``mechgrok analyze`` stores as its ``competition`` group: :func:`vector_competition` with the
    aggregates N_k(t) and squared norms of every family and the per-neuron alignments A_jk(t) of ``neuron_in``
    (for the figures). The other per-vector arrays (``neuron_ov`` is (head, d_mlp, freq) per checkpoint) are
    left out; :func:`~mechgrok.analyses.modular.frequency_alignment.frequency_alignment` gives them all.

    Parameters
    ----------
    fa : xarray.Dataset
        :func:`~mechgrok.analyses.modular.frequency_alignment.frequency_alignment` over at least 3 checkpoints.
    key_freqs : sequence of int, optional
        As in :func:`vector_competition`.
    **options
        Thresholds of :func:`vector_competition`.

    Returns
    -------
    xarray.Dataset
        The variables of :func:`vector_competition` plus ``f_N``, ``f_norm_sq`` for every family f and
        ``neuron_in_alignment`` (checkpoint, neuron, freq) where computed.

    Raises
    ------
    AnalysisError
        As :func:`vector_competition`.
    """
    vc = vector_competition(fa, key_freqs=key_freqs, **options)
    keep = [v for f in _families(fa) for v in (f"{f}_N", f"{f}_norm_sq")]
    keep += [v for v in ("neuron_in_alignment",) if v in fa]
    out = xr.merge([vc, fa[keep]], combine_attrs="override")
    if "neuron_in_alignment" not in out and "neuron_in_vector_norm_sq" in fa:
        P = fa["neuron_in_power"].transpose("checkpoint", "neuron", "freq")
        out["neuron_in_alignment"] = P.copy(data=alignment_from_power(P.values, fa["neuron_in_vector_norm_sq"]
                                                                      .transpose("checkpoint", "neuron").values))
        out["neuron_in_alignment"].attrs = {"units": "fraction", "description": "A_jk = ||P_F_k w_j|| / ||w_j||, "
                                            "w_j = neuron j's direct input map (W_E[:p] W_in)[:, j]"}
    out.attrs = {**vc.attrs, "families": _families(fa)}
    return out


def competition_summary(ds: xr.Dataset) -> dict:
    """The ``competition`` entry of ``report.json`` from a :func:`competition_dataset` (or
    :func:`vector_competition`) result: the verdict table (one row per family and key frequency), how many
    frequencies' N_k bump per family, and the dominant-frequency switches per family.

    Raises
    ------
    AnalysisError
        If ``ds`` has no verdict table.
    """
    if "verdict" not in ds:
        raise AnalysisError("not a vector_competition result: no 'verdict' table")
    cols = ("is_bump", "peak_epoch", "relative_height", "realign_share", "gainer_share", "retained_spread",
            "within_share", "norm_change", "other_rise", "flux_out", "flux_to", "n_vector_bumps", "verdict")
    table = []
    for fam in ds["family"].values:
        for k in ds["key_freq"].values:
            row = ds.sel(family=fam, key_freq=k)
            entry = {"family": str(fam), "freq": int(k)}
            for c in cols:
                v = row[c].values.item()
                entry[c] = v if isinstance(v, (bool, str)) else (int(v) if np.issubdtype(row[c].dtype, np.integer) else float(v))
            table.append(entry)
    fams = [str(f) for f in ds["family"].values]
    return {
        "key_freqs": [int(k) for k in ds["key_freq"].values],
        "rules": {"bump": ds.attrs.get("bump_rule"), "verdicts": ds.attrs.get("verdict_rules"),
                  "decline_window": ds.attrs.get("decline_window")},
        "table": table,
        "freqs_with_N_bump": {f: int(ds[f"{f}_N_bump"].sum()) for f in fams if f"{f}_N_bump" in ds},
        "n_freqs": int(ds.sizes.get("freq", 0)),
        "dominant_freq_switches": {f: int(ds[f"{f}_switch_matrix"].sum()) for f in fams if f"{f}_switch_matrix" in ds},
    }
