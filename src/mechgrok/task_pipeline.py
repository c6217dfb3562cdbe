"""``mechgrok analyze`` for the tasks beyond modular arithmetic: n-digit addition, repeated subsequences, and
loss-curve-only files. :func:`mechgrok.pipeline.analyze` dispatches here on the trajectory's task
(:func:`mechgrok.tasks.identify.task_of`).

Groups of the analysis tree (each a Dataset; see ``docs/digit-addition.md``, ``docs/repeated-subsequences.md``):

``curves``
    The trajectory's loss curves (``loss_train``, ``loss_test``, per-token curves; a sweep's curves with its own
    dim).
``phase_changes/<curve>``
    :func:`mechgrok.analyses.phase_changes.phase_changes` of every curve variable (its drops: onset, steepest,
    end; first crossing of 0.1 nats).
``digit_losses`` (addition)
    :func:`mechgrok.analyses.digit_addition.digit_losses`: per-answer-position loss at every checkpoint, split
    by carry.
``induction`` (repeated subsequences)
    :func:`mechgrok.analyses.induction.head_scores`: previous-token and induction scores of every head at every
    checkpoint, attention patterns, the circuit's heads; and ``attrs["formation_order"]``: the epochs at which
    the first previous-token head and the first induction head formed, and the onset, steepest point and end of
    the loss drop.

:func:`summarise_task` turns the tree into ``report.json``'s dict and :func:`task_report_markdown` into
``report.md``.
"""

from __future__ import annotations

import json
import math
from typing import Any, Callable

import numpy as np
import torch
import xarray as xr

from mechgrok import __version__
from mechgrok.analyses.digit_addition import digit_losses
from mechgrok.analyses.induction import head_scores
from mechgrok.analyses.phase_changes import learning_order, phase_changes
from mechgrok.engine import DEFAULT_CHUNK, resolve_device
from mechgrok.store.assemble import json_safe
from mechgrok.tasks.identify import task_of

__all__ = ["TASK_ANALYSES", "analyze_task", "summarise_task", "task_report_markdown"]

#: The tasks :func:`analyze_task` handles.
TASK_ANALYSES: tuple[str, ...] = ("digit_addition", "repeated_subsequences", "curves")

Progress = Callable[[str, int, int], None]


def _curve_vars(ds: xr.Dataset) -> list[str]:
    return [str(v) for v in ds.data_vars if str(v).startswith("loss") and "epoch" in ds[v].dims]


def analyze_task(ds: xr.Dataset, *, chunk: int = DEFAULT_CHUNK, device: str | torch.device | None = None,
                 progress: Progress | None = None, n_eval: int | None = None) -> xr.DataTree:
    """Every analysis of a sequence-task trajectory or a curve-only file (module docstring).

    Parameters
    ----------
    ds : xarray.Dataset
        A trajectory of n-digit addition or repeated subsequences (:func:`mechgrok.open_run`), or a Dataset of
        curves (:func:`mechgrok.store.load_loss_curves`).
    chunk, device
        As for :func:`mechgrok.engine.run` (device None: CUDA when available).
    progress : callable, optional
        ``progress(stage, done, total)``.
    n_eval : int, optional
        Evaluation examples of the checkpoint analyses (default 2048 sums, 256 sequences).

    Returns
    -------
    xarray.DataTree
        Root attrs: ``task``, ``analyses``, ``n_checkpoints``, the source; groups as in the module docstring.

    Raises
    ------
    AnalysisError
        If the task cannot be told or the trajectory does not fit its analyses.

    Examples
    --------
    >>> import mechgrok
    >>> tree = analyze_task(mechgrok.open_run("fixtures/digit-addition-quick").isel(checkpoint=[-1]), n_eval=64)
    >>> sorted(tree.children)
    ['curves', 'digit_losses', 'phase_changes']
    """
    task = task_of(ds)
    report = progress or (lambda stage, done, total: None)
    groups: dict[str, xr.Dataset] = {}
    curves = _curve_vars(ds)
    if curves:
        groups["curves"] = ds[curves]
        for name in curves:
            groups[f"phase_changes/{name}"] = phase_changes(ds[name])
        report("phase changes", 1, 1)
    n = int(ds.sizes.get("checkpoint", 0))
    order: dict[str, Any] = {}
    if n and task != "curves":
        dev = resolve_device(device)
        if task == "digit_addition":
            groups["digit_losses"] = digit_losses(ds, n_eval=n_eval or 2048, chunk=chunk, device=dev)
        else:
            ind = head_scores(ds, n_eval=n_eval or 256, chunk=chunk, device=dev)
            order = _formation_order(ind, groups.get("phase_changes/loss_test") or groups.get("phase_changes/loss_train"))
            ind.attrs["formation_order"] = json.dumps(json_safe(order))
            groups["induction"] = ind
        report("checkpoints", n, n)
    attrs = {"title": "mechgrok analysis", "task": task, "analyses": sorted({k.split("/")[0] for k in groups}),
             "n_checkpoints": n, "mechgrok_version": __version__, "run": ds.attrs.get("run", task),
             "trajectory_source_format": ds.attrs.get("source_format", ""),
             "trajectory_source_files": ds.attrs.get("source_files", "[]"),
             "config_json": ds.attrs.get("config_json", "{}")}
    return xr.DataTree.from_dict({"/": xr.Dataset(attrs=attrs), **{f"/{k}": v for k, v in groups.items()}})


