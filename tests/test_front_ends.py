"""Recognizer front ends of the cross-modal suite (audio_words_steps, video_objects_steps)."""

from __future__ import annotations

import itertools

import pytest
import torch

from launch.evals.front_ends import (
    Labelled,
    RecognizerCode,
    object_recognizer,
    object_views,
    recognizer_front_end,
    train_recognizer,
    word_recognizer,
    word_utterances,
)
from obs_dist.model.augment import shift_and_flip
from obs_dist.model.av_encoders import AVEncoder, VideoClipEncoder
from obs_dist.tasks.crossmodal import split_study_clips

N_MELS, FRAMES, WORDS = 16, 24, 5
SIZE, OBJECTS = 16, 4


def _utterances(count: int, seed: int = 0) -> Labelled:
    """Each word is its own random spectrogram pattern, said with noise and a level shift."""
    patterns = torch.randn(WORDS, N_MELS, FRAMES, generator=torch.Generator().manual_seed(99))
    gen = torch.Generator().manual_seed(seed)
    words = torch.randint(0, WORDS, (count,), generator=gen)
    noise = 0.5 * torch.randn(count, N_MELS, FRAMES, generator=gen)
    level = torch.randn(count, 1, 1, generator=gen)
    return Labelled(patterns[words] + noise + level, words, [f"w{i}" for i in range(WORDS)])


