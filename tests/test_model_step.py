"""``OBSModel.forward_window``'s fast forms equal the plain per-step formulation (#17).

``forward_window`` takes the writer heads of the input half of the context for
the whole window in one product, and reuses each step's read-out ``Eᵀ a`` as
the next step's context instead of reading the same bag again. The plain form
(:meth:`OBSModel.step` with ``active`` and ``heads`` None) reads the bag and
applies the writer to the concatenated context at every step. Logits, carries
and every gradient must agree to 1e-5, over two windows with carried memory.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from obs_dist.model.model import Carry, ModelConfig, OBSModel
from obs_dist.model.state import BigState, StateConfig
from obs_dist.model.table_bag import TableBags
from obs_dist.model.window import WindowMemory
from obs_dist.model.writer import Writer, WriterConfig
from obs_dist.tasks.mqar import mqar_batch

N = 256


def _plain_window(model: OBSModel, part: dict[str, torch.Tensor], memory: WindowMemory,
                  carry: Carry) -> tuple[torch.Tensor, Carry]:
    feats = model.encoder(part)
    table = TableBags(model.node_embed.weight)
    outs = []
    for feat in feats.unbind(1):
        y, carry, _, _ = model.step(feat, memory, carry, table)
        outs.append(y)
    return model.head(torch.stack(outs, dim=1)), carry


def _run(rule: str, backward: bool, plain: bool
         ) -> tuple[list[torch.Tensor], Carry, dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    cfg = ModelConfig(d_model=16, vocab=32, classes=32,
                      writer=WriterConfig(k_min=2, k_max=6, active=8, rule=rule,
                                          backward_links=backward, key_dim=8))
    model = OBSModel(cfg, N)
    with torch.no_grad():  # context weights away from their zero start, so they matter
        for lin in (model.writer.query, model.writer.count, model.writer.sign,
                    model.writer.strength):
            lin.weight.normal_(0, 0.3)
    batch = mqar_batch(3, 32, 24, 4, torch.Generator().manual_seed(1))
    base = BigState(StateConfig(nodes=N, partitions=2, init_std=0.05, seed=3)).matrix()
    memory = WindowMemory(base, 3)
    carry = model.initial_carry(3, "cpu")
    logits_all = []
    for s in (0, 12):
        part = {"tokens": batch["tokens"][:, s:s + 12]}
        if plain:
            logits, carry = _plain_window(model, part, memory, carry)
        else:
            logits, carry, _ = model.forward_window(part, memory, carry)
        F.cross_entropy(logits.flatten(0, 1), batch["targets"][:, s:s + 12].flatten(),
                        ignore_index=-100).backward()
        logits_all.append(logits.detach())
        memory, carry = memory.carry(), carry.detach()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return logits_all, carry, grads


@pytest.mark.parametrize("rule,backward", [("hebbian", False), ("delta", False),
                                           ("hebbian", True)])
def test_forward_window_equals_the_plain_steps(rule: str, backward: bool) -> None:
    want_logits, want_carry, want = _run(rule, backward, plain=True)
    got_logits, got_carry, got = _run(rule, backward, plain=False)
    for a, b in zip(got_logits, want_logits):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert torch.equal(got_carry.ids, want_carry.ids)
    torch.testing.assert_close(got_carry.vals, want_carry.vals, atol=1e-5, rtol=1e-5)
    assert set(got) == set(want)
    for name in ("writer.query.weight", "writer.sign.weight", "node_embed.weight"):
        assert float(want[name].abs().max()) > 0, name  # the compared paths carry gradient
    for name in want:
        torch.testing.assert_close(got[name], want[name], atol=1e-5, rtol=1e-5, msg=name)


def test_writer_heads_are_its_four_linear_maps() -> None:
    """``head_weights`` stacks query, count, sign and strength in :meth:`Writer.propose`'s order."""
    torch.manual_seed(2)
    writer = Writer(WriterConfig(k_min=2, k_max=6, active=4, key_dim=8), N, context_dim=12)
    with torch.no_grad():
        for lin in (writer.query, writer.count, writer.sign, writer.strength):
            lin.weight.normal_(0, 0.5)
            lin.bias.normal_(0, 0.5)
    context = torch.randn(5, 12)
    prop = writer(context)
    query = writer.query(context)
    want = writer.propose(torch.cat([query, writer.count(context), writer.sign(context),
                                     writer.strength(context)], dim=1))
    assert torch.equal(prop.ids, want.ids)
    for got_part, want_part in zip(prop[1:], want[1:]):
        torch.testing.assert_close(got_part, want_part, atol=1e-6, rtol=1e-6)
    # The count and the strength vary with the context, so heads in another order
    # could not agree with the four linear maps by chance.
    assert float(want.k_hat.detach().std()) > 0 and float(want.eta.detach().std()) > 0
