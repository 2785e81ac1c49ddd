"""Long synthetic audio-visual recordings: a stand-in for a child's head-camera footage.

``obs make-recordings`` writes, per recording ``rec_XXX``:

* ``rec_XXX.mp4``: one file with the video (H.264, else mpeg4) and a mono AAC
  soundtrack, as a user's own recording would be;
* ``rec_XXX.srt``: what the narrator said, when;
* ``rec_XXX.objects.json``: ``[{"start": s, "end": s, "object": class name}, ...]``,
  which object is in view when (one entry per object and stay).

A recording is a run of scenes of ``scene_seconds`` (default 8–30 s) drawn by
:mod:`pipelines.recording_media`: each with its own background, camera motion
and light, and 0, 1 or 2 objects that come and go. It uses
``objects_per_recording`` of the classes, each recurring across scenes. A
narrator (espeak-ng, one main voice per recording, speed and pitch varying per
utterance, now and then another voice) names an object in view every
``name_gap`` seconds of in-view time, or as it appears; the utterance starts
within ``name_tolerance`` seconds of a moment the object is in view (sometimes
just before it enters or after it leaves), alone ("dax") or in a carrier phrase
("look, the dax"). Fillers ("oh", "hmm", "what's that?") are said now and then
and are in the transcript; non-speech sounds are not. With ``names = "class"``
the name is the class name; with ``names = "recording"`` each recording names
its objects with its own pseudo-words from :data:`PSEUDO_WORDS`. Recording i
is a pure function of ``(seed, i)``.
"""

from __future__ import annotations

import itertools
import json
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from pipelines.recording_media import (
    SOUND_KINDS,
    Scene,
    Visit,
    mix_in,
    render_scene,
    reverberate,
    room_noise,
    room_response,
    sound_event,
    write_av,
)
from pipelines.render import SAMPLE_RATE, _linear_resample, speak
from pipelines.schema import CLASSES

# espeak-ng voices with distinct sounds (accents × variants; "en-gb+…" ignores its variant).
RECORDING_VOICES: tuple[str, ...] = (
    "en-us+f3", "en+f2", "en+Andy", "en-us+m3", "en-gb-scotland+f4", "en-029+m2",
    "en-gb-x-rp+f2", "en-us-nyc+m5", "en-gb-x-gbclan+f5", "en-gb-x-gbcwmd+m7",
    "en-us+aunty", "en-us+klatt4", "en-us+grandma", "en-us+max", "en-gb-x-rp+Andy",
    "en-029+f5",
)
CARRIERS: tuple[str, ...] = (
    "look, the {}", "a {}", "the {}", "see the {}", "there's the {}", "that's a {}",
    "it's a {}", "look at the {}", "where's the {}?", "here's the {}", "oh, a {}", "{}!",
    "{}, {}", "wow, a {}", "can you see the {}?",
)
FILLERS: tuple[str, ...] = (
    "oh", "hmm", "wow", "okay", "uh oh", "yes", "mm-hm", "what's that?", "there we go",
    "all gone", "look", "good job", "oops", "hello",
)
NAMES = ("class", "recording")
SAMPLE_RATES = (16000, 22050)
_CURATED = (
    "dax", "blicket", "toma", "wug", "fep", "modi", "kiki", "zorb", "gazzer", "tulver",
    "pimwit", "sibu", "nefa", "loka", "ruvo", "daffin", "zib", "mog", "tiv", "gorp", "vak",
    "jeb", "hoon", "koba", "pilo", "rasu", "meeka", "fendle", "tufa", "zeppo", "lirk",
    "bexa", "dorvi", "yoma", "teebu", "nork", "plok", "snurp", "wabby", "chup",
)


