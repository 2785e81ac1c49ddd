"""Recognizer front ends for spoken names and seen objects (cross-modal suite).

At initialisation the ``av`` audio encoder gives every spoken word almost the
same feature (cosine 0.99 between two different words, see
``docs/results/notes.md``), so every name addresses the same nodes and no
binding can be learned through the state. The video encoder, trained only
through the query loss, separates objects slowly too. A front end that already
tells words (or objects) apart removes that obstacle without giving any answer
away: it is trained on *which word* was spoken (the clips' ``word`` label) or
*which object* was shown (the ``object`` label), pooled over all training
streams, never on which object a word names in a stream. With ``obs make-shards
--names stream`` that pairing exists only inside one stream, so it still has to
go through the state.

What the model sees must also be *the same* for two utterances of one word
(other voice, other speed) or two views of one object: the writer picks nodes
by top-k, and a key that moves a little picks other nodes, so study and query
would not meet. Measured on 4-object episodes (notes.md): the recognizer's
features themselves (or its posteriors at temperature 1) leave OBS at chance, a
sharpened posterior (temperature 0.05) times a learned embedding per label lets
it learn. So:

* :func:`word_utterances` / :func:`object_views` gather labelled examples from
  loader batches;
* :func:`train_recognizer` fits a clip encoder and a label head on them once
  per suite, reports held-out accuracy, and freezes them;
* :func:`recognizer_front_end` is a ``prepare`` hook that puts a
  :class:`RecognizerCode` (frozen recognizer → sharpened posterior → learned
  embedding) in place of a model's audio and/or video encoder, for every model
  alike.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from tqdm import tqdm

from obs_dist.model.av_encoders import AudioClipEncoder, AVEncoder, VideoClipEncoder


@dataclass
class Labelled:
    """Clips of one modality with a label each, gathered from loader batches.

    Attributes:
        inputs: ``[N, ...]`` log-mel spectrograms or uint8 video clips.
        labels: ``[N]`` label ids (positions in ``vocab``).
        vocab: the label names.
    """

    inputs: Tensor
    labels: Tensor
    vocab: list[str]


# A resampled loader repeats streams forever: stop after this many batches in a
# row that bring no new clip (the shards hold fewer clips than asked for).
STALE_BATCHES = 32


def _gather(batches: Iterable[dict[str, Any]], count: int, sense: str,
            label: Callable[[dict[str, Any], int, int], Any]) -> tuple[list[Tensor], list[Any]]:
    """The first ``count`` distinct clips of ``sense`` (``audio``/``video``) with a label.

    Clips are told apart by their sample key (``keys``) when the batch has keys. A
    resampled loader draws streams with replacement: without this, a clip could be
    both trained on and in the held-out share, and the accuracy would flatter.
    ``label(batch, b, t)`` gives the clip's label, or None to skip it.
    """
    inputs: list[Tensor] = []
    labels: list[Any] = []
    taken: set[str] = set()
    stale = 0
    for batch in batches:
        before = len(labels)
        for b, t in batch[f"{sense}_mask"].bool().nonzero().tolist():
            value = label(batch, b, t)
            key = batch["keys"][b][t] if "keys" in batch else None
            if value is None or key in taken:
                continue
            if key is not None:
                taken.add(key)
            inputs.append(batch[sense][b, t])
            labels.append(value)
        stale = stale + 1 if len(labels) == before else 0
        if len(labels) >= count or stale >= STALE_BATCHES:
            break
    return inputs[:count], labels[:count]


def word_utterances(batches: Iterable[dict[str, Any]], count: int) -> Labelled:
    """The first ``count`` distinct clips with audio and a word label in ``batches``.

    Args:
        batches: loader batches (``audio``, ``audio_mask`` and ``words``).
        count: utterances wanted (fewer if the batches run out or stop bringing
            new clips).

    Returns:
        Log-mel inputs; the vocabulary is the words heard, sorted.

    Raises:
        ValueError: if the batches carry no word labels.
    """

    def word(batch: dict[str, Any], b: int, t: int) -> str | None:
        if "words" not in batch:
            raise ValueError("loader batches carry no 'words' (pipelines.loader batches do)")
        return batch["words"][b][t] or None

    mels, words = _gather(batches, count, "audio", word)
    if not words:
        raise ValueError("no clip with audio and a 'word' label in the shards: the word "
                         "front end needs shards with spoken names")
    vocab = sorted(set(words))
    index = {w: i for i, w in enumerate(vocab)}
    return Labelled(torch.stack(mels), torch.tensor([index[w] for w in words]), vocab)


def object_views(batches: Iterable[dict[str, Any]], count: int,
                 classes: Sequence[str]) -> Labelled:
    """The first ``count`` distinct clips with video and a known object in ``batches``.

    Args:
        batches: loader batches (``video``, ``video_mask`` and ``objects``).
        count: clips wanted (fewer if the batches run out or stop bringing new
            clips).
        classes: the class vocabulary (``objects`` are positions in it).

    Returns:
        uint8 video inputs ``[N, F, 3, H, W]``; the vocabulary is ``classes``.

    Raises:
        ValueError: if no clip shows a known object.
    """

    def known(batch: dict[str, Any], b: int, t: int) -> int | None:
        obj = int(batch["objects"][b, t])
        return obj if obj >= 0 else None

    clips, labels = _gather(batches, count, "video", known)
    if not labels:
        raise ValueError("no clip with video and a known 'object' label in the shards: the "
                         "object front end needs labelled video")
    if max(labels) >= len(classes):
        raise ValueError(f"object id {max(labels)} is outside the {len(classes)} classes")
    return Labelled(torch.stack(clips), torch.tensor(labels), list(classes))


class Recognizer(nn.Module):
    """A clip encoder and a linear head: clips → label logits ``[N, labels]``.

    Args:
        encoder: ``[N, ...]`` → ``[N, width]``.
        width: the encoder's output width.
        labels: size of the label vocabulary.
    """

    def __init__(self, encoder: nn.Module, width: int, labels: int) -> None:
        super().__init__()
        if labels < 2:
            raise ValueError(f"a recognizer needs >= 2 labels, got {labels}")
        self.encoder = encoder
        self.head = nn.Linear(width, labels)

    @property
    def labels(self) -> int:
        """Size of the label vocabulary."""
        return self.head.out_features

    def forward(self, clips: Tensor) -> Tensor:
        """Label logits of every clip."""
        return self.head(self.encoder(clips))


def word_recognizer(n_mels: int, words: int, width: int = 64) -> Recognizer:
    """An untrained recognizer of ``words`` words from log-mel clips."""
    return Recognizer(AudioClipEncoder(width, n_mels), width, words)


def object_recognizer(image_size: int, classes: int, width: int = 64) -> Recognizer:
    """An untrained recognizer of ``classes`` objects from uint8 video clips."""
    return Recognizer(VideoClipEncoder(width, image_size, width=width), width, classes)


def train_recognizer(model: Recognizer, data: Labelled, steps: int, lr: float = 3e-3,
                     batch: int = 128, held_out: float = 0.2, seed: int = 0,
                     progress: bool = True, desc: str = "recognizer",
                     augment: Callable[[Tensor, torch.Generator], Tensor] | None = None,
                     ) -> tuple[Recognizer, dict[str, float]]:
    """Fit ``model`` to ``data``, then freeze it.

    Args:
        model: an untrained recognizer with ``data.vocab`` labels.
        data: the examples; the last ``held_out`` share is only scored.
        steps: optimizer steps.
        lr: AdamW learning rate at the start (cosine decay to zero).
        batch: examples per step.
        held_out: share of the examples kept for the reported accuracy.
        seed: sampling seed.
        progress: show a tqdm bar.
        desc: the bar's label.
        augment: applied to each training batch (e.g.
            :func:`obs_dist.model.augment.shift_and_flip`).

    Returns:
        The frozen recognizer, and ``accuracy`` (held out), ``labels``,
        ``examples`` and ``steps``.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if model.labels != len(data.vocab):
        raise ValueError(f"the recognizer has {model.labels} labels, the data "
                         f"{len(data.vocab)}")
    n = data.labels.numel()
    split = int(n * (1.0 - held_out))
    if not 1 <= split < n:
        raise ValueError(f"{n} examples cannot be split {1 - held_out:.0%}/{held_out:.0%}")
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    # Cosine decay to zero, so that the last steps settle the weights.
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    gen = torch.Generator().manual_seed(seed)
    for _ in tqdm(range(steps), desc=desc, disable=not progress, leave=False):
        pick = torch.randint(0, split, (min(batch, split),), generator=gen)
        inputs = data.inputs[pick] if augment is None else augment(data.inputs[pick], gen)
        loss = nn.functional.cross_entropy(model(inputs), data.labels[pick])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        schedule.step()
    model.eval()
    with torch.no_grad():
        right = sum(int((model(data.inputs[i:i + 512]).argmax(dim=1)
                         == data.labels[i:i + 512]).sum()) for i in range(split, n, 512))
    model.requires_grad_(False)
    return model, {"accuracy": right / (n - split), "labels": float(len(data.vocab)),
                   "examples": float(n), "steps": float(steps)}


