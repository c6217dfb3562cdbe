"""The three phases of grokking, found from the progress measures (Nanda et al. 2023, section 5.2; paper.md 3.12).

The paper splits training into **memorisation** (train loss and excluded loss fall; test and restricted loss
stay high), **circuit formation** (the excluded loss rises, the restricted loss falls, the weights shrink, test
loss stays high) and **cleanup** (the test loss drops suddenly, the Gini coefficient of the Fourier norms rises
sharply, the sum of squared weights drops sharply), followed by a stable model. For the mainline run the
boundaries are 1.4k / 9.4k / 14k epochs, read off the plots. The paper gives no rule; mechgrok uses this one.

Algorithm (:func:`find_phases`), over the checkpoints t_0 < t_1 < ... < t_n (epochs):

1. **Memorisation ends** at t_mem = max(t_acc, t_exmin), where t_acc is the first checkpoint with training
   accuracy >= ``train_acc_threshold`` (0.99) and t_exmin the checkpoint of the minimum of the full excluded
   loss on [t_acc, t_peak], t_peak being the checkpoint of its maximum after t_acc: the model fits the
   training set, and the excluded loss has stopped falling and starts its rise.
2. **Cleanup** is the window where the Gini coefficient rises fast. With G the mean of the ``gini_vars``
   (default the per-component Gini of ``W_E`` and of ``W_logit``) and its rate r_i = (G(t_i) - G(t_{i-1})) /
   (t_i - t_{i-1}) (per epoch) on each interval after t_mem, take the interval of maximal rate and extend it both
   ways while r_i >= ``rate_fraction`` (0.5) x max rate (the full width at half maximum of dG/dt). **Circuit
   formation ends** at the window's first epoch and **cleanup ends** at its last.
3. Validation, not detection: cleanup counts as found only if the test loss fell at least ``min_test_drop``
   (10) fold from t_mem to the cleanup end (the model did generalise) and the window ends before the last
   checkpoint (the run did not stop mid-cleanup). Otherwise those boundaries are reported as not found.

The Dataset returned records each boundary, the criterion that placed it, the value of every measure at each
point (start, the three boundaries, final) and a set of checks of the paper's phase signatures. A boundary
whose neighbouring phases fail any of those checks is reported as found but not ``certain``, with the failed
checks named (``failed_checks``).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import xarray as xr

from mechgrok.errors import AnalysisError

__all__ = ["POINTS", "find_phases", "phase_labels"]

#: The points the phases Dataset reports on, in order.
POINTS = ("start", "memorisation_end", "circuit_formation_end", "cleanup_end", "final")
#: Phase names, in order (``phase_labels``).
PHASES = ("memorisation", "circuit_formation", "cleanup", "stable")

_EVIDENCE = (
    "loss_train",
    "loss_test",
    "acc_train",
    "acc_test",
    "restricted_loss",
    "excluded_loss_full",
    "gini",
    "gini_rate",
    "gini_rate_after",
    "sum_sq_weights_total",
)

#: The phase each signature check tests (``check_phase``); the checks bearing on a point are those of the
#: phases it bounds.
_CHECK_PHASE = {
    "memorisation: train accuracy reaches the threshold": "memorisation",
    "memorisation: train loss falls": "memorisation",
    "circuit formation: excluded loss rises": "circuit_formation",
    "circuit formation: restricted loss falls": "circuit_formation",
    "cleanup: test loss falls": "cleanup",
    "cleanup: Gini rises": "cleanup",
    "cleanup: sum of squared weights falls": "cleanup",
    "restricted loss falls ten-fold before the test loss": "circuit_formation",
}
#: The points bounding each phase whose signatures are checked (start, end).
_PHASE_BOUNDS = {
    "memorisation": ("start", "memorisation_end"),
    "circuit_formation": ("memorisation_end", "circuit_formation_end"),
    "cleanup": ("circuit_formation_end", "cleanup_end"),
}


def _need(measures: xr.Dataset, names: Sequence[str]) -> None:
    missing = [n for n in names if n not in measures]
    if missing:
        raise AnalysisError(
            f"the phases need the progress measures {missing} (from mechgrok.analyses.modular.ablation.ablation_losses and "
            "mechgrok.analyses.modular.fourier_gini.weight_measures, merged over checkpoint)"
        )


def _first_drop(values: np.ndarray, epochs: np.ndarray, start: int, factor: float) -> int | None:
    """Epoch at which ``values`` first falls below max(values[start:]) / factor after its maximum, or None."""
    seg = values[start:]
    if seg.size == 0 or not np.all(np.isfinite(seg)):
        return None
    peak = int(np.argmax(seg))
    below = np.nonzero(seg[peak:] <= seg[peak] / factor)[0]
    return int(epochs[start + peak + below[0]]) if below.size else None


def find_phases(
    measures: xr.Dataset,
    *,
    train_acc_threshold: float = 0.99,
    gini_vars: Sequence[str] = ("gini_W_E_component", "gini_W_logit_component"),
    restricted: str = "restricted_loss_all",
    rate_fraction: float = 0.5,
    min_test_drop: float = 10.0,
) -> xr.Dataset:
    """Epochs where memorisation, circuit formation and cleanup end, with the evidence (paper 5.2).

    Parameters
    ----------
    measures : xarray.Dataset
        Progress measures over ``checkpoint`` (epochs, strictly increasing, at least 3): ``acc_train``,
        ``loss_train``, ``loss_test``, ``acc_test``, ``excluded_loss_full``, the ``restricted`` loss
        (:func:`mechgrok.analyses.modular.ablation.ablation_losses`), the ``gini_vars`` and optionally ``sum_sq_weights_total``
        (:func:`mechgrok.analyses.modular.fourier_gini.weight_measures`), e.g. ``xr.merge([losses, weights])``.
    train_acc_threshold : float
        Training accuracy that counts as memorised (fraction).
    gini_vars : sequence of str
        Gini variables averaged into G, whose rate places the cleanup window.
    restricted : str
        Which restricted loss to report (``restricted_loss_all``, ``_train`` or ``_test``).
    rate_fraction : float
        In (0, 1): the cleanup window is where dG/dt >= rate_fraction x its maximum after memorisation.
    min_test_drop : float
        Factor by which the test loss must fall from the end of memorisation to the end of cleanup for the
        cleanup to count as found.

    Returns
    -------
    xarray.Dataset
        Dim ``point`` = ("start", "memorisation_end", "circuit_formation_end", "cleanup_end", "final"):

        ``epoch_at`` (point) int64
            Epoch of each point; -1 where not found.
        ``found`` (point) bool
        ``criterion`` (point) str
            What placed the point (or why it was not found).
        ``measure_at`` (point, measure) float64
            ``loss_train``, ``loss_test``, ``restricted_loss`` and ``excluded_loss_full`` (nats), ``acc_train``,
            ``acc_test`` (fractions), ``gini`` (G), ``gini_rate`` (dG/dt per epoch on the interval ending at the
            point), ``gini_rate_after`` (dG/dt on the interval starting at the point) and ``sum_sq_weights_total``
            at each point; NaN where not found or not measured. The rates quoted in the criteria of
            ``circuit_formation_end`` and ``cleanup_end`` are these same numbers (the window's first interval is
            ``gini_rate_after`` of ``circuit_formation_end``, its last ``gini_rate`` of ``cleanup_end``).
        ``tenfold_drop_epoch`` (loss) int64
            For ``restricted_loss`` and ``loss_test``: first epoch after memorisation at which each has fallen
            ten-fold from its maximum after memorisation (-1 if never).
        ``signature`` (check) bool
            The paper's phase signatures checked on this run (see the ``check`` labels; coord ``check_phase``
            names the phase each tests). False where it could not be evaluated.
        ``check_applies`` (point, check) bool
            The check bears on the point: it tests a phase the point bounds, and both ends of that phase were
            found. None bears on ``start`` and ``final``.
        ``failed_checks`` (point) str
            The checks bearing on the point that failed, joined by "; "; "" if none.
        ``certain`` (point) bool
            ``found`` and no check bearing on the point failed. A point found by the rule whose phases lack the
            paper's signatures is found but uncertain.

        attrs: ``algorithm`` (this rule in words), the thresholds, ``gini_vars``.

    Raises
    ------
    AnalysisError
        If a needed measure is missing, there are fewer than 3 checkpoints, the epochs do not increase, or an
        option is out of range.
    """
    gini_vars = list(gini_vars)
    _need(measures, ["acc_train", "loss_train", "loss_test", "acc_test", "excluded_loss_full", restricted, *gini_vars])
    if not gini_vars:
        raise AnalysisError("gini_vars is empty; the cleanup window is placed by a Gini coefficient")
    if not 0 < rate_fraction < 1:
        raise AnalysisError(f"rate_fraction must be in (0, 1), got {rate_fraction}")
    if not 0 < train_acc_threshold <= 1:
        raise AnalysisError(f"train_acc_threshold must be in (0, 1], got {train_acc_threshold}")
    if "checkpoint" not in measures.dims or measures.sizes["checkpoint"] < 3:
        raise AnalysisError("the phases need progress measures over at least 3 checkpoints")
    epochs = np.asarray(measures["checkpoint"].values, dtype=np.int64)
    if np.any(np.diff(epochs) <= 0):
        raise AnalysisError("checkpoint epochs must be strictly increasing")

    def col(name: str) -> np.ndarray:
        return np.asarray(measures[name].values, dtype=np.float64)

    acc_train, loss_test = col("acc_train"), col("loss_test")
    excluded = col("excluded_loss_full")
    G = np.mean([col(v) for v in gini_vars], axis=0)
    rate = np.full(epochs.shape, np.nan)
    rate[1:] = np.diff(G) / np.diff(epochs)
    n = epochs.size

    idx: dict[str, int | None] = {"start": 0, "final": n - 1}
    crit: dict[str, str] = {"start": "first checkpoint", "final": "last checkpoint"}

    # 1. memorisation end
    hit = np.nonzero(acc_train >= train_acc_threshold)[0]
    if hit.size == 0:
        idx["memorisation_end"] = None
        crit["memorisation_end"] = f"not found: training accuracy never reaches {train_acc_threshold}"
    else:
        i_acc = int(hit[0])
        i_peak = i_acc + int(np.argmax(excluded[i_acc:]))
        i_min = i_acc + int(np.argmin(excluded[i_acc : i_peak + 1]))
        idx["memorisation_end"] = max(i_acc, i_min)
        crit["memorisation_end"] = (
            f"train accuracy >= {train_acc_threshold} from epoch {epochs[i_acc]}; excluded loss (full) at its minimum "
            f"{excluded[i_min]:.4g} nats at epoch {epochs[i_min]} before rising to {excluded[i_peak]:.4g} at epoch "
            f"{epochs[i_peak]}"
        )

    # 2. cleanup window from the Gini rate
    i_mem = idx["memorisation_end"]
    idx["circuit_formation_end"] = idx["cleanup_end"] = None
    if i_mem is None:
        crit["circuit_formation_end"] = crit["cleanup_end"] = "not found: no end of memorisation"
    elif i_mem >= n - 2:
        crit["circuit_formation_end"] = crit["cleanup_end"] = "not found: memorisation ends at the last checkpoints"
    else:
        r = rate[i_mem + 1 :]  # r[j] is the rate on the interval (i_mem + j, i_mem + j + 1)
        j_max = int(np.nanargmax(r))
        r_max = r[j_max]
        if not np.isfinite(r_max) or r_max <= 0:
            crit["circuit_formation_end"] = crit["cleanup_end"] = "not found: the Gini coefficient never rises after memorisation"
        else:
            lo = hi = j_max
            while lo > 0 and r[lo - 1] >= rate_fraction * r_max:
                lo -= 1
            while hi < r.size - 1 and r[hi + 1] >= rate_fraction * r_max:
                hi += 1
            i_start, i_end = i_mem + lo, i_mem + hi + 1  # window = [epochs[i_start], epochs[i_end]]
            window = (
                f"Gini rate >= {rate_fraction} x its maximum {r_max:.6g}/epoch (at epochs {epochs[i_mem + j_max]}"
                f"-{epochs[i_mem + j_max + 1]}) on epochs {epochs[i_start]}-{epochs[i_end]}"
            )
            drop = loss_test[i_mem] / loss_test[i_end] if loss_test[i_end] > 0 else np.inf
            if i_end >= n - 1:
                crit["circuit_formation_end"] = crit["cleanup_end"] = (
                    f"not found: the run ends during the fast Gini rise ({window})"
                )
            elif not drop >= min_test_drop:
                crit["circuit_formation_end"] = crit["cleanup_end"] = (
                    f"not found: {window}, but the test loss fell only {drop:.3g}-fold (< {min_test_drop}) "
                    "from the end of memorisation, so the model did not generalise"
                )
            else:
                idx["circuit_formation_end"], idx["cleanup_end"] = i_start, i_end
                # The rates quoted are rate[...] itself, the numbers measure_at reports as gini_rate (interval
                # ending at the point) and gini_rate_after (interval starting at it).
                crit["circuit_formation_end"] = (
                    f"start of the fast Gini rise: {window}; dG/dt {rate[i_start + 1]:.6g}/epoch on the window's first "
                    f"interval (gini_rate_after), {rate[i_start]:.6g}/epoch on the interval ending here (gini_rate)"
                )
                crit["cleanup_end"] = (
                    f"end of the fast Gini rise: {window}; dG/dt {rate[i_end]:.6g}/epoch on the window's last interval "
                    f"(gini_rate), {rate[i_end + 1]:.6g}/epoch after it (gini_rate_after); test loss fell {drop:.3g}-fold "
                    "since memorisation"
                )

    # evidence at each point
    ev_cols = {
        "loss_train": col("loss_train"),
        "loss_test": loss_test,
        "acc_train": acc_train,
        "acc_test": col("acc_test"),
        "restricted_loss": col(restricted),
        "excluded_loss_full": excluded,
        "gini": G,
        "gini_rate": rate,
        "gini_rate_after": np.append(rate[1:], np.nan),
        "sum_sq_weights_total": col("sum_sq_weights_total") if "sum_sq_weights_total" in measures else np.full(n, np.nan),
    }
    measure_at = np.full((len(POINTS), len(_EVIDENCE)), np.nan)
    epoch_at = np.full(len(POINTS), -1, dtype=np.int64)
    found = np.zeros(len(POINTS), dtype=bool)
    for pi, pt in enumerate(POINTS):
        i = idx[pt]
        if i is None:
            continue
        found[pi] = True
        epoch_at[pi] = epochs[i]
        for mi, m in enumerate(_EVIDENCE):
            measure_at[pi, mi] = ev_cols[m][i]

    # ten-fold drops and signatures
    restricted_v = ev_cols["restricted_loss"]
    drops = {
        "restricted_loss": _first_drop(restricted_v, epochs, i_mem, 10.0) if i_mem is not None else None,
        "loss_test": _first_drop(loss_test, epochs, i_mem, 10.0) if i_mem is not None else None,
    }
    checks = _signatures(idx, ev_cols, drops, train_acc_threshold)
    applies, failed, certain = _point_checks(idx, checks)

    attrs: dict[str, Any] = {
        "title": "mechgrok phases of grokking",
        "paper_section": "paper 5.2 (mainline run: 1.4k / 9.4k / 14k)",
        "algorithm": (
            "memorisation ends at max(first checkpoint with train accuracy >= train_acc_threshold, minimum of the "
            "full excluded loss between it and the excluded loss's maximum); cleanup is the full width at "
            "rate_fraction of the maximum of dG/dt after memorisation, G the mean of gini_vars; circuit formation "
            "ends where that window starts, cleanup ends where it ends; cleanup counts only if the test loss fell "
            "min_test_drop-fold from the end of memorisation and the window ends before the last checkpoint"
        ),
        "train_acc_threshold": float(train_acc_threshold),
        "rate_fraction": float(rate_fraction),
        "min_test_drop": float(min_test_drop),
        "gini_vars": gini_vars,
        "restricted": restricted,
    }
    return xr.Dataset(
        {
            "epoch_at": (("point",), epoch_at, {"units": "epochs", "description": "epoch of each point; -1 if not found"}),
            "found": (("point",), found, {"description": "whether the point was found"}),
            "criterion": (("point",), np.array([crit[p] for p in POINTS], dtype=object),
                          {"description": "the rule that placed the point"}),
            "measure_at": (
                ("point", "measure"),
                measure_at,
                {"description": "value of each progress measure at each point (losses in nats, rates per epoch)",
                 "units": "that of each measure (losses nats, Gini and accuracies 1, weights weight^2)"},
            ),
            "tenfold_drop_epoch": (
                ("loss",),
                np.array([-1 if drops[k] is None else drops[k] for k in drops], dtype=np.int64),
                {"units": "epochs", "description": "first epoch after memorisation with the loss ten-fold below its post-memorisation maximum"},
            ),
            "signature": (("check",), np.array(list(checks.values()), dtype=bool),
                          {"description": "whether the phase shows the signature the check tests"}),
            "check_applies": (
                ("point", "check"),
                applies,
                {"description": "the check tests a phase bounded by the point, and both ends of that phase were found"},
            ),
            "failed_checks": (
                ("point",),
                np.array(["; ".join(f) for f in failed], dtype=object),
                {"description": "the signature checks bearing on the point that failed, '; '-separated; '' if none"},
            ),
            "certain": (
                ("point",),
                certain,
                {"description": "found, and every signature check of the phases the point bounds passed"},
            ),
        },
        coords={
            "point": np.array(POINTS, dtype=object),
            "measure": np.array(_EVIDENCE, dtype=object),
            "loss": np.array(list(drops), dtype=object),
            "check": np.array(list(checks), dtype=object),
            "check_phase": (("check",), np.array([_CHECK_PHASE[k] for k in checks], dtype=object)),
        },
        attrs=attrs,
    )


def _signatures(
    idx: dict[str, int | None], cols: dict[str, np.ndarray], drops: dict[str, int | None], thr: float
) -> dict[str, bool]:
    """The paper's phase signatures (section 5.2), checked between the points found."""
    m, c, e = idx["memorisation_end"], idx["circuit_formation_end"], idx["cleanup_end"]
    out: dict[str, bool] = {}
    out["memorisation: train accuracy reaches the threshold"] = m is not None and cols["acc_train"][m] >= thr
    out["memorisation: train loss falls"] = m is not None and cols["loss_train"][m] < cols["loss_train"][0]
    if m is not None and c is not None and e is not None:
        out["circuit formation: excluded loss rises"] = bool(cols["excluded_loss_full"][c] > cols["excluded_loss_full"][m])
        out["circuit formation: restricted loss falls"] = bool(cols["restricted_loss"][c] < cols["restricted_loss"][m])
        out["cleanup: test loss falls"] = bool(cols["loss_test"][e] < cols["loss_test"][c])
        out["cleanup: Gini rises"] = bool(cols["gini"][e] > cols["gini"][c])
        ssw = cols["sum_sq_weights_total"]
        out["cleanup: sum of squared weights falls"] = bool(np.isfinite(ssw[e]) and ssw[e] < ssw[c])
    else:
        for k in (
            "circuit formation: excluded loss rises",
            "circuit formation: restricted loss falls",
            "cleanup: test loss falls",
            "cleanup: Gini rises",
            "cleanup: sum of squared weights falls",
        ):
            out[k] = False
    r, t = drops["restricted_loss"], drops["loss_test"]
    out["restricted loss falls ten-fold before the test loss"] = r is not None and (t is None or r < t)
    return out


