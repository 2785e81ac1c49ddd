"""Timed labels beside a recording: transcripts (words) and object annotations.

A recording ``rec.mp4`` may have, in the same folder:

* a transcript ``rec.srt``, ``rec.vtt`` or ``rec.transcript.json`` (a JSON list
  of ``{"start": s, "end": s, "text": str}``, or the object Whisper and WhisperX
  write, whose ``segments`` are such a list), which sets ``labels.word``;
* ``rec.objects.json`` (a JSON list of ``{"start": s, "end": s, "object": str}``),
  which sets ``labels.object``.

Each file becomes a list of :data:`Cue` ``(start, end, text)``. A clip
``[t0, t0 + clip_seconds)`` takes the text of the cue that overlaps it most
(overlap > 0; the earlier cue on a tie). Transcript text is normalised by
:func:`normalise_word` (stripped, lower-cased, punctuation removed); object
names are lower-cased with their spaces squeezed (:func:`normalise_object`: an
annotator's "Ball" and "ball " are one object). A file that cannot be parsed
raises ``ValueError``.
"""

from __future__ import annotations

import html
import json
import math
import re
import unicodedata
from pathlib import Path

Cue = tuple[float, float, str]

# File-name suffixes (after the recording's stem) of the timed-label files.
TRANSCRIPT_SUFFIXES = (".srt", ".vtt", ".transcript.json")
OBJECTS_SUFFIX = ".objects.json"
LABEL_JSON_STEMS = (".transcript", ".objects")  # "<stem>.transcript.json" etc.

_TIME = re.compile(r"^(?:(\d+):)?(\d{1,2}):(\d{1,2})[.,](\d{1,3})$")
_TIMING = re.compile(r"^\s*(\S+)\s+-->\s+(\S+)(?:\s.*)?$")
_TAG = re.compile(r"<[^>]*>")
# Camera telemetry written as subtitles (DJI drones and action cameras, dash cams):
# "FrameCnt: 1, DiffTime: 33ms", "[iso: 100] [shutter: 1/500.0] [latitude: 22.5]",
# "GPS(113.9,22.5,18) ISO:100 Shutter:60". Such a key followed by ':' '(' or '['
# and a number is not how anybody's speech is written down.
_TELEMETRY = re.compile(
    r"\b(framecnt|difftime|iso|shutter|fnum|f-num|ev|ct|focal_len|color_md|latitude|"
    r"longitude|rel_alt|abs_alt|altitude|gps|home|dzoom|speed|heading)\s*[:(\[=]\s*[-+]?\d",
    re.IGNORECASE)


class TelemetryTranscript(ValueError):
    """A subtitle file that holds camera telemetry (GPS, exposure), not speech."""


def is_telemetry(cues: list[Cue]) -> bool:
    """Whether most cues read as camera telemetry rather than words said.

    At least half of the cues must each hold two telemetry fields (``iso: 100``,
    ``latitude: 22.5``, ``FrameCnt: 1``): a transcript that mentions one such
    thing now and then stays a transcript.
    """
    if not cues:
        return False
    marked = sum(len(_TELEMETRY.findall(text)) >= 2 for _, _, text in cues)
    return 2 * marked >= len(cues)


def _seconds(text: str) -> float:
    """``[hh:]mm:ss,mmm`` (SRT) or ``[hh:]mm:ss.mmm`` (WebVTT) as seconds."""
    match = _TIME.match(text)
    if match is None:
        raise ValueError(f"bad timestamp {text!r} (want hh:mm:ss,mmm)")
    hours, minutes, secs, frac = match.groups()
    return (int(hours or 0) * 3600 + int(minutes) * 60 + int(secs)
            + int(frac.ljust(3, "0")) / 1000)


def _checked(start: float, end: float, where: str) -> tuple[float, float]:
    if not (math.isfinite(start) and math.isfinite(end)) or start < 0 or end < start:
        raise ValueError(f"{where}: need 0 <= start <= end, got {start} --> {end}")
    return start, end


def parse_subtitles(text: str) -> list[Cue]:
    """The cues of an SRT or WebVTT document (cue numbers, settings and tags ignored).

    Raises:
        ValueError: a cue block without a valid ``start --> end`` line, or a
            non-empty document with no cue.
    """
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    if lines and lines[0].startswith("WEBVTT"):  # drop the header block
        header = next((i for i, line in enumerate(lines) if not line.strip()), len(lines))
        lines = lines[header:]
    cues: list[Cue] = []
    block: list[tuple[int, str]] = []
    for number, line in enumerate([*lines, ""], start=1):
        if line.strip():
            block.append((number, line))
            continue
        if block:
            cues.extend(_subtitle_block(block))
            block = []
    if not cues and any(line.strip() for line in lines):
        raise ValueError("no cue found")
    return cues


