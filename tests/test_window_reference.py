"""The sparse windowed model equals a dense reference with explicit N×N copies."""

from __future__ import annotations

import pytest
import torch
from support.dense_reference import DenseMemory

from obs_dist.model.model import ModelConfig, OBSModel
from obs_dist.model.state import BigState, StateConfig
from obs_dist.model.window import WindowMemory
from obs_dist.model.writer import WriterConfig
from obs_dist.tasks.mqar import mqar_batch

N = 64


def _model(rule: str, backward: bool) -> OBSModel:
    torch.manual_seed(0)
    cfg = ModelConfig(d_model=16, vocab=32, classes=32,
                      writer=WriterConfig(k_min=2, k_max=6, active=5, rule=rule,
                                          backward_links=backward, key_dim=8))
    return OBSModel(cfg, N).double()


def _run(model: OBSModel, memory, batch, windows: int = 2):
    """Run the batch in ``windows`` chunks carrying memory; return logits and grads."""
    model.zero_grad()
    tokens = batch["tokens"]
    carry = model.initial_carry(tokens.shape[0], "cpu")
    carry = carry._replace(vals=carry.vals.double())
    chunk = tokens.shape[1] // windows
    outs = []
    for w in range(windows):
        part = {"tokens": tokens[:, w * chunk:(w + 1) * chunk]}
        logits, carry, _ = model.forward_window(part, memory, carry)
        outs.append(logits)
    logits = torch.cat(outs, dim=1)
    loss = torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), batch["targets"].reshape(-1), ignore_index=-100)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return logits.detach(), grads


@pytest.mark.parametrize("rule,backward,shared", [
    ("hebbian", False, False), ("delta", False, False), ("hebbian", True, False),
    ("delta", True, True), ("hebbian", False, True),
])
def test_sparse_window_matches_dense_reference(rule: str, backward: bool, shared: bool) -> None:
    gen = torch.Generator().manual_seed(1)
    batch = mqar_batch(3, 32, 24, 4, gen)
    state = BigState(StateConfig(nodes=N, partitions=2, init_std=0.05, seed=3))
    base = state.matrix().double()

    model = _model(rule, backward)
    sparse_logits, sparse_grads = _run(model, WindowMemory(base, 3, shared=shared), batch)
    dense_logits, dense_grads = _run(model, DenseMemory(base, 3, shared=shared), batch)

    torch.testing.assert_close(sparse_logits, dense_logits, atol=1e-5, rtol=0)
    assert set(sparse_grads) == set(dense_grads)
    assert len(sparse_grads) >= 8  # encoder, node embeddings, writer, norm, head
    for name, g in dense_grads.items():
        torch.testing.assert_close(sparse_grads[name], g, atol=1e-5, rtol=0, msg=name)
    # The test must be able to fail: writes really change what is read.
    assert any(float(g.abs().max()) > 0 for n, g in dense_grads.items() if "writer" in n)


def test_commit_equals_dense_sum_of_writes() -> None:
    """``to_delta`` sums every stream's window writes: base + delta = dense result."""
    gen = torch.Generator().manual_seed(2)
    batch = mqar_batch(2, 32, 12, 3, gen)
    state = BigState(StateConfig(nodes=N, partitions=1, init_std=0.0))
    model = _model("hebbian", True)
    memory = WindowMemory(state.matrix().double(), 2)
    dense = DenseMemory(state.matrix().double(), 2)
    carry = model.initial_carry(2, "cpu")
    carry = carry._replace(vals=carry.vals.double())
    with torch.no_grad():
        model.forward_window({"tokens": batch["tokens"]}, memory, carry)
        model.forward_window({"tokens": batch["tokens"]}, dense, carry)
    delta = memory.to_delta()
    expected = (dense.common - state.matrix().double()).sum(0)
    # to_delta rounds values to fp32 for the commit.
    torch.testing.assert_close(delta.to_dense().double(), expected, atol=1e-5, rtol=1e-5)
    assert delta.nnz > 0


def test_a_window_longer_than_the_index_buffers_matches_dense_reference() -> None:
    """150 steps in one window: the index buffers grow twice (64 → 128 → 256 blocks)."""
    gen = torch.Generator().manual_seed(4)
    batch = mqar_batch(2, 32, 150, 8, gen)
    base = BigState(StateConfig(nodes=N, partitions=2, init_std=0.05, seed=3)).matrix().double()
    model = _model("hebbian", True)
    sparse_logits, sparse_grads = _run(model, WindowMemory(base, 2), batch, windows=1)
    dense_logits, dense_grads = _run(model, DenseMemory(base, 2), batch, windows=1)
    torch.testing.assert_close(sparse_logits, dense_logits, atol=1e-5, rtol=0)
    for name, g in dense_grads.items():
        torch.testing.assert_close(sparse_grads[name], g, atol=1e-5, rtol=0, msg=name)
