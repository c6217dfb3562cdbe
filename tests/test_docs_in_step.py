"""The numbers the docs quote about the committed fixture come from ``docs/regenerate.py`` and are in step.

The check reuses the session's analysis of the fixture (``fixture_analysis``), the same call the script makes.
When it fails, run ``python docs/regenerate.py`` and commit the pages it rewrites.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "docs" / "regenerate.py"


@pytest.fixture(scope="module")
def regenerate():
    spec = importlib.util.spec_from_file_location("docs_regenerate", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_docs_quote_the_fixture_as_it_is(regenerate, fixture_analysis):
    assert regenerate.stale_blocks(fixture_analysis) == [], "run: python docs/regenerate.py"


def test_a_changed_number_is_caught(regenerate, fixture_analysis):
    """The check can fail: a tree whose phases end elsewhere does not match the page."""
    tree = fixture_analysis.copy()
    ph = tree["phases"].to_dataset()
    tree["phases"] = ph.assign(epoch_at=ph["epoch_at"].where(ph["point"] != "cleanup_end", 2650))
    assert regenerate.stale_blocks(tree) == ["docs/analyses.md: fixture-phases"]
    assert "cleanup ends at 2650" in regenerate.fixture_phases(tree)
