"""Benchmark: ingest a 401-checkpoint paper-sized trajectory into Zarr, then reopen it lazily.

Builds a synthetic ``full_run_data.pth`` in the paper's original layout (p = 113, d_model 128, 4 heads of 32,
d_mlp 512; 401 checkpoints = epochs 0..40,000 every 100, the range the paper analyses; random float32 weights,
which barely compress) in a temporary folder, then prints, side by side:

- the ingest rate (checkpoints per second; ``mechgrok.store.ingest``: safe ``torch.load``, validation,
  transposition to TransformerLens orientation, Zarr write aside + rename),
- the store's size against the raw float32 weights (file bytes, not disk blocks),
- the lazy-open time (``open_run`` on the store) and the time to read one checkpoint's weights,

and the same size ratio for the trained weights of ``fixtures/quick-run`` (which compress a little).

Run: ``python benchmarks/ingest.py [--checkpoints N]`` (about a minute on 2 cores for 401).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch


def tree_bytes(path: Path) -> int:
    return sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(path) for f in fs)


def paper_state_dict(g: torch.Generator) -> dict[str, torch.Tensor]:
    d_model, n_heads, d_head, d_mlp, d_vocab = 128, 4, 32, 512, 114
    return {
        "embed.W_E": torch.randn(d_model, d_vocab, generator=g),
        "pos_embed.W_pos": torch.randn(3, d_model, generator=g),
        "blocks.0.attn.W_K": torch.randn(n_heads, d_head, d_model, generator=g),
        "blocks.0.attn.W_Q": torch.randn(n_heads, d_head, d_model, generator=g),
        "blocks.0.attn.W_V": torch.randn(n_heads, d_head, d_model, generator=g),
        "blocks.0.attn.W_O": torch.randn(d_model, n_heads * d_head, generator=g),
        "blocks.0.attn.mask": torch.tril(torch.ones(3, 3)),
        "blocks.0.mlp.W_in": torch.randn(d_mlp, d_model, generator=g),
        "blocks.0.mlp.b_in": torch.randn(d_mlp, generator=g),
        "blocks.0.mlp.W_out": torch.randn(d_model, d_mlp, generator=g),
        "blocks.0.mlp.b_out": torch.randn(d_model, generator=g),
        "unembed.W_U": torch.randn(d_model, d_vocab, generator=g),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoints", type=int, default=401)
    args = parser.parse_args()
    from mechgrok.store import ingest, open_run

    n = args.checkpoints
    g = torch.Generator().manual_seed(0)
    with tempfile.TemporaryDirectory(prefix="mechgrok-bench-") as tmp:
        tmp = Path(tmp)
        src = tmp / "full_run_data.pth"
        sds = [paper_state_dict(g) for _ in range(n)]
        torch.save({"config": {"p": 113, "frac_train": 0.3, "seed": 0, "d_model": 128, "num_heads": 4, "d_head": 32,
                               "d_mlp": 512, "num_layers": 1, "n_ctx": 3, "d_vocab": 114, "act_type": "ReLU"},
                    "state_dicts": sds, "epochs": [100 * i for i in range(n)],
                    "train_losses": [1.0] * (100 * (n - 1) + 1), "test_losses": [1.0] * (10 * (n - 1) + 1)}, src)
        raw = sum(t.numel() * 4 for sd in sds for k, t in sd.items() if not k.endswith("mask"))
        del sds

        out = tmp / "trajectory.zarr"
        t0 = time.perf_counter()
        ingest(src, out)
        t_ingest = time.perf_counter() - t0
        store = tree_bytes(out)

        t0 = time.perf_counter()
        ds = open_run(out)
        t_open = time.perf_counter() - t0
        t0 = time.perf_counter()
        one = {name: ds[name].isel(checkpoint=200 % n).values for name in ds.data_vars if "checkpoint" in ds[name].dims}
        t_one = time.perf_counter() - t0
        assert len(one) == 11

        fixture = Path(__file__).resolve().parents[1] / "fixtures" / "quick-run"
        q = tmp / "quick.zarr"
        ingest(fixture, q)
        qd = open_run(q)
        q_raw = sum(qd[v].size * 4 for v in qd.data_vars if "checkpoint" in qd[v].dims)
        q_weights = sum(tree_bytes(q / v) for v in qd.data_vars if "checkpoint" in qd[v].dims)

    print(f"synthetic paper-sized trajectory: {n} checkpoints, {raw / 1e6:.1f} MB raw float32 "
          f"(source .pth {src.name})")
    print(f"  ingest            {t_ingest:8.2f} s   = {n / t_ingest:8.1f} checkpoints/s")
    print(f"  store size        {store / 1e6:8.1f} MB  = {store / raw:8.3f} x raw float32 (random weights)")
    print(f"  lazy open         {t_open * 1e3:8.1f} ms")
    print(f"  read 1 checkpoint {t_one * 1e3:8.1f} ms   (all 11 weights)")
    print(f"fixtures/quick-run (trained weights): weight chunks {q_weights / 1e6:.2f} MB = {q_weights / q_raw:.3f} x raw float32")


if __name__ == "__main__":
    main()
