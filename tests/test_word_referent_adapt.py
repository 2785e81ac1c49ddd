"""OBS adapted to the held-out recording it studies (launch/evals/word_referent_adapt.py)."""

from __future__ import annotations

import pytest
import torch

from launch.evals.word_referent_adapt import (
    centred_on,
    normalised,
    recording_statistics,
    speech_clips,
)
from launch.evals.word_referent_config import WordReferentConfig
from obs_dist.model.av_stream import AVStreamModel
from obs_dist.model.model import ModelConfig, StreamConfig
from obs_dist.model.writer import WriterConfig


def _model(address_centring: bool = True) -> AVStreamModel:
    torch.manual_seed(0)
    cfg = ModelConfig(encoder="av", d_model=16, n_mels=8, image_size=16,
                      writer=WriterConfig(k_max=4, active=8),
                      stream=StreamConfig(embed=8, address_centring=address_centring))
    return AVStreamModel(cfg, 256).eval()


def _media(clips: int = 12) -> dict[tuple[str, int], tuple[torch.Tensor, torch.Tensor]]:
    """Two recordings: a bright room with a loud voice, a dark one with a soft one."""
    g = torch.Generator().manual_seed(1)
    media = {}
    for name, light, level in (("bright", 200, 0.0), ("dark", 30, -2.0)):
        for i in range(clips):
            audio = torch.randn(8, 21, generator=g) - 8.0
            if i % 3 == 0:  # every third clip has a loud stretch (speech)
                audio[:, 5:15] += 6.0 + level
            video = (torch.randint(0, 40, (2, 3, 16, 16), generator=g) + light).clamp(0, 255)
            media[(name, i)] = (audio, video.to(torch.uint8))
    return media


def test_each_recording_is_centred_by_its_own_clips_inside_the_block() -> None:
    """Inside ``centred_on`` a recording's pictures and sounds address from zero-mean,
    unit-variance features (its own statistics); outside, the running ones are back."""
    model, media = _model(), _media()
    stats = recording_statistics(model, media)
    assert sorted(stats) == ["bright", "dark"]
    before = [(c.mean.clone(), c.var.clone()) for c in model.centring]
    with torch.no_grad():
        for name, (video_stats, _) in stats.items():
            clips = torch.stack([media[(name, i)][1] for i in range(12)])
            f = model.video(clips) + model.modality[0]
            with centred_on(model, stats[name]):
                x = model._addressing(f, 0)
            own = (f - f.mean(0)) * torch.rsqrt(f.var(0, unbiased=False) + 1e-5)
            assert torch.allclose(x, own, atol=1e-5) and x.mean(0).abs().max() < 1e-4
            running = model._addressing(f, 0)  # the running statistics: not centred on it
            assert running.mean(0).abs().max() > 0.1
            assert torch.equal(video_stats[0], f.mean(0))
    # The two rooms differ, so their statistics do, and the block puts back what was.
    assert not torch.allclose(stats["bright"][0][0], stats["dark"][0][0])
    for c, (mean, var) in zip(model.centring, before, strict=True):
        assert torch.equal(c.mean, mean) and torch.equal(c.var, var)
    with centred_on(model, None):  # no statistics: unchanged
        assert torch.equal(model.centring[0].mean, before[0][0])


def test_recording_statistics_refuse_a_model_they_cannot_adapt() -> None:
    with pytest.raises(ValueError, match="address_centring"):
        recording_statistics(_model(address_centring=False), _media())
    # A recording of one clip has no variance: left out, studied with the running ones.
    one = {k: v for k, v in _media().items() if k[0] == "bright" or k == ("dark", 0)}
    assert sorted(recording_statistics(_model(), one)) == ["bright"]


def test_speech_clips_are_the_ones_the_gate_passes() -> None:
    """The loud clips of each recording, each judged against its own room's quiet."""
    clips = speech_clips(_model(), _media(), window=12)
    assert clips == {"bright": [0, 3, 6, 9], "dark": [0, 3, 6, 9]}
    with pytest.raises(ValueError, match="window"):
        speech_clips(_model(), _media(), window=0)


def test_normalised_discounts_a_picture_that_every_name_recalls() -> None:
    """A hub candidate scores high for every query; z-scored over the recording's
    speech, the candidate this query recalls more than speech at large wins."""
    owner = ["a", "a", "b"]
    reference = {"a": torch.tensor([[5.0, 1.0, 9.0], [5.2, 0.0, 9.0], [4.8, 0.5, 9.0]]),
                 "b": torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, 3.0]])}
    query = torch.tensor([[5.0, 2.0, 2.0]])
    assert int(query[0, :2].argmax()) == 0  # as it is, the hub wins
    z = normalised(query, owner, reference)
    assert int(z[0, :2].argmax()) == 1
    assert torch.allclose(z, torch.tensor([[0.0, 3.0, 0.0]]), atol=1e-5)
    for few in (reference["b"][:1], torch.zeros(0, 3)):  # one clip of speech, or none
        with pytest.raises(ValueError, match=f"'b' has {few.shape[0]} clip"):
            normalised(query, owner, {"a": reference["a"], "b": few})


def test_the_suite_refuses_adaptations_it_cannot_apply() -> None:
    with pytest.raises(ValueError, match="study_nodes"):
        WordReferentConfig(study_nodes=32)  # the learnt rule has the writer's k_max
    with pytest.raises(ValueError, match="study_lookback"):
        WordReferentConfig(study_lookback=3)
    with pytest.raises(ValueError, match="study_lookback"):
        WordReferentConfig(study_rule="name_links", study_lookback=-1)
    with pytest.raises(ValueError, match="study_decay"):
        WordReferentConfig(study_decay=0.8)
    with pytest.raises(ValueError, match="study_decay"):
        WordReferentConfig(study_rule="name_links", study_decay=0.0)
    with pytest.raises(ValueError, match="study = 'apart'"):
        WordReferentConfig(study="together", study_centring="recording")
    with pytest.raises(ValueError, match="study_centring"):
        WordReferentConfig(study_centring="batch")
    with pytest.raises(ValueError, match="candidate_norm"):
        WordReferentConfig(candidate_norm="softmax")
    WordReferentConfig(study_rule="name_links", study_nodes=32, study_lookback=3,
                       study_decay=0.8, study_centring="recording", candidate_norm="speech")
