"""Induction heads: previous-token and induction scores of every head at every checkpoint, the attention
patterns behind them, and the heads of the induction circuit.

On a fixed evaluation set of repeated-subsequence sequences (:func:`mechgrok.tasks.repeated_subsequences.
induction_batch`, seeded), one float64 forward pass per checkpoint (through :func:`mechgrok.engine.run`) gives
every head's attention pattern A[b, q, k] (layer, head), from which (Olsson et al. 2022; tasks.md section 2):

- **previous-token score** = mean over sequences b and query positions q >= 1 of A[b, q, q - 1];
- **induction score** = mean over the predictable positions q (the mask: offset j = 0 .. subseq_len - 2 of a
  repeat i >= 1, q = s_i + j) of the attention paid to the tokens just after the earlier occurrences of the
  current token, i.e. the sum of A[b, q, s_i' + j + 1] over the earlier repeats i' < i;
- the **induction baseline**: the same induction score on the same sequences with every repeat after the first
  replaced by fresh random tokens (:func:`control_tokens`: the same positions and targets, nothing to match),
  and the **content induction score** = induction score - baseline. The baseline is the part of the score that
  position alone gives: the repeats start about (seq_len - 1) / num_repeats tokens apart, so a head that
  attends to that distance back scores without matching anything. In the quick run
  (``fixtures/repeated-subsequences-quick``) the layer-1 heads do that early on (induction score 0.05 -> 0.10 by
  step 180 with the baseline rising alike, content score below 0.01 until step 210);
- the task's loss (with the original 85/84 factor) and the loss at every position (batch mean).

The **induction circuit** (a documented rule, :data:`PREV_TOKEN_THRESHOLD`, :data:`INDUCTION_THRESHOLD`): at the
last checkpoint, the previous-token heads are the heads of every layer but the last whose previous-token score
is at least 0.2, and the induction heads are the heads of every layer but the first whose induction score is at
least 0.3. A head attending uniformly scores about 1 / (position + 1), below 0.07 here; the released models'
previous-token heads score 0.28 and 0.29 (the doubled residual lets them share the work) and their induction
heads 0.64 to 0.68.

A circuit head's **formation** epoch (the onset of its formation) is the first checkpoint at which its score has
made :data:`RISE_FRACTION` (10 %) of its rise from the first to the last checkpoint: the previous-token score for
previous-token heads, the content induction score (where the baseline was measured; else the induction score)
for induction heads; the same rule for both kinds of head, NaN for a single checkpoint. Measured on seven quick
runs (the ``repeated_subsequences_quick`` preset with checkpoints every 5 steps, and with model seed 2 or 3, data
seed 5, 4 heads of 8, lr 1e-3 over 800 steps, vocabulary 64): the previous-token head's onset precedes the
induction head's by 15 to 105 steps at 10 % of the rise (40 to 180 at 5 %), and both come before the steepest
loss drop; at 25 % of the rise the two are 0 to 25 steps apart, the previous-token head never later (the heads
grow together through the phase change, Olsson et al. 2022). On the raw induction score the positional pre-rise
puts the induction head first at 5 %, and at 25 % the fixture's heads tied (both at step 270), hence the content
score and the onset fraction.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np
import torch
import xarray as xr

from mechgrok.engine import Checkpoint, DEFAULT_CHUNK, run
from mechgrok.errors import AnalysisError
from mechgrok.models.causal_transformer import forward
from mechgrok.tasks.repeated_subsequences import InductionBatch, induction_batch, induction_loss, per_position_loss

__all__ = ["PREV_TOKEN_THRESHOLD", "INDUCTION_THRESHOLD", "RISE_FRACTION", "EVAL_SEED", "HeadScores", "induction_data",
           "control_tokens", "head_scores", "induction_circuit"]

#: Previous-token score a head needs to count as a previous-token head.
PREV_TOKEN_THRESHOLD = 0.2
#: Induction score a head needs to count as an induction head.
INDUCTION_THRESHOLD = 0.3
#: A circuit head has formed (its onset) once its score has made this fraction of its rise (first to last checkpoint).
RISE_FRACTION = 0.1
#: Seed of the evaluation sequences (the authors' test-set seed: data seed 1 plus 1).
EVAL_SEED = 2


def induction_data(ds: xr.Dataset) -> dict[str, int]:
    """The repeated-subsequence data settings of a trajectory: ``seq_len``, ``subseq_len``, ``num_repeats``,
    ``vocab_size``, from its config (mechgrok's ``config_json`` or the authors' ``data_config``), else the
    authors' 85, 16, 3 and the model's vocabulary."""
    cfg = json.loads(ds.attrs.get("config_json", "{}"))
    src: Mapping[str, Any] = cfg.get("source_config", {}).get("data_config", {}) or cfg
    return {"seq_len": int(src.get("seq_len", ds.sizes.get("pos", 85))), "subseq_len": int(src.get("subseq_len", 16)),
            "num_repeats": int(src.get("num_repeats", 3)), "vocab_size": int(src.get("vocab_size", ds.sizes["vocab"]))}


def _induction_targets(data: InductionBatch, num_repeats: int) -> torch.Tensor:
    """(batch, q, k) 1.0 where key k is the token after an earlier occurrence of the token at a masked query q."""
    b, n = data.tokens.shape
    t = torch.zeros(b, n, n, dtype=torch.float64)
    rows = torch.arange(b)
    for i in range(1, num_repeats):
        for j in range(data.subseq_len - 1):
            q = data.starts[:, i] + j
            for ip in range(i):
                t[rows, q, data.starts[:, ip] + j + 1] = 1.0
    return t


def control_tokens(data: InductionBatch, vocab_size: int, seed: int) -> torch.Tensor:
    """The evaluation sequences with every repeat after the first replaced by fresh random tokens (1 ..
    vocab_size - 1, a ``torch.Generator`` seeded with ``seed``): the same positions, starts and masks, and no
    repeated subsequence to match (module docstring, the content induction score)."""
    tok = data.tokens.clone()
    fresh = torch.randint(1, vocab_size, tuple(tok.shape), generator=torch.Generator().manual_seed(int(seed)),
                          dtype=tok.dtype)
    rows = torch.arange(tok.shape[0])
    for i in range(1, data.starts.shape[1]):
        for j in range(data.subseq_len):
            q = data.starts[:, i] + j
            tok[rows, q] = fresh[rows, q]
    return tok


@dataclass
class HeadScores:
    """Kernel: head scores, loss and the attention pattern of the first sequence (module docstring)."""

    data: InductionBatch
    targets: torch.Tensor
    n_layers: int
    control: torch.Tensor | None = None
    doubled_residual: bool = True
    name: str = "induction"
    weights: tuple[str, ...] | None = None
    needs: frozenset[str] = field(default_factory=frozenset)

    def __call__(self, ck: Checkpoint) -> dict[str, Any]:
        tok = self.data.tokens.to(ck.device)
        out = forward(ck.weights, tok, n_layers=self.n_layers, doubled_residual=self.doubled_residual, cache=True)
        A = out.attn_pattern[0]  # (layer, batch, head, q, k)
        prev = torch.diagonal(A, offset=-1, dim1=-2, dim2=-1).mean(dim=(1, 3))  # (layer, head)
        m = self.data.mask.to(ck.device)  # (batch, q)
        t = self.targets.to(ck.device)
        ind = torch.einsum("lbhq,bq->lh", torch.einsum("lbhqk,bqk->lbhq", A, t), m) / m.sum()
        base = torch.zeros_like(ind)
        if self.control is not None:
            Ac = forward(ck.weights, self.control.to(ck.device), n_layers=self.n_layers,
                         doubled_residual=self.doubled_residual, cache=True).attn_pattern[0]
            base = torch.einsum("lbhq,bq->lh", torch.einsum("lbhqk,bqk->lbhq", Ac, t), m) / m.sum()
        logits = out.logits[0]
        return {"prev_token_score": prev.cpu().numpy(), "induction_score": ind.cpu().numpy(),
                "induction_baseline": base.cpu().numpy(),
                "loss": float(induction_loss(logits, self.data)),
                "loss_per_position": per_position_loss(logits, tok).mean(0).cpu().numpy(),
                "attn_pattern": A[:, 0].to(torch.float32).cpu().numpy()}

    def assemble(self, values: dict[str, np.ndarray], checkpoint: xr.DataArray) -> xr.Dataset:
        L, H = values["prev_token_score"].shape[1:]
        n = values["attn_pattern"].shape[-1]
        return xr.Dataset(
            {"prev_token_score": (("checkpoint", "layer", "head"), values["prev_token_score"], {
                "units": "attention weight", "description": "mean attention from position q to q - 1 (q >= 1)"}),
             "induction_score": (("checkpoint", "layer", "head"), values["induction_score"], {
                 "units": "attention weight", "description": "mean attention from a predictable position of a repeat "
                 "to the tokens after the earlier occurrences of its token"}),
             "induction_baseline": (("checkpoint", "layer", "head"), values["induction_baseline"], {
                 "units": "attention weight", "description": "the induction score's attention on the same sequences "
                 "with the repeats replaced by random tokens (position alone, no repeat to match)"}),
             "induction_content": (("checkpoint", "layer", "head"),
                                   values["induction_score"] - values["induction_baseline"], {
                 "units": "attention weight", "description": "induction_score - induction_baseline: the attention "
                 "to the tokens after earlier occurrences that the repeat itself causes"}),
             "loss": (("checkpoint",), values["loss"], {
                 "units": "nats", "description": "the task's loss on the evaluation sequences (masked mean x "
                 "seq_len / (seq_len - 1), the original factor), float64"}),
             "loss_per_position": (("checkpoint", "position"), values["loss_per_position"], {
                 "units": "nats", "description": "next-token loss at each position (predicting position + 1), "
                 "mean over the evaluation sequences"}),
             "attn_pattern": (("checkpoint", "layer", "head", "query_pos", "key_pos"), values["attn_pattern"], {
                 "units": "attention weight", "description": "attention pattern on the first evaluation sequence"}),
             "eval_tokens": (("key_pos",), self.data.tokens[0].numpy(), {
                 "units": "token id", "description": "the first evaluation sequence (whose pattern is stored)"})},
            coords={"checkpoint": checkpoint.values, "layer": np.arange(L), "head": np.arange(H),
                    "position": np.arange(n - 1), "query_pos": np.arange(n), "key_pos": np.arange(n)},
        )


def head_scores(ds: xr.Dataset, *, n_eval: int = 256, seed: int = EVAL_SEED, chunk: int = DEFAULT_CHUNK,
                device: str | torch.device | None = "cpu") -> xr.Dataset:
    """Previous-token and induction scores of every head at every checkpoint, with the attention patterns.

    Parameters
    ----------
    ds : xarray.Dataset
        An attention-only repeated-subsequence trajectory (``layer`` dim), selected along ``checkpoint``.
    n_eval : int
        Evaluation sequences.
    seed : int
        Their seed (:data:`EVAL_SEED`, the authors' test-set seed, by default).
    chunk, device
        As for :func:`mechgrok.engine.run`.

    Returns
    -------
    xarray.Dataset
        ``prev_token_score``, ``induction_score``, ``induction_baseline``, ``induction_content``
        (checkpoint, layer, head), ``loss`` (checkpoint),
        ``loss_per_position`` (checkpoint, position), ``attn_pattern`` (checkpoint, layer, head, query_pos,
        key_pos; of the first evaluation sequence), ``eval_tokens``; plus :func:`induction_circuit`'s variables.
        Attrs: the data settings, the rule and thresholds (``control_seed``: the seed of the baseline's random
        tokens, :func:`control_tokens`).

    Raises
    ------
    AnalysisError
        If the model has an MLP or a single layer.

    Examples
    --------
    >>> import mechgrok
    >>> ds = mechgrok.open_run("fixtures/repeated-subsequences-quick").isel(checkpoint=[-1])
    >>> hs = head_scores(ds, n_eval=32)
    >>> hs["induction_score"].dims
    ('checkpoint', 'layer', 'head')
    """
    if "W_in" in ds or "layer" not in ds.dims:
        raise AnalysisError("head scores need an attention-only model with at least 2 layers (a 'layer' dim)")
    d = induction_data(ds)
    data = induction_batch(int(n_eval), seed=int(seed), **d)
    cfg = json.loads(ds.attrs.get("config_json", "{}"))
    doubled = bool(cfg.get("doubled_residual", True))
    k = HeadScores(data=data, targets=_induction_targets(data, d["num_repeats"]), n_layers=ds.sizes["layer"],
                   control=control_tokens(data, d["vocab_size"], seed), doubled_residual=doubled)
    out = run(ds, [k], chunk=chunk, device=device)["induction"]
    out = xr.merge([out, induction_circuit(out)], combine_attrs="override")
    out.attrs = {"title": "mechgrok induction heads", **d, "n_eval": int(n_eval), "eval_seed": int(seed),
                 "doubled_residual": doubled, "prev_token_threshold": PREV_TOKEN_THRESHOLD,
                 "induction_threshold": INDUCTION_THRESHOLD, "rise_fraction": RISE_FRACTION,
                 "control_seed": int(seed), "rule": (
                     f"at the last checkpoint, previous-token heads = heads of every layer but the last with "
                     f"previous-token score >= {PREV_TOKEN_THRESHOLD}; induction heads = heads of every layer but "
                     f"the first with induction score >= {INDUCTION_THRESHOLD}; a circuit head formed (onset) at the "
                     f"first checkpoint where its score made {RISE_FRACTION:.0%} of its rise from the first to the "
                     "last checkpoint: the previous-token score, and the content induction score (induction score "
                     "minus its baseline on the same sequences with the repeats replaced by random tokens)")}
    return out


def _formation(score: np.ndarray, epochs: np.ndarray, frac: float) -> np.ndarray:
    """First epoch at which a score has made ``frac`` of its rise from the first to the last checkpoint (NaN
    where it does not rise)."""
    out = np.full(score.shape[1:], np.nan)
    for idx in np.ndindex(*score.shape[1:]):
        s = score[(slice(None), *idx)]
        if s.size > 1 and s[-1] > s[0]:
            out[idx] = epochs[np.flatnonzero(s >= s[0] + frac * (s[-1] - s[0]))[0]]
    return out


def induction_circuit(scores: xr.Dataset, *, prev_threshold: float = PREV_TOKEN_THRESHOLD,
                      induction_threshold: float = INDUCTION_THRESHOLD) -> xr.Dataset:
    """The heads of the induction circuit at the last checkpoint, and when each head formed (module docstring).

    Parameters
    ----------
    scores : xarray.Dataset
        With ``prev_token_score`` and ``induction_score`` over (checkpoint, layer, head), and optionally
        ``induction_content`` (then the induction heads' formation is read from it).
    prev_threshold, induction_threshold : float

    Returns
    -------
    xarray.Dataset
        ``is_prev_token_head``, ``is_induction_head`` (layer, head; bool), ``prev_token_formed``,
        ``induction_formed`` (layer, head; epochs, NaN if never).

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> s = np.zeros((3, 2, 2)); s[1:, 0, 1] = 0.9
    >>> t = np.zeros((3, 2, 2)); t[2, 1, 0] = 0.8
    >>> ds = xr.Dataset({"prev_token_score": (("checkpoint", "layer", "head"), s),
    ...                  "induction_score": (("checkpoint", "layer", "head"), t)}, coords={"checkpoint": [0, 10, 20]})
    >>> c = induction_circuit(ds)
    >>> np.argwhere(c["is_induction_head"].values).tolist(), float(c["induction_formed"][1, 0])
    ([[1, 0]], 20.0)
    """
    prev, ind = scores["prev_token_score"], scores["induction_score"]
    L = prev.sizes["layer"]
    layer = xr.DataArray(np.arange(L), dims="layer")
    last = dict(checkpoint=-1)
    is_prev = (prev.isel(**last) >= prev_threshold) & (layer < L - 1)
    is_ind = (ind.isel(**last) >= induction_threshold) & (layer > 0)
    e = scores["checkpoint"].values
    prev_formed = np.where(is_prev.values, _formation(prev.values, e, RISE_FRACTION), np.nan)
    grow = scores["induction_content"] if "induction_content" in scores else ind
    ind_formed = np.where(is_ind.values, _formation(grow.values, e, RISE_FRACTION), np.nan)
    return xr.Dataset({
        "is_prev_token_head": (("layer", "head"), is_prev.values, {"units": "1", "description":
                               f"previous-token score >= {prev_threshold} at the last checkpoint, layer < last"}),
        "is_induction_head": (("layer", "head"), is_ind.values, {"units": "1", "description":
                              f"induction score >= {induction_threshold} at the last checkpoint, layer > 0"}),
        "prev_token_formed": (("layer", "head"), prev_formed, {"units": "epochs", "description":
                              f"previous-token heads: first checkpoint with {RISE_FRACTION:.0%} of the score's rise"}),
        "induction_formed": (("layer", "head"), ind_formed, {"units": "epochs", "description":
                             f"induction heads: first checkpoint with {RISE_FRACTION:.0%} of the rise of the "
                             f"{'content induction score' if grow is not ind else 'induction score'}"}),
    }, coords={"layer": prev["layer"].values, "head": prev["head"].values})
