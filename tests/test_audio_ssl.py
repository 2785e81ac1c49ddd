"""The sounds' own contrastive term (``model.stream.audio_ssl``): views, loss, wiring."""

from __future__ import annotations

import pytest
import torch
from support.contrast_fit import fit_contrast

from obs_dist.model.audio_ssl import SoundContrast, sample_sounds, sound_views
from obs_dist.model.av_encoders import AudioClipEncoder
from obs_dist.model.av_stream import AVStreamModel
from obs_dist.model.model import ModelConfig, StreamConfig
from obs_dist.model.state import BigState, StateConfig
from obs_dist.model.window import WindowMemory
from obs_dist.model.writer import WriterConfig


def test_views_move_shift_and_mask_a_spectrogram_drawn_from_the_generator() -> None:
    mels = torch.rand(6, 16, 40) + 1.0  # no value at the floor: masks are visible
    a = sound_views(mels, torch.Generator().manual_seed(1))
    b = sound_views(mels, torch.Generator().manual_seed(1))
    c = sound_views(mels, torch.Generator().manual_seed(2))
    assert a.shape == mels.shape and a.dtype == torch.float32
    assert torch.equal(a, b) and not torch.equal(a, c)
    # No masks and no moves: only the loudness changes, by 0.8–1.2.
    plain = sound_views(mels, torch.Generator().manual_seed(3), max_time=0, max_band=0,
                        mask_bands=0, mask_frames=0)
    ratio = plain / mels
    assert bool(((ratio - ratio[:, :1, :1]).abs() < 1e-5).all())
    assert float(ratio.min()) >= 0.8 and float(ratio.max()) <= 1.2
    # A band shift moves the spectrum along the mel axis, the edge band repeated:
    # on a ramp (band j holds j + 4), band 8 then holds 8 − s + 4 times the gain.
    ramp = (torch.arange(16.0) + 4)[None, :, None].expand(64, 16, 8)
    shifted = sound_views(ramp, torch.Generator().manual_seed(4), max_time=0, max_band=2,
                          mask_bands=0, mask_frames=0)
    gain = (shifted[:, 12, 0] - shifted[:, 8, 0]) / 4
    moved = (12 - shifted[:, 8, 0] / gain).round()
    assert set(moved.tolist()) == {-2.0, -1.0, 0.0, 1.0, 2.0}
    with pytest.raises(ValueError, match="n_mels"):
        sound_views(torch.rand(2, 16))


def test_the_loss_falls_as_the_encoder_learns_its_sounds() -> None:
    torch.manual_seed(0)
    encoder = AudioClipEncoder(16, n_mels=32, width=32)
    contrast = SoundContrast(16)
    # Sixteen "words" of four syllables, each syllable a formant at its own band.
    g = torch.Generator().manual_seed(1)
    bands = torch.arange(32.0)
    centres = torch.randint(3, 29, (16, 4), generator=g).float()
    syllables = torch.exp(-0.5 * ((bands[None, None, :] - centres[:, :, None]) / 1.5) ** 2)
    mels = (4 * syllables.transpose(1, 2).repeat_interleave(25, dim=2)
            + torch.rand(16, 32, 100, generator=g) * 0.3)
    losses = fit_contrast(encoder, contrast, mels)
    assert losses[0] > 2.5  # about ln(31): each view among 31 others, untrained
    assert sum(losses[-10:]) / 10 < 0.6 * losses[0]  # measured 0.51
    assert float(contrast(encoder, mels[:1])) == 0.0  # one sound: nothing to tell apart


def test_sample_sounds_takes_clips_above_the_floor_only() -> None:
    audio = torch.arange(2 * 3.0).view(2, 3, 1, 1).expand(2, 3, 4, 5).clone()
    heard = torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0]])
    got = sample_sounds(audio, heard, count=10)
    assert sorted(got[:, 0, 0].tolist()) == [0.0, 2.0, 5.0]
    assert sample_sounds(audio, heard, count=2, gen=torch.Generator().manual_seed(0)).shape[0] == 2


def test_the_stream_model_trains_its_audio_encoder_on_sounds_alone() -> None:
    torch.manual_seed(0)
    cfg = ModelConfig(encoder="av", d_model=16, n_mels=8, image_size=16,
                      writer=WriterConfig(k_max=4, active=8, backward_links=True),
                      stream=StreamConfig(embed=8, audio_ssl=0.5, audio_ssl_clips=6,
                                          audio_context=1, audio_floor=True))
    model = AVStreamModel(cfg, 256)
    b, t = 2, 4
    audio = torch.full((b, t, 8, 21), -8.0)
    audio[:, :, :, 5:12] = torch.rand(b, t, 8, 7) * 4  # sound above the floor in every clip
    batch = {"audio": audio,
             "video": torch.randint(0, 255, (b, t, 2, 3, 16, 16), dtype=torch.uint8),
             "audio_mask": torch.ones(b, t, dtype=torch.bool),
             "video_mask": torch.zeros(b, t, dtype=torch.bool),  # no picture: nothing scored
             "targets": torch.full((b, t), -100)}
    memory = WindowMemory(BigState(StateConfig(nodes=256, partitions=2)).matrix(), b)
    model.train()
    out = model.window_objective(batch, memory, model.initial_carry(b, "cpu"))
    assert out.scored == 0 and out.stats["audio_ssl"] > 0
    out.loss_sum.backward()
    grads = [p.grad for p in model.audio.parameters() if p.grad is not None]
    assert grads and sum(float(g.abs().sum()) for g in grads) > 0
    model.eval()  # evaluation and the study pass: no such term
    out = model.window_objective(batch, memory, model.initial_carry(b, "cpu"))
    assert "audio_ssl" not in out.stats
    with pytest.raises(ValueError, match="audio_ssl"):
        StreamConfig(audio_ssl=-1.0)
    with pytest.raises(ValueError, match="audio_ssl_clips"):
        StreamConfig(audio_ssl_clips=1)
