"""A keyword-recognizer front end for spoken names (``audio_words_steps``).

At initialisation the ``av`` audio encoder gives every spoken word almost the
same feature (cosine 0.99 between two different words, see
``docs/results/notes.md``), so every name addresses the same nodes and no
binding can be learned through the state. A front end that already tells words
apart removes that obstacle without giving any answer away: it is trained on
*which word* was spoken (the ``word`` label of the shards' clips, pooled over
all training streams), never on which object a word names in a stream. With
``obs make-shards --names stream`` that pairing exists only inside one stream,
so it still has to go through the state.

What the model sees must also be *the same* for two utterances of one word
(other voice, other speed): the writer picks nodes by top-k, and a key that
moves a little picks other nodes, so study and query would not meet. Measured
on 4-object episodes (notes.md): the recognizer's features themselves (or
its posteriors at temperature 1) leave OBS at chance, a sharpened posterior
(temperature 0.05) times a learned embedding per word lets it learn. So:

* :func:`word_utterances` gathers ``(log-mel, word)`` pairs from loader batches;
* :func:`train_word_recognizer` fits an audio clip encoder and a word head on
  them once per suite, reports held-out word accuracy, and freezes them;
* :func:`word_code_front_end` is a ``prepare`` hook that puts
  :class:`WordCodeAudio` (frozen recognizer → sharpened word posterior →
  learned word embedding) in place of a model's audio encoder, for every
  model alike.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from tqdm import tqdm

from obs_dist.av_encoders import AudioClipEncoder, AVEncoder


@dataclass
class Utterances:
    """Spoken words gathered from loader batches.

    Attributes:
        mels: ``[N, n_mels, A]`` log-mel spectrograms.
        words: ``[N]`` word ids (positions in ``vocab``).
        vocab: the words, sorted.
    """

    mels: Tensor
    words: Tensor
    vocab: list[str]


def word_utterances(batches: Iterable[dict[str, Any]], count: int) -> Utterances:
    """The first ``count`` clips with audio and a word label in ``batches``.

    Args:
        batches: loader batches (``audio``, ``audio_mask`` and ``words``).
        count: utterances wanted (fewer if the batches run out).

    Raises:
        ValueError: if the batches carry no word labels.
    """
    mels: list[Tensor] = []
    words: list[str] = []
    for batch in batches:
        if "words" not in batch:
            raise ValueError("loader batches carry no 'words' (pipelines.loader batches do)")
        mask = batch["audio_mask"].bool()
        for b, t in mask.nonzero().tolist():
            word = batch["words"][b][t]
            if word:
                mels.append(batch["audio"][b, t])
                words.append(word)
        if len(words) >= count:
            break
    if not words:
        raise ValueError("no clip with audio and a 'word' label in the shards: the word "
                         "front end needs shards with spoken names")
    vocab = sorted(set(words))
    index = {w: i for i, w in enumerate(vocab)}
    return Utterances(torch.stack(mels[:count]),
                      torch.tensor([index[w] for w in words[:count]]), vocab)


class WordRecognizer(nn.Module):
    """log-mel clips ``[N, n_mels, A]`` → word logits ``[N, words]``.

    Args:
        n_mels: mel bands of the input.
        words: size of the word vocabulary.
        width: feature width between the clip encoder and the word head.
    """

    def __init__(self, n_mels: int, words: int, width: int = 64) -> None:
        super().__init__()
        if words < 2:
            raise ValueError(f"a word recognizer needs >= 2 words, got {words}")
        self.encoder = AudioClipEncoder(width, n_mels)
        self.head = nn.Linear(width, words)

    def forward(self, mels: Tensor) -> Tensor:
        """Word logits of every clip."""
        return self.head(self.encoder(mels))


def train_word_recognizer(data: Utterances, steps: int, n_mels: int, lr: float = 3e-3,
                          batch: int = 128, held_out: float = 0.2, seed: int = 0,
                          progress: bool = True) -> tuple[WordRecognizer, dict[str, float]]:
    """Fit a :class:`WordRecognizer` to ``data``, then freeze it.

    Args:
        data: the utterances; the last ``held_out`` share is only scored.
        steps: optimizer steps.
        n_mels: mel bands of ``data.mels``.
        lr: AdamW learning rate.
        batch: utterances per step.
        held_out: share of the utterances kept for the reported accuracy.
        seed: initialisation and sampling seed.
        progress: show a tqdm bar.

    Returns:
        The frozen recognizer, and ``word_accuracy`` (held out), ``words``,
        ``utterances`` and ``steps``.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    n = data.words.numel()
    split = int(n * (1.0 - held_out))
    if not 1 <= split < n:
        raise ValueError(f"{n} utterances cannot be split {1 - held_out:.0%}/{held_out:.0%}")
    torch.manual_seed(seed)
    model = WordRecognizer(n_mels, len(data.vocab))
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    for _ in tqdm(range(steps), desc="word recognizer", disable=not progress, leave=False):
        pick = torch.randint(0, split, (min(batch, split),), generator=gen)
        loss = nn.functional.cross_entropy(model(data.mels[pick]), data.words[pick])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        right = sum(int((model(data.mels[i:i + 512]).argmax(dim=1) == data.words[i:i + 512])
                        .sum()) for i in range(split, n, 512))
    model.requires_grad_(False)
    return model, {"word_accuracy": right / (n - split), "words": float(len(data.vocab)),
                   "utterances": float(n), "steps": float(steps)}


class WordCodeAudio(nn.Module):
    """A frozen word recognizer's sharpened posterior times a learned word embedding.

    Stands in for :class:`~obs_dist.av_encoders.AudioClipEncoder`: ``[N, n_mels,
    A]`` → ``[N, d_model]``. Only the embedding is trained with the model.

    Args:
        recognizer: a frozen :class:`WordRecognizer` (may be shared by models).
        d_model: output width.
        temperature: softmax temperature of the posterior (small: nearly one-hot).
    """

    def __init__(self, recognizer: WordRecognizer, d_model: int, temperature: float) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.recognizer = recognizer
        self.temperature = temperature
        # N(0, 1) rows, as a token embedding: the stand-in's inputs have this scale.
        self.embed = nn.Parameter(torch.randn(recognizer.head.out_features, d_model))

    def forward(self, mels: Tensor) -> Tensor:
        """Encode ``[N, n_mels, A]`` log-mel spectrograms."""
        with torch.no_grad():
            posterior = torch.softmax(self.recognizer(mels) / self.temperature, dim=1)
        return posterior @ self.embed


def word_code_front_end(recognizer: WordRecognizer, temperature: float
                        ) -> Callable[[nn.Module], None]:
    """A ``prepare`` hook (:func:`launch.evals.harness.build_learner`) that gives a
    model's ``av`` encoder a :class:`WordCodeAudio` in place of its audio encoder.

    Raises:
        ValueError: (when called) if the model has no ``av`` encoder.
    """

    def prepare(model: nn.Module) -> None:
        encoder = getattr(model, "encoder", None)
        if not isinstance(encoder, AVEncoder):
            raise ValueError("the word front end needs a model with the 'av' encoder")
        encoder.audio = WordCodeAudio(recognizer, encoder.d_model, temperature)

    return prepare
