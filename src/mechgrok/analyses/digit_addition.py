"""n-digit addition: the loss of every answer digit at every checkpoint, split by whether a carry feeds it.

On a fixed evaluation set of sums (:func:`mechgrok.tasks.digit_addition.addition_batch`, seeded), one float64
forward pass per checkpoint (through :func:`mechgrok.engine.run`) gives the loss at each answer position (0 = the
carry-out token, then the sum digits from the most significant), averaged over the sums, and the same average
over the sums whose answer digit is fed by a carry (carry 1) or not (carry 0)
(:func:`mechgrok.tasks.digit_addition.answer_carries`). Nanda et al. find one phase change per answer digit
(paper.md 6.1); the carry split shows which part of each digit's algorithm (the sum of the two digits mod 10,
or the carry) is learned when.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import xarray as xr

from mechgrok.engine import Checkpoint, DEFAULT_CHUNK, run
from mechgrok.errors import AnalysisError
from mechgrok.models.causal_transformer import forward
from mechgrok.tasks.digit_addition import AUTHORS_SEED, addition_batch, answer_carries, answer_logits
from mechgrok.tasks.loss import per_example_loss

__all__ = ["DigitLosses", "digit_losses", "EVAL_SEED"]

#: Seed of the evaluation sums: the authors' data seed plus 1 (disjoint from a run's own stream by construction
#: of the seed, as mechgrok's test sets are).
EVAL_SEED = AUTHORS_SEED + 1


@dataclass
class DigitLosses:
    """Kernel: per-answer-position loss and its carry split on fixed sums (module docstring)."""

    tokens: torch.Tensor
    carries: torch.Tensor
    name: str = "digit_losses"
    weights: tuple[str, ...] | None = None
    needs: frozenset[str] = field(default_factory=frozenset)

    def __call__(self, ck: Checkpoint) -> dict[str, Any]:
        tok = self.tokens.to(ck.device)
        logits = forward(ck.weights, tok, n_layers=1).logits[0]
        n = (tok.shape[-1] - 3) // 3
        loss = per_example_loss(answer_logits(logits), tok[:, 2 * n + 2 :])  # (batch, n + 1)
        c = self.carries.to(ck.device).to(torch.float64)
        by_carry = torch.stack([(loss * (1 - c)).sum(0) / (1 - c).sum(0), (loss * c).sum(0) / c.sum(0)], dim=-1)
        return {"loss_per_token": loss.mean(0).cpu().numpy(), "loss_by_carry": by_carry.cpu().numpy()}

    def assemble(self, values: dict[str, np.ndarray], checkpoint: xr.DataArray) -> xr.Dataset:
        k = values["loss_per_token"].shape[1]
        counts = torch.stack([(1 - self.carries).sum(0), self.carries.sum(0)], dim=-1).numpy()
        return xr.Dataset(
            {"loss_per_token": (("checkpoint", "answer_position"), values["loss_per_token"], {
                "units": "nats", "description": "float64 loss at each answer position (0 = the carry-out token, then "
                "the sum digits from the most significant), mean over the evaluation sums"}),
             "loss_by_carry": (("checkpoint", "answer_position", "carry"), values["loss_by_carry"], {
                 "units": "nats", "description": "the same mean over the sums whose answer digit is (carry 1) or is "
                 "not (carry 0) fed by a carry (NaN where no sum has that carry)"}),
             "loss": (("checkpoint",), values["loss_per_token"].mean(axis=1), {
                 "units": "nats", "description": "the task's loss: mean over answer positions"}),
             "n_by_carry": (("answer_position", "carry"), counts.astype(np.int64), {
                 "units": "sums", "description": "evaluation sums with each carry at each answer position"})},
            coords={"checkpoint": checkpoint.values, "answer_position": np.arange(k), "carry": [0, 1]},
        )


def digit_losses(ds: xr.Dataset, *, n_eval: int = 2048, seed: int = EVAL_SEED, chunk: int = DEFAULT_CHUNK,
                 device: str | torch.device | None = "cpu") -> xr.Dataset:
    """Per-answer-position losses, split by carry, at every checkpoint of an addition trajectory.

    Parameters
    ----------
    ds : xarray.Dataset
        A 1-layer n-digit addition trajectory (``pos`` = 3 n + 3), selected along ``checkpoint`` by the caller.
    n_eval : int
        Evaluation sums.
    seed : int
        Their seed (:data:`EVAL_SEED` by default).
    chunk, device
        As for :func:`mechgrok.engine.run`.

    Returns
    -------
    xarray.Dataset
        ``loss_per_token`` (checkpoint, answer_position), ``loss_by_carry`` (checkpoint, answer_position, carry),
        ``loss`` (checkpoint), ``n_by_carry`` (answer_position, carry); attrs record the evaluation set and the
        carry rule.

    Raises
    ------
    AnalysisError
        If the trajectory is not a 1-layer model with an MLP on 3 n + 3 positions.

    Examples
    --------
    >>> import mechgrok
    >>> ds = mechgrok.open_run("fixtures/digit-addition-quick").isel(checkpoint=[0, -1])
    >>> dl = digit_losses(ds, n_eval=256)
    >>> dl["loss_per_token"].dims, bool(dl["loss"][1] < dl["loss"][0])
    (('checkpoint', 'answer_position'), True)
    """
    if "W_in" not in ds or "layer" in ds.dims or ds.sizes.get("pos", 0) % 3 or ds.sizes.get("pos", 0) < 6:
        raise AnalysisError("digit losses need a 1-layer n-digit addition model (MLP, 3 n + 3 positions)")
    n = ds.sizes["pos"] // 3 - 1
    b = addition_batch(int(n_eval), n, seed=int(seed))
    out = run(ds, [DigitLosses(tokens=b.tokens, carries=answer_carries(b.carries))], chunk=chunk,
              device=device)["digit_losses"]
    out.attrs = {"title": "mechgrok digit losses", "n_digits": n, "n_eval": int(n_eval), "eval_seed": int(seed),
                 "rule": "float64 cross-entropy at the answer positions; carry of answer position 0 = the carry out "
                 "of the top column, of answer position k >= 1 = the carry into column n - k (counted from the "
                 "units column)", "eval_set": json.dumps({"generator": "addition_batch", "seed": int(seed)})}
    return out
