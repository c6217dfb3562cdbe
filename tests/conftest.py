"""Shared pytest fixtures for mechgrok's tests."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FIXTURE_RUN = REPO / "fixtures" / "quick-run"
SHARED_RUNS = REPO.parent / "shared" / "data" / "nanda-saved-runs"


@pytest.fixture(scope="session")
def fixture_run() -> Path:
    """The committed quick-preset run."""
    return FIXTURE_RUN


@pytest.fixture(scope="session")
def shared_runs() -> Path:
    """The folder of the paper authors' released runs; skips where ../shared is absent."""
    if not SHARED_RUNS.is_dir():
        pytest.skip(f"released runs not found at {SHARED_RUNS} (../shared is absent on this machine)")
    return SHARED_RUNS


@pytest.fixture(scope="session")
def fixture_trajectory():
    """The committed quick-preset run, loaded once."""
    import mechgrok

    return mechgrok.open_run(FIXTURE_RUN)


@pytest.fixture(scope="session")
def fixture_analysis(fixture_trajectory):
    """Every analysis of the committed run (an xarray.DataTree), computed once per test session."""
    from mechgrok.pipeline import analyze

    return analyze(fixture_trajectory)
