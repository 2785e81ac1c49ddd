"""A training step on CUDA computes what the same step computes on the CPU.

Skipped where torch sees no GPU (CI). On a GPU machine: ``bash scripts/gpu-check.sh``.

One batch of two windows (the second reads what the first committed), the same
seed and batch on both devices: the loss, every slow weight's gradient, each
window's committed delta and the state after the commits must agree.

Tolerance: 1e-4 relative, norm-wise (``max|cuda − cpu| ≤ 1e-4 · max|cpu|`` per
tensor). Both run in fp32 (TF32 matmuls are turned off here) but with different
kernels: cuBLAS and CUDA reductions sum in another order than the CPU's, so
each op differs by a few ulps (fp32 eps ≈ 1.2e-7), and the window's recurrence
and the backward pass compound that to ~1e-6 relative. 1e-4 leaves two orders
of margin, while a real fault (a wrong row read, a write lost, a gradient not
reaching a weight) moves the result by O(1). Norm-wise, so elements near zero
do not turn rounding into a large relative error. The discrete parts (which
nodes each step writes, hence the delta's indices) must be identical.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import torch

from launch.run_config import RunConfig
from launch.runner import build_model
from obs_dist.config import from_dict
from obs_dist.model.delta import SparseDelta
from obs_dist.tasks import task_batches
from obs_dist.trainer import Trainer

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

RTOL = 1e-4


@pytest.fixture(autouse=True)
def _no_tf32() -> Iterator[None]:
    """IEEE fp32 matmuls on the GPU (TF32 keeps 10 mantissa bits: ~1e-3 relative)."""
    matmul, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    before = (matmul.allow_tf32, cudnn.allow_tf32)
    matmul.allow_tf32 = cudnn.allow_tf32 = False
    yield
    matmul.allow_tf32, cudnn.allow_tf32 = before


def _cfg(device: str) -> RunConfig:
    return from_dict(RunConfig, {
        "state": {"nodes": 1024, "partitions": 2},
        "model": {"d_model": 32, "writer": {"k_max": 8, "active": 16, "key_dim": 32}},
        "task": {"name": "mqar", "vocab": 64, "seq_len": 24, "pairs": 4, "batch": 8,
                 "commit": True},
        "train": {"steps": 1, "window": 12, "progress": False, "device": device},
    })


def _window_on(device: str) -> dict[str, Any]:
    """One batch of two committed windows on ``device``: loss, grads, deltas, state (CPU)."""
    cfg = _cfg(device)
    model, state = build_model(cfg, torch.device(device))
    deltas: list[SparseDelta] = []

    def sync(d: SparseDelta) -> SparseDelta:
        deltas.append(d)
        return d

    trainer = Trainer(cfg.train, model, state, commit=True, sync=sync)
    batch = next(task_batches(cfg.task))  # built on the CPU from the task's seed
    before = state.matrix().detach().cpu().clone()
    out = trainer.run_batch(batch, train=True)  # forward, backward, commits; no θ step
    grads = {n: p.grad.detach().cpu().clone() for n, p in model.named_parameters()
             if p.grad is not None}
    return {"loss": out["loss"], "grads": grads, "before": before,
            "deltas": [d.to("cpu") for d in deltas],
            "state": state.matrix().detach().cpu().clone()}


def _assert_rel(got: torch.Tensor, want: torch.Tensor, what: str) -> None:
    assert got.shape == want.shape, what
    scale = float(want.abs().max())
    err = float((got.double() - want.double()).abs().max())
    assert err <= RTOL * scale, f"{what}: max|cuda - cpu| = {err:.3e}, max|cpu| = {scale:.3e}"


def test_cuda_window_matches_cpu() -> None:
    cpu = _window_on("cpu")
    gpu = _window_on("cuda")

    torch.testing.assert_close(gpu["before"], cpu["before"], atol=0, rtol=0)  # same init
    assert cpu["loss"] > 0
    assert abs(gpu["loss"] - cpu["loss"]) <= RTOL * abs(cpu["loss"]), (gpu["loss"], cpu["loss"])

    assert set(gpu["grads"]) == set(cpu["grads"])
    assert len(cpu["grads"]) >= 8  # encoder, node embeddings, writer, norm, head
    for name, g in cpu["grads"].items():
        _assert_rel(gpu["grads"][name], g, f"grad {name}")
    # The check must be able to fail: the writer's weights get a real gradient.
    assert any(float(g.abs().max()) > 0 for n, g in cpu["grads"].items() if "writer" in n)

    assert len(gpu["deltas"]) == len(cpu["deltas"]) == 2  # one commit per window
    for w, (dg, dc) in enumerate(zip(gpu["deltas"], cpu["deltas"])):
        assert dc.nnz > 0
        assert torch.equal(dg.rows, dc.rows) and torch.equal(dg.cols, dc.cols), f"window {w}"
        _assert_rel(dg.values, dc.values, f"delta values, window {w}")

    # The state moved by exactly the committed deltas, on both devices alike.
    _assert_rel(gpu["state"] - gpu["before"], cpu["state"] - cpu["before"], "state change")
    expected = cpu["before"].double()
    for d in cpu["deltas"]:
        expected.index_put_((d.rows.long(), d.cols.long()), d.values.double(), accumulate=True)
    torch.testing.assert_close(cpu["state"].double(), expected, atol=1e-6, rtol=1e-6)