def _pseudo_words() -> tuple[str, ...]:
    """Curated nonce words, then every CVC and CVCV word of a plain alphabet (sorted)."""
    cons, final = "bdfgklmnprstvz", "bdgklmnpstxz"
    taken = {w for text in CLASSES + CARRIERS + FILLERS for w in text.replace("{}", " ")
             .replace(",", " ").replace("?", " ").replace("!", " ").split()}
    made = ["".join(p) for p in itertools.product(cons, "aeiou", final)]
    made += ["".join(p) for p in itertools.product(cons, "aeiou", cons, "aiou")]
    words = list(_CURATED) + [w for w in made if w not in _CURATED]
    return tuple(w for w in words if w not in taken)


PSEUDO_WORDS: tuple[str, ...] = _pseudo_words()


def _pair(value: Any, name: str) -> tuple[float, float]:
    lo, hi = (float(x) for x in value)
    if not 0 < lo <= hi:
        raise ValueError(f"{name} must be two numbers 0 < lo <= hi, got {list(value)}")
    return lo, hi


@dataclass
class RecordingConfig:
    """What ``obs make-recordings`` generates.

    Attributes:
        recordings: number of recordings.
        seconds: length of each.
        names: ``class`` (say the class name) or ``recording`` (per-recording pseudo-words).
        seed: recording i is a function of (seed, i).
        size: frame width and height (even).
        fps: frames per second (an integer).
        objects_per_recording: classes one recording shows.
        classes: the recording's objects are drawn from ``classes`` classes, starting
            at class ``first_class``.
        first_class: the first class drawn from (a held-out set of objects never seen
            in training: e.g. train on classes 0–23, test on ``first_class = 24``).
        scene_seconds: (min, max) length of a scene.
        name_gap: (min, max) seconds of in-view time between two namings.
        name_tolerance: an utterance starts at most this far from a moment its object
            is in view.
        carrier_fraction: share of namings said in a carrier phrase ("look, the dax").
        filler_rate: fillers ("oh", "hmm") per minute.
        sound_rate: non-speech sounds (hum, click, knock, rustle, squeak) per minute.
        sample_rate: audio rate, 16000 or 22050.
        voices: espeak-ng voices; each recording's main voice is one of them.
        other_voice_fraction: share of utterances said by another of ``voices``.
    """

    recordings: int = 16
    seconds: float = 300.0
    names: str = "class"
    seed: int = 0
    size: int = 64
    fps: int = 8
    objects_per_recording: int = 8
    classes: int = len(CLASSES)
    first_class: int = 0
    scene_seconds: tuple[float, float] = (8.0, 30.0)
    name_gap: tuple[float, float] = (3.0, 10.0)
    name_tolerance: float = 1.5
    carrier_fraction: float = 0.5
    filler_rate: float = 1.0
    sound_rate: float = 3.0
    sample_rate: int = 16000
    voices: tuple[str, ...] = RECORDING_VOICES
    other_voice_fraction: float = 0.1

    def __post_init__(self) -> None:
        if self.recordings < 1:
            raise ValueError(f"recordings must be >= 1, got {self.recordings}")
        if self.seconds < 1:
            raise ValueError(f"seconds must be >= 1, got {self.seconds}")
        if self.names not in NAMES:
            raise ValueError(f"names must be one of {list(NAMES)}, got {self.names!r}")
        if self.size < 16 or self.size % 2:
            raise ValueError(f"size must be an even number >= 16, got {self.size}")
        if int(self.fps) != self.fps or not 1 <= self.fps <= 60:
            raise ValueError(f"fps must be an integer in [1, 60], got {self.fps}")
        if not 1 <= self.classes <= len(CLASSES):
            raise ValueError(f"classes must be in [1, {len(CLASSES)}], got {self.classes}")
        if not 0 <= self.first_class <= len(CLASSES) - self.classes:
            raise ValueError(f"first_class + classes must be at most {len(CLASSES)} (the "
                             f"classes there are), got first_class = {self.first_class} "
                             f"with classes = {self.classes}")
        if not 1 <= self.objects_per_recording <= self.classes:
            raise ValueError(f"objects_per_recording must be in [1, classes = {self.classes}]"
                             f", got {self.objects_per_recording}")
        self.scene_seconds = _pair(self.scene_seconds, "scene_seconds")
        self.name_gap = _pair(self.name_gap, "name_gap")
        if not 0 <= self.name_tolerance <= 10:
            raise ValueError(f"name_tolerance must be in [0, 10], got {self.name_tolerance}")
        for name in ("carrier_fraction", "other_voice_fraction"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        for name in ("filler_rate", "sound_rate"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.sample_rate not in SAMPLE_RATES:
            raise ValueError(f"sample_rate must be one of {list(SAMPLE_RATES)}, "
                             f"got {self.sample_rate}")
        self.voices = tuple(self.voices)
        if not self.voices:
            raise ValueError("voices must name at least one espeak-ng voice")


@dataclass
class Utterance:
    """One thing the narrator said: ``[start, end)`` seconds, its text and what it names."""

    start: float
    end: float
    text: str
    object: str | None
    voice: str
    wave: np.ndarray = field(repr=False)


@dataclass
class Recording:
    """A generated recording before encoding (see :func:`generate_recording`)."""

    name: str
    frames: np.ndarray
    audio: np.ndarray
    utterances: list[Utterance]
    sounds: list[tuple[float, float, str]]
    in_view: list[tuple[float, float, str]]
    words: dict[str, str]
    voice: str


def recording_name(i: int) -> str:
    """File stem of recording ``i``."""
    return f"rec_{i:03d}"


def recording_words(cfg: RecordingConfig, i: int) -> dict[int, str]:
    """Recording ``i``'s objects (class ids) and what the narrator calls each."""
    rng = np.random.default_rng([cfg.seed, i, 0])
    objects = sorted(cfg.first_class + int(c)
                     for c in rng.permutation(cfg.classes)[:cfg.objects_per_recording])
    if cfg.names == "class":
        return {c: CLASSES[c] for c in objects}
    words: list[str] = []
    for j in rng.permutation(len(PSEUDO_WORDS)):  # distinct first sounds within a recording
        word = PSEUDO_WORDS[int(j)]
        if all(word[:2] != w[:2] for w in words):
            words.append(word)
        if len(words) == len(objects):
            break
    return dict(zip(objects, words))


def plan_scenes(cfg: RecordingConfig, i: int, objects: list[int]) -> list[Scene]:
    """Recording ``i`` cut into scenes, each with 0–2 objects that come and go."""
    rng = np.random.default_rng([cfg.seed, i, 1])
    total = int(round(cfg.seconds * cfg.fps))
    lo, hi = (int(round(s * cfg.fps)) for s in cfg.scene_seconds)
    deck: list[int] = []
    scenes: list[Scene] = []
    start = 0
    while start < total:
        length = int(rng.integers(lo, hi + 1))
        if total - (start + length) < lo:
            length = total - start
        stop = start + length
        picked: list[int] = []
        for _ in range(int(rng.choice(3, p=(0.15, 0.55, 0.30)))):
            if not deck:  # every object once before any twice: names recur
                deck = [objects[int(j)] for j in rng.permutation(len(objects))]
            if deck[-1] not in picked:
                picked.append(deck.pop())
        visits: list[Visit] = []
        for cls in picked:
            visits += _visits(cfg, cls, start, stop, rng)
        scenes.append(Scene(start, stop, [cfg.seed, i, 2, len(scenes)], visits))
        start = stop
    return scenes


def _visits(cfg: RecordingConfig, cls: int, start: int, stop: int,
            rng: np.random.Generator) -> list[Visit]:
    """The stays of object ``cls`` in scene [start, stop): in from the cut or later, maybe twice."""
    fps, length = cfg.fps, stop - start
    shortest = int(2.5 * fps)
    a = start if rng.random() < 0.4 else start + int(rng.integers(0, int(0.4 * length) + 1))
    b = stop if rng.random() < 0.4 else stop - int(rng.integers(0, int(0.4 * length) + 1))
    if b - a < shortest:
        a, b = start, stop
    spans = [(a, b)]
    gap = int(rng.uniform(1.5, 5.0) * fps)
    if b - a >= 2 * shortest + gap and rng.random() < 0.35:  # goes away and comes back
        m = int(rng.integers(a + shortest, b - shortest - gap + 1))
        spans = [(a, m), (m + gap, b)]
    return [Visit.random(cls, s, e, enters=s > start, leaves=e < stop, size=cfg.size,
                         fps=fps, rng=rng) for s, e in spans]


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """Runs of True in a bool vector as (first, stop) index pairs."""
    edges = np.flatnonzero(np.diff(np.concatenate([[0], mask.astype(np.int8), [0]])))
    return [(int(s), int(e)) for s, e in zip(edges[::2], edges[1::2])]


def _distance(t: float, spans: list[tuple[float, float]]) -> float:
    """Seconds from ``t`` to the nearest of ``spans`` (0 inside one)."""
    return min((max(s - t, 0.0, t - e) for s, e in spans), default=float("inf"))


class _Narrator:
    """Says things in a recording's voice: speed and pitch vary, now and then another voice."""

    def __init__(self, cfg: RecordingConfig, rng: np.random.Generator) -> None:
        self.cfg, self.rng = cfg, rng
        self.voice = cfg.voices[int(rng.integers(len(cfg.voices)))]
        self.speed = rng.uniform(140, 220)
        self.pitch = rng.uniform(30, 75)

    def say(self, text: str, start: float, obj: str | None) -> Utterance:
        rng = self.rng
        voice = self.voice
        if len(self.cfg.voices) > 1 and rng.random() < self.cfg.other_voice_fraction:
            voice = self.cfg.voices[int(rng.integers(len(self.cfg.voices)))]
        speed = int(np.clip(round((self.speed + rng.normal(0, 20)) / 10) * 10, 110, 280))
        pitch = int(np.clip(round((self.pitch + rng.normal(0, 10)) / 5) * 5, 10, 95))
        wave = speak(text, voice, speed, max_seconds=4.0, pitch=pitch)
        return Utterance(start, start + len(wave) / SAMPLE_RATE, text, obj, voice, wave)


def plan_speech(cfg: RecordingConfig, i: int, in_view: dict[int, list[tuple[float, float]]],
                visible: dict[int, np.ndarray], words: dict[int, str]
                ) -> tuple[list[Utterance], str]:
    """What the narrator says when: namings near the objects in view, then fillers.

    Args:
        cfg: the configuration.
        i: the recording.
        in_view: class id → in-view spans in seconds.
        visible: class id → per-frame visibility.
        words: class id → the name said for it.

    Returns:
        The utterances in time order and the recording's main voice.
    """
    rng = np.random.default_rng([cfg.seed, i, 3])
    narrator = _Narrator(cfg, rng)
    ids = sorted(visible)
    vis = np.stack([visible[c] for c in ids], axis=1)
    tol = cfg.name_tolerance
    said: list[Utterance] = []
    free_from, budget = 0.0, rng.uniform(*cfg.name_gap)
    previous = np.zeros(len(ids), bool)
    for f in range(len(vis)):
        now, t = vis[f], f / cfg.fps
        entering = np.flatnonzero(now & ~previous)
        previous = now
        if entering.size and rng.random() < 0.5:  # named as it appears
            k, moment = int(rng.choice(entering)), t + rng.uniform(0.0, 1.0)
        elif now.any():
            budget -= 1.0 / cfg.fps
            if budget > 0:
                continue
            k, moment = int(rng.choice(np.flatnonzero(now))), t
        else:
            continue
        cls = ids[k]
        onset = max(free_from, moment + float(np.clip(rng.normal(0.0, tol / 2.5), -tol, tol)))
        if _distance(onset, in_view[cls]) > max(0.0, tol - 0.01) or onset >= cfg.seconds:
            continue
        word = words[cls]
        text = word
        if rng.random() < cfg.carrier_fraction:
            text = CARRIERS[int(rng.integers(len(CARRIERS)))].format(word, word)
        u = narrator.say(text, round(onset, 3), CLASSES[cls])
        if u.end > cfg.seconds:
            continue
        said.append(u)
        free_from, budget = u.end + 0.4, rng.uniform(*cfg.name_gap)
    for start in np.sort(rng.uniform(0, cfg.seconds, size=rng.poisson(
            cfg.filler_rate * cfg.seconds / 60))):
        u = narrator.say(FILLERS[int(rng.integers(len(FILLERS)))], round(float(start), 3), None)
        if u.end <= cfg.seconds and all(u.end + 0.5 <= o.start or o.end + 0.5 <= u.start
                                        for o in said):
            said.append(u)
    return sorted(said, key=lambda u: u.start), narrator.voice


def _soundtrack(cfg: RecordingConfig, i: int, scenes: list[Scene],
                said: list[Utterance]) -> tuple[np.ndarray, list[tuple[float, float, str]]]:
    """Room noise, reverberant speech and non-speech sounds (away from the speech)."""
    rng = np.random.default_rng([cfg.seed, i, 4])
    rate = cfg.sample_rate
    track = room_noise(rng, cfg.seconds, rate, [s.start / cfg.fps for s in scenes[1:]])
    room = room_response(rng, rate)
    for u in said:
        wave = u.wave if rate == SAMPLE_RATE else _linear_resample(
            u.wave, int(round(len(u.wave) * rate / SAMPLE_RATE)))
        mix_in(track, reverberate(wave, room) * rng.uniform(0.6, 1.2), u.start, rate)
    sounds: list[tuple[float, float, str]] = []
    for start in np.sort(rng.uniform(0, cfg.seconds, size=rng.poisson(
            cfg.sound_rate * cfg.seconds / 60))):
        kind = SOUND_KINDS[int(rng.integers(len(SOUND_KINDS)))]
        wave = sound_event(kind, rng, rate) * rng.uniform(0.3, 1.0)
        span = (round(float(start), 3), round(float(start) + len(wave) / rate, 3), kind)
        if span[1] <= cfg.seconds and all(span[1] + 0.2 <= o[0] or o[1] + 0.2 <= span[0]
                                          for o in [(u.start, u.end) for u in said] + sounds):
            mix_in(track, wave, span[0], rate)
            sounds.append(span)
    return np.clip(track, -1.0, 1.0), sounds


def generate_recording(cfg: RecordingConfig, i: int) -> Recording:
    """Recording ``i``: frames, soundtrack and what was said and seen when."""
    words = recording_words(cfg, i)
    scenes = plan_scenes(cfg, i, list(words))
    total = int(round(cfg.seconds * cfg.fps))
    frames = np.empty((total, cfg.size, cfg.size, 3), np.uint8)
    visible = {c: np.zeros(total, bool) for c in words}
    for scene in scenes:
        frames[scene.start: scene.stop], seen = render_scene(scene, cfg.size, cfg.fps)
        for k, visit in enumerate(scene.visits):
            visible[visit.class_id][scene.start: scene.stop] |= seen[:, k]
    spans = {c: [(s / cfg.fps, e / cfg.fps) for s, e in _runs(v)] for c, v in visible.items()}
    said, voice = plan_speech(cfg, i, spans, visible, words)
    audio, sounds = _soundtrack(cfg, i, scenes, said)
    in_view = sorted((round(s, 3), round(e, 3), CLASSES[c]) for c, v in spans.items()
                     for s, e in v)
    return Recording(recording_name(i), frames, audio, said, sounds, in_view,
                     {CLASSES[c]: w for c, w in words.items()}, voice)


def _srt_time(seconds: float) -> str:
    ms = int(round(seconds * 1000))
    h, rest = divmod(ms, 3_600_000)
    m, rest = divmod(rest, 60_000)
    s, ms = divmod(rest, 1000)
    return f"{h:02d}:{m:02d}:{s:02d},{ms:03d}"


def to_srt(utterances: list[Utterance]) -> str:
    """SubRip text of the utterances (numbered cues, ``HH:MM:SS,mmm`` times)."""
    cues = [f"{n}\n{_srt_time(u.start)} --> {_srt_time(u.end)}\n{u.text}\n"
            for n, u in enumerate(utterances, 1)]
    return "\n".join(cues)


def to_objects_json(in_view: list[tuple[float, float, str]]) -> str:
    """The ``objects.json`` text: which object is in view when."""
    return json.dumps([{"start": s, "end": e, "object": o} for s, e, o in in_view], indent=1)


def write_recording(cfg: RecordingConfig, i: int, out: str | Path) -> dict[str, Any]:
    """Generate recording ``i`` and write its mp4, srt and objects.json under ``out``.

    Returns:
        Its summary: name, seconds, utterances, namings, fillers, sounds, objects
        (class names), words (class → name said), voice, bytes.
    """
    rec = generate_recording(cfg, i)
    base = Path(out) / rec.name
    write_av(f"{base}.mp4", rec.frames, cfg.fps, rec.audio, cfg.sample_rate)
    Path(f"{base}.srt").write_text(to_srt(rec.utterances), encoding="utf-8")
    Path(f"{base}.objects.json").write_text(to_objects_json(rec.in_view), encoding="utf-8")
    namings = sum(u.object is not None for u in rec.utterances)
    size = sum(Path(f"{base}{ext}").stat().st_size for ext in (".mp4", ".srt", ".objects.json"))
    return {"name": rec.name, "seconds": len(rec.frames) / cfg.fps,
            "utterances": len(rec.utterances), "namings": namings,
            "fillers": len(rec.utterances) - namings, "sounds": len(rec.sounds),
            "objects": sorted(rec.words), "words": rec.words, "voice": rec.voice, "bytes": size}


def _job(args: tuple[RecordingConfig, int, str]) -> dict[str, Any]:
    return write_recording(*args)


def write_recordings(out: str | Path, cfg: RecordingConfig, *, workers: int = 1,
                     overwrite: bool = False, progress: bool = True) -> dict[str, Any]:
    """Write ``cfg.recordings`` recordings into the folder ``out``.

    Args:
        out: output folder (created).
        cfg: what to generate.
        workers: processes generating recordings side by side (the output does not
            depend on it).
        overwrite: replace recordings already there.
        progress: show a tqdm bar (recorded seconds per second).

    Returns:
        ``{"out", "recordings": [summary per recording], "seconds", "bytes"}``.

    Raises:
        ValueError: naming ``workers`` or a file already at ``out``.
    """
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    if not overwrite:
        for i in range(cfg.recordings):
            for ext in (".mp4", ".srt", ".objects.json"):
                if (folder / f"{recording_name(i)}{ext}").exists():
                    raise ValueError(f"out {str(folder)!r} already has {recording_name(i)}{ext}"
                                     " (--overwrite or overwrite=True replaces it)")
    start = time.perf_counter()
    jobs = [(cfg, i, str(folder)) for i in range(cfg.recordings)]
    summaries: list[dict[str, Any]] = []
    with tqdm(total=cfg.recordings * cfg.seconds, unit="s", desc="recordings",
              disable=not progress, bar_format="{desc}{percentage:3.0f}%|{bar}| "
              "{n:.0f}/{total:.0f} s [{elapsed}<{remaining}, {rate_fmt}]") as bar:
        if workers == 1:
            results = map(_job, jobs)
        else:
            pool = ProcessPoolExecutor(max_workers=workers)
            results = pool.map(_job, jobs)
        try:
            for summary in results:
                summaries.append(summary)
                bar.set_description(f"recordings {len(summaries)}/{cfg.recordings}")
                bar.update(summary["seconds"])
        finally:
            if workers > 1:
                pool.shutdown(cancel_futures=True)
    return {"out": str(folder), "recordings": summaries,
            "seconds": round(time.perf_counter() - start, 2),
            "bytes": sum(s["bytes"] for s in summaries)}
