"""Run every analysis over a trajectory: the engine behind ``mechgrok analyze``.

The order follows the data flow of the paper's analysis:

1. **key frequencies** at the reference checkpoint (default: the last), with their evidence;
2. **one pass over the checkpoints** (:func:`mechgrok.engine.run`): one float64 forward pass over the p x p grid
   per checkpoint, from which the neuron clusters (FVE), the attention fits, the logit structure and every
   Fourier-space ablation (loss, restricted, excluded, 3 x 3) are derived, together with the weight-only
   measures (Fourier norms of ``W_E`` and ``W_logit``, Gini coefficients, sums of squared weights) and the
   Clock-vs-Pizza metrics (distance irrelevance, gradient symmetricity, circularity), so no checkpoint is read
   or run twice;
3. the **phases** from the progress measures;
4. at the reference checkpoint, what the figures need: effective weights, the 2D Fourier spectrum of the logits
   and of example neurons, their activations over (a, b), the attention patterns;
5. optionally the local learning coefficient (LLC) on a subsample of checkpoints.

The result is an ``xarray.DataTree`` with one group per analysis, written to ``analysis.zarr`` by
:func:`mechgrok.store.analysis_store.write_analysis`, and summarised by :func:`mechgrok.report.summarise`
(``report.json``) and :func:`mechgrok.report.report_markdown`.
"""

from __future__ import annotations

import json
from typing import Any, Callable, Sequence

import numpy as np
import xarray as xr

import torch

from mechgrok import __version__
from mechgrok.analyses.llc import llc_trajectory
from mechgrok.analyses.measures import SumSquaredWeights
from mechgrok.analyses.modular.ablation import Ablation
from mechgrok.analyses.modular.algorithm_metrics import AlgorithmMetrics
from mechgrok.analyses.modular.attention import AttentionFit
from mechgrok.analyses.modular.competition import competition_dataset
from mechgrok.analyses.modular.fourier_gini import gini_dataset
from mechgrok.analyses.modular.fourier_norms import FourierNorms
from mechgrok.analyses.modular.frequency_alignment import FrequencyAlignment
from mechgrok.analyses.modular.grid import model_p
from mechgrok.analyses.modular.key_frequencies import key_frequencies
from mechgrok.analyses.modular.logits import LogitStructure
from mechgrok.analyses.modular.neurons import NeuronClusters
from mechgrok.analyses.modular.reference import reference_views
from mechgrok.analyses.phases import find_phases
from mechgrok.analyses.slingshots import find_slingshots
from mechgrok.task_pipeline import TASK_ANALYSES, analyze_task
from mechgrok.tasks.identify import infer_task
from mechgrok.descriptions import describe
from mechgrok.engine import DEFAULT_CHUNK, require_checkpoints, resolve_device, run
from mechgrok.errors import AnalysisError
from mechgrok.memory import available_bytes, grid_pass_bytes, require_memory
from mechgrok.tasks.discrete_log import coordinate_trajectory, operation_of

__all__ = ["ANALYSES", "analyze"]

#: Analyses by name, in the order they run. ``llc`` runs only when asked for.
ANALYSES: tuple[str, ...] = (
    "key_frequencies",
    "neurons",
    "attention",
    "logits",
    "algorithm",
    "ablation",
    "fourier_norms",
    "measures",
    "competition",
    "slingshots",
    "phases",
    "reference",
    "llc",
)
_DEFAULT = tuple(a for a in ANALYSES if a != "llc")
_NEEDS: dict[str, tuple[str, ...]] = {
    "logits": ("key_frequencies",),
    "competition": ("key_frequencies",),
    "ablation": ("key_frequencies",),
    "phases": ("ablation", "measures"),
    "reference": ("key_frequencies",),
}

