"""One dense gradient for a window's lookups of E computes what plain autograd computes (#17).

* :class:`~obs_dist.model.table_bag.TableBags` against ``F.embedding_bag`` under
  plain autograd, one or two backward passes accumulating into the table;
* the whole model: a window's logits and every parameter's gradient through
  ``TableBags`` equal those of the former step (sparse ``F.embedding_bag``
  lookups of E, densified once per backward) to 1e-5, with the Hebbian and the
  delta rule, with backward links, over two windows of one batch.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F

from obs_dist.model import model as model_module
from obs_dist.model.model import ModelConfig, OBSModel
from obs_dist.model.table_bag import TableBags
from obs_dist.model.window import WindowMemory
from obs_dist.model.writer import WriterConfig


def _lookups(n: int, steps: int, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randint(0, n, (4, 6), generator=gen),
             torch.randn(4, 6, generator=gen, dtype=torch.float64).requires_grad_())
            for _ in range(steps)]


def _loss(outs: list[torch.Tensor]) -> torch.Tensor:
    # Each lookup's output is used differently, and one is chained into the next,
    # so gradients reach the table through several paths.
    total = outs[0].pow(2).sum()
    for i, out in enumerate(outs[1:], 1):
        total = total + (out * outs[i - 1].detach().sin()).sum() * (i % 3 - 1)
    return total


@pytest.mark.parametrize("windows", [1, 2])
def test_table_bags_gradients_equal_embedding_bag(windows: int) -> None:
    torch.manual_seed(0)
    table = torch.randn(50, 8, dtype=torch.float64, requires_grad=True)
    looks = _lookups(50, 12, seed=1)
    grads = []
    for mode in ("plain", "bags"):
        table.grad = None
        for _, w in looks:
            w.grad = None
        per = len(looks) // windows
        for k in range(windows):  # one backward per window, gradients accumulated
            part = looks[k * per:(k + 1) * per]
            if mode == "plain":
                outs = [F.embedding_bag(i, table, per_sample_weights=w, mode="sum")
                        for i, w in part]
            else:
                bags = TableBags(table)
                outs = [bags.bag(i, w) for i, w in part]
            _loss(outs).backward()
        assert table.grad is not None and not table.grad.is_sparse
        grads.append((table.grad.clone(), [w.grad.clone() for _, w in looks]))
    (plain_table, plain_w), (bags_table, bags_w) = grads
    assert float(plain_table.abs().max()) > 0
    torch.testing.assert_close(bags_table, plain_table, atol=1e-10, rtol=0)
    for a, b in zip(bags_w, plain_w):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=0)


def test_table_bags_without_gradients_is_a_plain_bag() -> None:
    table = torch.randn(20, 4, requires_grad=True)
    ids, w = torch.randint(0, 20, (3, 5)), torch.rand(3, 5)
    with torch.no_grad():
        out = TableBags(table).bag(ids, w)
    assert not out.requires_grad
    torch.testing.assert_close(out, F.embedding_bag(ids, table.detach(),
                                                    per_sample_weights=w, mode="sum"))


def test_lookups_cut_off_from_the_loss_leave_the_table_without_gradient() -> None:
    table = torch.randn(20, 4, requires_grad=True)
    other = torch.randn(3, 4, requires_grad=True)
    bags = TableBags(table)
    bags.bag(torch.randint(0, 20, (3, 5)), torch.rand(3, 5))  # never used by the loss
    (other * bags.bag(torch.randint(0, 20, (3, 5)), torch.rand(3, 5)).detach()).sum().backward()
    assert table.grad is None and other.grad is not None


class _SparseLookups:
    """The step before TableBags: sparse ``F.embedding_bag`` gradients, densified after."""

    def __init__(self, table: torch.Tensor) -> None:
        self.table = table

    def bag(self, ids: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        return F.embedding_bag(ids, self.table, per_sample_weights=weights, mode="sum",
                               sparse=True)


def _window_run(rule: str, backward_links: bool, lookups: Any) -> tuple[list[torch.Tensor],
                                                                         dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    nodes, bsz, steps = 64, 3, 6
    cfg = ModelConfig(d_model=16, vocab=11, classes=7, writer=WriterConfig(
        k_min=2, k_max=4, active=5, rule=rule, backward_links=backward_links, key_dim=8))
    model = OBSModel(cfg, nodes)
    gen = torch.Generator().manual_seed(1)
    base = torch.randn(nodes, nodes, generator=gen) * 0.02
    tokens = torch.randint(0, 11, (bsz, 2 * steps), generator=gen)
    targets = torch.randint(0, 7, (bsz, 2 * steps), generator=gen)
    memory = WindowMemory(base, bsz)
    carry = model.initial_carry(bsz, "cpu")
    logits_all = []
    original = model_module.TableBags
    model_module.TableBags = lookups  # type: ignore[misc]
    try:
        for s in (0, steps):  # two windows of one batch, one backward each
            logits, carry, _ = model.forward_window({"tokens": tokens[:, s:s + steps]},
                                                    memory, carry)
            F.cross_entropy(logits.flatten(0, 1), targets[:, s:s + steps].flatten()).backward()
            logits_all.append(logits.detach())
            memory, carry = memory.carry(), carry.detach()
    finally:
        model_module.TableBags = original  # type: ignore[misc]
    grads = {}
    for name, p in model.named_parameters():
        if p.grad is not None:
            grads[name] = p.grad.to_dense() if p.grad.is_sparse else p.grad.clone()
    return logits_all, grads


@pytest.mark.parametrize("rule,backward_links", [("hebbian", False), ("delta", False),
                                                 ("hebbian", True)])
def test_model_window_with_table_bags_equals_the_sparse_lookup_step(
        rule: str, backward_links: bool) -> None:
    want_logits, want = _window_run(rule, backward_links, _SparseLookups)
    got_logits, got = _window_run(rule, backward_links, TableBags)
    for a, b in zip(got_logits, want_logits):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert set(got) == set(want) and "node_embed.weight" in got
    assert float(want["node_embed.weight"].abs().max()) > 0
    for name in want:
        torch.testing.assert_close(got[name], want[name], atol=1e-5, rtol=1e-5,
                                   msg=lambda m, n=name: f"{n}: {m}")
