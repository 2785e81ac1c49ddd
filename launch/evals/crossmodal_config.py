"""The configuration of the cross-modal suite (``obs eval --task crossmodal``).

One dataclass for both data paths of :mod:`launch.evals.crossmodal`: the token
stand-in (``task``, the grid of objects and delays) and the real audio-visual
shards of :mod:`launch.evals.crossmodal_shards` (``shards*``, the recognizer
front ends of :mod:`launch.evals.front_ends`), plus the circuits drawn for OBS.
Every field is checked when the config is built, before any training.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from launch.evals.harness import SuiteConfig
from obs_dist.tasks.crossmodal import CrossmodalConfig


@dataclass
class CrossmodalSuiteConfig(SuiteConfig):
    """The cross-modal association suite.

    Attributes:
        task: the stand-in episodes (training distribution and pools).
        objects_grid: objects per episode scored (at delay ``primary[1]``).
        delays: delays scored (at ``primary[0]`` objects per episode).
        primary: ``[objects, delay]`` of the headline figure.
        shards: directory of audio-visual shards (empty: the token stand-in).
        shards_eval: held-out shards for the real-shard path (empty: other draws
            of ``shards``); must share ``shards``' classes.
        shards_window: clips per row of a real-shard batch.
        shards_workers: loader worker processes of the real-shard path.
        audio_words_steps: real-shard path: steps of training a word recognizer on
            the spoken words of the training shards; every model then hears words
            through it, frozen (:mod:`launch.evals.front_ends`). 0: the models'
            own audio encoders.
        audio_words_utterances: utterances gathered to train the recognizer.
        audio_words_temperature: temperature of the recognizer's posterior.
        video_objects_steps: real-shard path: steps of training an object recognizer
            on the object labels of the training shards' video clips; every model
            then sees objects through it, frozen. 0: the models' own video encoders.
        video_objects_clips: video clips gathered to train the object recognizer.
        video_objects_temperature: temperature of its posterior.
        circuits_objects: objects whose word→object circuits are drawn (OBS).
        circuits_exposures: batches of fixed-name episodes committed before drawing.
    """

    task: CrossmodalConfig = field(default_factory=lambda: CrossmodalConfig(
        train_per_episode=[4, 8, 16], train_max_delay=48))
    objects_grid: list[int] = field(default_factory=lambda: [4, 8, 16, 32])
    delays: list[int] = field(default_factory=lambda: [0, 8, 16, 32, 64])
    primary: list[int] = field(default_factory=lambda: [16, 32])
    shards: str = ""
    shards_eval: str = ""
    shards_window: int = 32
    shards_workers: int = 0
    audio_words_steps: int = 0
    audio_words_utterances: int = 32768
    audio_words_temperature: float = 0.05
    video_objects_steps: int = 0
    video_objects_clips: int = 32768
    video_objects_temperature: float = 0.05
    circuits_objects: int = 16
    circuits_exposures: int = 8

    def __post_init__(self) -> None:
        super().__post_init__()
        if len(self.primary) != 2:
            raise ValueError(f"primary must be [objects, delay], got {self.primary}")
        for n in [*self.objects_grid, self.primary[0]]:
            dataclasses.replace(self.task, per_episode=n)  # validated there
        if any(d < 0 for d in [*self.delays, self.primary[1]]):
            raise ValueError(f"delays must be >= 0, got {self.delays}")
        if not 1 <= self.circuits_objects <= min(self.task.objects, self.task.words):
            raise ValueError(f"circuits_objects must be in [1, min(task.objects, task.words)]"
                             f", got {self.circuits_objects}")
        if self.circuits_exposures < 0:
            raise ValueError(f"circuits_exposures must be >= 0, got {self.circuits_exposures}")
        if self.shards_eval and not self.shards:
            raise ValueError("shards_eval needs shards (the training shards) set too")
        if self.shards_window < 2 or self.shards_workers < 0:
            raise ValueError("shards_window must be >= 2 and shards_workers >= 0")
        if self.audio_words_steps < 0 or self.audio_words_utterances < 10:
            raise ValueError("audio_words_steps must be >= 0 and audio_words_utterances >= 10")
        if self.video_objects_steps < 0 or self.video_objects_clips < 10:
            raise ValueError("video_objects_steps must be >= 0 and video_objects_clips >= 10")
        for key in ("audio_words_temperature", "video_objects_temperature"):
            if getattr(self, key) <= 0:
                raise ValueError(f"{key} must be > 0, got {getattr(self, key)}")
        for key in ("audio_words_steps", "video_objects_steps"):
            if getattr(self, key) and not self.shards:
                raise ValueError(f"{key} needs shards (the real-shard path)")
