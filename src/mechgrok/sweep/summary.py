"""The sweep Dataset: per-run scalars and curves, combined over the swept fields.

Each run of a sweep is summarised on its own (:func:`run_summary`, written to ``runs/NAME/summary.zarr`` by the
task that ran it); :func:`combine_runs` then puts the summaries side by side with **one dim per swept field**
(``seed``, ``frac_train``, ...). Nothing is ever written into a shared store by two tasks (``tasks.md`` section
6): the combined store is written once, by the driver, after the runs.

Per run (root group; epochs as float64, NaN where not found or not computed):

``grokking_epoch``
    First epoch with test loss <= 0.1 nats (:func:`mechgrok.analyses.grokking_epoch.grokking_epoch`).
``grokking_delay``
    Epochs from memorisation (first epoch with train loss <= 0.1 nats) to the grokking epoch
    (:func:`mechgrok.analyses.grokking_epoch.grokking_delay`); only where the run has per-epoch training and test
    curves.
``memorisation_end``, ``circuit_formation_end``, ``cleanup_end``
    The phase boundaries of :func:`mechgrok.analyses.phases.find_phases` (NaN where not found).
``final_loss_train``, ``final_loss_test``, ``final_acc_train``, ``final_acc_test``
    Last value of each training curve (nats; fractions).
``final_restricted_loss_test``, ``final_excluded_loss_full``, ``final_frac_var_key``
    Algorithm metrics at the last checkpoint: restricted and excluded loss (paper 5.1), the share of the logit
    variance the key frequencies explain (paper 4.2); where the ``algorithm`` analysis ran, its per-checkpoint
    metrics (``distance_irrelevance``, ``gradient_symmetricity``, ``circularity``: Clock vs Pizza) at the last
    checkpoint as ``final_NAME``. Any 0-d variable of an analysis group is kept as ``GROUP_VAR``.
``n_key_freqs``, ``is_key_freq`` (freq)
    The key frequencies (1.0 / 0.0 per frequency 1..(p-1)/2).
``loss_train``, ``loss_test``, ``acc_train``, ``acc_test`` (epoch)
    The per-epoch training curves.

Group ``measures``: the progress measures over ``checkpoint`` (``loss_test`` on the p classes,
``restricted_loss_test``, ``excluded_loss_full``, ``gini_W_E_component``, ``gini_W_logit_component``,
``sum_sq_weights_total`` and ``llc_mean`` where estimated).

Combined (:func:`combine_runs`): the same variables with the swept dims in front; curves share one ``epoch``
(``checkpoint``) axis, the union of the runs' epochs, NaN where a run has no value. The root also gets the early
warning per run (``lead``, ``onset_epoch``, ``reference_onset_epoch``, ``leads``; :mod:`mechgrok.analyses.early_warning`)
and the group ``early_warning`` its summary across the sweep. Runs of different shapes (different p, so a
different ``freq`` axis) go to one group each, ``p=53``, ``p=113``, ... of an ``xarray.DataTree``.
"""

from __future__ import annotations

import json
from typing import Any, Mapping, Sequence

import numpy as np
import xarray as xr

from mechgrok import __version__
from mechgrok.analyses.early_warning import lead_times, summarise_leads
from mechgrok.analyses.grokking_epoch import grokking_delay, grokking_epoch
from mechgrok.errors import AnalysisError

__all__ = ["CURVES", "PROGRESS_MEASURES", "run_summary", "combine_runs", "shape_key"]

#: The per-epoch training curves kept per run.
CURVES = ("loss_train", "loss_test", "acc_train", "acc_test")
#: The progress measures kept per run, over ``checkpoint`` (``measures`` group).
PROGRESS_MEASURES = ("loss_test", "restricted_loss_test", "excluded_loss_full", "gini_W_E_component",
                     "gini_W_logit_component", "sum_sq_weights_total", "llc_mean")
_PHASE_POINTS = ("memorisation_end", "circuit_formation_end", "cleanup_end")
_EPOCHS = {"units": "epochs"}


def _last_finite(v: xr.DataArray) -> float:
    a = np.asarray(v.values, dtype=np.float64)
    a = a[np.isfinite(a)]
    return float(a[-1]) if a.size else np.nan


def _groups(tree: xr.DataTree) -> dict[str, xr.Dataset]:
    return {name: tree[name].to_dataset(inherit=False) for name in tree.children}