def _views(count: int, seed: int = 0) -> Labelled:
    """Object k is a bright square in colour channel k % 3, top or bottom half; it moves."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, OBJECTS, (count,), generator=gen)
    clips = torch.randint(0, 40, (count, 2, 3, SIZE, SIZE), generator=gen, dtype=torch.uint8)
    for i, k in enumerate(labels.tolist()):
        x = int(torch.randint(0, SIZE - 6, (1,), generator=gen))
        y = int(torch.randint(0, SIZE // 2 - 6, (1,), generator=gen)) + (SIZE // 2) * (k // 3)
        clips[i, :, k % 3, y:y + 6, x:x + 6] = 255
    return Labelled(clips, labels, [f"o{i}" for i in range(OBJECTS)])


def test_word_recognizer_learns_the_words_and_is_frozen() -> None:
    recognizer, metrics = train_recognizer(word_recognizer(N_MELS, WORDS), _utterances(400),
                                           steps=60, batch=64, progress=False)
    assert metrics["accuracy"] >= 0.9 and metrics["labels"] == WORDS
    assert metrics["examples"] == 400
    assert not any(p.requires_grad for p in recognizer.parameters())


def test_object_recognizer_learns_the_objects_from_video() -> None:
    torch.manual_seed(0)
    untrained = object_recognizer(SIZE, OBJECTS)
    assert isinstance(untrained.encoder, VideoClipEncoder)
    recognizer, metrics = train_recognizer(untrained, _views(600), steps=80, batch=64,
                                           progress=False)
    assert metrics["accuracy"] >= 0.9 and metrics["labels"] == OBJECTS
    with pytest.raises(ValueError, match="labels"):
        train_recognizer(object_recognizer(SIZE, OBJECTS + 1), _views(20), steps=1)


def test_shift_and_flip_moves_and_mirrors_clips_only() -> None:
    clips = _views(64).inputs
    out = shift_and_flip(clips, torch.Generator().manual_seed(0), max_shift=2)
    assert out.shape == clips.shape and out.dtype == clips.dtype
    assert not torch.equal(out, clips) and torch.equal(clips, _views(64).inputs)
    # Only positions change: every clip keeps its pixel values.
    assert torch.equal(out.flatten(1).sort(dim=1).values, clips.flatten(1).sort(dim=1).values)
    again = shift_and_flip(clips, torch.Generator().manual_seed(0), max_shift=2)
    assert torch.equal(out, again)


def test_code_is_the_same_for_two_utterances_of_a_word() -> None:
    recognizer, _ = train_recognizer(word_recognizer(N_MELS, WORDS), _utterances(400),
                                     steps=60, batch=64, progress=False)
    code = RecognizerCode(recognizer, d_model=8, temperature=0.05)
    assert [n for n, p in code.named_parameters() if p.requires_grad] == ["embed"]
    fresh = _utterances(200, seed=1)  # other noise and levels, same words
    out = code(fresh.inputs[:100])
    assert out.shape == (100, 8)
    first = {int(w): out[i] for i, w in reversed(list(enumerate(fresh.labels[:100])))}
    same = torch.stack([torch.cosine_similarity(out[i], first[int(w)], dim=0)
                        for i, w in enumerate(fresh.labels[:100])])
    assert float((same > 0.99).float().mean()) >= 0.9
    # Gradients reach the label embedding (trained with the model), not the recognizer.
    code(fresh.inputs[:10]).sum().backward()
    assert code.embed.grad is not None and code.embed.grad.abs().sum() > 0


def test_front_end_hook_replaces_the_chosen_av_encoders() -> None:
    words, _ = train_recognizer(word_recognizer(N_MELS, WORDS), _utterances(100), steps=2,
                                progress=False)
    objects, _ = train_recognizer(object_recognizer(SIZE, OBJECTS), _views(100), steps=2,
                                  progress=False)
    model = torch.nn.Module()
    model.encoder = AVEncoder(8, n_mels=N_MELS, image_size=SIZE)
    recognizer_front_end(words=words)(model)
    assert isinstance(model.encoder.audio, RecognizerCode)
    assert isinstance(model.encoder.video, VideoClipEncoder)
    recognizer_front_end(objects=objects, object_temperature=0.1)(model)
    assert isinstance(model.encoder.video, RecognizerCode)
    assert model.encoder.video.temperature == 0.1
    # The model still encodes a batch end to end through both codes.
    batch = {"video": _views(3).inputs[None], "audio": _utterances(3).inputs[None],
             "video_mask": torch.tensor([[True, False, True]]),
             "audio_mask": torch.tensor([[True, True, False]])}
    assert model.encoder(batch).shape == (1, 3, 8)
    tokens_model = torch.nn.Module()
    tokens_model.encoder = torch.nn.Embedding(4, 8)
    with pytest.raises(ValueError, match="'av' encoder"):
        recognizer_front_end(words=words)(tokens_model)
    with pytest.raises(ValueError, match="word or an object"):
        recognizer_front_end()
    with pytest.raises(ValueError, match="object_temperature"):
        recognizer_front_end(words, objects, object_temperature=0.0)
    with pytest.raises(ValueError, match="temperature"):
        RecognizerCode(words, 8, temperature=0.0)


def test_utterances_come_from_clips_with_audio_and_a_word() -> None:
    audio = torch.randn(1, 3, N_MELS, FRAMES)
    batch = {"audio": audio, "audio_mask": torch.tensor([[True, False, True]]),
             "words": [["kiwi", "apple", ""]]}
    got = word_utterances([batch], count=10)
    assert got.vocab == ["kiwi"] and got.labels.tolist() == [0]
    assert torch.equal(got.inputs[0], audio[0, 0])
    with pytest.raises(ValueError, match="no clip with audio and a 'word'"):
        word_utterances([{**batch, "words": [["", "", ""]]}], count=10)


def test_object_views_come_from_clips_with_video_and_a_known_object() -> None:
    video = torch.randint(0, 255, (1, 4, 2, 3, SIZE, SIZE), dtype=torch.uint8)
    batch = {"video": video, "video_mask": torch.tensor([[True, True, False, True]]),
             "objects": torch.tensor([[2, -1, 1, 0]])}
    got = object_views([batch], count=10, classes=["a", "b", "c"])
    assert got.labels.tolist() == [2, 0] and got.vocab == ["a", "b", "c"]
    assert torch.equal(got.inputs[1], video[0, 3])
    with pytest.raises(ValueError, match="outside the 2 classes"):
        object_views([batch], count=10, classes=["a", "b"])
    with pytest.raises(ValueError, match="no clip with video"):
        object_views([{**batch, "objects": torch.full((1, 4), -1)}], count=10, classes=["a"])


def test_gatherers_take_each_clip_once_and_stop_when_a_loader_only_repeats() -> None:
    video = torch.randint(0, 255, (1, 3, 2, 3, SIZE, SIZE), dtype=torch.uint8)
    batch = {"video": video, "video_mask": torch.ones(1, 3, dtype=torch.bool),
             "objects": torch.tensor([[0, 1, 2]]), "keys": [["s/0", "s/1", "s/0"]],
             "audio": torch.randn(1, 3, N_MELS, FRAMES),
             "audio_mask": torch.ones(1, 3, dtype=torch.bool), "words": [["a", "b", "a"]]}
    # A resampled loader repeats its streams forever; the same batch stands in for it.
    views = object_views(itertools.repeat(batch), count=100, classes=["x", "y", "z"])
    assert views.labels.tolist() == [0, 1]  # "s/0" once, although its clips differ here
    words = word_utterances(itertools.repeat(batch), count=100)
    assert words.vocab == ["a", "b"] and words.labels.tolist() == [0, 1]


def test_split_study_clips_puts_the_word_on_the_audio_step() -> None:
    batch = {"video": torch.zeros(1, 2, 1, 3, 4, 4, dtype=torch.uint8),
             "video_mask": torch.tensor([[True, False]]), "audio": torch.zeros(1, 2, 2, 3),
             "audio_mask": torch.tensor([[True, True]]), "objects": torch.tensor([[3, 5]]),
             "targets": torch.tensor([[-100, 3]]), "words": [["kiwi", "kiwi"]]}
    assert split_study_clips(batch)["words"] == [["kiwi", "", "kiwi", ""]]


@pytest.mark.parametrize(("overrides", "message"), [
    (["audio_words_steps=5"], "needs shards"),
    (["video_objects_steps=5"], "needs shards"),
    (["shards=/x", "audio_words_temperature=0"], "audio_words_temperature"),
    (["shards=/x", "video_objects_temperature=-1"], "video_objects_temperature"),
    (["shards=/x", "audio_words_steps=-1"], "audio_words_steps"),
    (["shards=/x", "video_objects_clips=3"], "video_objects_clips"),
])
def test_bad_front_end_settings_are_refused(overrides: list[str], message: str) -> None:
    from launch.evals import suite_config

    with pytest.raises(ValueError, match=message):
        suite_config("crossmodal", None, overrides)