Progress = Callable[[str, int, int], None]
#: Analyses that need the odd-order Fourier basis of Z_p: not run for mul and div, whose discrete-log
#: coordinates live on Z_(p-1).
_ODD_ORDER_ONLY = ("competition",)


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
    analyses: Sequence[str] | None = None,
    chunk: int = DEFAULT_CHUNK,
    device: str | torch.device | None = None,
    llc: bool = False,
    llc_every: int = 10,
    llc_options: dict[str, Any] | None = None,
    progress: Progress | bool | None = None,
) -> xr.DataTree:
    """Run the chosen analyses over a trajectory: one pass of :func:`mechgrok.engine.run` for all of them.

    Parameters
    ----------
    ds : xarray.Dataset
        Canonical one-layer modular-arithmetic trajectory (:func:`mechgrok.open_run`), with ``attrs["p"]``
        (a trajectory of n-digit addition or repeated subsequences, or a Dataset of loss curves, goes to
        :func:`mechgrok.task_pipeline.analyze_task` instead, with ``chunk``, ``device`` and ``progress``)
        and ``is_train`` (a, b), selected along ``checkpoint`` by the caller (``ds.sel(checkpoint=[...])`` by
        epoch, :func:`mechgrok.engine.select_epochs` for a clear error on a missing epoch). Any operation: sub
        in its coordinates (b re-indexed), mul and div in discrete-log coordinates on Z_(p-1)
        (:func:`mechgrok.tasks.discrete_log.coordinate_trajectory`; ``docs/algorithms.md``).
    reference : int, optional
        Epoch of the reference checkpoint that fixes the key frequencies (default: the last checkpoint); it
        must be in ``ds``.
    analyses : sequence of str, optional
        Subset of :data:`ANALYSES` (their dependencies are added). Default: all but ``llc``.
    chunk : int
        Checkpoints whose weights are read at once (the work memory of a checkpoint, about 130 MB at p = 113
        and the paper's widths, is reused from one checkpoint to the next).
    device : str, torch.device or None
        Where the forward passes run: None (default) for CUDA when available, else CPU; ``"cpu"``, ``"cuda"``.
        float64 on either.
    llc : bool
        Also estimate the local learning coefficient (:mod:`mechgrok.analyses.llc`).
    llc_every : int
        Estimate the LLC at every ``llc_every``-th analysed checkpoint (and the last).
    llc_options : dict, optional
        Keyword arguments for :func:`mechgrok.analyses.llc.llc_trajectory` (step size, n*beta, chains, ...).
    progress : callable or bool, optional
        ``progress(stage, done, total)`` after each step, for a progress bar; True for a rich bar on stderr
        (:func:`mechgrok.progress_bar.rich_bar`).

    Returns
    -------
    xarray.DataTree
        One child per analysis run (names of :data:`ANALYSES`); every child Dataset is over ``checkpoint``
        (epochs) where it varies with training. Root attrs: the p, the reference epoch, the key frequencies,
        the analyses run, the mechgrok version and the trajectory's source.

    Raises
    ------
    AnalysisError
        For a trajectory without p or split, an unknown analysis, an unknown reference epoch, no checkpoint, or
        an unavailable device.

    Examples
    --------
    >>> import mechgrok
    >>> tree = mechgrok.analyze(mechgrok.open_run("fixtures/quick-run").isel(checkpoint=[-3, -2, -1]))
    >>> tree["ablation"]["restricted_loss_test"].isel(checkpoint=-1).item() < 1e-3
    True
    """
    if progress is True:
        from mechgrok.progress_bar import rich_bar

        with rich_bar() as bar:
            return analyze(ds, reference=reference, analyses=analyses, chunk=chunk, device=device, llc=llc,
                           llc_every=llc_every, llc_options=llc_options, progress=bar)
    task = ds.attrs.get("task") or infer_task(ds)
    if task in TASK_ANALYSES:  # n-digit addition, repeated subsequences, curve-only files: mechgrok.task_pipeline
        return analyze_task(ds, chunk=chunk, device=device, progress=progress)
    todo = _resolve(analyses, llc)
    operation = operation_of(ds.attrs)
    ds = coordinate_trajectory(ds)  # sub: b re-indexed; mul and div: discrete logs (mechgrok.tasks.discrete_log)
    p = model_p(ds)
    n = require_checkpoints(ds)
    dev = resolve_device(device)
    if dev.type == "cpu":  # one checkpoint's grid pass cannot be chunked: a clear error rather than an OOM kill
        sizes = {d: int(ds.sizes.get(d, 0)) for d in ("d_model", "d_mlp", "vocab_out", "head")}
        require_memory(grid_pass_bytes(p, sizes["d_model"], sizes["d_mlp"], sizes["vocab_out"], sizes["head"]),
                       what=f"one checkpoint's float64 grid pass (p = {p})")
    if "is_train" not in ds:
        raise AnalysisError("the trajectory has no train/test split (is_train); pass seed/frac_train when loading it")
    ref_idx = _reference_index(ds, reference)
    ref_epoch = int(ds["checkpoint"].values[ref_idx])
    skipped: dict[str, str] = {}
    if n < 3 and "phases" in todo and (analyses is None or "phases" not in analyses):
        todo.remove("phases")
        skipped["phases"] = f"needs at least 3 checkpoints, the trajectory has {n}"
    if n < 3 and "competition" in todo and (analyses is None or "competition" not in analyses):
        todo.remove("competition")
        skipped["competition"] = f"bumps need at least 3 checkpoints, the trajectory has {n}"
    if "competition" in todo:
        # the one analysis whose output grows with every checkpoint by a per-vector array: (head, d_mlp, freq)
        # OV-path alignments and the rest, float32, power and alignment, held at once (2 x for the stacking)
        per_ck = 2 * 4 * ((p - 1) // 2) * (int(ds.sizes.get("head", 0)) * int(ds.sizes.get("d_mlp", 0))
                                           + int(ds.sizes.get("d_mlp", 0)) + int(ds.sizes.get("vocab", 0)) + 8)
        need, have = 2 * n * per_ck, available_bytes()
        if have is not None and need > have // 2:
            if analyses is not None and "competition" in analyses:
                require_memory(2 * need, what=f"the competition analysis over {n} checkpoints "
                                              "(per-vector alignments; select fewer checkpoints)")
            todo.remove("competition")
            skipped["competition"] = (f"its per-vector alignments over {n} checkpoints need about {need / 2**30:.1f} "
                                      f"GiB, more than half of the {have / 2**30:.1f} GiB available; select fewer "
                                      "checkpoints (ds.isel(checkpoint=slice(None, None, k))) and ask for it")
    if operation in ("mul", "div"):  # analyses built on the odd-order Fourier basis of Z_p (docs/algorithms.md)
        for name in _ODD_ORDER_ONLY:
            if name in todo:
                if analyses is not None and name in analyses:
                    raise AnalysisError(f"{name} is not available for {operation}: in discrete-log coordinates the "
                                        f"group Z_{p} has even order (docs/algorithms.md)")
                todo.remove(name)
                skipped[name] = f"needs an odd group order; {operation} is analysed on Z_{p} (discrete log)"
    report = progress or (lambda stage, done, total: None)
    groups: dict[str, xr.Dataset] = {}

    key_freqs: list[int] = []
    ref_ds = ds.isel(checkpoint=[ref_idx])
    if "key_frequencies" in todo:
        kf = key_frequencies(ds, reference=ref_epoch, device=dev)
        key_freqs = [int(k) for k in kf["key_freqs"].values]
        groups["key_frequencies"] = kf
        report("key frequencies", 1, 1)
        if not key_freqs:
            raise AnalysisError(
                f"no key frequencies found at the reference checkpoint (epoch {ref_epoch}); the model has not formed "
                "the Fourier circuit there. Choose a later reference checkpoint with --reference"
            )

    # One pass over the checkpoints: one float64 grid forward per checkpoint, every kernel fed from it.
    kernels: list[Any] = []
    if "neurons" in todo:
        kernels.append(NeuronClusters(keep_fve=False))
    if "attention" in todo:
        kernels.append(AttentionFit())
    if "logits" in todo:
        kernels.append(LogitStructure(key_freqs=key_freqs))
    if "algorithm" in todo:
        kernels.append(AlgorithmMetrics.for_trajectory(ds))
    if "ablation" in todo:
        kernels.append(Ablation.for_trajectory(ds, key_freqs=key_freqs, all_freqs=True, block3x3=True,
                                               reference_checkpoint=ref_epoch,
                                               key_freq_rule=groups["key_frequencies"].attrs.get("rule")))
    if "fourier_norms" in todo or "measures" in todo:
        kernels.append(FourierNorms.for_trajectory(ds))
    if "measures" in todo:
        kernels.append(SumSquaredWeights.for_trajectory(ds))
    if "competition" in todo:
        kernels.append(FrequencyAlignment.for_trajectory(ds, alignment=False))  # competition derives A_jk by blocks
    if kernels:
        res = run(ds, kernels, chunk=chunk, device=dev, progress=report, stage="checkpoints")
        for name in ("neurons", "attention", "logits", "algorithm", "ablation", "fourier_norms"):
            if name in todo:
                groups[name] = res[name]
        if "measures" in todo:
            g = gini_dataset(res["fourier_norms"])
            m = xr.merge([g, res["sum_sq_weights"]], combine_attrs="drop_conflicts")  # keeps the variables' attrs
            m.attrs = {**g.attrs, "title": "mechgrok weight measures (Gini of Fourier norms, sum of squared weights)"}
            groups["measures"] = m
        if "competition" in todo:  # the per-vector alignments (hundreds of MB at the paper's size) end here
            groups["competition"] = competition_dataset(res.pop("frequency_alignment"), key_freqs=key_freqs)
        del res
    if "slingshots" in todo:
        finite = int(ds["loss_train"].count()) if "loss_train" in ds else 0
        if finite >= 3:
            groups["slingshots"] = find_slingshots(ds["loss_train"])
        elif analyses is not None and "slingshots" in analyses:
            raise AnalysisError(f"slingshots need the train-loss curve (loss_train); the trajectory has {finite} values")
        else:
            skipped["slingshots"] = f"needs the train-loss curve (loss_train); the trajectory has {finite} values"
    if "phases" in todo:
        measures = xr.merge([groups["ablation"], groups["measures"]], combine_attrs="drop_conflicts")
        groups["phases"] = find_phases(measures)
        report("phases", 1, 1)
    if "reference" in todo:
        groups["reference"] = reference_views(ref_ds, key_freqs=key_freqs)
        report("reference checkpoint", 1, 1)
    if "llc" in todo:
        idx = sorted(set(range(0, n, max(1, int(llc_every)))) | {n - 1})
        groups["llc"] = llc_trajectory(ds.isel(checkpoint=idx), **{"device": dev, **(llc_options or {})})
        report("LLC", 1, 1)

    attrs = {
        "title": "mechgrok analysis",
        "p": p,
        "operation": operation,
        "modulus": int(ds.attrs.get("source_p", p)),
        "operation_coordinates": ds.attrs.get("operation_coordinates", f"operation {operation}: the residues"),
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
    return xr.DataTree.from_dict({"/": xr.Dataset(attrs=attrs),
                                  **{f"/{k}": describe(v) for k, v in groups.items()}})
