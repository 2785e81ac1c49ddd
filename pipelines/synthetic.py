"""Synthetic audio-visual streams: objects on screen and their names spoken.

Each stream is a sequence of one-second clips (``frames`` frames at ``fps``):

* **study** clips show an object (shape × colour × texture, moving, jittered)
  with its name spoken in the soundtrack (or silence, in the later clips of a
  continuous scene);
* **query** clips are audio only: the name of an object seen earlier in the
  same stream; the label to predict is that object.

A **continuous** stream keeps one scene over ``scene_clips`` consecutive clips
(same background, motion continuing from clip to clip) before the next object;
a **discrete** stream draws a fresh scene for every clip. Each stream has its
own voice; each utterance its own speed. Everything follows from ``seed``.

Two choices make the data a test of association *through the state*:

* ``names = "stream"``: every stream names its objects with its own words,
  drawn from :data:`NAME_WORDS` (object → word is a fresh random map per
  stream), so the link between a word and what it looked like exists only in
  the stream, and weights trained on other streams cannot hold it. The default
  ``names = "class"`` speaks the class name (``"striped red circle"``), as
  real footage would.
* ``layout = "episodes"``: the stream is a run of episodes, each ``n`` study
  clips of distinct objects with their names spoken, ``d`` distractor clips
  (video only, objects not studied in the episode, unnamed), then ``n``
  audio-only queries, one per studied name in random order; ``n`` and ``d``
  are drawn per episode from ``episode_objects`` and ``episode_delays``. So
  every query sits at least ``d`` clips after its study clip. The default
  ``layout = "free"`` mixes study and query clips at random (``query_fraction``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from pipelines.render import (
    SPEEDS,
    VOICES,
    ObjectState,
    clip_audio,
    encode_audio,
    encode_mp4,
    render_frame,
    speak,
)
from pipelines.schema import CLASSES, SampleMeta
from pipelines.shards import Sample, ShardWriter

log = logging.getLogger(__name__)

# Names for ``names = "stream"``: single words that differ in their first sounds,
# so a short clip of any of them is distinguishable from the others.
NAME_WORDS: tuple[str, ...] = (
    "apple", "banjo", "candle", "dolphin", "engine", "falcon", "garden", "hammer",
    "igloo", "jacket", "kettle", "lemon", "magnet", "needle", "orange", "pepper",
    "quilt", "rocket", "saddle", "tiger", "umbrella", "violin", "walrus", "yogurt",
    "zebra", "anchor", "bottle", "cactus", "donkey", "feather", "guitar", "helmet",
    "island", "jungle", "koala", "ladder", "mitten", "noodle", "otter", "pillow",
    "rabbit", "salmon", "tulip", "velvet", "window", "button", "cherry", "dragon",
    "eagle", "forest", "goblet", "harbor", "jelly", "lantern", "mango", "napkin",
    "oyster", "parrot", "ribbon", "spider", "turtle", "wagon", "bucket", "pirate",
)
NAMES = ("class", "stream")
LAYOUTS = ("free", "episodes")


@dataclass
class SyntheticConfig:
    """What ``obs make-shards --synthetic`` generates.

    Attributes:
        streams: number of streams.
        clips_per_stream: clips in each stream.
        frames: video frames per clip.
        image_size: frame width and height in pixels (even).
        fps: frames per second (a clip lasts frames / fps seconds).
        classes: how many of the object classes to use (the first ones).
        continuous_fraction: share of streams that are continuous.
        scene_clips: clips one scene lasts in a continuous stream.
        query_fraction: chance that a clip (after the first) is a query.
        audio_format: ``flac`` or ``wav``.
        names: ``class`` (speak the class name) or ``stream`` (each stream's own
            random words from :data:`NAME_WORDS`).
        layout: ``free`` (study and query clips mixed at random) or ``episodes``.
        episode_objects: objects studied per episode (one drawn per episode).
        episode_delays: distractor clips between study and queries (one drawn
            per episode).
        seed: everything is a function of it.
    """

    streams: int = 16
    clips_per_stream: int = 32
    frames: int = 8
    image_size: int = 64
    fps: float = 8.0
    classes: int = len(CLASSES)
    continuous_fraction: float = 0.5
    scene_clips: int = 4
    query_fraction: float = 0.25
    audio_format: str = "flac"
    names: str = "class"
    layout: str = "free"
    episode_objects: list[int] = field(default_factory=lambda: [16])
    episode_delays: list[int] = field(default_factory=lambda: [32])
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("streams", "clips_per_stream", "frames", "scene_clips"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.image_size < 16 or self.image_size % 2:
            raise ValueError(f"image_size must be an even number >= 16, got {self.image_size}")
        if self.fps <= 0:
            raise ValueError(f"fps must be > 0, got {self.fps}")
        if not 1 <= self.classes <= len(CLASSES):
            raise ValueError(f"classes must be in [1, {len(CLASSES)}], got {self.classes}")
        for name in ("continuous_fraction", "query_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.audio_format not in ("flac", "wav"):
            raise ValueError(f"audio_format must be flac or wav, got {self.audio_format!r}")
        if self.names not in NAMES:
            raise ValueError(f"names must be one of {list(NAMES)}, got {self.names!r}")
        if self.names == "stream" and self.classes > len(NAME_WORDS):
            raise ValueError(f"names = 'stream' has {len(NAME_WORDS)} words for at most as "
                             f"many classes, got classes = {self.classes}")
        if self.layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {list(LAYOUTS)}, got {self.layout!r}")
        if not self.episode_objects or not self.episode_delays:
            raise ValueError("episode_objects and episode_delays need at least one value")
        if self.layout == "episodes":
            # Distractors are objects not studied in the episode, so some must be left.
            spare = 1 if any(d > 0 for d in self.episode_delays) else 0
            for n in self.episode_objects:
                if not 1 <= n <= self.classes - spare:
                    raise ValueError(f"episode_objects values must be in [1, classes - {spare}"
                                     f" = {self.classes - spare}], got {n}")
        if any(d < 0 for d in self.episode_delays):
            raise ValueError(f"episode_delays must be >= 0, got {self.episode_delays}")

    @property
    def clip_seconds(self) -> float:
        """Duration of one clip."""
        return self.frames / self.fps


def stream_name(i: int) -> str:
    """Name of synthetic stream ``i``."""
    return f"syn{i:05d}"


def _stream_kinds(cfg: SyntheticConfig) -> list[str]:
    n_cont = int(round(cfg.continuous_fraction * cfg.streams))
    kinds = ["continuous"] * n_cont + ["discrete"] * (cfg.streams - n_cont)
    order = np.random.default_rng([cfg.seed, 7]).permutation(cfg.streams)
    return [kinds[j] for j in order]


def stream_words(cfg: SyntheticConfig, i: int) -> list[str]:
    """What stream ``i`` calls each class (index = class id)."""
    if cfg.names == "class":
        return list(CLASSES[:cfg.classes])
    rng = np.random.default_rng([cfg.seed, i, 11])
    pick = rng.permutation(len(NAME_WORDS))[:cfg.classes]
    return [NAME_WORDS[j] for j in pick]


def generate_stream(cfg: SyntheticConfig, i: int, kind: str) -> Iterator[Sample]:
    """The clips of stream ``i`` in order (deterministic in ``cfg.seed`` and ``i``)."""
    if cfg.layout == "episodes":
        yield from _episode_stream(cfg, i, kind)
        return
    rng = np.random.default_rng([cfg.seed, i])
    name = stream_name(i)
    voice = VOICES[int(rng.integers(len(VOICES)))]
    words = stream_words(cfg, i)
    seen: list[int] = []
    state: ObjectState | None = None
    scene_left = 0
    for index in range(cfg.clips_per_stream):
        if seen and rng.random() < cfg.query_fraction:
            target = seen[int(rng.integers(len(seen)))]
            yield _query_clip(cfg, name, index, kind, target, words[target], voice, rng)
            continue
        new_scene = state is None or kind == "discrete" or scene_left == 0
        if new_scene:
            state = ObjectState.random(int(rng.integers(cfg.classes)), cfg.image_size, rng)
            scene_left = cfg.scene_clips
        assert state is not None
        scene_left -= 1
        frames = _render(cfg, state, rng)
        # A continuous scene names its object when it appears, then now and then.
        spoken = new_scene or rng.random() < 0.3
        seen.append(state.class_id)
        yield _study_clip(cfg, name, index, kind, state.class_id, frames,
                          words[state.class_id] if spoken else None, voice, rng)


def _episode_stream(cfg: SyntheticConfig, i: int, kind: str) -> Iterator[Sample]:
    """``layout = "episodes"``: study n named objects, d distractors, n queries; repeat."""
    rng = np.random.default_rng([cfg.seed, i])
    name = stream_name(i)
    voice = VOICES[int(rng.integers(len(VOICES)))]
    words = stream_words(cfg, i)
    index = 0
    while index < cfg.clips_per_stream:
        n = cfg.episode_objects[int(rng.integers(len(cfg.episode_objects)))]
        delay = cfg.episode_delays[int(rng.integers(len(cfg.episode_delays)))]
        order = rng.permutation(cfg.classes)
        studied, others = [int(c) for c in order[:n]], [int(c) for c in order[n:]]
        plan: list[tuple[str, int]] = [("study", c) for c in studied]
        plan += [("distractor", others[int(rng.integers(len(others)))]) for _ in range(delay)]
        plan += [("query", studied[int(j)]) for j in rng.permutation(n)]
        for what, cls in plan:
            if index >= cfg.clips_per_stream:
                return
            if what == "query":
                yield _query_clip(cfg, name, index, kind, cls, words[cls], voice, rng)
            else:
                frames = _render(cfg, ObjectState.random(cls, cfg.image_size, rng), rng)
                word = words[cls] if what == "study" else None
                yield _study_clip(cfg, name, index, kind, cls, frames, word, voice, rng,
                                  with_audio=what == "study")
            index += 1


def _query_clip(cfg: SyntheticConfig, stream: str, index: int, kind: str, target: int,
                word: str, voice: str, rng: np.random.Generator) -> Sample:
    """An audio-only clip saying ``word``; the label is the object it names."""
    seconds = cfg.clip_seconds
    speech = _say(word, voice, rng, seconds)
    meta = SampleMeta(stream, index, index * seconds, seconds, kind,
                      {"object": CLASSES[target], "word": word}, "query")
    audio = clip_audio(seconds, speech, rng)
    return Sample(meta, {cfg.audio_format: encode_audio(audio, cfg.audio_format)})


def _render(cfg: SyntheticConfig, state: ObjectState, rng: np.random.Generator) -> np.ndarray:
    """``cfg.frames`` frames of ``state``'s object moving: ``[F, H, W, 3]`` uint8."""
    frames = []
    for _ in range(cfg.frames):
        frames.append(render_frame(state, cfg.image_size, rng))
        state.step(cfg.image_size)
    return np.stack(frames)


