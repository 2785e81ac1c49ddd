"""Chunked (WY/UT) DeltaNet and Gated DeltaNet equal their recurrent forms.

Outputs and gradients with respect to every input agree to 1e-5 (float64), for
several chunk sizes and lengths that are not whole numbers of chunks; the
mixers give the same outputs and parameter gradients in either form.
"""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
import torch.nn.functional as F

from obs_dist.baselines import BaselineConfig, build_baseline
from obs_dist.baselines.delta_rule import delta_rule_chunked, delta_rule_recurrent

TOL = {"atol": 1e-5, "rtol": 1e-5}


def _inputs(seed: int, steps: int, gated: bool, bsz: int = 2, heads: int = 3, dk: int = 6,
            dv: int = 5) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(bsz, heads, steps, dk, generator=gen, dtype=torch.float64)
    k = F.normalize(torch.randn(bsz, heads, steps, dk, generator=gen, dtype=torch.float64),
                    dim=-1)
    v = torch.randn(bsz, heads, steps, dv, generator=gen, dtype=torch.float64)
    beta = torch.rand(bsz, heads, steps, generator=gen, dtype=torch.float64)
    out = [q, k, v, beta]
    if gated:  # decays from e^-2 to 1, as a trained gate spans
        out.append(-2.0 * torch.rand(bsz, heads, steps, generator=gen, dtype=torch.float64))
    return [x.requires_grad_() for x in out]


def _value_and_grads(fn: object, inputs: list[torch.Tensor],
                     weights: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    out = fn(*inputs)  # type: ignore[operator]
    grads = torch.autograd.grad((out * weights).sum(), inputs)
    return out.detach(), grads


@pytest.mark.parametrize("gated", [False, True], ids=["deltanet", "gated"])
@pytest.mark.parametrize(("steps", "chunk"), [(37, 1), (37, 4), (37, 16), (37, 64),
                                              (50, 8), (64, 16), (5, 8)])
def test_chunked_equals_recurrent_outputs_and_gradients(gated: bool, steps: int,
                                                        chunk: int) -> None:
    inputs = _inputs(steps * 7 + chunk, steps, gated)
    weights = torch.randn(2, 3, steps, 5, dtype=torch.float64)
    ref, ref_grads = _value_and_grads(delta_rule_recurrent, inputs, weights)
    out, grads = _value_and_grads(
        lambda *x: delta_rule_chunked(*x, chunk_size=chunk), inputs, weights)
    torch.testing.assert_close(out, ref, **TOL)
    for name, got, want in zip(["q", "k", "v", "beta", "g"], grads, ref_grads):
        torch.testing.assert_close(got, want, **TOL, msg=f"d/d{name} differs")


def test_chunked_is_exact_in_float32_too() -> None:
    inputs = [x.detach().float() for x in _inputs(3, 100, gated=True)]
    torch.testing.assert_close(delta_rule_chunked(*inputs, chunk_size=32),
                               delta_rule_recurrent(*inputs), atol=1e-4, rtol=1e-4)


def test_strong_decay_stays_finite() -> None:
    # exp(γ_i − γ_j) above the diagonal would overflow; it must never be formed.
    q, k, v, beta, g = (x.detach() for x in _inputs(4, 64, gated=True))
    g = g * 200.0
    out = delta_rule_chunked(q, k, v, beta, g, chunk_size=64)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, delta_rule_recurrent(q, k, v, beta, g), **TOL)


def test_bad_shapes_and_chunk_size_are_refused() -> None:
    q, k, v, beta = (x.detach() for x in _inputs(5, 8, gated=False))
    with pytest.raises(ValueError, match="chunk_size"):
        delta_rule_chunked(q, k, v, beta, chunk_size=0)
    with pytest.raises(ValueError, match="beta"):
        delta_rule_chunked(q, k, v, beta[..., :-1])
    with pytest.raises(ValueError, match="v must be"):
        delta_rule_recurrent(q, k, v[:, :, :-1], beta)
    with pytest.raises(ValueError, match="delta_form"):
        BaselineConfig(kind="deltanet", delta_form="scan")  # type: ignore[arg-type]


@pytest.mark.parametrize("kind", ["deltanet", "gated_deltanet"])
def test_mixer_forms_give_the_same_model(kind: str) -> None:
    cfg = BaselineConfig(kind=kind, d_model=16, heads=2, layers=2, chunk_size=8)  # type: ignore[arg-type]
    torch.manual_seed(0)
    chunked = build_baseline(cfg, 11, 7).double()
    recurrent = build_baseline(dataclasses.replace(cfg, delta_form="recurrent"), 11, 7).double()
    recurrent.load_state_dict(chunked.state_dict())
    batch = {"tokens": torch.randint(0, 11, (3, 21))}
    grads = []
    outs = []
    for model in (chunked, recurrent):
        logits = model(batch)
        logits.square().mean().backward()
        outs.append(logits.detach())
        grads.append({n: p.grad for n, p in model.named_parameters()})
    torch.testing.assert_close(outs[0], outs[1], **TOL)
    for name, grad in grads[1].items():
        torch.testing.assert_close(grads[0][name], grad, **TOL, msg=name)
    assert cfg.delta_form == "chunked"  # training uses the chunked form by default


def test_bench_deltanet_reports_both_forms_side_by_side(capsys: pytest.CaptureFixture) -> None:
    from launch.cli import main

    code = main(["bench", "deltanet", "--kind", "gated_deltanet", "--seq-len", "20",
                 "--batch", "2", "--d-model", "16", "--heads", "2", "--chunk-size", "8",
                 "--vocab", "32", "--repeats", "1", "--json"])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result["step_seconds"]) == set(result["kernel_seconds"]) == {"chunked",
                                                                            "recurrent"}
    assert result["step_speedup"] > 0 and result["threads"] == 1
    assert main(["bench", "deltanet", "--repeats", "0"]) == 2
