"""The sweep specification: a grid (or a list) of runs over any :class:`~mechgrok.config.Config` fields.

A spec is a TOML or JSON file (``docs/sweeps.md``)::

    name = "frac-by-seed"          # optional; default: the file's stem
    preset = "quick"               # optional base preset (mechgrok.config.PRESETS)

    [base]                         # Config fields shared by every run (over the preset)
    num_epochs = 2000

    [grid]                         # swept fields: every combination is one run (one dim per field)
    seed = [0, 1, 2]
    frac_train = [0.3, 0.4, 0.5]

    [analysis]                     # optional: what each run's analysis computes
    analyses = ["ablation", "measures", "phases"]   # default: all but llc
    llc = false
    llc_every = 10

Instead of ``[grid]``, ``[[runs]]`` lists the runs one by one (each a table of the swept fields; all must name
the same fields); a run may give ``source = "PATH"`` to ingest an existing trajectory instead of training one.
The fields are whatever :class:`~mechgrok.config.Config` declares (read from its dataclass fields, so fields
added later are sweepable without a change here).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from mechgrok.config import PRESETS, Config
from mechgrok.errors import ConfigError

__all__ = ["Cell", "SweepSpec", "config_fields", "load_spec"]

_ANALYSIS_KEYS = ("analyses", "llc", "llc_every", "device", "chunk")
_TOP_KEYS = ("name", "preset", "base", "grid", "runs", "analysis")


def config_fields() -> tuple[str, ...]:
    """The names of the :class:`~mechgrok.config.Config` fields a sweep can set (all but ``preset``).

    Examples
    --------
    >>> {"seed", "frac_train", "weight_decay", "p"} <= set(config_fields())
    True
    """
    return tuple(f.name for f in dataclasses.fields(Config) if f.name != "preset")


def _label(value: Any) -> str:
    if isinstance(value, float):
        return repr(value)
    return str(value)


@dataclass(frozen=True)
class Cell:
    """One run of a sweep: its swept values (``coords``), its full config and, optionally, a source to ingest.

    ``name`` (``"frac_train=0.3,seed=0"``) names its run directory ``runs/NAME`` in the sweep folder.
    """

    coords: dict[str, Any]
    config: Config
    source: str | None = None

    @property
    def name(self) -> str:
        return ",".join(f"{k}={_label(v)}" for k, v in self.coords.items())

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (:meth:`from_dict` inverts it)."""
        return {"coords": dict(self.coords), "config": self.config.to_dict(), "source": self.source}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Cell:
        return cls(coords=dict(d["coords"]), config=Config.from_dict(dict(d["config"])), source=d.get("source"))


