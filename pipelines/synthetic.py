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
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass

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


def generate_stream(cfg: SyntheticConfig, i: int, kind: str) -> Iterator[Sample]:
    """The clips of stream ``i`` in order (deterministic in ``cfg.seed`` and ``i``)."""
    rng = np.random.default_rng([cfg.seed, i])
    name = stream_name(i)
    voice = VOICES[int(rng.integers(len(VOICES)))]
    seconds = cfg.clip_seconds
    seen: list[int] = []
    state: ObjectState | None = None
    scene_left = 0
    for index in range(cfg.clips_per_stream):
        if seen and rng.random() < cfg.query_fraction:
            target = seen[int(rng.integers(len(seen)))]
            word = CLASSES[target]
            speech = _say(word, voice, rng, seconds)
            meta = SampleMeta(name, index, index * seconds, seconds, kind,
                              {"object": word, "word": word}, "query")
            audio = clip_audio(seconds, speech, rng)
            yield Sample(meta, {cfg.audio_format: encode_audio(audio, cfg.audio_format)})
            continue
        new_scene = state is None or kind == "discrete" or scene_left == 0
        if new_scene:
            state = ObjectState.random(int(rng.integers(cfg.classes)), cfg.image_size, rng)
            scene_left = cfg.scene_clips
        assert state is not None
        scene_left -= 1
        frames = []
        for _ in range(cfg.frames):
            frames.append(render_frame(state, cfg.image_size, rng))
            state.step(cfg.image_size)
        obj = CLASSES[state.class_id]
        # A continuous scene names its object when it appears, then now and then.
        spoken = new_scene or rng.random() < 0.3
        speech = _say(obj, voice, rng, seconds) if spoken else None
        seen.append(state.class_id)
        meta = SampleMeta(name, index, index * seconds, seconds, kind,
                          {"object": obj, "word": obj if spoken else None}, "study")
        audio = clip_audio(seconds, speech, rng)
        yield Sample(meta, {"mp4": encode_mp4(np.stack(frames), cfg.fps),
                            cfg.audio_format: encode_audio(audio, cfg.audio_format)})


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
