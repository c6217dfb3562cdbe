"""The training loss of the paper's model and its gradient for many weight sets at once, by hand.

SGLD (:mod:`mechgrok.analyses.sgld`, :mod:`mechgrok.analyses.llc`) needs the loss and its gradient thousands of times per
checkpoint, for several chains, on the same few thousand rows. :class:`LossGradient` computes both for ``C``
weight sets (a leading ``chain`` dim on every weight) in one pass of batched matrix products, with a backward
pass written out by hand instead of recorded by autograd:

* the attention inputs come from per-token tables: every row is ``[a, b, =]``, so the residual stream at
  position 0 (1) is one of ``d_vocab`` rows ``W_E[t] + W_pos[0]`` (``W_E[t] + W_pos[1]``) and at position 2 one
  vector (``paper.md`` 2.1). The attention scores and values of all ``2 d_vocab + 1`` (position, token) entries
  come from one matrix product and are gathered per row; their gradients are summed back per entry;
* the softmax over the three positions is written out, the ReLU mask is applied in place, and the biases and
  the residual at ``=`` ride through the matrix products on a constant column of ones;
* the activations of every row live in buffers allocated once per batch shape and reused from step to step
  (fresh multi-megabyte tensors each step cost page faults that dominate a small model on a CPU).

The value is the function of ``per_example_loss(forward(params, tokens).logits, labels).mean(-1)``
(:func:`mechgrok.models.transformer.forward`, :func:`mechgrok.tasks.loss.per_example_loss`; all ``d_vocab_out`` classes,
``paper.md`` 2.3). Each row's loss is computed relative to its label's logit,

    loss = log sum_j exp(x_j - x_label) = log1p(t),    t = sum_{j != label} exp(x_j - x_label),

with the exponentials in the weights' dtype and ``log1p`` in float64, and the mean over rows in float64. No
probability is ever rounded to 1, so a confidently fit row keeps its loss and its gradient: the label's entry of
the logit gradient, ``p_label - 1 = -t / (1 + t)``, is formed from ``t`` and never as a difference from 1 (a
float32 softmax rounds it to 0 once the other classes share less than 2^-24). With float32 weights the loss
agrees with the float64 log-softmax to about 1e-7 relative (the precision of the float32 logits themselves);
with float64 weights, to rounding. The gradient is that of the sum over chains, so each chain gets its own.
``tests/test_loss_gradient.py`` checks value and gradient against float64 autograd to 1e-12.
"""

from __future__ import annotations

import math
from typing import Mapping, MutableMapping

import torch

from mechgrok.errors import AnalysisError
from mechgrok.models.transformer import WEIGHT_NAMES

__all__ = ["LossGradient"]

#: Exponents below this are raised to it before exponentiating: exp(-60) = 8.8e-27 keeps every probability and
#: gradient term a normal float32 (subnormal arithmetic is 10-100x slower on x86) and changes a row's loss by at
#: most d_vocab_out * 8.8e-27 nats.
_FLOOR = -60.0
#: Largest exponent float32 exp holds with room for a sum over the classes (exp(88.7) overflows); beyond it the
#: rows are shifted by their maximum instead of their label's logit.
_CEIL = 80.0