@dataclass(frozen=True)
class SweepSpec:
    """A parsed sweep specification (see the module docstring).

    Attributes
    ----------
    name : str
    fields : tuple of str
        The swept fields, in the order of the spec: the dims of the sweep Dataset.
    cells : tuple of Cell
        The runs, in a fixed order.
    analysis : dict
        Options of each run's analysis: ``analyses`` (list or None for the default), ``llc`` (bool),
        ``llc_every`` (int), ``device`` (str or None), ``chunk`` (int or None).
    source : str
        The spec file (or ``"<dict>"``).
    """

    name: str
    fields: tuple[str, ...]
    cells: tuple[Cell, ...]
    analysis: dict[str, Any] = field(default_factory=dict)
    source: str = "<dict>"

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], *, source: str | Path | None = None, name: str | None = None) -> SweepSpec:
        """Build a spec from its dict form (a parsed TOML/JSON file).

        Raises
        ------
        ConfigError
            On unknown keys or fields, an empty grid, a list of runs naming different fields, duplicate runs,
            or an invalid config (the message names the run).

        Examples
        --------
        >>> spec = SweepSpec.from_dict({"base": {"p": 23, "num_epochs": 100},
        ...                             "grid": {"seed": [0, 1], "frac_train": [0.5, 0.7]}})
        >>> spec.fields, len(spec.cells), spec.cells[1].name, spec.cells[1].config.frac_train
        (('seed', 'frac_train'), 4, 'seed=0,frac_train=0.7', 0.7)
        """
        where = str(source) if source is not None else "<dict>"
        unknown = sorted(set(d) - set(_TOP_KEYS))
        if unknown:
            raise ConfigError(f"unknown sweep spec keys: {', '.join(unknown)} (known: {', '.join(_TOP_KEYS)})", path=source)
        known = set(config_fields())
        base: dict[str, Any] = dict(d.get("base") or {})
        bad = sorted(set(base) - known)
        if bad:
            raise ConfigError(f"[base]: not Config fields: {', '.join(bad)}", path=source)
        preset = d.get("preset")
        if preset is not None and preset not in PRESETS:
            raise ConfigError(f"unknown preset {preset!r}; known: {', '.join(PRESETS)}", path=source)
        start = PRESETS[preset].to_dict() if preset else {}
        start.pop("preset", None)
        if ("grid" in d) == ("runs" in d):
            raise ConfigError("a sweep spec needs exactly one of [grid] and [[runs]]", path=source)
        rows: list[tuple[dict[str, Any], str | None]] = []
        if "grid" in d:
            grid = d["grid"]
            if not isinstance(grid, Mapping) or not grid:
                raise ConfigError("[grid] must be a table of field = [values]", path=source)
            fields = tuple(grid)
            for f in fields:
                values = grid[f]
                if not isinstance(values, list) or not values:
                    raise ConfigError(f"[grid] {f}: needs a non-empty list of values", path=source)
            for combo in itertools.product(*(grid[f] for f in fields)):
                rows.append((dict(zip(fields, combo)), None))
        else:
            runs = d["runs"]
            if not isinstance(runs, list) or not runs:
                raise ConfigError("[[runs]] must be a non-empty list of tables", path=source)
            fields = tuple(k for k in runs[0] if k != "source")
            for i, r in enumerate(runs):
                keys = tuple(k for k in r if k != "source")
                if set(keys) != set(fields):
                    raise ConfigError(f"[[runs]] #{i}: names {sorted(keys)}, but the first run names {sorted(fields)}",
                                      path=source)
                rows.append(({f: r[f] for f in fields}, r.get("source")))
        if not fields:
            raise ConfigError("the sweep sweeps no field", path=source)
        bad = sorted(set(fields) - known)
        if bad:
            raise ConfigError(f"not Config fields: {', '.join(bad)} (fields: {', '.join(sorted(known))})", path=source)
        cells: list[Cell] = []
        seen: set[str] = set()
        for coords, src in rows:
            for f, v in coords.items():
                if isinstance(v, (dict, list)) or (isinstance(v, float) and not math.isfinite(v)):
                    raise ConfigError(f"{f} = {v!r}: a swept value must be a finite number, a string or a bool",
                                      path=source)
            cfg_dict = {**start, **base, **coords}
            if preset:
                cfg_dict["preset"] = preset
            try:
                cfg = Config.from_dict(cfg_dict)
            except ConfigError as e:
                raise ConfigError(f"run {coords}: {e.reason}", path=source) from None
            cell = Cell(coords=coords, config=cfg, source=src)
            if cell.name in seen:
                raise ConfigError(f"run {cell.name} appears twice", path=source)
            seen.add(cell.name)
            cells.append(cell)
        analysis = dict(d.get("analysis") or {})
        bad = sorted(set(analysis) - set(_ANALYSIS_KEYS))
        if bad:
            raise ConfigError(f"[analysis]: unknown keys {', '.join(bad)} (known: {', '.join(_ANALYSIS_KEYS)})",
                              path=source)
        analysis = {"analyses": None, "llc": False, "llc_every": 10, "device": "cpu", "chunk": None, **analysis}
        return cls(name=str(d.get("name") or name or "sweep"), fields=fields, cells=tuple(cells), analysis=analysis,
                   source=where)

    def to_dict(self) -> dict[str, Any]:
        """The resolved spec (every run's full config), as written to ``sweep.json``."""
        return {"name": self.name, "fields": list(self.fields), "analysis": self.analysis, "source": self.source,
                "cells": [c.to_dict() for c in self.cells]}


def load_spec(path: str | Path) -> SweepSpec:
    """Read a sweep spec from a ``.toml`` or ``.json`` file.

    Raises
    ------
    ConfigError
        If the file is missing, not valid TOML/JSON, or not a valid spec.
    """
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(f"cannot read the sweep spec ({e.strerror})", path=path) from None
    try:
        d = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(f"not valid {'JSON' if path.suffix == '.json' else 'TOML'}: {e}", path=path) from None
    if not isinstance(d, dict):
        raise ConfigError("the sweep spec must be a table/object", path=path)
    return SweepSpec.from_dict(d, source=path, name=path.stem)
