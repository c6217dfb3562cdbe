"""Float64 cross-entropy: the slingshot note of paper.md 2.3."""

import math

import torch

from mechgrok.tasks.loss import accuracy, cross_entropy, per_example_loss


def test_float32_log_softmax_rounds_a_confident_loss_to_zero_but_mechgrok_does_not():
    margin = 16.64  # exp(-16.64) = 5.95e-8 < 2**-24: float32 rounds the correct-class probability to 1
    logits = torch.tensor([[margin, 0.0]], dtype=torch.float32)
    labels = torch.tensor([0])
    float32_loss = -torch.log_softmax(logits, dim=-1)[0, 0].item()
    assert float32_loss == 0.0
    exact = math.log1p(math.exp(-float(logits[0, 0])))  # the float32 margin, in float64 arithmetic
    ours = cross_entropy(logits, labels)
    assert ours.dtype == torch.float64
    assert ours.item() > 0
    assert math.isclose(ours.item(), exact, rel_tol=1e-6)  # float64 cancellation in logsumexp - margin: ~1e-15 absolute


def test_against_a_dense_reference():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 7, generator=g)
    labels = torch.tensor([1, 0, 6, 3, 3])
    ref = torch.zeros(2, 5, dtype=torch.float64)
    for i in range(2):
        for j in range(5):
            row = logits[i, j].double()
            ref[i, j] = -(row[labels[j]] - torch.log(torch.exp(row).sum()))
    torch.testing.assert_close(per_example_loss(logits, labels), ref)
    torch.testing.assert_close(cross_entropy(logits, labels), ref.mean(-1))
    acc = accuracy(logits, labels)
    assert acc.shape == (2,) and acc.dtype == torch.float64
    for i in range(2):  # a plain loop: the row's largest logit (no ties in random normals) is at the label
        hits = sum(max(range(7), key=lambda c: float(logits[i, j, c])) == int(labels[j]) for j in range(5))
        assert acc[i].item() == hits / 5
    assert 0 < acc.sum().item() < 2  # the random logits hit some labels and miss others: not a trivial 0 or 1


def test_gradient_flows_in_the_logits_dtype():
    logits = torch.tensor([[3.0, 1.0, -1.0]], requires_grad=True)
    cross_entropy(logits, torch.tensor([0])).backward()
    assert logits.grad.dtype == torch.float32
    p = torch.softmax(logits.detach().double(), -1)
    torch.testing.assert_close(logits.grad.double(), p - torch.tensor([[1.0, 0, 0]], dtype=torch.float64), rtol=1e-6, atol=1e-7)
