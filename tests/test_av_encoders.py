"""The audio-visual clip encoder on random batches: shapes, masks, gradients."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import torch

from obs_dist.model.av_encoders import AudioClipEncoder, AVEncoder, VideoClipEncoder

B, T, F, S, M, A = 2, 3, 4, 32, 16, 21


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny convolutions gain nothing from intra-op threads, and on an oversubscribed
    machine idle OpenMP threads made these tests 50x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _batch(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "video": torch.randint(0, 256, (B, T, F, 3, S, S), generator=g, dtype=torch.uint8),
        "audio": torch.randn(B, T, M, A, generator=g),
        "video_mask": torch.tensor([[True, True, False], [False, True, False]]),
        "audio_mask": torch.tensor([[True, False, True], [True, True, False]]),
    }


def _encoder() -> AVEncoder:
    torch.manual_seed(0)
    return AVEncoder(d_model=24, n_mels=M, image_size=S)


def test_output_shape_and_padding_is_zero() -> None:
    out = _encoder()(_batch())
    assert out.shape == (B, T, 24) and out.dtype == torch.float32
    assert torch.isfinite(out).all()
    assert (out[1, 2] == 0).all()  # neither modality: padding
    assert (out[0, 0] != 0).any() and (out[0, 2] != 0).any()


def test_masked_inputs_do_not_matter() -> None:
    enc = _encoder()
    batch = _batch()
    out = enc(batch)
    changed = dict(batch)
    changed["video"] = batch["video"].clone()
    changed["video"][0, 2] = 255 - changed["video"][0, 2]  # video absent there
    changed["audio"] = batch["audio"].clone()
    changed["audio"][0, 1] += 100.0  # audio absent there
    assert torch.equal(enc(changed), out)
    changed["video"][0, 0] = 0  # present: the output must move
    assert not torch.allclose(enc(changed)[0, 0], out[0, 0])


def test_modality_embedding_tells_modalities_apart() -> None:
    enc = _encoder()
    batch = _batch()
    only_video = dict(batch, audio_mask=torch.zeros(B, T, dtype=torch.bool))
    only_audio = dict(batch, video_mask=torch.zeros(B, T, dtype=torch.bool))
    both = enc(batch)[0, 0]
    assert torch.allclose(both, enc(only_video)[0, 0] + enc(only_audio)[0, 0], atol=1e-5)


def test_gradients_reach_every_part() -> None:
    enc = _encoder()
    enc(_batch()).pow(2).mean().backward()
    for name, param in enc.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name


def test_bad_shapes_are_refused() -> None:
    batch = _batch()
    batch["audio_mask"] = torch.ones(B, T + 1, dtype=torch.bool)
    with pytest.raises(ValueError, match="audio_mask"):
        _encoder()(batch)
    with pytest.raises(ValueError, match="image_size"):
        VideoClipEncoder(8, image_size=8)
    with pytest.raises(ValueError, match="n_mels"):
        AudioClipEncoder(8, n_mels=0)


def _colour_batch(n: int, seed: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Clips filled with one of four colours (plus noise); the label is the colour."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 4, (n,), generator=g)
    palette = torch.tensor([[220, 40, 40], [40, 180, 60], [50, 80, 220], [230, 210, 40]])
    video = palette[labels].view(n, 1, 1, 3, 1, 1).expand(n, 1, F, 3, S, S).float()
    video = (video + 30 * torch.randn(n, 1, F, 3, S, S, generator=g)).clamp(0, 255)
    batch = {"video": video.to(torch.uint8), "audio": torch.zeros(n, 1, M, A),
             "video_mask": torch.ones(n, 1, dtype=torch.bool),
             "audio_mask": torch.zeros(n, 1, dtype=torch.bool)}
    return batch, labels


def test_deeper_audio_encoder_sees_a_longer_stretch_before_pooling() -> None:
    torch.manual_seed(0)
    shallow, deep = AudioClipEncoder(8, n_mels=4), AudioClipEncoder(8, n_mels=4, layers=4)
    assert deep(torch.randn(3, 4, 101)).shape == (3, 8)
    # A change 40 frames after a click: the shallow features (13 frames) never see both
    # together; the deep ones (61 frames) do. Probe one feature position's receptive field.
    x = torch.zeros(1, 4, 101, requires_grad=True)
    for enc, span in ((shallow, 13), (deep, 61)):
        h = enc.convs(x)
        (grad,) = torch.autograd.grad(h[0, :, h.shape[-1] // 2].sum(), x)
        seen = (grad.abs().sum(1)[0] > 0).nonzero().squeeze(1)
        assert int(seen[-1] - seen[0]) + 1 == span
    with pytest.raises(ValueError, match="audio layers"):
        AudioClipEncoder(8, n_mels=4, layers=0)


def test_encoder_learns_to_tell_colours_apart() -> None:
    torch.manual_seed(0)
    enc = AVEncoder(d_model=32, n_mels=M, image_size=S)
    head = torch.nn.Linear(32, 4)
    opt = torch.optim.AdamW([*enc.parameters(), *head.parameters()], lr=3e-3)
    for step in range(25):
        batch, labels = _colour_batch(16, seed=step)
        loss = torch.nn.functional.cross_entropy(head(enc(batch)[:, 0]), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
    batch, labels = _colour_batch(64, seed=1000)
    with torch.no_grad():
        accuracy = (head(enc(batch)[:, 0]).argmax(1) == labels).float().mean()
    assert accuracy > 0.95, float(accuracy)


def test_cheap_enough_for_cpu_training() -> None:
    """B=8, T=16 clips of 8 frames at 64x64: forward + backward well under a second
    on one thread."""
    torch.manual_seed(0)
    enc = AVEncoder(d_model=64)
    batch = {"video": torch.randint(0, 256, (8, 16, 8, 3, 64, 64), dtype=torch.uint8),
             "audio": torch.randn(8, 16, 64, 101),
             "video_mask": torch.ones(8, 16, dtype=torch.bool),
             "audio_mask": torch.ones(8, 16, dtype=torch.bool)}
    times = []
    for _ in range(3):
        start = time.perf_counter()
        enc(batch).square().mean().backward()
        times.append(time.perf_counter() - start)
    # ~0.1 s measured on one core; the bound leaves room for a busy CI machine.
    assert sorted(times)[1] < 2.0, times


def test_speech_pooling_weighs_the_loud_frames_and_ignores_the_silence_around_them() -> None:
    from obs_dist.model.av_encoders import speech_weights

    # Weights: where the clip rises above its quietest frame, summing to 1 per clip.
    mels = torch.zeros(2, 4, 40)
    mels[0, :, 10:20] = 3.0  # a loud stretch in the first quarter
    w = speech_weights(mels, 10)
    assert torch.allclose(w.sum(1), torch.ones(2))
    assert float(w[0, 2:5].sum()) > 0.99  # output positions 2.5–5 cover frames 10–20
    assert torch.allclose(w[1], torch.full((10,), 0.1))  # silence: even weights
    # The same word in a short and in a long stretch of silence: with speech pooling
    # the averaged half of the feature hardly moves; the plain mean does.
    torch.manual_seed(0)
    # (The silence before the word is a multiple of the convolutions' stride, 4: a
    # word moved by a fraction of the stride looks different to strided
    # convolutions whatever the pooling, which augmentation's time shifts address.)
    word = torch.randn(1, 8, 32) + 4.0
    short = torch.cat([torch.zeros(1, 8, 12), word, torch.zeros(1, 8, 12)], dim=2)
    long = torch.cat([torch.zeros(1, 8, 40), word, torch.zeros(1, 8, 92)], dim=2)
    gaps = {}
    for pool in ("mean", "speech"):
        torch.manual_seed(1)
        enc = AudioClipEncoder(8, n_mels=8, width=16, pool=pool)
        # The averaged half of the pooled feature, through the projection (the max
        # half is what `pool` leaves alone).
        fa, fb = (enc.proj.weight[:, :16] @ _averaged(enc, x)[0] for x in (short, long))
        gaps[pool] = float((fa - fb).norm() / fa.norm())
        assert enc(short).shape == (1, 8)
    assert gaps["mean"] > 0.1 and gaps["speech"] < 1e-3
    with pytest.raises(ValueError, match="audio pool"):
        AudioClipEncoder(8, n_mels=4, pool="median")
    from obs_dist.model.model import ModelConfig, StreamConfig

    with pytest.raises(ValueError, match="audio_pool"):
        StreamConfig(audio_pool="median")
    from obs_dist.model.av_stream import AVStreamModel

    model = AVStreamModel(ModelConfig(encoder="av", d_model=8, n_mels=4, image_size=16,
                                      stream=StreamConfig(audio_pool="speech")), 64)
    assert model.audio.pool == "speech"


def _averaged(enc: AudioClipEncoder, x: torch.Tensor) -> torch.Tensor:
    """The first half of the encoder's pooled feature: its average over time."""
    seen: dict[str, torch.Tensor] = {}
    handle = enc.proj.register_forward_hook(lambda m, i, o: seen.update(pooled=i[0]))
    enc(x)
    handle.remove()
    return seen["pooled"][:, :16]
