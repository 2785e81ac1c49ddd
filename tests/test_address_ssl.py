"""The pictures' address agreement (``model.stream.address_ssl``): two views, the same nodes."""

from __future__ import annotations

import pytest
import torch
from support.stream_window import silent_window, small_stream_model

from obs_dist.model.address_ssl import address_agreement, agreement_loss
from obs_dist.model.model import StreamConfig
from obs_dist.model.state import BigState, StateConfig
from obs_dist.model.window import WindowMemory
from obs_dist.model.writer import Writer, WriterConfig, product_key_topk


def test_each_view_is_scored_against_its_twins_sharpened_centred_target() -> None:
    torch.manual_seed(0)
    scores = torch.randn(6, 5, requires_grad=True)  # 3 pictures, two views each
    loss = agreement_loss(scores, teacher_temperature=0.5)
    s = scores.detach()
    target = torch.softmax((s - s.mean(0)) / 0.5, dim=1)
    twin = torch.tensor([3, 4, 5, 0, 1, 2])
    expected = -(target[twin] * torch.log_softmax(s, dim=1)).sum(1).mean()
    assert torch.allclose(loss, expected, atol=1e-6)
    # The target takes no gradient: the loss's gradient is the student's alone.
    loss.backward()
    student = (torch.softmax(s, dim=1) - target[twin]) / 6
    assert scores.grad is not None and torch.allclose(scores.grad, student, atol=1e-6)
    with pytest.raises(ValueError, match="teacher_temperature"):
        agreement_loss(s, teacher_temperature=0.0)


def test_twins_that_agree_cost_less_than_twins_that_do_not() -> None:
    torch.manual_seed(1)
    base = torch.randn(4, 16) * 4
    agree = agreement_loss(torch.cat([base, base + 0.1 * torch.randn(4, 16)]))
    disagree = agreement_loss(torch.cat([base, base.roll(1, dims=0)]))
    assert agree < disagree


