"""What the figures read from the analysis tree (:func:`mechgrok.pipeline.analyze`), with clear errors.

Every figure function takes the ``xarray.DataTree`` that :func:`mechgrok.pipeline.analyze` returns (or that
:func:`mechgrok.pipeline.open_analysis` reads back from ``analysis.zarr``). A figure that needs an analysis the
tree lacks (e.g. one left out with ``mechgrok analyze --only``) raises :class:`~mechgrok.errors.AnalysisError`
naming the figure and the missing group.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import xarray as xr

from mechgrok.errors import AnalysisError

__all__ = ["group", "has_groups", "key_freqs", "reference_epoch", "phase_spans", "p_of"]


def _check_tree(tree: Any, figure: str) -> xr.DataTree:
    if not isinstance(tree, xr.DataTree):
        raise AnalysisError(
            f"figure {figure!r} needs the analysis tree (xarray.DataTree from mechgrok.pipeline.analyze or "
            f"open_analysis), got {type(tree).__name__}"
        )
    return tree


def has_groups(tree: xr.DataTree, *names: str) -> bool:
    """Whether the tree has every analysis group named."""
    return all(n in tree.children for n in names)


def group(tree: xr.DataTree, name: str, *, figure: str) -> xr.Dataset:
    """The Dataset of one analysis group, loaded into memory.

    Raises
    ------
    AnalysisError
        If ``tree`` is not a DataTree or has no such group.
    """
    _check_tree(tree, figure)
    if name not in tree.children:
        have = ", ".join(tree.children) or "none"
        raise AnalysisError(
            f"figure {figure!r} needs the {name!r} analysis, which the analysis tree lacks (it has: {have}); "
            f"run `mechgrok analyze` with it"
        )
    return tree[name].to_dataset(inherit=False).load()


def p_of(tree: xr.DataTree, *, figure: str) -> int:
    """The modulus p (root attr ``p``)."""
    _check_tree(tree, figure)
    if "p" not in tree.attrs:
        raise AnalysisError(f"figure {figure!r}: the analysis tree has no attrs['p']")
    return int(tree.attrs["p"])


def key_freqs(tree: xr.DataTree) -> list[int]:
    """The key frequencies (root attr ``key_freqs``), sorted; empty where absent."""
    return sorted(int(k) for k in np.atleast_1d(tree.attrs.get("key_freqs", [])))


def reference_epoch(tree: xr.DataTree) -> int | None:
    """Epoch of the reference checkpoint (root attr ``reference_checkpoint``), or None."""
    ref = tree.attrs.get("reference_checkpoint")
    return None if ref is None else int(ref)


def phase_spans(tree: xr.DataTree) -> list[tuple[str, float, float]]:
    """The phases of grokking as (phase, start epoch, end epoch), only those whose boundaries were found.

    Memorisation runs from the first checkpoint to ``memorisation_end``, circuit formation from there to
    ``circuit_formation_end``, cleanup from there to ``cleanup_end`` (paper section 5.2; :mod:`mechgrok.phases`).
    Returns an empty list when the tree has no ``phases`` group.
    """
    if "phases" not in tree.children:
        return []
    ph = tree["phases"].to_dataset(inherit=False)
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
