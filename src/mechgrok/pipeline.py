"""Run every analysis over a trajectory: the engine behind ``mechgrok analyze``.

The order follows the data flow of the paper's analysis:

1. **key frequencies** at the reference checkpoint (default: the last), with their evidence;
2. **one pass over the checkpoints**, in chunks: a single batched forward pass over the p x p grid per chunk, from
   which the neuron clusters (FVE), the attention fits, the logit structure and every Fourier-space ablation
   (loss, restricted, excluded, 3 x 3) are derived, so no forward pass is repeated;
3. weight-only measures: Fourier norms of ``W_E`` and ``W_logit``, Gini coefficients, sums of squared weights;
4. the **phases** from the progress measures;
5. at the reference checkpoint, what the figures need: effective weights, the 2D Fourier spectrum of the logits
   and of example neurons, their activations over (a, b), the attention patterns;
6. optionally the local learning coefficient (LLC) on a subsample of checkpoints.

The result is an ``xarray.DataTree`` with one group per analysis, written to ``analysis.zarr`` by
:func:`write_analysis`, and summarised by :func:`summarise` (``report.json``) and :func:`report_markdown`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import xarray as xr

from mechgrok import __version__
from mechgrok.errors import AnalysisError, StoreError
from mechgrok.store.assemble import json_safe as _json_safe

__all__ = ["ANALYSES", "analyze", "write_analysis", "open_analysis", "summarise", "report_markdown"]

#: Analyses by name, in the order they run. ``llc`` runs only when asked for.
ANALYSES: tuple[str, ...] = (
    "key_frequencies",
    "neurons",
    "attention",
    "logits",
    "ablation",
    "fourier_norms",
    "measures",
    "phases",
    "reference",
    "llc",
)
_DEFAULT = tuple(a for a in ANALYSES if a != "llc")
_NEEDS: dict[str, tuple[str, ...]] = {
    "logits": ("key_frequencies",),
    "ablation": ("key_frequencies",),
    "phases": ("ablation", "measures"),
    "reference": ("key_frequencies",),
}

Progress = Callable[[str, int, int], None]


def _resolve(analyses: Sequence[str] | None, llc: bool) -> list[str]:
    chosen = list(_DEFAULT if analyses is None else analyses)
    unknown = sorted(set(chosen) - set(ANALYSES))
    if unknown:
        raise AnalysisError(f"unknown analyses {unknown}; known: {', '.join(ANALYSES)}")
    if llc and "llc" not in chosen:
        chosen.append("llc")
    todo = set(chosen)
    changed = True
    while changed:
        changed = False
        for a in list(todo):
            for dep in _NEEDS.get(a, ()):
                if dep not in todo:
                    todo.add(dep)
                    changed = True
    return [a for a in ANALYSES if a in todo]


def _reference_index(ds: xr.Dataset, reference: int | None) -> int:
    epochs = ds["checkpoint"].values
    if reference is None:
        return len(epochs) - 1
    hits = np.flatnonzero(epochs == reference)
    if hits.size == 0:
        raise AnalysisError(f"no checkpoint at epoch {reference}; the trajectory has epochs {epochs[0]}..{epochs[-1]}")
    return int(hits[0])


def analyze(
    ds: xr.Dataset,
    *,
    reference: int | None = None,
    checkpoints: Sequence[int] | None = None,
    analyses: Sequence[str] | None = None,
    chunk: int = 8,
    llc: bool = False,
    llc_every: int = 10,
    llc_options: dict[str, Any] | None = None,
    progress: Progress | None = None,
) -> xr.DataTree:
    """Run the chosen analyses over a trajectory.

    Parameters
    ----------
    ds : xarray.Dataset
        Canonical one-layer modular-arithmetic trajectory (:func:`mechgrok.open_run`), with ``attrs["p"]``
        and ``is_train`` (a, b).
    reference : int, optional
        Epoch of the reference checkpoint that fixes the key frequencies (default: the last checkpoint).
    checkpoints : sequence of int, optional
        Epochs to analyse (default: all). The reference checkpoint is always included.
    analyses : sequence of str, optional
        Subset of :data:`ANALYSES` (their dependencies are added). Default: all but ``llc``.
    chunk : int
        Checkpoints per batched float64 forward pass (memory at p = 113 and the paper's widths: about 70 MB per checkpoint of the chunk).
    llc : bool
        Also estimate the local learning coefficient (:mod:`mechgrok.llc`).
    llc_every : int
        Estimate the LLC at every ``llc_every``-th analysed checkpoint (and the last).
    llc_options : dict, optional
        Keyword arguments for :func:`mechgrok.llc.llc_trajectory` (step size, n*beta, chains, ...).
    progress : callable, optional
        ``progress(stage, done, total)`` after each step, for a progress bar.

    Returns
    -------
    xarray.DataTree
        One child per analysis run (names of :data:`ANALYSES`); every child Dataset is over ``checkpoint``
        (epochs) where it varies with training. Root attrs: the p, the reference epoch, the key frequencies,
        the analyses run, the mechgrok version and the trajectory's source.

    Raises
    ------
    AnalysisError
        For a trajectory without p or split, an unknown analysis, or an unknown reference or checkpoint epoch.
    """
    from mechgrok.activations import grid_activations, iter_checkpoint_chunks, model_p

    todo = _resolve(analyses, llc)
    p = model_p(ds)
    if "is_train" not in ds:
        raise AnalysisError("the trajectory has no train/test split (is_train); pass seed/frac_train when loading it")
    ref_idx = _reference_index(ds, reference)
    ref_epoch = int(ds["checkpoint"].values[ref_idx])
    if checkpoints is not None:
        wanted = sorted(set(int(e) for e in checkpoints) | {ref_epoch})
        missing = sorted(set(wanted) - set(ds["checkpoint"].values.tolist()))
        if missing:
            raise AnalysisError(f"no checkpoints at epochs {missing[:5]}")
        ds = ds.sel(checkpoint=wanted)
    n = ds.sizes["checkpoint"]
    skipped: dict[str, str] = {}
    if n < 3 and "phases" in todo and (analyses is None or "phases" not in analyses):
        todo.remove("phases")
        skipped["phases"] = f"needs at least 3 checkpoints, the trajectory has {n}"
    report = progress or (lambda stage, done, total: None)
    groups: dict[str, xr.Dataset] = {}

    key_freqs: list[int] = []
    ref_ds = ds.sel(checkpoint=[ref_epoch])
    if "key_frequencies" in todo:
        from mechgrok.key_frequencies import key_frequencies

        kf = key_frequencies(ds, reference=ref_epoch)
        key_freqs = [int(k) for k in kf["key_freqs"].values]
        groups["key_frequencies"] = kf
        report("key frequencies", 1, 1)
        if not key_freqs:
            raise AnalysisError(
                f"no key frequencies found at the reference checkpoint (epoch {ref_epoch}); the model has not formed "
                "the Fourier circuit there. Choose a later reference checkpoint with --reference"
            )

    # One pass over the checkpoints: a forward pass per chunk, every activation-based analysis derived from it.
    per_chunk = [a for a in ("neurons", "attention", "logits", "ablation") if a in todo]
    if per_chunk:
        from mechgrok.ablation import logit_ablations
        from mechgrok.attention import attention_fit_from_pattern
        from mechgrok.logits import cos_coefficients, logit_structure_from_coefficients
        from mechgrok.neurons import clusters_from_fve, frequency_fve

        include = ["logits"]
        if "neurons" in todo:
            include.append("mlp_post")
        if "attention" in todo:
            include.append("attn")
        parts: dict[str, list[xr.Dataset]] = {a: [] for a in per_chunk}
        done = 0
        for sub in iter_checkpoint_chunks(ds, chunk):
            act = grid_activations(sub, include=tuple(include), chunk=chunk)
            if "neurons" in todo:
                cl = clusters_from_fve(frequency_fve(act["mlp_post"]))
                parts["neurons"].append(cl.drop_vars("fve"))
            if "attention" in todo:
                parts["attention"].append(attention_fit_from_pattern(act["attn_to_a"]))
            if "logits" in todo:
                parts["logits"].append(logit_structure_from_coefficients(cos_coefficients(act["logits"]), key_freqs=key_freqs))
            if "ablation" in todo:
                parts["ablation"].append(
                    logit_ablations(act["logits"], is_train=ds["is_train"], key_freqs=key_freqs, all_freqs=True,
                                    chunk=chunk, reference_checkpoint=ref_epoch, key_freq_rule=groups["key_frequencies"].attrs.get("rule"))
                )
            del act
            done += sub.sizes["checkpoint"]
            report("activations and ablations", done, n)
        for a, pieces in parts.items():
            merged = xr.concat(pieces, dim="checkpoint", data_vars="minimal", coords="minimal", compat="override",
                               combine_attrs="override")
            groups[a] = merged.assign_coords(checkpoint=ds["checkpoint"].values)

    if "fourier_norms" in todo:
        from mechgrok.fourier_norms import fourier_norms

        groups["fourier_norms"] = fourier_norms(ds)
        report("Fourier norms", 1, 1)
    if "measures" in todo:
        from mechgrok.measures import weight_measures

        groups["measures"] = weight_measures(ds)
        report("weight measures", 1, 1)
    if "phases" in todo:
        from mechgrok.phases import find_phases

        measures = xr.merge([groups["ablation"], groups["measures"]], combine_attrs="drop_conflicts")
        groups["phases"] = find_phases(measures)
        report("phases", 1, 1)
    if "reference" in todo:
        groups["reference"] = reference_views(ref_ds, key_freqs=key_freqs, clusters=groups.get("neurons"))
        report("reference checkpoint", 1, 1)
    if "llc" in todo:
        from mechgrok.llc import llc_trajectory

        idx = sorted(set(range(0, n, max(1, int(llc_every)))) | {n - 1})
        groups["llc"] = llc_trajectory(ds.isel(checkpoint=idx), **(llc_options or {}))
        report("LLC", 1, 1)

    attrs = {
        "title": "mechgrok analysis",
        "p": p,
        "reference_checkpoint": ref_epoch,
        "key_freqs": key_freqs,
        "analyses": list(groups),
        "skipped": json.dumps(skipped),
        "n_checkpoints": int(n),
        "mechgrok_version": __version__,
        "trajectory_source_format": ds.attrs.get("source_format", ""),
        "trajectory_source_files": ds.attrs.get("source_files", "[]"),
        "config_json": ds.attrs.get("config_json", "{}"),
    }
    return xr.DataTree.from_dict({"/": xr.Dataset(attrs=attrs), **{f"/{k}": v for k, v in groups.items()}})


def reference_views(ref_ds: xr.Dataset, *, key_freqs: Sequence[int], clusters: xr.Dataset | None = None,
                    neurons_per_cluster: int = 4) -> xr.Dataset:
    """What the figures show of the reference checkpoint (paper Figs. 3-5, 8).

    Parameters
    ----------
    ref_ds : xarray.Dataset
        The trajectory reduced to one checkpoint (``checkpoint`` dim of length 1).
    key_freqs : sequence of int
        The key frequencies (to pick example neurons from their clusters).
    clusters : xarray.Dataset, optional
        Output of the neuron clustering over checkpoints; recomputed at the reference when absent.
    neurons_per_cluster : int
        Example neurons per key-frequency cluster (the most explained ones).

    Returns
    -------
    xarray.Dataset
        Without the ``checkpoint`` dim (its epoch is ``attrs["checkpoint"]``):
        ``logits_fourier_norm`` (fa, fb): ||L_hat[f, g, :]|| over the output class (paper Fig. 4c);
        ``neuron_acts`` (example, a, b): post-ReLU activations of example neurons (Fig. 4b);
        ``neuron_fourier`` (example, fa, fb): their centred 2D Fourier spectra (absolute values);
        ``example_neuron``, ``example_freq`` (example): which neuron, of which cluster;
        ``neuron_fve`` (d_mlp, freq), ``neuron_freq``, ``frac_explained``, ``cluster`` (d_mlp): the clustering;
        ``W_logit_fourier`` (fourier, d_mlp): W_logit in the Fourier basis along the output (Fig. 5b);
        ``W_attn`` (head, vocab), ``W_attn_fourier`` (head, fourier): the attention scores from ``=`` (Fig. 8);
        ``attn_to_a`` (head, a, b): attention from ``=`` to a over the grid.
    """
    from mechgrok.activations import grid_activations
    from mechgrok.effective_weights import effective_weights
    from mechgrok.fourier import fft1d, fft2d
    from mechgrok.neurons import clusters_from_fve, frequency_fve

    act = grid_activations(ref_ds, include=("logits", "mlp_post", "attn")).isel(checkpoint=0)
    epoch = int(ref_ds["checkpoint"].values[0])
    lf = fft2d(act["logits"].astype(np.float64))
    logits_fourier_norm = np.sqrt((lf**2).sum("c")).transpose("fa", "fb")
    cl = clusters_from_fve(frequency_fve(act["mlp_post"].expand_dims(checkpoint=[epoch]))).isel(checkpoint=0)
    examples, example_freq = [], []
    for k in key_freqs:
        members = np.flatnonzero(cl["cluster"].values == k)
        order = members[np.argsort(-cl["frac_explained"].values[members])]
        for nidx in order[:neurons_per_cluster]:
            examples.append(int(nidx))
            example_freq.append(int(k))
    acts = act["mlp_post"].isel(d_mlp=examples).rename(d_mlp="example").transpose("example", "a", "b")
    centred = acts - acts.mean(("a", "b"))
    spectra = np.abs(fft2d(centred)).transpose("example", "fa", "fb")
    eff = effective_weights(ref_ds, include=("W_logit", "W_attn")).isel(checkpoint=0)
    W_logit_fourier = fft1d(eff["W_logit"], "c").transpose("fourier", "d_mlp")
    W_attn_fourier = fft1d(eff["W_attn"].rename(vocab="x"), "x")
    out = xr.Dataset(
        {
            "logits_fourier_norm": logits_fourier_norm,
            "neuron_acts": acts.drop_vars([c for c in acts.coords if c not in ("a", "b")]),
            "neuron_fourier": spectra.drop_vars([c for c in spectra.coords if c not in ("fa", "fb", "freq_fa", "freq_fb")]),
            "example_neuron": ("example", np.asarray(examples, dtype=np.int64)),
            "example_freq": ("example", np.asarray(example_freq, dtype=np.int64)),
            "neuron_fve": cl["fve"].drop_vars([c for c in cl["fve"].coords if c not in ("freq",)]),
            "neuron_freq": cl["neuron_freq"].drop_vars("checkpoint", errors="ignore"),
            "frac_explained": cl["frac_explained"].drop_vars("checkpoint", errors="ignore"),
            "cluster": cl["cluster"].drop_vars("checkpoint", errors="ignore"),
            "W_logit_fourier": W_logit_fourier.drop_vars([c for c in W_logit_fourier.coords if c not in ("fourier", "freq")]),
            "W_attn": eff["W_attn"].drop_vars("checkpoint", errors="ignore"),
            "W_attn_fourier": W_attn_fourier.drop_vars([c for c in W_attn_fourier.coords if c not in ("fourier", "freq")]),
            "attn_to_a": act["attn_to_a"].drop_vars("checkpoint", errors="ignore"),
        },
        attrs={
            "description": "views of the reference checkpoint for the figures (paper Figs. 3-5, 8)",
            "checkpoint": epoch,
            "key_freqs": [int(k) for k in key_freqs],
            "W_attn_scaled": int(eff.attrs.get("scaled", 1)),
        },
    )
    return out.drop_vars([c for c in ("checkpoint",) if c in out.coords])


# ------------------------------------------------------------------------------------------------------------
# Writing and reading analysis.zarr


def _zarr_ready(ds: xr.Dataset) -> xr.Dataset:
    """Object-dtype strings (Zarr v3 spec), JSON-safe attrs, no stale encodings."""
    ds = ds.drop_encoding()
    for name, var in list(ds.variables.items()):
        if var.dtype.kind == "U" or var.dtype.kind == "T":
            ds[name] = var.astype(object)
    ds.attrs = _json_safe(ds.attrs)
    for name in ds.variables:
        ds[name].attrs = _json_safe(ds[name].attrs)
    return ds


def write_analysis(tree: xr.DataTree, path: str | Path, *, overwrite: bool = True) -> Path:
    """Write the analysis tree to a Zarr v3 store, one group per analysis.

    The store is written beside its final name and renamed into place, so an interrupted write leaves the
    previous store (or none), never a half-written one.

    Parameters
    ----------
    tree : xarray.DataTree
        Output of :func:`analyze`.
    path : str or Path
        Target, e.g. ``RUN_DIR/analysis.zarr``.
    overwrite : bool
        Replace an existing store (default).

    Returns
    -------
    Path

    Raises
    ------
    StoreError
        If the target exists and ``overwrite`` is false, or the write fails.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise StoreError("already exists", path=path)
    from mechgrok.store.zarr_io import write_aside

    clean = xr.DataTree.from_dict({node.path: _zarr_ready(node.to_dataset(inherit=False)) for node in tree.subtree})
    return write_aside(path, lambda tmp: clean.to_zarr(tmp, mode="w", consolidated=False, zarr_format=3))


def open_analysis(path: str | Path) -> xr.DataTree:
    """Open an ``analysis.zarr`` written by :func:`write_analysis` (lazily).

    Raises
    ------
    StoreError
        If the path is not such a store.
    """
    path = Path(path)
    if not (path / "zarr.json").is_file():
        raise StoreError("not a Zarr store (no zarr.json)", path=path)
    try:
        return xr.open_datatree(path, engine="zarr", consolidated=False, chunks=None)
    except (OSError, ValueError, KeyError) as e:
        raise StoreError(f"cannot open the analysis store ({e})", path=path) from None


# ------------------------------------------------------------------------------------------------------------
# Report


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