def run_summary(trajectory: xr.Dataset, tree: xr.DataTree | None = None) -> xr.DataTree:
    """Summarise one run: scalars and curves (root), progress measures over checkpoints (``measures``).

    Parameters
    ----------
    trajectory : xarray.Dataset
        The run (:func:`mechgrok.open_run`); its per-epoch curves are used (weights are not read).
    tree : xarray.DataTree, optional
        Its analysis (:func:`mechgrok.analyze`), for the phases, key frequencies, algorithm metrics and
        progress measures. Without it (a curve-only run) only the curves and grokking epoch are summarised.

    Returns
    -------
    xarray.DataTree
        See the module docstring. Root attrs: ``p`` (where known), the rules.

    Raises
    ------
    AnalysisError
        If neither the trajectory nor the analysis holds a test loss.

    Examples
    --------
    >>> import mechgrok
    >>> s = run_summary(mechgrok.open_run("fixtures/quick-run"))
    >>> int(s["grokking_epoch"]), int(s["grokking_delay"]), float(s["final_acc_test"])
    (2094, 1983, 1.0)
    """
    root: dict[str, xr.DataArray] = {}
    for name in CURVES:
        if name in trajectory and "epoch" in trajectory[name].dims:
            root[name] = trajectory[name].load().astype(np.float64)
            root[f"final_{name}"] = xr.DataArray(_last_finite(root[name]),
                                                 attrs={"units": trajectory[name].attrs.get("units", ""),
                                                        "description": f"last value of {name}"})
    groups = _groups(tree) if tree is not None else {}
    measures: dict[str, xr.DataArray] = {}
    for g in ("ablation", "measures", "llc"):
        for name in PROGRESS_MEASURES:
            if g in groups and name in groups[g] and name not in measures:
                measures[name] = groups[g][name].astype(np.float64)
    if "loss_test" in root:
        root["grokking_epoch"] = grokking_epoch(root["loss_test"], dim="epoch")
    elif "loss_test" in measures:
        root["grokking_epoch"] = grokking_epoch(measures["loss_test"], dim="checkpoint")
    else:
        raise AnalysisError("run_summary: neither the trajectory nor the analysis has a test loss")
    if "loss_test" in root and "loss_train" in root:
        root["grokking_delay"] = grokking_delay(root["loss_train"], root["loss_test"], dim="epoch")
    if "phases" in groups:
        ph = groups["phases"]
        for pt in _PHASE_POINTS:
            row = ph.sel(point=pt)
            root[pt] = xr.DataArray(float(row["epoch_at"]) if bool(row["found"]) else np.nan,
                                    attrs={**_EPOCHS, "description": f"{pt.replace('_', ' ')} (find_phases); NaN if not found",
                                           "rule": str(ph.attrs.get("algorithm", ""))})
    if "key_frequencies" in groups:
        kf = groups["key_frequencies"]
        root["is_key_freq"] = kf["is_key"].astype(np.float64).assign_attrs(
            units="1", description="1 for a key frequency at the reference checkpoint", rule=str(kf.attrs.get("rule", "")))
        root["n_key_freqs"] = xr.DataArray(float(kf["is_key"].sum()), attrs={"units": "frequencies",
                                                                             "description": "number of key frequencies"})
    for name in ("restricted_loss_test", "excluded_loss_full"):
        if name in measures:
            root[f"final_{name}"] = xr.DataArray(_last_finite(measures[name]),
                                                 attrs={"units": "nats", "description": f"{name} at the last checkpoint"})
    if "logits" in groups and "frac_var_key" in groups["logits"]:
        root["final_frac_var_key"] = xr.DataArray(
            _last_finite(groups["logits"]["frac_var_key"]),
            attrs={"units": "1", "description": "share of the logit variance explained by the key frequencies, last checkpoint"})
    if "algorithm" in groups:  # Clock/Pizza metrics (mechgrok.analyses.modular.algorithm_metrics), last checkpoint
        for name, var in groups["algorithm"].data_vars.items():
            if var.dims == ("checkpoint",) and var.dtype.kind in "biuf":
                root[f"final_{name}"] = xr.DataArray(_last_finite(var), attrs={
                    "units": var.attrs.get("units", ""), "description": f"{name} at the last checkpoint (algorithm metric)"})
    for g, ds in groups.items():  # any other analysis' scalars: its 0-d numeric variables
        for name, var in ds.data_vars.items():
            if var.ndim == 0 and var.dtype.kind in "biuf":
                root[f"{g}_{name}"] = var.astype(np.float64)
    attrs: dict[str, Any] = {
        "title": "mechgrok run summary",
        "mechgrok_version": __version__,
        "grokking_rule": root["grokking_epoch"].attrs["rule"],
        **({"grokking_delay_rule": root["grokking_delay"].attrs["rule"]} if "grokking_delay" in root else {}),
        "config_json": trajectory.attrs.get("config_json", "{}"),
    }
    p = trajectory.attrs.get("p", tree.attrs.get("p") if tree is not None else None)
    if p is not None:
        attrs["p"] = int(p)
    nodes: dict[str, xr.Dataset] = {"/": xr.Dataset(root, attrs=attrs)}
    if measures:
        m = xr.Dataset({k: v.drop_attrs(deep=False).assign_attrs(v.attrs) for k, v in measures.items()})
        nodes["/measures"] = m.drop_vars([c for c in m.coords if c != "checkpoint"])
    return xr.DataTree.from_dict(nodes)


