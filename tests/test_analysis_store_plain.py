"""``analysis.zarr`` opens with plain xarray, and every group, variable and coordinate describes itself.

Walks the store that ``mechgrok.write_analysis`` writes for the committed run's full analysis: plain
``xr.open_datatree`` (no mechgrok, no options, warnings as errors) shows every group; every variable and
coordinate has ``units`` and ``description``; attrs cite public sources, not files of this repository.
"""

from __future__ import annotations

import re
import warnings

import pytest
import xarray as xr

import mechgrok

#: References to files that exist only in the repository or beside it (not in the package, not public).
LOCAL_FILE = re.compile(r"\b(?:paper|beyond|tasks|ecosystem|design)\.md\b|\bdocs/[\w.-]+\.md\b|\bshared/")


@pytest.fixture(scope="module")
def store(fixture_analysis, tmp_path_factory):
    return mechgrok.write_analysis(fixture_analysis, tmp_path_factory.mktemp("plain") / "analysis.zarr")


def test_plain_open_datatree_shows_every_group(store, fixture_analysis):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "failed to open with consolidated metadata" fallback
        tree = xr.open_datatree(store, engine="zarr")
    groups = sorted(tree.children)
    assert groups == sorted(fixture_analysis.children)
    assert sorted(tree.attrs["analyses"]) == groups
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        one = xr.open_dataset(store, group="ablation", engine="zarr")
    assert "restricted_loss_test" in one and one.sizes["checkpoint"] == fixture_analysis["ablation"].sizes["checkpoint"]


def _walk(tree: xr.DataTree):
    for node in tree.subtree:
        ds = node.to_dataset(inherit=False)
        for name, var in ds.variables.items():
            yield node.path, str(name), var.attrs
        yield node.path, "", ds.attrs


def test_every_variable_and_coordinate_has_units_and_description(store):
    tree = xr.open_datatree(store, engine="zarr")
    lacking = [f"{path}:{name} lacks {attr}" for path, name, attrs in _walk(tree) if name
               for attr in ("units", "description") if not str(attrs.get(attr, "")).strip()]
    assert lacking == []
    assert tree["measures"]["checkpoint"].attrs["units"] == "epochs"


def test_attrs_cite_no_repository_files(store):
    tree = xr.open_datatree(store, engine="zarr")
    local = [f"{path}:{name or '(group)'} {key}={value!r}" for path, name, attrs in _walk(tree)
             for key, value in attrs.items() if LOCAL_FILE.search(str(value))]
    assert local == []
