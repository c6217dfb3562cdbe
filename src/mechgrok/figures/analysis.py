"""What the figures read, from the analysis tree or from a plain Dataset: one resolution rule, clear errors.

Every figure function takes either

* the ``xarray.DataTree`` of :func:`mechgrok.analyze` (or of :func:`mechgrok.open_analysis`, read back from
  ``analysis.zarr``), one child Dataset per analysis, or
* a plain ``xarray.Dataset`` that holds the variables the figure reads, as the analysis function returns it:
  ``fig_neuron_clusters(mechgrok.neuron_clusters(ds))``,
  ``fig_progress_measures(mechgrok.progress_measures(ds, key_freqs=[...]))``,
  ``fig_fourier_norms(tree["fourier_norms"].to_dataset())``.

The rule (:func:`group`): the figure names the analysis it reads (a group of the tree, e.g. ``"reference"``) and
the variables it needs from it. A DataTree gives its child of that name (a tree node without that child, such as
``tree["reference"]``, gives its own Dataset); a Dataset is used as it is. Either way the Dataset must hold the
needed variables, else :class:`~mechgrok.errors.AnalysisError` names the figure, the missing variables and the
mechgrok function that produces them (:data:`PRODUCERS`). Anything else (a DataArray, a dict) is refused with
the same error. The attrs the figures read (``p``, ``key_freqs``, ``reference_checkpoint``)
come from the tree's root, or from the Dataset's own attrs, where the analysis functions record them; a Dataset
without ``key_freqs`` is drawn without key frequencies marked.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

import numpy as np
import xarray as xr

from mechgrok.errors import AnalysisError

__all__ = [
    "PRODUCERS",
    "group",
    "optional_group",
    "need_checkpoints",
    "has_groups",
    "root_attrs",
    "key_freqs",
    "reference_epoch",
    "at_reference",
    "epoch_label",
    "phase_spans",
    "p_of",
]

#: The mechgrok functions that produce the variables of each analysis group (named in the errors).
PRODUCERS: dict[str, str] = {
    "ablation": "mechgrok.progress_measures(ds, key_freqs=...) or mechgrok.ablation_losses(ds, key_freqs=...)",
    "measures": "mechgrok.progress_measures(ds, key_freqs=...) or mechgrok.weight_measures(ds)",
    "fourier_norms": "mechgrok.progress_measures(ds, key_freqs=...) or "
                     "mechgrok.analyses.modular.fourier_norms.fourier_norms(ds)",
    "neurons": "mechgrok.neuron_clusters(ds)",
    "attention": "mechgrok.attention_fit(ds)",
    "reference": "mechgrok.analyze(ds)['reference'] (mechgrok.analyses.modular.reference.reference_views)",
    "llc": "mechgrok.llc_trajectory(ds)",
    "algorithm": "mechgrok.algorithm_metrics(ds)",
    "phases": "mechgrok.find_phases(...)",
    "curves": "mechgrok.open_run(run_dir)",
}

_TREE = "the analysis tree (xarray.DataTree of mechgrok.analyze or mechgrok.open_analysis)"


def _producer(name: str) -> str:
    return PRODUCERS.get(name, f"the {name!r} analysis of mechgrok.analyze")


def _missing_vars(ds: xr.Dataset, needs: Iterable[str]) -> list[str]:
    return [v for v in needs if v not in ds.variables]


def _has(obj: Any, name: str, needs: list[str]) -> bool:
    if isinstance(obj, xr.DataTree):
        if name in obj.children:
            return not _missing_vars(obj[name].dataset, needs)
        return bool(needs) and not _missing_vars(obj.dataset, needs)
    if isinstance(obj, xr.Dataset):
        return not _missing_vars(obj, needs)
    return False


def group(obj: Any, name: str, *, needs: Iterable[str] = (), figure: str, producer: str | None = None) -> xr.Dataset:
    """The Dataset a figure reads: the child ``name`` of an analysis tree, or a plain Dataset itself.

    Parameters
    ----------
    obj : xarray.DataTree or xarray.Dataset
        The analysis tree of :func:`mechgrok.analyze` / :func:`mechgrok.open_analysis`, or a Dataset as an
        analysis function returns it (e.g. :func:`mechgrok.neuron_clusters`).
    name : str
        The analysis group (``"ablation"``, ``"reference"``, ...; :data:`PRODUCERS`).
    needs : iterable of str
        Variables the figure reads from it.
    figure : str
        The figure's name, for the error message.
    producer : str, optional
        What produces the needed variables, for the error message (default: :data:`PRODUCERS` of ``name``).

    Returns
    -------
    xarray.Dataset
        A tree's child, loaded into memory (``inherit=False``); a plain Dataset as given (not copied; each
        variable is read when the figure reads it, so a lazily opened trajectory is not loaded whole).

    Raises
    ------
    AnalysisError
        If ``obj`` is neither a DataTree nor a Dataset, the tree has no group ``name``, or the Dataset lacks a
        needed variable; the message names the missing variables and the mechgrok function producing them.

    Examples
    --------
    >>> import xarray as xr
    >>> ds = xr.Dataset({"loss_train": ("checkpoint", [1.0, 0.5])}, coords={"checkpoint": [0, 10]})
    >>> group(ds, "ablation", needs=["loss_train"], figure="demo") is ds
    True
    >>> group(ds, "ablation", needs=["loss_train", "loss_test"], figure="demo")
    Traceback (most recent call last):
    ...
    mechgrok.errors.AnalysisError: figure 'demo' needs the variable loss_test (of the 'ablation' analysis), which the Dataset lacks (it has: loss_train); it comes from mechgrok.progress_measures(ds, key_freqs=...) or mechgrok.ablation_losses(ds, key_freqs=...), or pass the analysis tree of mechgrok.analyze
    """
    needs = list(needs)
    made_by = producer or _producer(name)
    if isinstance(obj, xr.DataTree) and name not in obj.children and needs and not _missing_vars(obj.dataset, needs):
        obj = obj.to_dataset(inherit=False).load()  # a node that is the group itself, e.g. tree["reference"]
    if isinstance(obj, xr.DataTree):
        if name not in obj.children:
            have = ", ".join(obj.children) or "none"
            raise AnalysisError(
                f"figure {figure!r} needs the {name!r} analysis, which the analysis tree lacks (it has: {have}); "
                f"run `mechgrok analyze` with it, or pass a Dataset from {made_by}"
            )
        ds = obj[name].to_dataset(inherit=False).load()
        where = f"the tree's {name!r} group"
    elif isinstance(obj, xr.Dataset):
        ds = obj
        where = "the Dataset"
    else:
        raise AnalysisError(
            f"figure {figure!r} takes {_TREE} or an xarray.Dataset with {', '.join(needs) or 'its variables'} "
            f"(from {made_by}), got {type(obj).__name__}"
        )
    missing = _missing_vars(ds, needs)
    if missing:
        have = ", ".join(str(v) for v in ds.data_vars) or "no variables"
        if len(have) > 300:
            have = have[:300] + ", ..."
        s = "s" if len(missing) > 1 else ""
        it = "they come" if len(missing) > 1 else "it comes"
        raise AnalysisError(
            f"figure {figure!r} needs the variable{s} {', '.join(missing)} (of the {name!r} analysis), which {where} "
            f"lacks (it has: {have}); {it} from {made_by}, or pass the analysis tree of mechgrok.analyze"
        )
    return ds


def need_checkpoints(ds: xr.Dataset, var: str, *, figure: str) -> None:
    """Raise :class:`~mechgrok.errors.AnalysisError` unless ``ds[var]`` is over ``checkpoint`` (for figures over
    training given a Dataset at one checkpoint)."""
    if "checkpoint" not in ds[var].dims:
        raise AnalysisError(f"figure {figure!r} draws {var} over training and needs it over the checkpoint dim; "
                            f"it has dims {tuple(ds[var].dims)}")


def optional_group(obj: Any, name: str, *, needs: Iterable[str] = ()) -> xr.Dataset | None:
    """:func:`group` for what a figure draws only where present: the Dataset, or None instead of an error."""
    needs = list(needs)
    return group(obj, name, needs=needs, figure=name) if _has(obj, name, needs) else None


def has_groups(tree: Any, *names: str) -> bool:
    """Whether ``tree`` is a DataTree with every analysis group named (False for anything else)."""
    return isinstance(tree, xr.DataTree) and all(n in tree.children for n in names)


def root_attrs(obj: Any) -> Mapping[str, Any]:
    """The attrs the figures read (``p``, ``key_freqs``, ``reference_checkpoint``): a tree's root attrs, or a
    Dataset's own attrs; empty for anything else."""
    return obj.attrs if isinstance(obj, (xr.DataTree, xr.Dataset)) else {}