def _formation_order(ind: xr.Dataset, pc: xr.Dataset | None) -> dict[str, Any]:
    """Epochs of the first previous-token head, the first induction head and the loss drop."""
    def first(var: str) -> float | None:
        v = ind[var].values
        return None if np.all(np.isnan(v)) else float(np.nanmin(v))

    out: dict[str, Any] = {"prev_token_head_formed": first("prev_token_formed"),
                           "induction_head_formed": first("induction_formed")}
    if pc is not None and int(pc["n_drops"]) > 0:
        out.update(loss_drop_onset=float(pc["main_onset"]), loss_drop_steepest=float(pc["main_steepest"]),
                   loss_drop_end=float(pc["main_end"]))
    return out


def _num(v: Any) -> Any:
    v = float(v)
    return v if math.isfinite(v) else None


def summarise_task(tree: xr.DataTree) -> dict[str, Any]:
    """``report.json`` of :func:`analyze_task`'s tree: the task, final losses, phase changes of every curve (and
    the learning order of the answer digits), the carry split (addition), the heads (induction)."""
    root = tree.to_dataset(inherit=False)
    out: dict[str, Any] = {"mechgrok_version": root.attrs.get("mechgrok_version"), "task": root.attrs["task"],
                           "run": root.attrs.get("run"), "n_checkpoints": int(root.attrs.get("n_checkpoints", 0)),
                           "analyses": list(root.attrs.get("analyses", []))}
    if "curves" in tree.children:
        cv = tree["curves"].to_dataset(inherit=False)
        out["final_losses"] = {}
        for v in cv.data_vars:
            a = np.moveaxis(cv[v].values, cv[v].dims.index("epoch"), -1)
            idx = np.where(np.isfinite(a), np.arange(a.shape[-1]), -1).max(axis=-1)  # each curve's last value
            last = np.where(idx >= 0, np.take_along_axis(a, np.maximum(idx, 0)[..., None], -1)[..., 0], np.nan)
            out["final_losses"][str(v)] = json_safe(last.tolist()) if last.ndim else _num(last)
        pcs = {}
        for name in tree["phase_changes"].children:
            pc = tree["phase_changes"][name].to_dataset(inherit=False)
            other = [d for d in pc["main_onset"].dims]
            entry = {"rule": pc.attrs.get("rule"), "dims": other}
            for var in ("n_drops", "main_onset", "main_steepest", "main_end", "first_below"):
                entry[var] = json_safe(pc[var].values.tolist())
            entry["drops"] = {var: json_safe(pc[var].values.tolist()) for var in ("onset", "steepest", "end")}
            if "answer_position" in pc.dims:
                entry["learning_order"] = learning_order(pc, "answer_position")
            if other:
                entry["coords"] = {d: pc[d].values.tolist() for d in other}
            pcs[name] = entry
        out["phase_changes"] = pcs
    if "digit_losses" in tree.children:
        dl = tree["digit_losses"].to_dataset(inherit=False)
        last = dl.isel(checkpoint=-1)
        out["digit_losses"] = {"checkpoint": int(last["checkpoint"]), "loss": _num(last["loss"]),
                               "per_token": [_num(v) for v in last["loss_per_token"].values],
                               "by_carry": {f"carry_{c}": [_num(v) for v in last["loss_by_carry"].sel(carry=c).values]
                                            for c in (0, 1)}, "rule": dl.attrs.get("rule")}
    if "induction" in tree.children:
        ind = tree["induction"].to_dataset(inherit=False)
        last = ind.isel(checkpoint=-1)
        heads = lambda var: [f"{int(l)}.{int(h)}" for l, h in np.argwhere(ind[var].values)]  # noqa: E731
        out["induction"] = {
            "checkpoint": int(last["checkpoint"]), "loss": _num(last["loss"]),
            "prev_token_heads": heads("is_prev_token_head"), "induction_heads": heads("is_induction_head"),
            "prev_token_score": json_safe(last["prev_token_score"].values.tolist()),
            "induction_score": json_safe(last["induction_score"].values.tolist()),
            "formation_order": json.loads(ind.attrs.get("formation_order", "{}")), "rule": ind.attrs.get("rule"),
        }
    return json_safe(out)


