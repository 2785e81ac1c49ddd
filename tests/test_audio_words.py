"""The keyword-recognizer front end of the cross-modal suite (``audio_words_steps``)."""

from __future__ import annotations

import pytest
import torch

from launch.evals.audio_words import (
    Utterances,
    WordCodeAudio,
    train_word_recognizer,
    word_code_front_end,
    word_utterances,
)
from obs_dist.av_encoders import AVEncoder
from obs_dist.tasks.crossmodal import split_study_clips

N_MELS, FRAMES, WORDS = 16, 24, 5


def _utterances(count: int, seed: int = 0) -> Utterances:
    """Each word is its own random spectrogram pattern, said with noise and a level shift."""
    patterns = torch.randn(WORDS, N_MELS, FRAMES, generator=torch.Generator().manual_seed(99))
    gen = torch.Generator().manual_seed(seed)
    words = torch.randint(0, WORDS, (count,), generator=gen)
    noise = 0.5 * torch.randn(count, N_MELS, FRAMES, generator=gen)
    level = torch.randn(count, 1, 1, generator=gen)
    return Utterances(patterns[words] + noise + level, words, [f"w{i}" for i in range(WORDS)])


def test_recognizer_learns_the_words_and_is_frozen() -> None:
    recognizer, metrics = train_word_recognizer(_utterances(400), steps=60, n_mels=N_MELS,
                                                batch=64, progress=False)
    assert metrics["word_accuracy"] >= 0.9 and metrics["words"] == WORDS
    assert metrics["utterances"] == 400
    assert not any(p.requires_grad for p in recognizer.parameters())


def test_word_code_is_the_same_for_two_utterances_of_a_word() -> None:
    recognizer, _ = train_word_recognizer(_utterances(400), steps=60, n_mels=N_MELS,
                                          batch=64, progress=False)
    code = WordCodeAudio(recognizer, d_model=8, temperature=0.05)
    assert [n for n, p in code.named_parameters() if p.requires_grad] == ["embed"]
    fresh = _utterances(200, seed=1)  # other noise and levels, same words
    out = code(fresh.mels[:100])
    assert out.shape == (100, 8)
    first = {int(w): out[i] for i, w in reversed(list(enumerate(fresh.words[:100])))}
    same = torch.stack([torch.cosine_similarity(out[i], first[int(w)], dim=0)
                        for i, w in enumerate(fresh.words[:100])])
    assert float((same > 0.99).float().mean()) >= 0.9
    # Gradients reach the word embedding (trained with the model), not the recognizer.
    code(fresh.mels[:10]).sum().backward()
    assert code.embed.grad is not None and code.embed.grad.abs().sum() > 0


def test_front_end_hook_replaces_the_av_audio_encoder_only() -> None:
    recognizer, _ = train_word_recognizer(_utterances(100), steps=2, n_mels=N_MELS,
                                          progress=False)
    prepare = word_code_front_end(recognizer, temperature=0.05)
    model = torch.nn.Module()
    model.encoder = AVEncoder(8, n_mels=N_MELS, image_size=16)
    prepare(model)
    assert isinstance(model.encoder.audio, WordCodeAudio)
    tokens_model = torch.nn.Module()
    tokens_model.encoder = torch.nn.Embedding(4, 8)
    with pytest.raises(ValueError, match="'av' encoder"):
        prepare(tokens_model)
    with pytest.raises(ValueError, match="temperature"):
        WordCodeAudio(recognizer, 8, temperature=0.0)


def test_utterances_come_from_clips_with_audio_and_a_word() -> None:
    audio = torch.randn(1, 3, N_MELS, FRAMES)
    batch = {"audio": audio, "audio_mask": torch.tensor([[True, False, True]]),
             "words": [["kiwi", "apple", ""]]}
    got = word_utterances([batch], count=10)
    assert got.vocab == ["kiwi"] and got.words.tolist() == [0]
    assert torch.equal(got.mels[0], audio[0, 0])
    with pytest.raises(ValueError, match="no clip with audio and a 'word'"):
        word_utterances([{**batch, "words": [["", "", ""]]}], count=10)


def test_split_study_clips_puts_the_word_on_the_audio_step() -> None:
    batch = {"video": torch.zeros(1, 2, 1, 3, 4, 4, dtype=torch.uint8),
             "video_mask": torch.tensor([[True, False]]), "audio": torch.zeros(1, 2, 2, 3),
             "audio_mask": torch.tensor([[True, True]]), "objects": torch.tensor([[3, 5]]),
             "targets": torch.tensor([[-100, 3]]), "words": [["kiwi", "kiwi"]]}
    assert split_study_clips(batch)["words"] == [["kiwi", "", "kiwi", ""]]


@pytest.mark.parametrize(("overrides", "message"), [
    (["audio_words_steps=5"], "needs shards"),
    (["shards=/x", "audio_words_temperature=0"], "audio_words_temperature"),
    (["shards=/x", "audio_words_steps=-1"], "audio_words_steps"),
])
def test_bad_front_end_settings_are_refused(overrides: list[str], message: str) -> None:
    from launch.evals import suite_config

    with pytest.raises(ValueError, match=message):
        suite_config("crossmodal", None, overrides)