def _study_clip(cfg: SyntheticConfig, stream: str, index: int, kind: str, class_id: int,
                frames: np.ndarray, word: str | None, voice: str, rng: np.random.Generator,
                with_audio: bool = True) -> Sample:
    """A video clip of object ``class_id``, with ``word`` spoken (or not) in its audio."""
    seconds = cfg.clip_seconds
    members: dict[str, bytes | Path] = {"mp4": encode_mp4(frames, cfg.fps)}
    if with_audio:
        speech = _say(word, voice, rng, seconds) if word is not None else None
        members[cfg.audio_format] = encode_audio(clip_audio(seconds, speech, rng),
                                                 cfg.audio_format)
    meta = SampleMeta(stream, index, index * seconds, seconds, kind,
                      {"object": CLASSES[class_id], "word": word}, "study")
    return Sample(meta, members)


def _say(word: str, voice: str, rng: np.random.Generator, seconds: float) -> np.ndarray:
    speed = SPEEDS[int(rng.integers(len(SPEEDS)))]
    return speak(word, voice, speed, max_seconds=0.9 * seconds)


def write_synthetic(out: str, cfg: SyntheticConfig, *, target_bytes: int = 4 << 20,
                    endpoint_url: str | None = None, overwrite: bool = False,
                    progress: bool = True) -> dict[str, object]:
    """Generate ``cfg.streams`` streams into shards at ``out`` (a path or ``s3://`` URL).

    Returns:
        The shard index written next to the shards.
    """
    kinds = _stream_kinds(cfg)
    total = cfg.streams * cfg.clips_per_stream
    with ShardWriter(out, target_bytes=target_bytes, endpoint_url=endpoint_url,
                     overwrite=overwrite) as writer, \
            tqdm(total=total, desc="synthetic clips", unit="clip", disable=not progress) as bar:
        for i in range(cfg.streams):
            clips = []
            for sample in generate_stream(cfg, i, kinds[i]):
                clips.append(sample)
                bar.update(1)
            writer.write_stream(clips)
    log.info("wrote %d clips of %d streams in %d shards to %s", writer.samples,
             len(writer.streams), len(writer.shards), out)
    return {"samples": writer.samples, "streams": len(writer.streams),
            "shards": list(writer.shards)}