def _overlap(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean fraction of row i's nodes in ``a`` also in row i of ``b``."""
    return float((a[:, :, None] == b[:, None, :]).any(2).float().mean())


@pytest.mark.parametrize("loss", ["agree", "contrast"])
def test_training_the_writer_on_it_puts_views_of_a_picture_on_the_same_nodes(loss: str) -> None:
    torch.manual_seed(0)
    d, n = 16, 48
    writer = Writer(WriterConfig(k_max=8, active=8), nodes=1024, context_dim=2 * d)
    pictures = torch.randn(n, d)

    def views() -> torch.Tensor:  # two noisy views of every picture: rows i and i + n twins
        f = torch.cat([pictures, pictures]) + 0.6 * torch.randn(2 * n, d)
        return (f - f.mean(0)) * torch.rsqrt(f.var(0, unbiased=False) + 1e-5)  # centred

    def nodes(x: torch.Tensor) -> torch.Tensor:
        query = writer.query(torch.cat([x, torch.zeros_like(x)], dim=1))
        return product_key_topk(query, writer.keys1, writer.keys2, 8)[1]

    def agreement() -> tuple[float, float]:
        with torch.no_grad():
            ids = nodes(views())
        twins = _overlap(ids[:n], ids[n:])
        others = _overlap(ids[:n], ids[n:].roll(1, dims=0))  # a view of another picture
        return twins, others

    before, before_others = agreement()
    opt = torch.optim.Adam(writer.parameters(), lr=0.01)
    for _ in range(150):
        opt.zero_grad()
        address_agreement(writer, views(), loss).backward()
        opt.step()
    after, after_others = agreement()
    assert after > before + 0.2, (before, after)
    # Not by sending every picture to the same nodes: other pictures stay apart.
    assert after_others < 0.2, (before_others, after_others)


def test_the_stream_model_adds_it_beside_the_pictures_contrastive_term() -> None:
    b, t = 2, 4
    batch = silent_window(b, t)
    losses = {}
    for weight in (0.0, 2.0):
        torch.manual_seed(0)
        model = small_stream_model(address_ssl=weight)
        memory = WindowMemory(BigState(StateConfig(nodes=256, partitions=2)).matrix(), b)
        model.train()
        torch.manual_seed(5)  # the same views for both
        out = model.window_objective(batch, memory, model.initial_carry(b, "cpu"))
        losses[weight] = float(out.loss_sum.detach())
        if weight:
            assert out.stats["address_ssl"] > 0
            out.loss_sum.backward()
            assert model.writer is not None and model.writer.query.weight.grad is not None
            assert model.writer.keys1.grad is not None and model.writer.keys1.grad.abs().sum() > 0
        else:
            assert "address_ssl" not in out.stats
    # The silent window scores nothing: the loss is the pictures' terms, weighted per window.
    assert losses[2.0] > losses[0.0]


def test_it_needs_the_pictures_views() -> None:
    with pytest.raises(ValueError, match="address_ssl"):
        StreamConfig(address_ssl=1.0)  # no video_ssl: no views
    with pytest.raises(ValueError, match="address_ssl"):
        StreamConfig(address_ssl=-1.0, video_ssl=1.0)
    with pytest.raises(ValueError, match="address_ssl_loss"):
        StreamConfig(address_ssl=1.0, video_ssl=1.0, address_ssl_loss="dino")
    with pytest.raises(ValueError, match="address_ssl_gap"):  # agree has no negatives
        StreamConfig(address_ssl=1.0, video_ssl=1.0, address_ssl_gap=8)
    writer = Writer(WriterConfig(k_max=4, active=4), nodes=256, context_dim=8)
    with pytest.raises(ValueError, match="exclude"):
        address_agreement(writer, torch.randn(4, 4), "agree", torch.zeros(4, 4, dtype=torch.bool))


def test_views_of_one_scene_can_be_left_out_of_the_negatives() -> None:
    from obs_dist.model.view_contrast import twin_loss

    torch.manual_seed(2)
    z = torch.nn.functional.normalize(torch.randn(6, 4), dim=1)  # 3 twin pairs: i and i + 3
    exclude = torch.zeros(6, 6, dtype=torch.bool)
    exclude[0, 1] = exclude[1, 0] = True  # views 0 and 1: one scene, not negatives
    exclude[0, 3] = True  # a twin is never left out
    sim = (z @ z.t()) / 0.2
    sim.fill_diagonal_(float("-inf"))
    sim[0, 1] = sim[1, 0] = float("-inf")
    expected = torch.nn.functional.cross_entropy(sim, torch.tensor([3, 4, 5, 0, 1, 2]))
    assert torch.allclose(twin_loss(z, 0.2, exclude), expected, atol=1e-6)
    assert twin_loss(z, 0.2, exclude) < twin_loss(z, 0.2)  # fewer negatives, lower loss


def test_the_stream_model_leaves_near_pictures_of_a_recording_out_of_the_negatives() -> None:
    model = small_stream_model(address_ssl=1.0, address_ssl_loss="contrast", address_ssl_gap=3)
    stream = torch.tensor([0, 0, 0, 1, 1])
    when = torch.tensor([0, 2, 3, 0, 5])
    near = model._near_views(torch.tensor([0, 1, 2, 3, 4, 1]), stream, when)
    assert near is not None
    assert near[0].tolist() == [True, True, False, False, False, True]  # 0 and 3 clips: apart
    assert near[3].tolist() == [False, False, False, True, False, False]  # another recording
    model.stream_cfg.address_ssl_gap = 0
    assert model._near_views(torch.tensor([0, 1]), stream, when) is None


def test_the_dual_encoder_peer_has_no_addresses_and_takes_the_same_train_set() -> None:
    # The suite gives every learner one train_set: the peer without a state must
    # accept the option and train exactly as it would without it.
    b, t = 2, 4
    batch = silent_window(b, t)
    losses = []
    for weight in (0.0, 1.0):
        torch.manual_seed(0)
        model = small_stream_model(state_path=False, address_ssl=weight)
        model.train()
        torch.manual_seed(5)
        out = model.window_objective(batch, None, model.initial_carry(b, "cpu"))  # type: ignore[arg-type]
        assert "address_ssl" not in out.stats
        losses.append(float(out.loss_sum.detach()))
    assert losses[0] == losses[1]