def _fmt(v: Any) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def task_report_markdown(summary: dict[str, Any], *, title: str = "mechgrok report") -> str:
    """``report.md`` from :func:`summarise_task`'s dict."""
    lines = [f"# {title}", "", f"Task: **{summary['task']}** (run: {summary.get('run')}), "
             f"{summary['n_checkpoints']} checkpoints, mechgrok {summary.get('mechgrok_version')}.", ""]
    fl = summary.get("final_losses")
    if fl:
        lines += ["## Final losses (nats)", "", "| curve | final value |", "|---|---|"]
        lines += [f"| {k} | {', '.join(map(_fmt, v)) if isinstance(v, list) else _fmt(v)} |" for k, v in fl.items()]
        lines.append("")
    for name, pc in (summary.get("phase_changes") or {}).items():
        lines += [f"## Phase changes of {name}", ""]
        if pc["dims"]:
            d = pc["dims"][0]
            vals = pc["coords"][d]
            lines += [f"| {d} | drops | onset | steepest | end | first below 0.1 |", "|---|---|---|---|---|---|"]
            for i, v in enumerate(vals):
                row = [pc[k][i] if isinstance(pc[k], list) and len(pc["dims"]) == 1 else "..." for k in
                       ("n_drops", "main_onset", "main_steepest", "main_end", "first_below")]
                lines.append(f"| {v} | " + " | ".join(_fmt(x) for x in row) + " |")
            if "learning_order" in pc:
                lines += ["", f"Order in which the answer positions are learned (onset of their highest drop): "
                          f"{pc['learning_order']}"]
        else:
            lines += [f"{_fmt(pc['n_drops'])} drop(s); highest: onset {_fmt(pc['main_onset'])}, steepest "
                      f"{_fmt(pc['main_steepest'])}, end {_fmt(pc['main_end'])}; first below 0.1 nats: "
                      f"{_fmt(pc['first_below'])}. All drops (onset, steepest, end): "
                      + "; ".join(f"({_fmt(a)}, {_fmt(b)}, {_fmt(c)})" for a, b, c in
                                  zip(pc["drops"]["onset"], pc["drops"]["steepest"], pc["drops"]["end"]) if a is not None)]
        lines += ["", f"Rule: {pc['rule']}", ""]
    dl = summary.get("digit_losses")
    if dl:
        lines += [f"## Loss per answer digit (checkpoint {dl['checkpoint']})", "",
                  "| answer position | loss | loss, carry 0 | loss, carry 1 |", "|---|---|---|---|"]
        for k, v in enumerate(dl["per_token"]):
            lines.append(f"| {k} | {_fmt(v)} | {_fmt(dl['by_carry']['carry_0'][k])} | {_fmt(dl['by_carry']['carry_1'][k])} |")
        lines += ["", f"Mean: {_fmt(dl['loss'])} nats. Answer position 0 is the carry-out token. {dl['rule']}.", ""]
    ind = summary.get("induction")
    if ind:
        fo = ind["formation_order"]
        lines += [f"## Induction heads (checkpoint {ind['checkpoint']})", "",
                  f"Previous-token heads (layer.head): **{', '.join(ind['prev_token_heads']) or 'none'}**; induction "
                  f"heads: **{', '.join(ind['induction_heads']) or 'none'}**. Loss on the evaluation sequences "
                  f"{_fmt(ind['loss'])} nats.", "", "| layer.head | previous-token score | induction score |",
                  "|---|---|---|"]
        for l, (pr, ir) in enumerate(zip(ind["prev_token_score"], ind["induction_score"])):
            lines += [f"| {l}.{h} | {_fmt(a)} | {_fmt(b)} |" for h, (a, b) in enumerate(zip(pr, ir))]
        lines += ["", f"Formation (epochs): first previous-token head {_fmt(fo.get('prev_token_head_formed'))}, first "
                  f"induction head {_fmt(fo.get('induction_head_formed'))}; loss drop onset "
                  f"{_fmt(fo.get('loss_drop_onset'))}, steepest {_fmt(fo.get('loss_drop_steepest'))}, end "
                  f"{_fmt(fo.get('loss_drop_end'))}.", "", f"Rule: {ind['rule']}", ""]
    return "\n".join(lines)