def p_of(obj: Any, *, figure: str, default: int | None = None) -> int:
    """The modulus p (attr ``p`` of the tree's root or of the Dataset), else ``default``.

    Raises
    ------
    AnalysisError
        If there is no attr ``p`` and no default.
    """
    p = root_attrs(obj).get("p", default)
    if p is None:
        raise AnalysisError(f"figure {figure!r}: the analysis has no attrs['p']")
    return int(p)


def key_freqs(obj: Any) -> list[int]:
    """The key frequencies (attr ``key_freqs`` of the tree's root or of the Dataset), sorted; empty where absent."""
    return sorted(int(k) for k in np.atleast_1d(root_attrs(obj).get("key_freqs", [])))


def reference_epoch(obj: Any) -> int | None:
    """Epoch of the reference checkpoint (attr ``reference_checkpoint`` of the tree's root or the Dataset), or None."""
    ref = root_attrs(obj).get("reference_checkpoint")
    return None if ref is None else int(ref)


def at_reference(ds: xr.Dataset, obj: Any) -> tuple[xr.Dataset, int | None]:
    """A Dataset at the reference checkpoint, and that epoch.

    A Dataset over ``checkpoint`` (e.g. of :func:`mechgrok.neuron_clusters`) is selected at the reference
    checkpoint (:func:`reference_epoch` of ``obj``) where it has it, else at its last checkpoint. A Dataset
    without the ``checkpoint`` dim (the tree's ``reference`` group, or a Dataset selected at one checkpoint) is
    already at one checkpoint: its epoch is its scalar ``checkpoint`` coordinate, else ``attrs["checkpoint"]``,
    else the reference epoch, else None.
    """
    if "checkpoint" in ds.dims:
        epochs = [int(e) for e in ds["checkpoint"].values]
        if not epochs:
            raise AnalysisError("the analysis has no checkpoints")
        ref = reference_epoch(obj)
        if ref is None or ref not in epochs:
            ref = epochs[-1]
        return ds.sel(checkpoint=ref), ref
    if "checkpoint" in ds.coords and ds["checkpoint"].ndim == 0:  # e.g. ds.sel(checkpoint=4000)
        return ds, int(ds["checkpoint"].values)
    ep = ds.attrs.get("checkpoint", reference_epoch(obj))
    return ds, None if ep is None else int(ep)