class LossGradient:
    """Mean float64 cross-entropy of the final-position logits and its gradient, for ``C`` weight sets.

    Parameters
    ----------
    tokens : torch.Tensor
        int64, (n, 3): the rows ``[a, b, =]``; the last token must be the same in every row.
    labels : torch.Tensor
        int64, (n,): classes in ``[0, d_vocab_out)``.

    Raises
    ------
    AnalysisError
        If the rows are empty, not (n, 3), or do not share their last token, or labels do not match them.

    Notes
    -----
    Call with weights of any float dtype (float32 for sampling, float64 for checks); the cross-entropy is always
    float64. Buffers are kept per (chains, rows, dtype, device), so an instance serves one SGLD run at a time.
    """

    def __init__(self, tokens: torch.Tensor, labels: torch.Tensor):
        if tokens.dim() != 2 or tokens.shape[1] != 3 or tokens.shape[0] == 0:
            raise AnalysisError(f"tokens must be a non-empty (rows, 3) tensor of [a, b, =], got {tuple(tokens.shape)}")
        if labels.shape != tokens.shape[:1]:
            raise AnalysisError(f"labels must be ({tokens.shape[0]},), got {tuple(labels.shape)}")
        if not bool((tokens[:, 2] == tokens[0, 2]).all()):
            raise AnalysisError("every row must end in the same '=' token")
        self.tokens, self.labels = tokens, labels
        self.n = int(tokens.shape[0])
        self._bufs: dict[tuple, dict[str, torch.Tensor]] = {}

    def to(self, device: torch.device | str) -> LossGradient:
        """Move the rows to ``device`` (in place); returns self."""
        self.tokens, self.labels = self.tokens.to(device), self.labels.to(device)
        self._bufs.clear()
        return self

    def _buffers(self, C: int, m: int, dims: tuple[int, ...], dtype: torch.dtype, device) -> dict[str, torch.Tensor]:
        key = (C, m, dims, dtype, str(device))
        bufs = self._bufs.get(key)
        if bufs is None:
            V, M, H, D, F, O = dims
            HD, K = H * D, H + H * D
            shapes = {
                # per-token tables: rows (position 0, token), (position 1, token), '='; columns [score | value]
                "R": (C, 2 * V + 1, M), "B": (C, M, K), "g_T": (C, 2 * V + 1, K),
                # per row
                "Ta": (C, m, K), "Tb": (C, m, K), "z": (C, m, HD + 1), "resid_mid": (C, m, M + 1),
                "post": (C, m, F), "resid_post": (C, m, M), "logits": (C, m, O), "g_logits": (C, m, O),
                "g_rp": (C, m, M), "g_pre": (C, m, F), "g_z": (C, m, HD), "src": (C, m, K),
                "WO_aug": (C, HD + 1, M + 1), "W_in_aug": (C, M + 1, F),
            }
            bufs = {k: torch.empty(s, dtype=dtype, device=device) for k, s in shapes.items()}
            # biases folded into the matrix products through a constant last column of ones: the '=' residual
            # enters resid_mid through z's ([z | 1] [[W_O, 0], [r2, 1]] = [resid_mid | 1]), b_in the MLP input
            # through resid_mid's ([resid_mid | 1] [[W_in], [b_in]])
            bufs["z"][..., -1] = 1.0
            bufs["WO_aug"].zero_()
            bufs["WO_aug"][:, -1, -1] = 1.0
            self._bufs = {key: bufs}  # one shape at a time
        return bufs

    def __call__(
        self,
        params: Mapping[str, torch.Tensor],
        grads: MutableMapping[str, torch.Tensor] | None = None,
        rows: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The mean loss per weight set and, with ``grads``, its gradient.

        Parameters
        ----------
        params : mapping of str to torch.Tensor
            Weights by TransformerLens name (:func:`mechgrok.models.transformer.param_shapes`), each with a leading dim ``C``.
        grads : mutable mapping of str to torch.Tensor, optional
            Tensors shaped like ``params`` (same dtype) that receive the gradient of ``loss.sum()``, i.e. each weight
            set's own gradient; overwritten. None computes the loss only.
        rows : torch.Tensor, optional
            int64, (C, m): for each weight set its own rows (indices into ``tokens``), e.g. SGLD minibatches;
            None uses every row for every set.

        Returns
        -------
        torch.Tensor
            float64, (C,): the mean cross-entropy in nats over the rows.

        Raises
        ------
        AnalysisError
            If a weight is missing, the weights disagree on ``C``, or ``rows`` has the wrong shape.
        """
        missing = [k for k in WEIGHT_NAMES if k not in params]
        if missing:
            raise AnalysisError(f"weights missing: {missing}")
        W_E, W_pos, W_Q, W_K, W_V, W_O, W_in, b_in, W_out, b_out, W_U = (params[k] for k in WEIGHT_NAMES)
        if W_E.dim() != 3 or any(params[k].shape[0] != W_E.shape[0] for k in WEIGHT_NAMES):
            raise AnalysisError("every weight needs the same leading chain dim")
        C, V, M = W_E.shape
        H, D = W_Q.shape[1], W_Q.shape[3]
        F, O = W_in.shape[2], W_U.shape[2]
        HD = H * D
        dtype, device = W_E.dtype, W_E.device
        # each row reads rows ia (position 0, token a) and ib (position 1, token b) of the (C * (2V + 1)) tables
        ar = torch.arange(C, device=device)[:, None] * (2 * V + 1)
        if rows is None:
            m = self.n
            tok, y = self.tokens, self.labels.expand(C, self.n)
        else:
            if rows.dim() != 2 or rows.shape[0] != C:
                raise AnalysisError(f"rows must be (chains={C}, m), got {tuple(rows.shape)}")
            m = int(rows.shape[1])
            tok, y = self.tokens[rows], self.labels[rows]  # (C, m, 3), (C, m)
        ia = (ar + tok[..., 0]).reshape(-1)  # (C * m,)
        ib = (ar + V + tok[..., 1]).reshape(-1)
        y = y[..., None]  # (C, m, 1)
        eq = int(self.tokens[0, 2])
        buf = self._buffers(C, m, (V, M, H, D, F, O), dtype, device)
        scale = 1.0 / math.sqrt(D)
        K = H + HD

        # ---- forward: per-token tables of attention scores and values -------------------------------------
        R = buf["R"]  # rows: every token at position 0, every token at position 1, '=' at position 2
        torch.add(W_E[:, None], W_pos[:, :2, None], out=R[:, : 2 * V].view(C, 2, V, M))
        r2 = torch.add(W_E[:, eq], W_pos[:, 2], out=R[:, 2 * V])  # (C, M)
        q = torch.matmul(r2[:, None, None], W_Q).mul_(scale)  # (C, H, 1, D)
        qk = torch.matmul(W_K, q.transpose(-1, -2)).squeeze(-1)  # (C, H, M): a residual x scores x . qk[h]
        B = buf["B"]  # (C, M, H + HD): [qk^T | W_V]
        B[:, :, :H] = qk.transpose(1, 2)
        B[:, :, H:].view(C, M, H, D).copy_(W_V.transpose(1, 2))
        T = torch.bmm(R, B)  # (C, 2V + 1, H + HD): [score | value] of every (position, token)
        Tf = T.view(-1, K)
        Ta = torch.index_select(Tf, 0, ia, out=buf["Ta"].view(-1, K)).view(C, m, K)  # position 0 of each row
        Tb = torch.index_select(Tf, 0, ib, out=buf["Tb"].view(-1, K)).view(C, m, K)  # position 1
        s2, v2 = T[:, 2 * V :, :H], T[:, 2 * V :, H:].view(C, 1, H, D)  # (C, 1, H), '='
        v0a, v1b = Ta[..., H:].unflatten(-1, (H, D)), Tb[..., H:].unflatten(-1, (H, D))
        # ---- the rows: softmax over the three positions, then the residual stream ------------------------------
        s0a, s1b = Ta[..., :H], Tb[..., :H]
        top = torch.maximum(torch.maximum(s0a, s1b), s2)
        e0, e1, e2 = (s0a - top).exp_(), (s1b - top).exp_(), (s2 - top).exp_()
        zsum = e0 + e1 + e2
        A0, A1, A2 = e0.div_(zsum), e1.div_(zsum), e2.div_(zsum)  # (C, m, H): attention to a, b, '='
        z_aug = buf["z"]  # (C, m, HD + 1): [z | 1]
        z = z_aug[..., :HD].unflatten(-1, (H, D))
        torch.mul(v0a, A0[..., None], out=z)
        z.addcmul_(v1b, A1[..., None]).addcmul_(v2, A2[..., None])
        WO = W_O.reshape(C, HD, M)
        WO_aug = buf["WO_aug"]
        WO_aug[:, :HD, :M] = WO
        WO_aug[:, HD, :M] = r2
        rm_aug = torch.bmm(z_aug, WO_aug, out=buf["resid_mid"])  # (C, m, M + 1): [resid_mid | 1]
        resid_mid = rm_aug[..., :M]
        W_in_aug = buf["W_in_aug"]
        W_in_aug[:, :M] = W_in
        W_in_aug[:, M] = b_in
        post = torch.bmm(rm_aug, W_in_aug, out=buf["post"]).relu_()  # (C, m, F)
        resid_post = torch.baddbmm(resid_mid, post, W_out, out=buf["resid_post"]).add_(b_out[:, None])
        logits = torch.bmm(resid_post, W_U, out=buf["logits"])  # (C, m, O)
        # ---- the loss: log(sum_j exp(x_j - x_label)) = log1p(t), t the sum over the other classes ---------------
        x = logits.sub_(logits.gather(-1, y))  # x_j - x_label; the label's entry is exactly 0
        shift = None
        if float(x.max()) > _CEIL:  # a class beats the label by more than float32 exp holds: shift by the row max
            shift = x.amax(-1, keepdim=True)
            x.sub_(shift)
        e = x.clamp_(min=_FLOOR).exp_()  # (C, m, O)
        e_label = e.gather(-1, y)  # exactly 1 unless shifted
        e.scatter_(-1, y, 0.0)
        t = e.sum(-1, keepdim=True)  # (C, m, 1): the other classes' share, relative to the label's
        if shift is None:
            per_row = torch.log1p(t.to(torch.float64))
        else:
            per_row = torch.log(t.to(torch.float64) + e_label.to(torch.float64)) + shift.to(torch.float64)
        loss = per_row.squeeze(-1).mean(-1)  # (C,), float64
        if grads is None:
            return loss

        # ---- backward ----------------------------------------------------------------------------------------
        # d loss_c / d logits = (softmax - onehot) / m with softmax = e / (e_label + t); the label's entry
        # p_y - 1 = -t / (e_label + t) comes from t itself, never as a difference from 1
        norm = (e_label + t).mul_(m)
        g_logits = torch.div(e, norm, out=buf["g_logits"])
        g_logits.scatter_(-1, y, t.neg().div_(norm))
        torch.bmm(resid_post.transpose(1, 2), g_logits, out=grads["W_U"])
        g_rp = torch.bmm(g_logits, W_U.transpose(1, 2), out=buf["g_rp"])  # (C, m, M)
        torch.sum(g_rp, 1, out=grads["b_out"])
        torch.bmm(post.transpose(1, 2), g_rp, out=grads["W_out"])
        g_pre = torch.bmm(g_rp, W_out.transpose(1, 2), out=buf["g_pre"])  # (C, m, F)
        torch.ops.aten.threshold_backward.grad_input(g_pre, post, 0.0, grad_input=g_pre)  # ReLU: 0 where post <= 0
        g_W_in_aug = torch.bmm(rm_aug.transpose(1, 2), g_pre)  # (C, M + 1, F): [g_W_in; g_b_in]
        grads["W_in"].copy_(g_W_in_aug[:, :M])
        grads["b_in"].copy_(g_W_in_aug[:, M])
        g_rm = g_rp.baddbmm_(g_pre, W_in.transpose(1, 2))  # (C, m, M), in place of g_rp
        g_WO_aug = torch.bmm(z_aug.transpose(1, 2), g_rm)  # (C, HD + 1, M): [g_W_O; sum over rows of g_rm]
        grads["W_O"].view(C, HD, M).copy_(g_WO_aug[:, :HD])
        g_z = torch.bmm(g_rm, WO.transpose(1, 2), out=buf["g_z"]).view(C, m, H, D)
        # the values and the attention pattern: z = A0 v0a + A1 v1b + A2 v2
        src = buf["src"]  # (C, m, H + HD): per row [d score | d value] of the entry it read
        g_va = src[..., H:].unflatten(-1, (H, D))
        gA0 = torch.mul(g_z, v0a, out=g_va).sum(-1)
        gA1 = torch.mul(g_z, v1b, out=g_va).sum(-1)
        gA2 = torch.mul(g_z, v2, out=g_va).sum(-1)  # (C, m, H)
        dot = A0 * gA0 + A1 * gA1 + A2 * gA2  # 3-way softmax backward: g_s = A * (g_A - sum_j A_j g_A_j)
        g_T = buf["g_T"]
        g_T.zero_()
        g_Tf = g_T.view(-1, K)
        torch.mul(gA0.sub_(dot), A0, out=src[..., :H])
        torch.mul(g_z, A0[..., None], out=g_va)
        g_Tf.index_add_(0, ia, src.view(-1, K))
        torch.mul(gA1.sub_(dot), A1, out=src[..., :H])
        torch.mul(g_z, A1[..., None], out=g_va)
        g_Tf.index_add_(0, ib, src.view(-1, K))
        torch.sum(gA2.sub_(dot).mul_(A2), 1, out=g_T[:, 2 * V, :H])
        torch.sum(torch.mul(g_z, A2[..., None], out=g_va).view(C, m, HD), 1, out=g_T[:, 2 * V, H:])
        # the tables: T = R B
        g_B = torch.bmm(R.transpose(1, 2), g_T)  # (C, M, H + HD): [g_qk^T | g_W_V]
        grads["W_V"].copy_(g_B[:, :, H:].view(C, M, H, D).transpose(1, 2))
        g_R = torch.bmm(g_T, B.transpose(1, 2))  # (C, 2V + 1, M)
        g_qk = g_B[:, :, :H].transpose(1, 2)  # (C, H, M)
        # qk[h] = W_K[h] q[h], q[h] = scale * r2 W_Q[h]
        torch.mul(g_qk[..., None], q, out=grads["W_K"])
        g_q = torch.matmul(g_qk[:, :, None], W_K).mul_(scale)  # (C, H, 1, D)
        torch.mul(r2[:, None, :, None], g_q, out=grads["W_Q"])
        g_r2 = g_R[:, 2 * V] + g_WO_aug[:, HD] + torch.matmul(g_q, W_Q.transpose(-1, -2)).sum(1)[:, 0]  # (C, M)
        # embeddings: rows 0..2V-1 of R are W_E + W_pos[0 or 1], row 2V is W_E[=] + W_pos[2]
        g_r01 = g_R[:, : 2 * V].view(C, 2, V, M)
        g_WE = torch.add(g_r01[:, 0], g_r01[:, 1], out=grads["W_E"])
        g_WE[:, eq] += g_r2
        g_pos = grads["W_pos"]
        torch.sum(g_r01, 2, out=g_pos[:, :2])
        g_pos[:, 2] = g_r2
        if g_pos.shape[1] > 3:
            g_pos[:, 3:] = 0.0
        return loss
