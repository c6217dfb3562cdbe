"""The one loop over checkpoints (mechgrok.engine) and the one namespace of analyses."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr

import mechgrok
from mechgrok.analyses.modular.grid import grid_pass
from mechgrok.engine import FunctionKernel, checkpoint_weights, resolve_device, run, select_epochs
from mechgrok.errors import AnalysisError

from planted import random_trajectory

SRC = Path(__file__).resolve().parents[1] / "src" / "mechgrok"


@pytest.fixture(scope="module")
def traj() -> xr.Dataset:
    return random_trajectory(p=7, n_checkpoints=5, d_model=8, n_heads=2, d_head=4, d_mlp=6, seed=11)


def test_every_checkpoint_once_in_order_with_its_weights(traj):
    seen = []

    def norm(ck):
        seen.append((ck.index, ck.epoch))
        assert ck.weights["W_E"].dtype == torch.float64 and ck.weights["W_E"].shape[0] == 1
        return {"sq": float(ck.weights["W_E"].square().sum()), "row": ck.weights["W_E"][0, 0].numpy().copy()}

    out = run(traj, [FunctionKernel("norm", norm, weights=("W_E",))], chunk=2)["norm"]
    epochs = traj["checkpoint"].values.tolist()
    assert seen == list(enumerate(epochs))
    want = (traj["W_E"].values.astype(np.float64) ** 2).sum(axis=(1, 2))  # an independent sum per checkpoint
    np.testing.assert_allclose(out["sq"].values, want, rtol=1e-13)
    np.testing.assert_array_equal(out["row"].values, traj["W_E"].values[:, 0].astype(np.float64))
    assert out["checkpoint"].values.tolist() == epochs


def test_heap_is_trimmed_only_after_the_resident_memory_grew(traj, monkeypatch):
    """run trims the heap at the end of a chunk once the resident memory has grown by TRIM_AFTER_GROWTH since the
    last trim (or the start), never in a run whose memory stays flat."""
    import mechgrok.engine as engine

    trims, rss = [], [1000]
    monkeypatch.setattr(engine, "trim_heap", lambda: trims.append(rss[0]) or rss.__setitem__(0, 1000))
    monkeypatch.setattr(engine, "resident_bytes", lambda: rss[0])
    grow = engine.TRIM_AFTER_GROWTH // 2 + 1  # two checkpoints' growth pass the threshold

    def kernel(ck):
        rss[0] += grow
        return {"x": 1.0}

    run(traj, [FunctionKernel("k", kernel, weights=("W_E",))], chunk=1)  # 5 checkpoints, one per chunk
    assert len(trims) == 2 and all(t > 1000 + engine.TRIM_AFTER_GROWTH for t in trims)
    trims.clear()
    run(traj, [FunctionKernel("flat", lambda ck: {"x": 1.0}, weights=("W_E",))], chunk=1)
    assert trims == []


def test_shared_forward_pass_runs_once_per_checkpoint(traj, monkeypatch):
    import mechgrok.analyses.modular.grid as grid

    calls = []
    real = grid._grid_pass
    monkeypatch.setattr(grid, "_grid_pass", lambda ck: calls.append(ck.index) or real(ck))
    k1 = FunctionKernel("a", lambda ck: {"x": float(grid_pass(ck).logits.sum())})
    k2 = FunctionKernel("b", lambda ck: {"y": float(grid_pass(ck).mlp_post.sum())}, needs=frozenset({"mlp_post"}))
    out = run(traj, [k1, k2], chunk=3)
    assert calls == list(range(traj.sizes["checkpoint"]))  # once per checkpoint, for both kernels
    assert np.isfinite(out["a"]["x"].values).all() and np.isfinite(out["b"]["y"].values).all()


def test_results_do_not_depend_on_chunk_or_workers(traj):
    from mechgrok.analyses.modular.neurons import NeuronClusters

    base = run(traj, [NeuronClusters()], chunk=1)["neurons"]
    xr.testing.assert_identical(base, run(traj, [NeuronClusters()], chunk=4)["neurons"])
    xr.testing.assert_identical(base, run(traj, [NeuronClusters()], chunk=2, workers=2)["neurons"])


def test_batched_kernels_do_not_depend_on_chunk_or_workers():
    # the kernels that work on a whole chunk at once (Checkpoint.batched) or on weights that are views into it:
    # the SVDs of W_E (LAPACK's rounding depends on where a matrix sits in a batch: p = 61 x d_model = 64 showed
    # it), the GS autograd pass (so did its batched einsums), the Fourier transforms of the vector families
    from mechgrok.analyses.modular.algorithm_metrics import AlgorithmMetrics
    from mechgrok.analyses.modular.fourier_norms import FourierNorms
    from mechgrok.analyses.modular.frequency_alignment import FrequencyAlignment

    big = random_trajectory(p=61, n_checkpoints=5, d_model=64, n_heads=2, d_head=8, d_mlp=16, seed=3)

    def kernels():
        return [AlgorithmMetrics.for_trajectory(big, n_triples=7), FrequencyAlignment.for_trajectory(big),
                FourierNorms.for_trajectory(big)]

    base = run(big, kernels(), chunk=1)
    other = run(big, kernels(), chunk=5)
    for name in base:
        xr.testing.assert_identical(base[name], other[name])
    # one thread per checkpoint: torch's reductions split differently over threads, so the last bit may differ
    threads = run(big, kernels(), chunk=2, workers=2)
    for name in base:
        xr.testing.assert_allclose(base[name], threads[name], rtol=1e-14, atol=0)


def test_batched_gives_each_checkpoint_its_slice_computed_once_per_chunk(traj):
    calls = []

    def squares(w):
        calls.append(w["W_E"].shape[0])
        return w["W_E"].square().sum((1, 2)), w["W_E"][:, 0, 0]

    def kernel(ck):
        sq, first = ck.batched("squares", squares)
        return {"sq": float(sq), "first": float(first)}

    out = run(traj, [FunctionKernel("k", kernel, weights=("W_E",))], chunk=2)["k"]
    assert calls == [2, 2, 1]  # 5 checkpoints in chunks of 2
    w = traj["W_E"].values.astype(np.float64)
    np.testing.assert_allclose(out["sq"].values, (w**2).sum(axis=(1, 2)), rtol=1e-13)
    np.testing.assert_array_equal(out["first"].values, w[:, 0, 0])


def test_selection_is_the_callers(traj):
    from mechgrok.analyses.modular.neurons import neuron_clusters

    picked = neuron_clusters(traj.isel(checkpoint=[3, 1]))
    assert picked["checkpoint"].values.tolist() == traj["checkpoint"].values[[3, 1]].tolist()
    xr.testing.assert_allclose(picked.isel(checkpoint=0), neuron_clusters(traj).isel(checkpoint=3), rtol=1e-13)
    by_epoch = select_epochs(traj, [int(traj["checkpoint"][4])])
    assert by_epoch.sizes["checkpoint"] == 1


def test_errors(traj):
    with pytest.raises(AnalysisError, match="no checkpoints selected"):
        run(traj.isel(checkpoint=[]), [FunctionKernel("n", lambda ck: {"x": 0.0})])
    with pytest.raises(AnalysisError, match=r"lacks weights \['W_in'\]"):
        run(traj.drop_vars("W_in"), [FunctionKernel("n", lambda ck: {"x": 0.0}, weights=("W_in",))])
    e = traj["checkpoint"].values
    with pytest.raises(AnalysisError, match=rf"no checkpoints at epochs \[12345\].*5 checkpoints, epochs {e[0]}..{e[-1]}"):
        select_epochs(traj, [int(e[0]), 12345])
    with pytest.raises(AnalysisError, match="no epochs selected"):
        select_epochs(traj, [])
    assert isinstance(pytest.raises(AnalysisError, select_epochs, traj, [1]).value, mechgrok.MechgrokError)


def test_device_choice():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(None) == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(AnalysisError, match="no CUDA device"):
            resolve_device("cuda")
    with pytest.raises(AnalysisError, match="unknown device"):
        resolve_device("warp-drive")
    with pytest.raises(AnalysisError, match="'cpu' or 'cuda'"):
        resolve_device("meta")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_cuda_equals_cpu(traj):  # pragma: no cover - needs a GPU
    from mechgrok.analyses.modular.ablation import ablation_losses

    cpu = ablation_losses(traj, key_freqs=[1, 2], device="cpu")
    gpu = ablation_losses(traj, key_freqs=[1, 2], device="cuda")
    xr.testing.assert_allclose(cpu, gpu, rtol=1e-10)


def test_checkpoint_weights_dtype_and_names(traj):
    w = checkpoint_weights(traj, names=["W_E", "b_in"], dtype=torch.float32)
    assert set(w) == {"W_E", "b_in"} and w["W_E"].dtype == torch.float32
    assert w["W_E"].shape == traj["W_E"].shape


def test_one_namespace_shows_the_analyses():
    names = set(dir(mechgrok))
    for fn in ("open_run", "analyze", "key_frequencies", "neuron_clusters", "fourier_norms", "effective_weights",
               "attention_fit", "logit_structure", "ablation_losses", "progress_measures", "weight_measures",
               "find_phases", "llc_trajectory", "select_epochs", "summarise"):
        assert fn in names, fn
        assert callable(getattr(mechgrok, fn)), fn
    assert set(mechgrok.__all__) <= names


def _private_cross_module_imports() -> list[str]:
    bad = []
    for path in SRC.rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("mechgrok"):
                bad += [f"{path.relative_to(SRC)}: from {node.module} import {a.name}" for a in node.names
                        if a.name.startswith("_") and a.name != "__version__"]
    return bad


def test_no_module_imports_another_modules_private_names():
    assert _private_cross_module_imports() == []


def test_the_library_never_imports_typer():
    for path in SRC.rglob("*.py"):
        tree = ast.parse(path.read_text())
        mods = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        mods |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        assert not any(m.split(".")[0] == "typer" for m in mods), path
