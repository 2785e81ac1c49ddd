"""The pictures' own contrastive term (``model.stream.video_ssl``): views, loss, wiring."""

from __future__ import annotations

import pytest
import torch
from support.contrast_fit import fit_contrast
from support.stream_window import silent_window, small_stream_model

from obs_dist.model.av_encoders import VideoClipEncoder
from obs_dist.model.model import StreamConfig
from obs_dist.model.state import BigState, StateConfig
from obs_dist.model.video_ssl import (
    PictureContrast,
    first_frames,
    picture_views,
    sample_pictured_clips,
)
from obs_dist.model.window import WindowMemory


def _pictures(n: int = 8, size: int = 16) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8)


def test_views_are_pictures_drawn_from_the_generator() -> None:
    frames = _pictures()
    a = picture_views(frames, torch.Generator().manual_seed(1))
    b = picture_views(frames, torch.Generator().manual_seed(1))
    c = picture_views(frames, torch.Generator().manual_seed(2))
    assert a.shape == (8, 3, 16, 16) and a.dtype == torch.float32
    assert float(a.min()) >= 0.0 and float(a.max()) <= 1.0
    assert torch.equal(a, b) and not torch.equal(a, c)
    # A crop of the whole picture is the picture or its mirror, in another brightness.
    grey = 0.3 + 0.3 * frames.float() / 255  # no value is clipped by gain and offset
    whole = picture_views(grey, torch.Generator().manual_seed(3), scale=(1.0, 1.0))

    def corr(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x, y = x.flatten(1), y.flatten(1)
        x, y = x - x.mean(1, keepdim=True), y - y.mean(1, keepdim=True)
        return (x * y).sum(1) / (x.norm(dim=1) * y.norm(dim=1))

    plain, mirror = corr(whole, grey) > 0.9999, corr(whole, grey.flip(-1)) > 0.9999
    assert bool((plain | mirror).all()) and bool(plain.any()) and bool(mirror.any())
    with pytest.raises(ValueError, match="scale"):
        picture_views(frames, scale=(0.0, 1.0))


def test_the_loss_falls_as_the_encoder_learns_its_pictures() -> None:
    torch.manual_seed(0)
    encoder = VideoClipEncoder(16, image_size=16, frames_used=1, width=16)
    contrast = PictureContrast(16)
    # Sixteen pictures of their own colours with noise on top: a crop keeps the colour.
    g = torch.Generator().manual_seed(1)
    colours = torch.rand(16, 3, 1, 1, generator=g) * 200 + 20
    frames = (colours + torch.randn(16, 3, 16, 16, generator=g) * 15).clamp(0, 255).to(torch.uint8)
    losses = fit_contrast(encoder, contrast, frames)
    assert losses[0] > 2.5  # about ln(31): each view among 31 others, untrained
    assert sum(losses[-10:]) / 10 < 0.5 * losses[0]
    assert float(contrast(encoder, frames[:1])) == 0.0  # one picture: nothing to tell apart


def test_sample_pictured_clips_takes_present_clips_only() -> None:
    video = torch.arange(2 * 3).view(2, 3, 1, 1, 1, 1).expand(2, 3, 2, 3, 4, 4).clone()
    mask = torch.tensor([[True, False, True], [False, False, True]])
    got = sample_pictured_clips(mask, count=10)
    assert sorted(got.tolist()) == [0, 2, 5]
    frames = first_frames(video, got)  # each clip's pixels hold its flat index
    assert frames.shape == (3, 3, 4, 4) and frames[:, 0, 0, 0].tolist() == got.tolist()
    assert sample_pictured_clips(mask, count=2, gen=torch.Generator().manual_seed(0)).shape[0] == 2


@pytest.mark.parametrize("neighbour", [0, 2])  # twins: two views of one picture, or of two
def test_the_stream_model_trains_its_video_encoder_on_pictures_alone(neighbour: int) -> None:
    torch.manual_seed(0)
    model = small_stream_model(video_ssl_neighbour=neighbour)
    b, t = 2, 4
    batch = silent_window(b, t)
    memory = WindowMemory(BigState(StateConfig(nodes=256, partitions=2)).matrix(), b)
    model.train()
    out = model.window_objective(batch, memory, model.initial_carry(b, "cpu"))
    assert out.scored == 0 and out.stats["video_ssl"] > 0
    out.loss_sum.backward()
    assert model.video.convs[0].weight.grad.abs().sum() > 0
    model.eval()  # evaluation and the study pass: no such term
    out = model.window_objective(batch, memory, model.initial_carry(b, "cpu"))
    assert "video_ssl" not in out.stats
    with pytest.raises(ValueError, match="video_ssl"):
        StreamConfig(video_ssl=-1.0)
    with pytest.raises(ValueError, match="video_ssl_neighbour"):
        StreamConfig(video_ssl_neighbour=-1)


def test_address_centring_removes_what_every_picture_shares() -> None:
    from obs_dist.model.address_centring import AddressCentring

    torch.manual_seed(0)
    centring = AddressCentring(4, momentum=1.0)
    f = torch.randn(6, 4) + torch.tensor([50.0, -3.0, 0.0, 7.0])  # a shared offset
    present = torch.tensor([True] * 5 + [False])
    f[5] = 1e6  # an absent clip is not counted
    centring.train()
    out = centring(f, present)
    assert out[:5].mean(0).abs().max() < 1e-5
    assert (out[:5].std(0, unbiased=False) - 1).abs().max() < 1e-3
    centring.eval()  # evaluation uses the running statistics (momentum 1: the last window's)
    assert torch.allclose(centring(f[:5]), out[:5], atol=1e-5)
    # Views drawn for a training term: their own statistics, the running ones untouched.
    centring.train()
    before = centring.mean.clone(), centring.var.clone()
    views = torch.randn(6, 4) * 3 - 9
    own = centring(views, track=False)
    assert own.mean(0).abs().max() < 1e-5
    assert torch.equal(centring.mean, before[0]) and torch.equal(centring.var, before[1])


def test_stream_scope_centres_each_stream_by_its_own_clips() -> None:
    """``centring_scope = "stream"``: each row of a training window is centred and
    scaled by its own present clips (a row with fewer than two by the window's);
    the running statistics are the window's, as with the window scope."""
    from obs_dist.model.address_centring import AddressCentring

    torch.manual_seed(0)
    f = torch.randn(3, 6, 4)
    f[0] += torch.tensor([50.0, -3.0, 0.0, 7.0])  # one room's look
    f[1] = f[1] * 4 - 20.0                        # another's
    present = torch.ones(3, 6, dtype=torch.bool)
    present[1, 5] = False
    f[1, 5] = 1e6                                 # an absent clip is not counted
    present[2, 1:] = False                        # one clip: the window's statistics
    window, stream = AddressCentring(4, momentum=1.0), AddressCentring(4, momentum=1.0,
                                                                       per_stream=True)
    out = stream.train()(f, present)
    for row, n in ((0, 6), (1, 5)):
        assert out[row, :n].mean(0).abs().max() < 1e-5
        assert (out[row, :n].std(0, unbiased=False) - 1).abs().max() < 1e-3
    whole = window.train()(f, present)
    assert torch.allclose(out[2, 0], whole[2, 0]) and not torch.allclose(out[0], whole[0])
    assert torch.equal(stream.mean, window.mean) and torch.equal(stream.var, window.var)
    stream.eval()  # evaluation: the running statistics, one row or many alike
    assert torch.allclose(stream(f), window.eval()(f))
    with pytest.raises(ValueError, match="centring_scope"):
        StreamConfig(centring_scope="batch")


def test_neighbour_pictures_pair_clips_of_one_recording_within_reach() -> None:
    from obs_dist.model.video_ssl import sample_neighbour_clips

    b, t = 2, 6
    mask = torch.ones(b, t, dtype=torch.bool)
    mask[0, 2] = False  # no picture: neither a first nor a twin
    # Row 0 is one recording; row 1 moves on to another recording at clip 3.
    stream = torch.tensor([0] * 6 + [1] * 3 + [2] * 3)
    when = torch.tensor([0, 1, 2, 3, 4, 5, 7, 8, 9, 0, 1, 2])
    seen: set[tuple[int, int]] = set()
    for seed in range(40):
        first, second = sample_neighbour_clips(mask, stream, when, reach=2, count=50,
                                               gen=torch.Generator().manual_seed(seed))
        pairs = list(zip(first.tolist(), second.tolist()))
        firsts = [a for a, _ in pairs]
        assert len(firsts) == len(set(firsts))  # each clip at most once as a first
        seen.update(pairs)
    allowed = {(i, j) for i in range(12) for j in range(12)
               if stream[i] == stream[j] and 1 <= int(when[j] - when[i]) <= 2
               and i != 2 and j != 2}
    assert seen == allowed  # every allowed pair is drawn, and no other
    first, _ = sample_neighbour_clips(mask, stream, when, reach=2, count=3)
    assert first.shape == (3,)
    with pytest.raises(ValueError, match="reach"):
        sample_neighbour_clips(mask, stream, when, reach=0, count=3)


def test_pairs_of_views_are_the_twins_and_forward_is_pairs_with_itself() -> None:
    torch.manual_seed(0)
    encoder = VideoClipEncoder(16, image_size=16, frames_used=1, width=16)
    contrast = PictureContrast(16)
    frames = _pictures()
    same = contrast(encoder, frames, torch.Generator().manual_seed(5))
    assert torch.equal(same, contrast.pairs(encoder, frames, frames,
                                            torch.Generator().manual_seed(5)))
    # Twins that are other pictures: the loss is the twin loss of their views.
    other = frames.flip(0)
    got = contrast.pairs(encoder, frames, other, torch.Generator().manual_seed(6))
    g = torch.Generator().manual_seed(6)
    views = torch.cat([picture_views(frames, g), picture_views(other, g)])
    z = torch.nn.functional.normalize(contrast.proj(encoder(views[:, None])), dim=-1)
    from obs_dist.model.view_contrast import twin_loss

    assert torch.allclose(got, twin_loss(z, contrast.temperature))
    with pytest.raises(ValueError, match="same shape"):
        contrast.pairs(encoder, frames, frames[:3])