def _point_checks(
    idx: dict[str, int | None], checks: dict[str, bool]
) -> tuple[np.ndarray, list[list[str]], np.ndarray]:
    """Which checks bear on each point, which of those failed, and whether the point is certain.

    A check bears on a point when the point bounds the check's phase and both ends of that phase were found (a
    check that could not be evaluated because a later boundary is missing does not make a point uncertain;
    the missing boundary is reported as not found). ``start`` and ``final`` are the first and last checkpoints,
    placed by no rule, so no check bears on them.
    """
    names = list(checks)
    applies = np.zeros((len(POINTS), len(names)), dtype=bool)
    for ci, name in enumerate(names):
        lo, hi = _PHASE_BOUNDS[_CHECK_PHASE[name]]
        if idx[lo] is None or idx[hi] is None:
            continue
        for pt in (lo, hi):
            if pt not in ("start", "final"):
                applies[POINTS.index(pt), ci] = True
    failed = [[n for ci, n in enumerate(names) if applies[pi, ci] and not checks[n]] for pi in range(len(POINTS))]
    certain = np.array([idx[pt] is not None and not failed[pi] for pi, pt in enumerate(POINTS)], dtype=bool)
    return applies, failed, certain


def phase_labels(phases: xr.Dataset, checkpoint: xr.DataArray | Sequence[int]) -> xr.DataArray:
    """The phase each checkpoint lies in, from :func:`find_phases`.

    Parameters
    ----------
    phases : xarray.Dataset
        Output of :func:`find_phases`.
    checkpoint : xarray.DataArray or sequence of int
        Epochs to label (e.g. ``ds["checkpoint"]``).

    Returns
    -------
    xarray.DataArray
        (checkpoint,) object strings: "memorisation" (epoch <= memorisation end), "circuit_formation",
        "cleanup", "stable" (after the cleanup end); "unknown" past the last boundary found.

    Raises
    ------
    AnalysisError
        If ``phases`` is not a phases Dataset.
    """
    if "epoch_at" not in phases or "found" not in phases:
        raise AnalysisError("phase_labels needs the Dataset returned by find_phases")
    ep = np.asarray(checkpoint.values if isinstance(checkpoint, xr.DataArray) else checkpoint, dtype=np.int64)
    bounds = []
    for name in ("memorisation_end", "circuit_formation_end", "cleanup_end"):
        b = phases.sel(point=name)
        bounds.append(int(b["epoch_at"]) if bool(b["found"]) else None)
    labels = np.full(ep.shape, "unknown", dtype=object)
    lower = -np.inf
    for phase, b in zip(PHASES, bounds + [np.inf]):
        if b is None:
            break
        sel = (ep > lower) & (ep <= b) if np.isfinite(lower) else ep <= b
        labels[sel] = phase
        lower = b
    return xr.DataArray(labels, dims=("checkpoint",), coords={"checkpoint": ep}, name="phase")
