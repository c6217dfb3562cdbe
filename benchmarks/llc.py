"""Time per checkpoint of mechgrok's LLC estimator against devinterp's on the same settings (CPU).

Both sample the same checkpoint of ``fixtures/quick-run`` with SGLD (full batch, then minibatches of 128 with
nbeta = m / ln m), the same step size, localisation, inverse temperature, chains, burn-in and draws, and the same
float64 training loss of the same model (``mechgrok.models.transformer.Transformer``). devinterp (1.x API) runs its chains one
after another through the ``nn.Module``, autograd and its SGLD optimizer; mechgrok runs them as one batched
computation with a hand-written backward pass (``mechgrok.analyses.modular.loss_gradient``). mechgrok with autograd through
``mechgrok.models.transformer.forward`` (``gradient="autograd"``) is also timed, to separate batching from the hand-written
gradient. The estimates are printed beside the times: they must agree within their spread for the timing to mean
anything. Each estimator runs ``--repeats`` times, interleaved with the others, and the fastest run counts (the
median is printed beside it), so that a noisy neighbour on a shared machine does not decide the ratio.

Usage::

    python benchmarks/llc.py [--epoch 3000] [--chains 4] [--burnin 100] [--draws 200] [--batch-sizes full,128]
                              [--threads 0] [--repeats 3]

devinterp is a benchmark/test-only dependency (``pip install devinterp==1.3.2``); without it only mechgrok is
timed.
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from mechgrok.engine import checkpoint_weights
from mechgrok.config import Config
from mechgrok.analyses.llc import _train_loss_for, default_nbeta, llc_trajectory
from mechgrok.tasks.loss import cross_entropy
from mechgrok.models.transformer import Transformer
from mechgrok.store import open_run

RUN = Path(__file__).resolve().parents[1] / "fixtures" / "quick-run"


def time_mechgrok(ds, args, nbeta, batch_size, *, gradient: str) -> tuple[float, float, float]:
    t0 = time.perf_counter()
    out = llc_trajectory(ds, epochs=[args.epoch], epsilon=args.epsilon, gamma=args.gamma, nbeta=nbeta,
                         num_chains=args.chains, num_burnin=args.burnin, num_draws=args.draws, seed=0,
                         batch_size=batch_size, gradient=gradient).isel(checkpoint=0)
    return time.perf_counter() - t0, float(out["llc_mean"]), float(out["llc_std"])


def time_devinterp(ds, args, nbeta, batch_size) -> tuple[float, float, float] | None:
    try:
        from devinterp.optim.sgld import SGLD
        from devinterp.slt.sampler import estimate_learning_coeff_with_summary
    except ImportError:
        return None
    from torch.utils.data import DataLoader, TensorDataset

    lf = _train_loss_for(ds, batch_size=None, gradient="autograd")
    model = Transformer(Config.from_json(ds.attrs["config_json"]))
    w = checkpoint_weights(ds.sel(checkpoint=[args.epoch]))
    with torch.no_grad():
        for name, t in model.params().items():
            t.copy_(w[name][0])
    loader = DataLoader(TensorDataset(lf.tokens, lf.labels), batch_size=batch_size or lf.n,
                        shuffle=batch_size is not None)

    def evaluate(model, data):
        x, y = data
        return cross_entropy(model(x).logits, y)

    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = estimate_learning_coeff_with_summary(
            model, loader, evaluate=evaluate, sampling_method=SGLD,
            optimizer_kwargs=dict(lr=args.epsilon, localization=args.gamma, nbeta=nbeta),
            num_chains=args.chains, num_draws=args.draws, num_burnin_steps=args.burnin, seed=0, verbose=False,
        )
    return time.perf_counter() - t0, float(res["llc/mean"]), float(res["llc/std"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epoch", type=int, default=3000)
    ap.add_argument("--chains", type=int, default=4)
    ap.add_argument("--burnin", type=int, default=100)
    ap.add_argument("--draws", type=int, default=200)
    ap.add_argument("--epsilon", type=float, default=3e-4)
    ap.add_argument("--gamma", type=float, default=100.0)
    ap.add_argument("--batch-sizes", default="full,128",
                    help="comma-separated scenarios: 'full' or a minibatch size (default full,128)")
    ap.add_argument("--threads", type=int, default=0,
                    help="torch intra-op threads for both (default 0: torch's default, one per core)")
    ap.add_argument("--repeats", type=int, default=3,
                    help="timed runs of each estimator, interleaved; the fastest counts (default 3)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    ds = open_run(RUN)
    n = int(ds["is_train"].sum())
    steps = args.chains * (args.burnin + args.draws)
    print(f"checkpoint epoch {args.epoch} of {RUN.name} ({n} training rows); {args.chains} chains x ({args.burnin} "
          f"burn-in + {args.draws} draws) = {steps} chain-steps; eps={args.epsilon:g} gamma={args.gamma:g}; "
          f"{torch.get_num_threads()} thread(s); fastest of {args.repeats} interleaved runs")
    have_devinterp = True
    for scenario in args.batch_sizes.split(","):
        batch_size = None if scenario.strip() == "full" else int(scenario)
        nbeta = default_nbeta(batch_size or n)
        print(f"\n{'full batch' if batch_size is None else f'minibatch {batch_size}'}, nbeta={nbeta:.1f}")
        runs = {
            "mechgrok, hand-written gradient": lambda: time_mechgrok(ds, args, nbeta, batch_size, gradient="manual"),
            "mechgrok, autograd (model.forward)": lambda: time_mechgrok(ds, args, nbeta, batch_size, gradient="autograd"),
            "devinterp 1.x (chains in sequence)": lambda: time_devinterp(ds, args, nbeta, batch_size),
        }
        times: dict[str, list[float]] = {name: [] for name in runs}
        result: dict[str, tuple[float, float]] = {}
        for _ in range(args.repeats):
            for name, run in runs.items():
                out = run()
                if out is None:
                    continue
                times[name].append(out[0])
                result[name] = out[1:]
        have_devinterp = bool(times["devinterp 1.x (chains in sequence)"])
        ref = min(times["devinterp 1.x (chains in sequence)"]) if have_devinterp else None
        print(f"{'estimator':36s} {'s/checkpoint':>12s} {'(median)':>9s} {'ms/chain-step':>14s} {'LLC':>17s} "
              f"{'speed-up':>9s}")
        for name, ts in times.items():
            if not ts:
                continue
            best = min(ts)
            m, s = result[name]
            speed = f"{ref / best:8.2f}x" if ref else "      n/a"
            print(f"{name:36s} {best:12.2f} {float(np.median(ts)):9.2f} {1e3 * best / steps:14.2f} "
                  f"{m:9.2f} +/- {s:5.2f} {speed}")
    if not have_devinterp:
        print("devinterp (1.x API) is not installed: pip install devinterp==1.3.2 to compare")


if __name__ == "__main__":
    main()
