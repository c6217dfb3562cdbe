"""What ``mechgrok analyze`` writes for people: ``report.json`` (:func:`summarise`) and ``report.md``
(:func:`report_markdown`), from the analysis tree of :func:`mechgrok.pipeline.analyze`."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import xarray as xr

from mechgrok.store.assemble import json_safe as _json_safe

__all__ = ["summarise", "report_markdown"]



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
    bearing on it, criterion), ``weights`` (sum of squared weights, Gini) and ``llc`` where run.
    """
    root = tree.to_dataset(inherit=False)
    ref = int(root.attrs["reference_checkpoint"])
    out: dict[str, Any] = {
        "mechgrok_version": root.attrs.get("mechgrok_version"),
        "p": int(root.attrs["p"]),
        "reference_checkpoint": ref,
        "n_checkpoints": int(root.attrs.get("n_checkpoints", 0)),
        "analyses": list(root.attrs.get("analyses", [])),
        "skipped": json.loads(root.attrs.get("skipped", "{}")),
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
    if "llc" in children:
        ll = children["llc"]
        out["llc"] = {
            "checkpoints": [int(e) for e in ll["checkpoint"].values],
            "llc_mean": [None if not math.isfinite(v) else float(v) for v in ll["llc_mean"].values],
            "llc_std": [None if not math.isfinite(v) else float(v) for v in ll["llc_std"].values],
            "any_diverged": bool(np.any(ll["diverged"].values)) if "diverged" in ll else None,
        }
    return _json_safe(out)


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
    lines = [f"# {title}", "", f"p = {summary['p']}, {_plural(summary['n_checkpoints'], 'checkpoint')}, reference checkpoint "
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
        lines += [f"| {h['head']} | {h['freq']} | {h['fve']:.3f} |" for h in hd]
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
    ll = summary.get("llc")
    if ll:
        lines += ["## Local learning coefficient", "", "| epoch | LLC mean | LLC std |", "|---|---|---|"]
        lines += [f"| {e} | {_fmt(m)} | {_fmt(s)} |" for e, m, s in zip(ll["checkpoints"], ll["llc_mean"], ll["llc_std"])]
        lines += ["", f"Any chain diverged: {ll['any_diverged']}", ""]
    return "\n".join(lines)