def _subtitle_block(block: list[tuple[int, str]]) -> list[Cue]:
    """One blank-line separated block: a cue, or a WebVTT NOTE/STYLE/REGION block."""
    first = block[0][1].strip()
    if first.split(" ", 1)[0] in ("NOTE", "STYLE", "REGION"):
        return []
    timed = [i for i, (_n, line) in enumerate(block) if "-->" in line]
    if not timed or timed[0] > 1:
        raise ValueError(f"line {block[0][0]}: cue without a 'start --> end' line")
    number, line = block[timed[0]]
    match = _TIMING.match(line)
    if match is None:
        raise ValueError(f"line {number}: bad timing line {line.strip()!r}")
    start, end = _checked(_seconds(match.group(1)), _seconds(match.group(2)), f"line {number}")
    # Tags (<v Mum>, <c>, inline <00:01.500> timings) go, then entities (&amp;, &lt;).
    words = " ".join(html.unescape(_TAG.sub("", t)).strip() for _n, t in block[timed[0] + 1:])
    return [(start, end, words)]


def parse_json_cues(text: str, field: str, segments: bool = False) -> list[Cue]:
    """Cues of a JSON list of ``{"start": s, "end": s, field: str}``.

    Args:
        text: the JSON document.
        field: the key of each cue's text.
        segments: also take an object with such a list under ``"segments"``:
            the output of Whisper (``--output_format json``) and WhisperX, whose
            segments carry ``start``, ``end`` and ``text`` among other keys
            (word timings, when present, are not used: a clip takes the
            segment's whole line, as with SRT).

    Raises:
        ValueError: not JSON, not a list of such objects, or a bad interval.
    """
    data = json.loads(text)
    if segments and isinstance(data, dict) and isinstance(data.get("segments"), list):
        data = data["segments"]
    if not isinstance(data, list):
        raise ValueError(f"want a JSON list of {{start, end, {field}}}, got "
                         f"{type(data).__name__}")
    cues: list[Cue] = []
    for i, item in enumerate(data):
        if not isinstance(item, dict) or not isinstance(item.get(field), str):
            raise ValueError(f"item {i}: want {{start, end, {field}: str}}, got {item!r}")
        times = [item.get("start"), item.get("end")]
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in times):
            raise ValueError(f"item {i}: start and end must be numbers, got {times}")
        start, end = _checked(float(times[0]), float(times[1]), f"item {i}")
        cues.append((start, end, item[field]))
    return cues


def read_cues(path: Path) -> list[Cue]:
    """The cues of a label file, by its name (``.srt``, ``.vtt``, ``.transcript.json``,
    ``.objects.json``); transcript text and object names normalised.

    Raises:
        TelemetryTranscript: a subtitle file of camera telemetry (a ``ValueError``).
        ValueError: the file is neither UTF-8 nor UTF-16 with a byte-order mark, or
            cannot be parsed.
    """
    data = path.read_bytes()
    # UTF-8 (with or without a BOM), or UTF-16 with its BOM (Windows subtitle tools).
    text = data.decode("utf-16") if data[:2] in (b"\xff\xfe", b"\xfe\xff") else \
        data.decode("utf-8-sig")
    name = path.name.lower()
    if name.endswith(OBJECTS_SUFFIX):
        return [(s, e, normalise_object(o)) for s, e, o in parse_json_cues(text, "object")]
    if name.endswith(".transcript.json"):
        cues = parse_json_cues(text, "text", segments=True)
    elif name.endswith((".srt", ".vtt")):
        cues = parse_subtitles(text)
        if is_telemetry(cues):
            raise TelemetryTranscript(
                f"{path.name} holds camera telemetry (GPS, exposure, frame counts), not "
                f"words said")
    else:
        raise ValueError(f"{path.name}: not a transcript or objects file")
    return [(s, e, normalise_word(t)) for s, e, t in cues]


def normalise_object(name: str) -> str:
    """An object name as one class: lower-cased, spaces squeezed (punctuation kept:
    "t-shirt" is not "t shirt")."""
    return " ".join(name.lower().split())


def normalise_word(text: str) -> str:
    """Strip, lower-case, drop punctuation (Unicode category P*) and squeeze spaces."""
    kept = "".join(" " if unicodedata.category(c).startswith("P") else c for c in text.lower())
    return " ".join(kept.split())


def clip_labels(cues: list[Cue], clip_seconds: float) -> dict[int, str]:
    """Clip index → text of the cue overlapping the clip most (clips without one left out).

    Raises:
        ValueError: ``clip_seconds`` is not positive.
    """
    if clip_seconds <= 0:
        raise ValueError(f"clip_seconds must be > 0, got {clip_seconds}")
    best: dict[int, tuple[float, str]] = {}
    for start, end, text in sorted(cues, key=lambda c: (c[0], c[1])):
        if not text or end <= start:
            continue
        for index in range(int(start // clip_seconds), math.ceil(end / clip_seconds)):
            t0 = index * clip_seconds
            overlap = min(end, t0 + clip_seconds) - max(start, t0)
            if overlap > 1e-9 and overlap > best.get(index, (0.0, ""))[0]:
                best[index] = (overlap, text)
    return {index: text for index, (_overlap, text) in best.items()}
