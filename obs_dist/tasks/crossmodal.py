"""Cross-modal association episodes: study (video + spoken name), later audio-only query.

An episode shows ``per_episode`` objects, each in a *study clip* where its name
is heard and the object is seen, then ``delay`` distractor clips (other objects,
no speech), then one audio-only *query clip* per studied name. The model must
retrieve the visual identity bound to the name through its state; the answer is
the nearest study clip, i.e. the best-scoring object among those studied in the
episode (``candidates``).

A study clip is presented as two steps, the word's audio and then the object's
video, so that "the nodes that were active when the input arrived" (the word)
get wired to the nodes of the new input (the object) — DESIGN §3 step 5. Real
shards are adapted the same way (:func:`split_study_clips`).

This module is the token **stand-in** for audio-visual shards: word audio and
object video are ids mapped through two different embedding ranges of one token
table (words ``[0, W)``, videos ``[W, W + O)``). With ``binding = "episode"``
every episode names its objects with fresh random words, so the name→object
link exists only in the episode and nothing can be memorised in the slow
weights; ``binding = "world"`` gives object ``o`` the fixed name ``o mod W``
(like real data) and is used to draw the state's circuits.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from obs_dist.tasks.mqar import IGNORE


@dataclass
class CrossmodalConfig:
    """Stand-in episodes.

    Attributes:
        objects: O, visual objects in the pool (also the output classes).
        words: W, spoken words in the pool.
        per_episode: objects studied per episode when training.
        train_per_episode: choices of ``per_episode`` drawn per training batch
            (empty: always ``per_episode``).
        delay: distractor clips between the last study clip and the first query.
        train_max_delay: training delays are drawn from ``[0, train_max_delay]``
            (negative: always ``delay``).
        binding: ``episode`` (fresh names per episode) or ``world`` (fixed names).
        batch: episodes per batch.
        seed: seed of the stream.
    """

    objects: int = 64
    words: int = 64
    per_episode: int = 16
    train_per_episode: list[int] = field(default_factory=list)
    delay: int = 32
    train_max_delay: int = -1
    binding: Literal["episode", "world"] = "episode"
    batch: int = 32
    seed: int = 0

    def __post_init__(self) -> None:
        if self.objects < 2 or self.words < 2:
            raise ValueError(f"objects ({self.objects}) and words ({self.words}) must be >= 2")
        for n in [self.per_episode, *self.train_per_episode]:
            if not 1 <= n <= min(self.objects, self.words):
                raise ValueError(f"per_episode values must be in [1, min(objects, words)="
                                 f"{min(self.objects, self.words)}], got {n}")
            if n >= self.objects:
                raise ValueError(f"per_episode ({n}) must be < objects ({self.objects}) so "
                                 "that distractor objects exist")
        if self.delay < 0:
            raise ValueError(f"delay must be >= 0, got {self.delay}")
        if self.binding not in ("episode", "world"):
            raise ValueError(f"binding must be 'episode' or 'world', got {self.binding!r}")
        if self.batch < 1:
            raise ValueError(f"batch must be >= 1, got {self.batch}")

    @property
    def input_vocab(self) -> int:
        """Word ids then video ids."""
        return self.words + self.objects

    @property
    def classes(self) -> int:
        """Object identities."""
        return self.objects


def episode_batch(cfg: CrossmodalConfig, per_episode: int, delay: int,
                  generator: torch.Generator) -> dict[str, torch.Tensor]:
    """One batch of episodes with a given number of objects and delay.

    Returns:
        ``tokens [B, L]``; ``targets [B, L]`` (object id at queries, -100
        elsewhere); ``candidates [B, O]`` (the episode's studied objects);
        ``audio_mask``/``video_mask [B, L]``; ``words``/``objects [B, L]`` (ids
        where that modality is present, -1 elsewhere); ``reset [B]`` (all True:
        every row starts a new episode). ``L = 2·n + delay + n``.
    """
    bsz, n = cfg.batch, per_episode
    objs = torch.argsort(torch.rand(bsz, cfg.objects, generator=generator), dim=1)
    study, others = objs[:, :n], objs[:, n:]
    if cfg.binding == "episode":
        words = torch.argsort(torch.rand(bsz, cfg.words, generator=generator), dim=1)[:, :n]
    else:
        words = study % cfg.words
    length = 2 * n + delay + n
    word_ids = torch.full((bsz, length), -1, dtype=torch.long)
    obj_ids = torch.full((bsz, length), -1, dtype=torch.long)
    word_ids[:, 0:2 * n:2] = words
    obj_ids[:, 1:2 * n:2] = study
    if delay:
        pick = torch.randint(0, others.shape[1], (bsz, delay), generator=generator)
        obj_ids[:, 2 * n:2 * n + delay] = others.gather(1, pick)
    order = torch.argsort(torch.rand(bsz, n, generator=generator), dim=1)
    q0 = 2 * n + delay
    word_ids[:, q0:] = words.gather(1, order)
    targets = torch.full((bsz, length), IGNORE, dtype=torch.long)
    targets[:, q0:] = study.gather(1, order)
    tokens = torch.where(word_ids >= 0, word_ids, obj_ids + cfg.words)
    candidates = torch.zeros(bsz, cfg.objects, dtype=torch.bool)
    candidates.scatter_(1, study, True)
    return {"tokens": tokens, "targets": targets, "candidates": candidates,
            "audio_mask": word_ids >= 0, "video_mask": obj_ids >= 0,
            "words": word_ids, "objects": obj_ids,
            "reset": torch.ones(bsz, dtype=torch.bool)}


def train_episodes(cfg: CrossmodalConfig, seed_offset: int = 0
                   ) -> Iterator[dict[str, torch.Tensor]]:
    """Endless training batches; ``per_episode`` and delay drawn per batch."""
    gen = torch.Generator().manual_seed(cfg.seed + seed_offset)
    sizes = cfg.train_per_episode or [cfg.per_episode]
    while True:
        n = sizes[int(torch.randint(0, len(sizes), (1,), generator=gen))]
        if cfg.train_max_delay >= 0:
            delay = int(torch.randint(0, cfg.train_max_delay + 1, (1,), generator=gen))
        else:
            delay = cfg.delay
        yield episode_batch(cfg, n, delay, gen)


def eval_episodes(cfg: CrossmodalConfig, per_episode: int, delay: int, count: int,
                  seed_offset: int = 1_000_003) -> list[dict[str, torch.Tensor]]:
    """``count`` evaluation batches at one point of the (objects, delay) grid."""
    gen = torch.Generator().manual_seed(cfg.seed + seed_offset + 1009 * per_episode + delay)
    return [episode_batch(cfg, per_episode, delay, gen) for _ in range(count)]


def split_study_clips(batch: dict[str, Any]) -> dict[str, Any]:
    """Real shards: present every clip that has both senses as audio, then video.

    Each loader clip ``t`` becomes two steps ``2t`` (its audio only) and ``2t+1``
    (its video only); a clip with one sense keeps it on its step and leaves the
    other step empty (a zero feature). Targets, objects and keys follow the
    step that holds the clip's content; the target of a query (audio-only) clip
    sits on its audio step. ``candidates [B, classes]`` marks, per row, the
    objects seen in a study clip of that row so far (nearest-study-clip answer).

    Args:
        batch: a :func:`pipelines.loader.build_loader` batch (``video``,
            ``video_mask``, ``audio``, ``audio_mask``, ``objects``, ``targets``, ``reset``).

    Returns:
        The batch with ``T`` doubled and a ``candidates`` entry added.
    """
    required = ("video", "video_mask", "audio", "audio_mask", "objects", "targets")
    missing = [k for k in required if k not in batch]
    if missing:
        raise ValueError(f"audio-visual batch lacks {missing}")
    vmask: torch.Tensor = batch["video_mask"].bool()
    amask: torch.Tensor = batch["audio_mask"].bool()
    bsz, steps = vmask.shape
    out: dict[str, Any] = dict(batch)

    def interleave(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
        return torch.stack([first, second], dim=2).reshape(bsz, 2 * steps, *first.shape[2:])

    zeros_v = torch.zeros_like(batch["video"])
    zeros_a = torch.zeros_like(batch["audio"])
    out["audio"] = interleave(batch["audio"], zeros_a)
    out["video"] = interleave(zeros_v, batch["video"])
    none = torch.zeros_like(vmask)
    out["audio_mask"] = interleave(amask, none)
    out["video_mask"] = interleave(none, vmask)
    ignore = torch.full_like(batch["targets"], IGNORE)
    out["targets"] = interleave(batch["targets"], ignore)
    unknown = torch.full_like(batch["objects"], -1)
    seen_objects = torch.where(vmask, batch["objects"], unknown)
    out["objects"] = interleave(unknown, seen_objects)
    if "continuous" in batch:
        out["continuous"] = interleave(batch["continuous"], batch["continuous"])
    if "keys" in batch:
        out["keys"] = [[k for k in row for _ in (0, 1)] for row in batch["keys"]]
    if "words" in batch:  # a clip's spoken word sits on its audio step
        out["words"] = [[w for word in row for w in (word, "")] for row in batch["words"]]
    return out


def seen_candidates(objects: torch.Tensor, classes: int) -> torch.Tensor:
    """``[B, classes]``: which object ids appear (>= 0) anywhere in each row."""
    cand = torch.zeros(objects.shape[0], classes, dtype=torch.bool)
    valid = (objects >= 0) & (objects < classes)
    rows = torch.arange(objects.shape[0])[:, None].expand_as(objects)
    cand[rows[valid], objects[valid].long()] = True
    return cand