class RecognizerCode(nn.Module):
    """A frozen recognizer's sharpened posterior times a learned label embedding.

    Stands in for a clip encoder of :class:`~obs_dist.model.av_encoders.AVEncoder`:
    ``[N, ...]`` → ``[N, d_model]``. Only the embedding is trained with the model.

    Args:
        recognizer: a frozen :class:`Recognizer` (may be shared by models).
        d_model: output width.
        temperature: softmax temperature of the posterior (small: nearly one-hot).
    """

    def __init__(self, recognizer: Recognizer, d_model: int, temperature: float) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.recognizer = recognizer
        self.temperature = temperature
        # N(0, 1) rows, as a token embedding: the stand-in's inputs have this scale.
        self.embed = nn.Parameter(torch.randn(recognizer.labels, d_model))

    def forward(self, clips: Tensor) -> Tensor:
        """Encode ``[N, ...]`` clips."""
        with torch.no_grad():
            posterior = torch.softmax(self.recognizer(clips) / self.temperature, dim=1)
        return posterior @ self.embed


def recognizer_front_end(words: Recognizer | None = None, objects: Recognizer | None = None,
                         word_temperature: float = 0.05, object_temperature: float = 0.05,
                         ) -> Callable[[nn.Module], None]:
    """A ``prepare`` hook (:func:`launch.evals.harness.build_learner`) that gives a
    model's ``av`` encoder a :class:`RecognizerCode` in place of its audio encoder
    (``words``) and/or its video encoder (``objects``).

    Args:
        words: a frozen word recognizer, or None to keep the audio encoder.
        objects: a frozen object recognizer, or None to keep the video encoder.
        word_temperature: posterior temperature of the word code.
        object_temperature: posterior temperature of the object code.

    Raises:
        ValueError: if neither recognizer is given, a temperature is not positive,
            or (when called) the model has no ``av`` encoder.
    """
    if words is None and objects is None:
        raise ValueError("a front end needs a word or an object recognizer")
    for name, value in (("word_temperature", word_temperature),
                        ("object_temperature", object_temperature)):
        if value <= 0:
            raise ValueError(f"{name} must be > 0, got {value}")

    def prepare(model: nn.Module) -> None:
        encoder = getattr(model, "encoder", None)
        if not isinstance(encoder, AVEncoder):
            raise ValueError("a recognizer front end needs a model with the 'av' encoder")
        if words is not None:
            encoder.audio = RecognizerCode(words, encoder.d_model, word_temperature)
        if objects is not None:
            encoder.video = RecognizerCode(objects, encoder.d_model, object_temperature)

    return prepare
