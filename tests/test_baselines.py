"""Baselines: causal, exact recurrences, parameter matching, and they learn."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from launch.evals.learners import BaselineLearner, matched_baseline
from obs_dist.baselines import KINDS, BaselineConfig, build_baseline, count_parameters
from obs_dist.baselines.delta_rule import delta_rule_recurrent as delta_rule
from obs_dist.baselines.deltanet import CausalConv1d, unit_rows
from obs_dist.baselines.longhorn import longhorn_scan
from obs_dist.tasks import IGNORE
from obs_dist.tasks.memory_function import MemoryFunctionConfig, memory_function_batches
from obs_dist.trainer import TrainConfig


@pytest.mark.parametrize("kind", KINDS)
def test_outputs_never_depend_on_future_steps(kind: str) -> None:
    torch.manual_seed(0)
    model = build_baseline(BaselineConfig(kind=kind, d_model=16, heads=2, state_dim=4), 11, 5)
    model.eval()
    tokens = torch.randint(0, 11, (3, 12))
    changed = tokens.clone()
    changed[:, 7:] = (changed[:, 7:] + 1) % 11
    with torch.no_grad():
        a = model({"tokens": tokens})
        b = model({"tokens": changed})
    assert a.shape == (3, 12, 5)
    torch.testing.assert_close(a[:, :7], b[:, :7])
    assert not torch.allclose(a[:, 7:], b[:, 7:])


def test_delta_rule_recalls_values_stored_under_orthonormal_keys() -> None:
    # With β = 1 and orthonormal keys, each write sets S k_i = v_i exactly.
    dk, steps = 6, 4
    keys = torch.linalg.qr(torch.randn(dk, dk))[0][:steps]  # orthonormal rows
    values = torch.randn(steps, 3)
    k = keys[None, None]
    v = values[None, None]
    beta = torch.ones(1, 1, steps)
    # Query at the last step with each key in turn (a fresh run per query).
    for i in range(steps):
        q = torch.zeros(1, 1, steps, dk)
        q[0, 0, -1] = keys[i]
        out = delta_rule(q, k, v, beta)
        torch.testing.assert_close(out[0, 0, -1], values[i], atol=1e-5, rtol=1e-5)


def test_delta_rule_overwrites_a_key_instead_of_adding() -> None:
    key = F.normalize(torch.randn(5), dim=0)
    k = key.expand(1, 1, 2, 5)
    v = torch.tensor([[1.0, 0.0], [0.0, 2.0]])[None, None]
    out = delta_rule(k, k, v, torch.ones(1, 1, 2))
    torch.testing.assert_close(out[0, 0, 1], torch.tensor([0.0, 2.0]), atol=1e-5, rtol=1e-5)


def test_unit_rows_is_f_normalize_in_value_and_gradient() -> None:
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(4, 7, 2, 3, 16, generator=gen, dtype=torch.float64)
    x[0, 0, 0, 0] = 0.0  # a zero row stays zero, with the same gradient as F.normalize's
    weight = torch.randn(x.shape, generator=gen, dtype=torch.float64)
    grads = []
    for fn in (unit_rows, lambda t: F.normalize(t, dim=-1)):
        leaf = x.clone().requires_grad_()
        out = fn(leaf)
        (out * weight).sum().backward()
        grads.append((out.detach(), leaf.grad))
    torch.testing.assert_close(grads[0][0], grads[1][0], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grads[0][1], grads[1][1], rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize(("batch", "kernel", "strided"), [(3, 4, False), (1, 3, True)])
def test_causal_conv_is_the_left_padded_conv1d_in_value_and_gradient(
        batch: int, kernel: int, strided: bool) -> None:
    # The reference: Conv1d over [B, C, T], left-padded by kernel − 1 (the form
    # before the channels-last rewrite). A strided input is a chunk of a wider
    # projection, as ShortConvMixer passes it.
    torch.manual_seed(5)
    conv = CausalConv1d(6, kernel=kernel).double()
    wide = torch.randn(batch, 9, 12 if strided else 6, dtype=torch.float64)
    weight = torch.randn(batch, 9, 6, dtype=torch.float64)
    results = []
    for fn in (conv, lambda t: conv.conv(F.pad(t.transpose(1, 2), (kernel - 1, 0))
                                         ).transpose(1, 2)):
        conv.zero_grad()
        leaf = wide.clone().requires_grad_()
        out = fn(leaf[..., :6])
        (out * weight).sum().backward()
        assert conv.conv.weight.grad is not None and conv.conv.bias is not None
        results.append((out.detach(), leaf.grad, conv.conv.weight.grad.clone(),
                        conv.conv.bias.grad))
    assert results[0][0].shape == (batch, 9, 6) and results[0][0].is_contiguous()
    for mine, reference in zip(results[0], results[1]):
        torch.testing.assert_close(mine, reference, rtol=1e-12, atol=1e-12)
    # causal: changing step 5 leaves steps 0..4 alone
    changed = wide[..., :6].clone()
    changed[:, 5] += 1.0
    with torch.no_grad():
        torch.testing.assert_close(conv(changed)[:, :5], conv(wide[..., :6])[:, :5])
        assert not torch.allclose(conv(changed)[:, 5], conv(wide[..., :6])[:, 5])


def test_longhorn_step_is_the_implicit_online_regression_update() -> None:
    torch.manual_seed(1)
    x = torch.randn(2, 3, 4)
    k = torch.randn(2, 3, 5)
    q = torch.randn(2, 3, 5)
    beta = torch.rand(2, 3, 4) + 0.1
    out = longhorn_scan(x, k, q, beta)
    state = torch.zeros(2, 4, 5)
    for t in range(3):
        for b in range(2):
            for c in range(4):
                # argmin_s ||s - s0||² + β (sᵀk - x)², diagonal form of Longhorn.
                s0, kk, bb = state[b, c], k[b, t], beta[b, t, c]
                eps = bb / (1 + bb * kk.dot(kk))
                state[b, c] = (1 - eps * kk * kk) * s0 + eps * x[b, t, c] * kk
            torch.testing.assert_close(out[b, t], state[b] @ q[b, t], atol=1e-5, rtol=1e-5)


def test_longhorn_state_stays_bounded_under_large_steps() -> None:
    x = torch.randn(1, 200, 3)
    k = torch.randn(1, 200, 4) * 10
    out = longhorn_scan(x, k, k, torch.full((1, 200, 3), 1e4))
    assert torch.isfinite(out).all() and out.abs().max() < 1e3


def test_matched_width_hits_the_parameter_budget() -> None:
    template = BaselineConfig(kind="attention", heads=4)
    for budget in (50_000, 300_000):
        cfg = matched_baseline(template, budget, vocab=64, classes=32)
        count = count_parameters(build_baseline(cfg, 64, 32))
        assert abs(count - budget) / budget < 0.15, (cfg.d_model, count)
        assert cfg.d_model % 8 == 0 and (cfg.d_model // 4) % 2 == 0
    with pytest.raises(ValueError, match="budget"):
        matched_baseline(template, 0, 64, 32)


def test_config_names_the_bad_key() -> None:
    with pytest.raises(ValueError, match="heads"):
        BaselineConfig(d_model=30, heads=4)
    with pytest.raises(ValueError, match="kind"):
        BaselineConfig(kind="lstm")  # type: ignore[arg-type]


@pytest.mark.parametrize("kind", KINDS)
def test_each_baseline_learns_recall_of_the_previous_item(kind: str) -> None:
    torch.set_num_threads(1)
    task = MemoryFunctionConfig(vocab=8, length=16, delays=[1, 2], probe_rate=0.4, batch=32)
    train = TrainConfig(steps=60, lr=1e-2, warmup=5, progress=False)
    cfg = dataclasses.replace(BaselineConfig(kind=kind, d_model=32, heads=2, state_dim=8))
    learner = BaselineLearner(kind, cfg, task.input_vocab, task.vocab, train)
    batches = memory_function_batches(task)
    for _ in range(train.steps):
        learner.train_step(next(batches))
    test = next(memory_function_batches(task, seed_offset=99))
    logits = learner.predict(test)
    scored = test["targets"] != IGNORE
    acc = float((logits.argmax(-1)[scored] == test["targets"][scored]).float().mean())
    assert acc > 3 * (1 / task.vocab), acc  # chance is 1/8


def test_tied_head_is_the_token_embedding_and_counts_once() -> None:
    untied = build_baseline(BaselineConfig(kind="attention", d_model=16, heads=2), 40, 40)
    tied = build_baseline(BaselineConfig(kind="attention", d_model=16, heads=2, tie_head=True),
                          40, 40)
    assert tied.head.weight is tied.encoder.embed.weight and tied.head.bias is None
    # The head's own 40×16 table and its 40 biases are gone.
    assert count_parameters(untied) - count_parameters(tied) == 40 * 16 + 40
    tokens = torch.randint(0, 40, (2, 6))
    tied({"tokens": tokens}).sum().backward()
    # The head's gradient reaches every row of the shared table, used as input or not.
    assert bool((tied.encoder.embed.weight.grad.abs().sum(1) > 0).all())
    with pytest.raises(ValueError, match="as many classes as tokens"):
        build_baseline(BaselineConfig(kind="attention", d_model=16, heads=2, tie_head=True),
                       40, 8)
    with pytest.raises(ValueError, match="tie_head needs the 'tokens' encoder"):
        BaselineConfig(tie_head=True, encoder="av")


@pytest.mark.parametrize("kind", KINDS)
def test_zoology_initialisation_draws_small_weights_and_scales_residual_outputs(
        kind: str) -> None:
    torch.manual_seed(0)
    layers, std = 2, 0.02
    model = build_baseline(BaselineConfig(kind=kind, d_model=64, heads=2, state_dim=4,
                                          layers=layers, init_std=std), 512, 512)
    embed = model.encoder.embed.weight.detach()
    assert abs(float(embed.std()) - std) < 0.1 * std
    mlp_out = model.blocks[0].mlp[-1]
    assert abs(float(mlp_out.weight.detach().std()) - std / (2 * layers) ** 0.5) < 0.2 * std
    assert float(mlp_out.bias.detach().abs().max()) == 0.0
    out = getattr(model.blocks[1].mixer, "out", None)
    if out is not None:  # every mixer but the GRU ends in a projection named ``out``
        assert abs(float(out.weight.detach().std()) - std / (2 * layers) ** 0.5) < 0.2 * std
    with pytest.raises(ValueError, match="init_std"):
        BaselineConfig(init_std=-1.0)
