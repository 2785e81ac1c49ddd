"""Longhorn's parallel scan (``longhorn_chunked``) equals its recurrence.

Outputs and gradients with respect to every input agree to 1e-5 (float64), for
several chunk sizes and lengths that are not whole numbers of chunks, with step
sizes large enough that some transitions nearly erase the state; the mixer and
the whole model give the same outputs and parameter gradients in either form.
"""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from obs_dist.baselines import BaselineConfig, build_baseline
from obs_dist.baselines.longhorn import longhorn_chunked, longhorn_scan

TOL = {"atol": 1e-5, "rtol": 1e-5}


def _inputs(seed: int, steps: int, bsz: int = 2, channels: int = 5,
            m: int = 4) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(bsz, steps, channels, generator=gen, dtype=torch.float64)
    k = torch.randn(bsz, steps, m, generator=gen, dtype=torch.float64)
    q = torch.randn(bsz, steps, m, generator=gen, dtype=torch.float64)
    # Step sizes up to 20: ε_t k_j² comes close to 1 (the state nearly reset).
    beta = 20.0 * torch.rand(bsz, steps, channels, generator=gen, dtype=torch.float64)
    return [t.requires_grad_() for t in (x, k, q, beta)]


@pytest.mark.parametrize(("steps", "chunk"), [(37, 1), (37, 4), (37, 16), (37, 64),
                                              (50, 8), (64, 16), (5, 8)])
def test_chunked_equals_recurrent_outputs_and_gradients(steps: int, chunk: int) -> None:
    inputs = _inputs(steps * 7 + chunk, steps)
    weights = torch.randn(2, steps, 5, dtype=torch.float64)
    ref = longhorn_scan(*inputs)
    ref_grads = torch.autograd.grad((ref * weights).sum(), inputs)
    out = longhorn_chunked(*inputs, chunk_size=chunk)
    grads = torch.autograd.grad((out * weights).sum(), inputs)
    torch.testing.assert_close(out, ref, **TOL)
    for name, got, want in zip(["x", "k", "q", "beta"], grads, ref_grads):
        torch.testing.assert_close(got, want, **TOL, msg=f"d/d{name} differs")


def test_chunked_is_exact_in_float32_too() -> None:
    inputs = [t.detach().float() for t in _inputs(3, 100)]
    torch.testing.assert_close(longhorn_chunked(*inputs, chunk_size=32),
                               longhorn_scan(*inputs), atol=1e-4, rtol=1e-4)


def test_bad_chunk_size_and_form_are_refused() -> None:
    inputs = [t.detach() for t in _inputs(5, 8)]
    with pytest.raises(ValueError, match="chunk_size"):
        longhorn_chunked(*inputs, chunk_size=0)
    with pytest.raises(ValueError, match="longhorn_form"):
        BaselineConfig(kind="longhorn", longhorn_form="scan")  # type: ignore[arg-type]


def test_mixer_forms_give_the_same_model() -> None:
    cfg = BaselineConfig(kind="longhorn", d_model=16, heads=2, layers=2, chunk_size=8,
                         state_dim=4)
    torch.manual_seed(0)
    recurrent = build_baseline(cfg, 11, 7).double()
    chunked = build_baseline(dataclasses.replace(cfg, longhorn_form="chunked"), 11, 7).double()
    chunked.load_state_dict(recurrent.state_dict())
    batch = {"tokens": torch.randint(0, 11, (3, 21))}
    outs, grads = [], []
    for model in (recurrent, chunked):
        logits = model(batch)
        logits.square().mean().backward()
        outs.append(logits.detach())
        grads.append({n: p.grad for n, p in model.named_parameters()})
    torch.testing.assert_close(outs[1], outs[0], **TOL)
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, **TOL, msg=name)
    # CPU training keeps the recurrence: it is the faster form there (docs/benchmarks.md).
    assert cfg.longhorn_form == "recurrent"


def test_bench_times_longhorns_two_forms_side_by_side(capsys: pytest.CaptureFixture) -> None:
    from launch.cli import main

    code = main(["bench", "deltanet", "--kind", "longhorn", "--seq-len", "20", "--batch", "2",
                 "--d-model", "16", "--heads", "2", "--chunk-size", "8", "--vocab", "32",
                 "--repeats", "1", "--json"])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert result["kind"] == "longhorn"
    assert set(result["step_seconds"]) == set(result["kernel_seconds"]) == {"chunked",
                                                                            "recurrent"}
    assert result["kernel_speedup"] > 0
