"""Training throughput of the `paper` preset: mechgrok's trainer against a full-sequence reference.

Run:  python benchmarks/train_throughput.py [--epochs N] [--threads T]

Both sides do the same work per epoch: one full-batch AdamW step on the 3830 training pairs (float64 loss) and a
no-grad evaluation of the 8939 test pairs. mechgrok's side is `mechgrok.train.train` itself (checkpoints and
metrics included); the reference is the same model written as TransformerLens computes it, in plain PyTorch:
attention, MLP and unembedding at every position, then the last position's logits.
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from mechgrok.config import preset
from mechgrok.tasks.modular_arithmetic import grid_labels, grid_tokens, split_indices
from mechgrok.tasks.loss import accuracy, cross_entropy
from mechgrok.models.transformer import init_params
from mechgrok.train import train


class FullSequenceReference(nn.Module):
    """The paper's model computed at every position (TransformerLens style), same weights and init."""

    def __init__(self, cfg):
        super().__init__()
        w = init_params(cfg)
        self.w = nn.ParameterDict({k: nn.Parameter(v) for k, v in w.items()})
        self.register_buffer("mask", torch.tril(torch.ones(cfg.n_ctx, cfg.n_ctx, dtype=torch.bool)))

    def forward(self, tokens):
        w = self.w
        x = w["W_E"][tokens] + w["W_pos"][: tokens.shape[1]]  # (batch, pos, d_model)
        q = torch.einsum("bpm,hmd->bhpd", x, w["W_Q"])
        k = torch.einsum("bpm,hmd->bhpd", x, w["W_K"])
        v = torch.einsum("bpm,hmd->bhpd", x, w["W_V"])
        scores = torch.einsum("bhqd,bhkd->bhqk", q, k) / math.sqrt(q.shape[-1])
        scores = scores.masked_fill(~self.mask, float("-inf"))
        z = torch.einsum("bhqk,bhkd->bhqd", scores.softmax(-1), v)
        x = x + torch.einsum("bhqd,hdm->bqm", z, w["W_O"])
        post = torch.relu(x @ w["W_in"] + w["b_in"])
        x = x + post @ w["W_out"] + w["b_out"]
        return (x @ w["W_U"])[:, -1]


def reference_epochs_per_second(cfg, epochs: int) -> float:
    tokens, labels = grid_tokens(cfg.p), grid_labels(cfg.p)
    tr, te = (torch.from_numpy(i) for i in split_indices(cfg.p, cfg.frac_train, cfg.seed))
    model = FullSequenceReference(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    start = time.perf_counter()
    for epoch in range(epochs):
        logits = model(tokens[tr])
        loss = cross_entropy(logits, labels[tr])
        with torch.no_grad():
            test_logits = model(tokens[te])
            _ = (loss.item(), cross_entropy(test_logits, labels[te]).item(), accuracy(logits, labels[tr]).item(),
                 accuracy(test_logits, labels[te]).item())
        for g in opt.param_groups:
            g["lr"] = cfg.lr * min(epoch / cfg.warmup_steps, 1.0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return epochs / (time.perf_counter() - start)


def mechgrok_epochs_per_second(cfg, epochs: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        train(cfg.replace(num_epochs=epochs - 1), Path(tmp) / "run")
        return epochs / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=100)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = preset("paper")
    # warm up both code paths once
    reference_epochs_per_second(cfg, 3)
    mechgrok_epochs_per_second(cfg, 3)
    ref = reference_epochs_per_second(cfg, args.epochs)
    ours = mechgrok_epochs_per_second(cfg, args.epochs)
    print(f"paper preset (p={cfg.p}, d_model={cfg.d_model}, d_mlp={cfg.d_mlp}), {args.epochs} epochs, "
          f"{torch.get_num_threads()} torch threads, device cpu")
    print(f"{'implementation':<42}{'epochs/s':>10}{'40k epochs':>14}")
    for name, eps in [("mechgrok train (final position only)", ours), ("full-sequence reference (TL style)", ref)]:
        print(f"{name:<42}{eps:>10.1f}{40_000 / eps / 60:>11.1f} min")
    print(f"speed-up: {ours / ref:.2f}x")


if __name__ == "__main__":
    main()
