"""What ``mechgrok analyze`` writes for people: ``report.json`` (:func:`summarise`) and ``report.md``
(:func:`report_markdown`), from the analysis tree of :func:`mechgrok.pipeline.analyze`."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import xarray as xr

from mechgrok.analyses.modular.competition import competition_summary
from mechgrok.analyses.slingshots import slingshot_summary
from mechgrok.store.assemble import json_safe as _json_safe
from mechgrok.task_pipeline import TASK_ANALYSES, summarise_task, task_report_markdown

__all__ = ["summarise", "report_markdown", "algorithm_summary", "ALGORITHM_METRICS"]



def _at(ds: xr.Dataset, name: str, epoch: int) -> float | None:
    if name not in ds:
        return None
    v = float(ds[name].sel(checkpoint=epoch).values)
    return v if math.isfinite(v) else None


def summarise(tree: xr.DataTree) -> dict[str, Any]:
    """The report as a JSON-serialisable dict (``report.json``).

    Keys: ``p``, ``reference_checkpoint``, ``key_frequencies`` (set, rule, evidence per frequency, agreement),
    ``clusters`` (size per frequency and unexplained, share of neurons above the FVE threshold, at the reference),
    ``losses`` (final and reference: loss, accuracy, restricted and excluded losses; nats), ``logit_structure``
    (fraction of logit variance the key frequencies explain), ``heads`` (frequency and FVE per head), ``phases``
    (per point: epoch, found, ``certain`` and the names of the ``failed_checks`` of the paper's phase signatures
    bearing on it, criterion), ``weights`` (sum of squared weights, Gini), ``algorithm`` (the Clock-vs-Pizza
    metrics at the reference, the final checkpoint and each phase point found, and the side of the DI = GS
    diagonal) and ``llc`` where run; ``operation``, ``modulus`` and ``operation_coordinates`` (the discrete-log re-indexing
    of mul and div).
    """
    root = tree.to_dataset(inherit=False)
    if root.attrs.get("task") in TASK_ANALYSES:  # addition, induction, curve-only files: mechgrok.task_pipeline
        return summarise_task(tree)
    ref = int(root.attrs["reference_checkpoint"])
    out: dict[str, Any] = {
        "mechgrok_version": root.attrs.get("mechgrok_version"),
        "p": int(root.attrs["p"]),
        "reference_checkpoint": ref,
        "n_checkpoints": int(root.attrs.get("n_checkpoints", 0)),
        "analyses": list(root.attrs.get("analyses", [])),
        "skipped": json.loads(root.attrs.get("skipped", "{}")),
        "operation": root.attrs.get("operation", "add"),
        "modulus": int(root.attrs.get("modulus", root.attrs["p"])),
        "operation_coordinates": root.attrs.get("operation_coordinates"),
    }
    children = {name: tree[name].to_dataset(inherit=False) for name in tree.children}
    if "key_frequencies" in children:
        kf = children["key_frequencies"]
        evidence = {}
        for k in kf["freq"].values:
            row = kf.sel(freq=k)
            if bool(row["is_key"]) or bool(row["literal"]):
                evidence[int(k)] = {
                    "key": bool(row["is_key"]),
                    "neurons_above_threshold": int(row["n_neurons"]),
                    "neuron_share": float(row["neuron_share"]),
                    "W_E_share": float(row["W_E_share"]),
                    "W_logit_share": float(row["W_logit_share"]),
                }
        out["key_frequencies"] = {
            "set": [int(k) for k in kf["key_freqs"].values],
            "rule": kf.attrs.get("rule"),
            "literal_rule_set": list(kf.attrs.get("literal_key_freqs", [])),
            "sources_agree": bool(kf["agree"]),
            "evidence": evidence,
        }
    if "neurons" in children:
        nz = children["neurons"].sel(checkpoint=ref)
        sizes = {("unexplained" if int(f) == -1 else int(f)): int(s)
                 for f, s in zip(nz["cluster_freq"].values, nz["cluster_sizes"].values) if int(s) > 0}
        out["clusters"] = {
            "threshold": float(children["neurons"].attrs.get("threshold", 0.85)),
            "sizes": sizes,
            "share_above_threshold": float(nz["frac_above_threshold"]),
        }
    if "ablation" in children:
        ab = children["ablation"]
        last = int(ab["checkpoint"].values[-1])
        names = ["loss_all", "loss_train", "loss_test", "acc_all", "acc_train", "acc_test",
                 "restricted_loss_all", "restricted_loss_train", "restricted_loss_test", "restricted_acc_all",
                 "excluded_loss_full", "excluded_acc_full", "block3x3_loss_all"]
        out["losses"] = {
            "units": "nats (float64 cross-entropy over the p non-'=' classes, all p^2 pairs or the split named)",
            "final_checkpoint": last,
            "final": {n_: _at(ab, n_, last) for n_ in names},
            "reference": {n_: _at(ab, n_, ref) for n_ in names},
            "excluded_loss_per_key_freq_final": {int(k): float(v) for k, v in zip(ab["key_freq"].values, ab["excluded_loss"].sel(checkpoint=last).values)},
        }
    if "logits" in children:
        lg = children["logits"].sel(checkpoint=ref)
        out["logit_structure"] = {
            "fraction_of_logit_variance_explained_by_key_freqs": float(lg["frac_var_key"]),
            "fraction_of_logit_norm_explained_by_key_freqs": float(lg["frac_norm_key"]),
        }
    if "attention" in children:
        at = children["attention"].sel(checkpoint=ref)
        out["heads"] = [
            {"head": int(h), "freq": int(at["head_freq"].values[h]), "fve": float(at["head_fve"].values[h])}
            for h in range(at.sizes["head"])
        ]
    if "phases" in children:
        ph = children["phases"]
        out["phases"] = {str(pt): _phase_point(ph, pt) for pt in ph["point"].values}
        out["phases_algorithm"] = ph.attrs.get("algorithm")
    if "measures" in children:
        me = children["measures"]
        last = int(me["checkpoint"].values[-1])
        out["weights"] = {
            "final_checkpoint": last,
            "sum_sq_weights_total": _at(me, "sum_sq_weights_total", last),
            "gini_W_E_component": _at(me, "gini_W_E_component", last),
            "gini_W_logit_component": _at(me, "gini_W_logit_component", last),
        }
    if "algorithm" in children:
        out["algorithm"] = algorithm_summary(children["algorithm"], ref, children.get("phases"))
    if "competition" in children:
        out["competition"] = competition_summary(children["competition"])
    if "slingshots" in children:
        out["slingshots"] = slingshot_summary(children["slingshots"])
    if "llc" in children:
        ll = children["llc"]
        out["llc"] = {
            "checkpoints": [int(e) for e in ll["checkpoint"].values],
            "llc_mean": [None if not math.isfinite(v) else float(v) for v in ll["llc_mean"].values],
            "llc_std": [None if not math.isfinite(v) else float(v) for v in ll["llc_std"].values],
            "any_diverged": bool(np.any(ll["diverged"].values)) if "diverged" in ll else None,
        }
    return _json_safe(out)


#: The Clock-vs-Pizza metrics as report.json names them.
ALGORITHM_METRICS = ("distance_irrelevance", "gradient_symmetricity", "circularity")


def algorithm_summary(alg: xr.Dataset, reference: int, phases: xr.Dataset | None = None) -> dict[str, Any]:
    """The ``algorithm`` entry of report.json: DI, GS and circularity at the reference checkpoint, the final one
    and the first checkpoint at or after each phase point found, with the side of the DI = GS diagonal.

    The side is descriptive (``docs/algorithms.md``): ``"pizza"`` where GS > DI (the released alpha = 0 model:
    GS 0.994, DI 0.172), ``"clock"`` where GS < DI (alpha = 1: 0.334, 0.848); the sweep medians of Zhong et al.
    fall on the two sides by attention rate (``beyond.md`` 2.4).
    """
    epochs = alg["checkpoint"].values

    def row(epoch: int) -> dict[str, Any]:
        vals = {m: _at(alg, m, int(epoch)) for m in ALGORITHM_METRICS}
        di, gs = vals["distance_irrelevance"], vals["gradient_symmetricity"]
        side = None if di is None or gs is None else ("pizza" if gs > di else "clock")
        return {"epoch": int(epoch), **vals, "side": side}

    out: dict[str, Any] = {"rule": alg.attrs.get("rule"), "reference": row(reference), "final": row(epochs[-1])}
    if phases is not None and "epoch_at" in phases:
        at = {}
        for pt in phases["point"].values:
            r = phases.sel(point=pt)
            later = epochs[epochs >= int(r["epoch_at"])] if bool(r["found"]) else []
            if len(later):
                at[str(pt)] = row(later[0])
        out["at_phases"] = at
    return out


def _phase_point(ph: xr.Dataset, pt: Any) -> dict[str, Any]:
    """One point of the phases Dataset for report.json; ``certain`` is None for analyses written before it existed."""
    row = ph.sel(point=pt)
    failed = str(row["failed_checks"].values) if "failed_checks" in ph else ""
    return {
        "epoch": int(row["epoch_at"]),
        "found": bool(row["found"]),
        "certain": bool(row["certain"]) if "certain" in ph else None,
        "failed_checks": [f for f in failed.split("; ") if f],
        "criterion": str(row["criterion"].values),
    }


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _phase_epoch(v: dict[str, Any]) -> str:
    """The epoch cell of the phases table: 'not found', the epoch, or the epoch marked uncertain."""
    if not v["found"]:
        return "not found"
    failed = v.get("failed_checks") or []
    if failed:
        return f"{v['epoch']} (uncertain: {'check' if len(failed) == 1 else 'checks'} {', '.join(failed)} failed)"
    if v.get("certain") is False:
        return f"{v['epoch']} (uncertain)"
    return str(v["epoch"])


def _fmt(v: Any) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.3g}"
    return str(v)


def report_markdown(summary: dict[str, Any], *, title: str = "mechgrok report") -> str:
    """``report.md`` from :func:`summarise`'s dict."""
    if summary.get("task") in TASK_ANALYSES:
        return task_report_markdown(summary, title=title)
    op = summary.get("operation", "add")
    where = "" if op == "add" else f"{summary.get('operation_coordinates')}. "
    lines = [f"# {title}", "", f"{where}p = {summary['p']}, {_plural(summary['n_checkpoints'], 'checkpoint')}, reference checkpoint "
             f"epoch {summary['reference_checkpoint']}, mechgrok {summary.get('mechgrok_version')}.", ""]
    for name, why in summary.get("skipped", {}).items():
        lines += [f"Skipped {name}: {why}.", ""]
    kf = summary.get("key_frequencies")
    if kf:
        lines += ["## Key frequencies", "", f"**{', '.join(map(str, kf['set'])) or 'none'}**"
                  f" (sources of evidence agree: {'yes' if kf['sources_agree'] else 'no'}). Rule: {kf['rule']}", "",
                  f"The paper's literal rule (argmax over all neurons) gives {kf['literal_rule_set']}.", "",
                  "| freq | key | neurons above FVE threshold | neuron share | W_E norm share | W_logit norm share |",
                  "|---|---|---|---|---|---|"]
        for k, ev in kf["evidence"].items():
            lines.append(f"| {k} | {'yes' if ev['key'] else 'no'} | {ev['neurons_above_threshold']} | "
                         f"{ev['neuron_share']:.3f} | {ev['W_E_share']:.3f} | {ev['W_logit_share']:.3f} |")
        lines.append("")
    cl = summary.get("clusters")
    if cl:
        lines += ["## Neuron clusters", "", f"At FVE >= {cl['threshold']}: {cl['share_above_threshold']:.1%} of neurons "
                  "are explained by one frequency.", "", "| cluster | neurons |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in cl["sizes"].items()]
        lines.append("")
    ls = summary.get("losses")
    if ls:
        last = ls.get("final_checkpoint")
        if last is not None and int(last) == int(summary["reference_checkpoint"]):  # one column: they are the same
            lines += ["## Losses (nats)", "", f"| measure | final (= reference, epoch {last}) |", "|---|---|"]
            lines += [f"| {name} | {_fmt(v)} |" for name, v in ls["final"].items()]
        else:
            lines += ["## Losses (nats)", "",
                      f"| measure | reference (epoch {summary['reference_checkpoint']}) | final (epoch {last}) |",
                      "|---|---|---|"]
            for name in ls["final"]:
                lines.append(f"| {name} | {_fmt(ls['reference'][name])} | {_fmt(ls['final'][name])} |")
        lines += ["", "Excluded loss per key frequency (train split, final checkpoint): "
                  + ", ".join(f"{k}: {_fmt(v)}" for k, v in ls["excluded_loss_per_key_freq_final"].items()), ""]
    lg = summary.get("logit_structure")
    if lg:
        lines += ["## Logit structure", "", "The key frequencies' cos(w(a + b - c)) terms explain "
                  f"{lg['fraction_of_logit_variance_explained_by_key_freqs']:.1%} of the logit variance.", ""]
    hd = summary.get("heads")
    if hd:
        lines += ["## Attention heads", "", "| head | frequency | FVE |", "|---|---|---|"]
        lines += [f"| {h['head']} | {h['freq']} | {_fmt(h['fve'])} |" for h in hd]  # n/a: constant attention
        lines.append("")
    ph = summary.get("phases")
    if ph:
        lines += ["## Phases", "", "| point | epoch | criterion |", "|---|---|---|"]
        lines += [f"| {k} | {_phase_epoch(v)} | {v['criterion']} |" for k, v in ph.items()]
        lines += ["", f"Algorithm: {summary.get('phases_algorithm')}", ""]
    w = summary.get("weights")
    if w:
        lines += ["## Weights (final checkpoint)", "", f"Sum of squared weights {_fmt(w['sum_sq_weights_total'])}; "
                  f"Gini of W_E Fourier norms {_fmt(w['gini_W_E_component'])}, of W_logit {_fmt(w['gini_W_logit_component'])}.", ""]
    al = summary.get("algorithm")
    if al:
        lines += ["## Algorithm: Clock or Pizza (Zhong et al. 2023)", "",
                  "Distance irrelevance (DI), gradient symmetricity (GS) and circularity over training; GS > DI is "
                  "the Pizza side, GS < DI the Clock side (descriptive coordinates, docs/algorithms.md).", "",
                  "| checkpoint | epoch | DI | GS | circularity | side |", "|---|---|---|---|---|---|"]
        rows = [(f"at {k}", v) for k, v in al.get("at_phases", {}).items()]
        rows += [("reference", al["reference"]), ("final", al["final"])]
        lines += [f"| {name} | {v['epoch']} | {_fmt(v['distance_irrelevance'])} | {_fmt(v['gradient_symmetricity'])} | "
                  f"{_fmt(v['circularity'])} | {v['side'] or 'n/a'} |" for name, v in rows]
        lines += ["", f"Rule: {al['rule']}", ""]
    vc = summary.get("competition")
    if vc:
        lines += ["## Vector competition (bumps of N_k per key frequency)", "",
                  "Bumps of the per-frequency aggregate N_k(t) of each vector family and which process the decline "
                  "after the peak supports (docs/competition.md). Frequencies whose N_k has a bump: "
                  + ", ".join(f"{f} {n}/{vc['n_freqs']}" for f, n in vc["freqs_with_N_bump"].items()) + ".", "",
                  "| family | freq | bump | peak epoch | rel. height | realign | gainer | spread | within | norm change "
                  "| flux to | verdict |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        lines += [f"| {r['family']} | {r['freq']} | {'yes' if r['is_bump'] else 'no'} | {r['peak_epoch']} | "
                  f"{_fmt(r['relative_height'])} | {_fmt(r['realign_share'])} | {_fmt(r['gainer_share'])} | "
                  f"{_fmt(r['retained_spread'])} | {_fmt(r['within_share'])} | {_fmt(r['norm_change'])} | "
                  f"{r['flux_to'] if r['flux_to'] >= 0 else 'n/a'} | {r['verdict']} |" for r in vc["table"]]
        lines += ["", "Dominant-frequency switches: " + ", ".join(f"{f} {n}" for f, n in vc["dominant_freq_switches"].items())
                  + f". Verdict rules: {vc['rules']['verdicts']}.", ""]
    sl = summary.get("slingshots")
    if sl:
        lines += ["## Slingshots (loss spikes at the float32 floor)", "",
                  f"{_plural(sl['n_spikes'], 'spike')} of {sl['curve'] or 'the train loss'} after it first came within "
                  f"100 x 2^-23 of the float32 floor (epoch {sl['armed_epoch'] if sl['armed_epoch'] >= 0 else 'never'}; "
                  f"least loss after that {_fmt(sl['floor_loss'])} nats); {sl['n_jumps']} epoch-to-epoch jumps "
                  f"above 10x, {sl['n_jumps_100x']} above 100x (docs/slingshots.md).", ""]
        if sl["spikes"]:
            lines += ["| onset epoch | peak epoch | onset loss | peak loss | height (decades) |", "|---|---|---|---|---|"]
            lines += [f"| {r['onset_epoch']} | {r['peak_epoch']} | {_fmt(r['onset_loss'])} | {_fmt(r['peak_loss'])} | "
                      f"{r['height_decades']:.2f} |" for r in sl["spikes"][:20]]
            if len(sl["spikes"]) > 20:
                lines.append(f"| ... {len(sl['spikes']) - 20} more in report.json | | | | |")
            lines.append("")
    ll = summary.get("llc")
    if ll:
        lines += ["## Local learning coefficient", "", "| epoch | LLC mean | LLC std |", "|---|---|---|"]
        lines += [f"| {e} | {_fmt(m)} | {_fmt(s)} |" for e, m, s in zip(ll["checkpoints"], ll["llc_mean"], ll["llc_std"])]
        lines += ["", f"Any chain diverged: {ll['any_diverged']}", ""]
    return "\n".join(lines)
