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
def tiny_config():
    """A tiny mechgrok config (p = 11, 20 epochs, a checkpoint every 5) for store and writer tests."""
    from mechgrok.config import Config

    return Config(p=11, frac_train=0.5, d_model=8, n_heads=2, d_head=4, d_mlp=16, num_epochs=20, checkpoint_every=5,
                  lr=3e-3, seed=3, model_seed=1)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, tiny_config) -> Path:
    """A real run directory trained with ``tiny_config``, once per session (tests only read it)."""
    from mechgrok.train import train

    run = tmp_path_factory.mktemp("tiny") / "run"
    train(tiny_config, run)
    return run


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


@pytest.fixture
def one_torch_thread():
    """One torch thread for the test (the machine's cores are shared by many processes); restored afterwards."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
