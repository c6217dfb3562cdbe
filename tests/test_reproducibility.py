"""Reproducibility of training (docs/run-directory.md, "Reproducibility"): pinned threads and deterministic
algorithms, bit-identical reruns in fresh processes, the recorded environment, and the warning on a resume in
another one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from mechgrok.config import Config, preset
from mechgrok.errors import ConfigError
from mechgrok.rundir import list_checkpoints, read_checkpoint, read_config, read_run_info
from mechgrok.train import ReproducibilityWarning, train, training_environment

TINY = Config(p=23, frac_train=0.5, d_model=16, n_heads=2, d_head=8, d_mlp=32, lr=3e-3, num_epochs=20, checkpoint_every=10)

_TRAIN = "import sys; from mechgrok.config import Config; from mechgrok.train import train; " \
         "train(Config.from_json(sys.argv[1]), sys.argv[2])"


def _train_in_subprocess(cfg: Config, run: Path, **env: str) -> None:
    res = subprocess.run([sys.executable, "-c", _TRAIN, cfg.to_json(), str(run)], capture_output=True, text=True,
                         env={**os.environ, **env}, timeout=300)
    assert res.returncode == 0, res.stderr


def _all_tensors(run: Path) -> dict[str, torch.Tensor]:
    out = {f"{e}/{k}": t for e, f in list_checkpoints(run) for k, t in read_checkpoint(f).items()}
    out.update({f"state/{k}": t for k, t in read_checkpoint(run / "state.safetensors").items()})
    return out


def test_threads_is_a_validated_config_field():
    assert Config().threads == 1 and preset("quick").threads == 1
    assert Config.from_json(TINY.replace(threads=3).to_json()).threads == 3
    with pytest.raises(ConfigError, match="threads must be a positive integer"):
        TINY.replace(threads=0)


def test_training_pins_threads_and_determinism_then_restores_them(tmp_path):
    seen = []
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        run = train(TINY.replace(threads=1), tmp_path / "run",
                    on_epoch=lambda m: seen.append((torch.get_num_threads(), torch.are_deterministic_algorithms_enabled())))
        assert set(seen) == {(1, True)}
        assert (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()) == (2, False)
    finally:
        torch.set_num_threads(before)
    assert read_config(run).threads == 1
    info = read_run_info(run)
    assert info["complete"] is True and info["resumes"] == []
    assert info["environment"] == training_environment(1)
    assert info["environment"]["torch"] == torch.__version__
    assert info["environment"]["cpu_capability"] == torch.backends.cpu.get_cpu_capability()


def test_same_settings_in_separate_processes_are_bit_identical(tmp_path):
    # Two threads: without deterministic algorithms the gathers' backward (atomic adds) gives other bits in about
    # 2 of 3 backward passes here (measured), which shows in the Adam moments (state.safetensors) from the first
    # step: 4 epochs catch that regression in ~98% of runs. One run in a fresh process, one in this one (other
    # imports, allocations and torch state before it).
    cfg = preset("quick", num_epochs=4, checkpoint_every=2, threads=2)
    a, b = tmp_path / "a", tmp_path / "b"
    _train_in_subprocess(cfg, a)
    train(cfg, b)
    ta, tb = _all_tensors(a), _all_tensors(b)
    assert ta.keys() == tb.keys() and len(ta) > 30
    differ = [k for k in ta if not torch.equal(ta[k], tb[k])]
    assert not differ, f"not bit-identical: {differ[:5]}"
    assert (a / "metrics.csv").read_text() == (b / "metrics.csv").read_text()
    assert read_run_info(a)["environment"] == read_run_info(b)["environment"]


def test_resume_in_the_same_environment_is_silent_and_recorded(tmp_path):
    run = train(TINY, tmp_path / "run")
    with warnings.catch_warnings():
        warnings.simplefilter("error", ReproducibilityWarning)
        train(TINY, run, resume=True)
    info = read_run_info(run)
    assert info["resumes"] == [{"epoch": TINY.num_epochs, "environment": training_environment(TINY.threads)}]
    assert info["complete"] is True


def test_resume_of_a_run_without_recorded_environment_warns(tmp_path):
    run = train(TINY, tmp_path / "run")
    (run / "run.json").write_text(json.dumps({"format": "mechgrok-run", "version": "0.1.0", "complete": True}))
    with pytest.warns(ReproducibilityWarning, match="records no training environment"):
        train(TINY, run, resume=True)
    info = read_run_info(run)
    assert info["environment"] is None and len(info["resumes"]) == 1


@pytest.mark.skipif(torch.backends.cpu.get_cpu_capability() == "DEFAULT", reason="the CPU code path is already DEFAULT")
def test_resume_under_another_cpu_capability_warns(tmp_path):
    # ATEN_CPU_CAPABILITY=default emulates a CPU without AVX2: torch's own kernels (randn's Box-Muller, exp,
    # reductions) round differently, measured to change the initial weights in the last bits
    run = tmp_path / "run"
    _train_in_subprocess(TINY, run, ATEN_CPU_CAPABILITY="default")
    assert read_run_info(run)["environment"]["cpu_capability"] == "DEFAULT"
    here = torch.backends.cpu.get_cpu_capability()
    with pytest.warns(ReproducibilityWarning, match=f"cpu_capability 'DEFAULT' -> '{here}'"):
        train(TINY, run, resume=True)
    info = read_run_info(run)
    assert info["environment"]["cpu_capability"] == "DEFAULT"
    assert info["resumes"][-1]["environment"]["cpu_capability"] == here