def epoch_label(epoch: int | None) -> str:
    """``"epoch 4000"``, or ``"the reference checkpoint"`` where the epoch is not known (for titles)."""
    return "the reference checkpoint" if epoch is None else f"epoch {epoch}"


def phase_spans(obj: Any) -> list[tuple[str, float, float]]:
    """The phases of grokking as (phase, start epoch, end epoch), only those whose boundaries were found.

    Memorisation runs from the first checkpoint to ``memorisation_end``, circuit formation from there to
    ``circuit_formation_end``, cleanup from there to ``cleanup_end`` (paper section 5.2;
    :mod:`mechgrok.analyses.phases`). Read from the tree's ``phases`` group, or from a Dataset of
    :func:`mechgrok.find_phases` (``epoch_at``, ``found`` over ``point``); an empty list otherwise.
    """
    ph = optional_group(obj, "phases", needs=("epoch_at", "found", "point"))
    if ph is None:
        return []
    points = [str(p) for p in ph["point"].values]
    epoch = dict(zip(points, (int(e) for e in ph["epoch_at"].values)))
    found = dict(zip(points, (bool(f) for f in ph["found"].values)))
    bounds = [("memorisation", "start", "memorisation_end"),
              ("circuit_formation", "memorisation_end", "circuit_formation_end"),
              ("cleanup", "circuit_formation_end", "cleanup_end")]
    spans = []
    for name, a, b in bounds:
        if found.get(a) and found.get(b) and epoch[b] > epoch[a]:
            spans.append((name, float(epoch[a]), float(epoch[b])))
    return spans