def shape_key(summary: xr.DataTree) -> str:
    """The group a run's summary goes to in the combined tree: ``"p=P"`` (``"p=?"`` where p is unknown).

    Examples
    --------
    >>> shape_key(xr.DataTree(xr.Dataset(attrs={"p": 113})))
    'p=113'
    """
    p = summary.attrs.get("p")
    return f"p={int(p)}" if p is not None else "p=?"


def _stack(pieces: Sequence[xr.Dataset], coords: Sequence[Mapping[str, Any]], fields: Sequence[str]) -> xr.Dataset:
    expanded = []
    for ds, c in zip(pieces, coords):
        ds = ds.drop_vars([v for v in ds.coords if v not in ds.dims])
        expanded.append(ds.expand_dims({f: [c[f]] for f in reversed(fields)}))
    out = xr.merge(expanded, join="outer", compat="no_conflicts", combine_attrs="drop_conflicts")
    for f in fields:
        out[f].attrs = {"units": "as the Config field (docs/run-directory.md)",
                        "description": f"swept field {f} of mechgrok.config.Config: one run per value"}
    return out.transpose(*fields, ...)


def combine_runs(
    summaries: Sequence[xr.DataTree],
    coords: Sequence[Mapping[str, Any]],
    *,
    fields: Sequence[str],
    attrs: Mapping[str, Any] | None = None,
) -> xr.DataTree:
    """Combine per-run summaries into the sweep tree, one dim per swept field.

    Parameters
    ----------
    summaries : sequence of xarray.DataTree
        :func:`run_summary` of each run.
    coords : sequence of mapping
        The swept values of each run (field -> value), in the same order.
    fields : sequence of str
        The swept fields, in the order of the dims.
    attrs : mapping, optional
        Extra root attrs (the spec, the sweep's name).

    Returns
    -------
    xarray.DataTree
        One shape group: the root holds the runs (plus the groups ``measures`` and ``early_warning`` where
        progress measures exist). Several (different p): one child ``p=P`` per shape, each laid out like that.
        Cells without a run (a failed or missing one) are NaN.

    Raises
    ------
    AnalysisError
        If no summary is given or the lengths differ.

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> runs = [xr.DataTree(xr.Dataset({"grokking_epoch": ((), float(e))}, attrs={"p": 23})) for e in (300, 500)]
    >>> tree = combine_runs(runs, [{"frac_train": 0.7}, {"frac_train": 0.5}], fields=["frac_train"])
    >>> tree["grokking_epoch"].sel(frac_train=0.5).item()
    500.0
    """
    if not summaries or len(summaries) != len(coords):
        raise AnalysisError(f"combine_runs: {len(summaries)} summaries for {len(coords)} runs")
    fields = list(fields)
    by_shape: dict[str, list[int]] = {}
    for i, s in enumerate(summaries):
        by_shape.setdefault(shape_key(s), []).append(i)
    nodes: dict[str, xr.Dataset] = {}
    for key, idx in by_shape.items():
        prefix = "" if len(by_shape) == 1 else f"/{key}"
        root = _stack([summaries[i].to_dataset(inherit=False) for i in idx], [coords[i] for i in idx], fields)
        root.attrs = {k: v for k, v in summaries[idx[0]].attrs.items() if k != "config_json"}
        root.attrs["config_json"] = json.dumps({str(i): json.loads(summaries[i].attrs.get("config_json", "{}"))
                                                for i in idx})
        with_measures = [i for i in idx if "measures" in summaries[i].children]
        if with_measures:
            m = _stack([summaries[i]["measures"].to_dataset(inherit=False) for i in with_measures],
                       [coords[i] for i in with_measures], fields)
            nodes[f"{prefix}/measures"] = m
            try:
                leads = lead_times(m)
            except AnalysisError:
                leads = None
            if leads is not None:
                root = root.merge(leads.drop_attrs(deep=False), join="outer")
                root.attrs["lead_rule"] = leads.attrs["rule"]
                nodes[f"{prefix}/early_warning"] = summarise_leads(leads, over=fields)
        root.attrs["title"] = "mechgrok sweep"
        root.attrs["swept_fields"] = fields
        nodes[prefix or "/"] = root
    if len(by_shape) > 1:
        nodes["/"] = xr.Dataset(attrs={"title": "mechgrok sweep", "swept_fields": fields, "shapes": list(by_shape)})
    for key in by_shape:  # the root of each shape group, and the tree's root
        nodes["/" if len(by_shape) == 1 else f"/{key}"].attrs.update(dict(attrs or {}))
    nodes["/"].attrs.update(dict(attrs or {}))
    return xr.DataTree.from_dict(nodes)
