"""The sample schema of the data shards (DESIGN §5) and the object class vocabulary.

One sample is one clip of one stream, stored in a WebDataset tar as members
sharing the key ``<stream>/<index:06d>``:

* ``mp4``  — video, any PyAV-decodable codec (optional);
* ``flac`` or ``wav`` — mono audio at any rate (optional);
* ``json`` — :class:`SampleMeta` (required).

At least one of video and audio must be present. Object classes are integer
ids into :data:`CLASSES` (shape × colour × texture); a shard directory carries
its own ``classes.json`` so a trainer can size its head from the data alone.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from typing import Any

SHAPES = ("circle", "square", "triangle", "star")
COLOURS = ("red", "green", "blue", "yellow")
TEXTURES = ("solid", "striped", "dotted")
# Class id = position in this list; names are what the synthetic voice says.
CLASSES: tuple[str, ...] = tuple(
    f"{texture} {colour} {shape}" for shape in SHAPES for colour in COLOURS for texture in TEXTURES
)
CLASS_IDS = {name: i for i, name in enumerate(CLASSES)}

VIDEO_EXTS = ("mp4",)
AUDIO_EXTS = ("flac", "wav")
META_EXT = "json"
KINDS = ("continuous", "discrete")
ROLES = ("study", "query")
CLASSES_FILE = "classes.json"
INDEX_FILE = "index.json"

_STREAM_RE = re.compile(r"^[A-Za-z0-9_\-][A-Za-z0-9_\-./]*$")


def class_attributes(class_id: int) -> tuple[str, str, str]:
    """(shape, colour, texture) of a class id."""
    if not 0 <= class_id < len(CLASSES):
        raise ValueError(f"class id {class_id} out of range [0, {len(CLASSES)})")
    shape, rest = divmod(class_id, len(COLOURS) * len(TEXTURES))
    colour, texture = divmod(rest, len(TEXTURES))
    return SHAPES[shape], COLOURS[colour], TEXTURES[texture]


def check_stream_name(stream: str) -> str:
    """Validate a stream name: letters, digits, ``_ - . /``; no empty path parts.

    Raises:
        ValueError: naming the stream.
    """
    if not isinstance(stream, str) or not _STREAM_RE.match(stream) or "//" in stream \
            or stream.endswith("/") or ".." in stream:
        raise ValueError(f"stream name {stream!r} must use letters, digits, '_', '-', '.', "
                         "'/' and no empty or '..' path parts")
    return stream


def sample_key(stream: str, index: int) -> str:
    """The WebDataset key ``<stream>/<index:06d>`` of a clip."""
    if index < 0:
        raise ValueError(f"clip index must be >= 0, got {index}")
    return f"{check_stream_name(stream)}/{index:06d}"


def split_member_name(name: str) -> tuple[str, str]:
    """Split a tar member name into (key, extension) exactly as WebDataset does.

    The key ends at the first dot after the last slash: ``a.b/000001.json``
    gives ``("a.b/000001", "json")``. A name with no dot has extension ''.
    """
    slash = name.rfind("/")
    dot = name.find(".", slash + 1)
    if dot < 0:
        return name, ""
    return name[:dot], name[dot + 1:]


@dataclass
class SampleMeta:
    """The ``json`` member of a sample.

    Attributes:
        stream: name of the stream the clip belongs to.
        index: position of the clip in its stream (0, 1, 2 …).
        t0: start time of the clip in the stream, seconds.
        duration: length of the clip, seconds.
        kind: ``continuous`` (same scene as its neighbours) or ``discrete``.
        labels: ``{"object": class name or None, "word": spoken word or None}``.
        role: ``study`` (object shown and named), ``query`` (name only; the
            model must answer the object) or None.
    """

    stream: str
    index: int
    t0: float
    duration: float
    kind: str = "discrete"
    labels: dict[str, str | None] = field(default_factory=lambda: {"object": None,
                                                                   "word": None})
    role: str | None = None

    def __post_init__(self) -> None:
        check_stream_name(self.stream)
        if isinstance(self.index, bool) or not isinstance(self.index, int) or self.index < 0:
            raise ValueError(f"index must be an integer >= 0, got {self.index!r}")
        for name in ("t0", "duration"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"{name} must be a number >= 0, got {value!r}")
            setattr(self, name, float(value))
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {list(KINDS)}, got {self.kind!r}")
        if self.role is not None and self.role not in ROLES:
            raise ValueError(f"role must be one of {list(ROLES)} or null, got {self.role!r}")
        if not isinstance(self.labels, dict):
            raise ValueError(f"labels must be an object, got {self.labels!r}")
        unknown = sorted(set(self.labels) - {"object", "word"})
        if unknown:
            raise ValueError(f"unknown labels key {unknown[0]!r} (known: object, word)")
        for name in ("object", "word"):
            value = self.labels.get(name)
            if value is not None and not isinstance(value, str):
                raise ValueError(f"labels.{name} must be a string or null, got {value!r}")
        self.labels = {"object": self.labels.get("object"), "word": self.labels.get("word")}

    @property
    def key(self) -> str:
        """The sample's WebDataset key."""
        return sample_key(self.stream, self.index)

    def to_json(self) -> bytes:
        """The ``json`` member's bytes (sorted keys, so shards are reproducible)."""
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def from_dict(cls, data: Any) -> SampleMeta:
        """Build from a parsed JSON object, refusing unknown or missing keys.

        Raises:
            ValueError: naming the first problem.
        """
        if not isinstance(data, dict):
            raise ValueError(f"sample json must be an object, got {type(data).__name__}")
        known = {"stream", "index", "t0", "duration", "kind", "labels", "role"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown sample json key {unknown[0]!r}")
        missing = sorted({"stream", "index", "t0", "duration"} - set(data))
        if missing:
            raise ValueError(f"sample json misses key {missing[0]!r}")
        try:
            return cls(**data)
        except TypeError as exc:  # e.g. labels=None given explicitly
            raise ValueError(f"bad sample json: {exc}") from exc

    @classmethod
    def from_json(cls, raw: bytes) -> SampleMeta:
        """Parse a ``json`` member.

        Raises:
            ValueError: not UTF-8 JSON, or not a valid sample description.
        """
        try:
            data = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"sample json is not valid JSON: {exc}") from exc
        return cls.from_dict(data)


def object_id(name: str | None, classes: dict[str, int] | None = None) -> int:
    """The class id of an object name, -1 for None or a name outside the vocabulary.

    ``classes`` None means the built-in vocabulary; an empty mapping (an empty
    ``classes.json``) knows no name at all.
    """
    if name is None:
        return -1
    return (CLASS_IDS if classes is None else classes).get(name, -1)


def classes_json(classes: tuple[str, ...] = CLASSES) -> bytes:
    """The ``classes.json`` document of a shard directory."""
    return json.dumps({"classes": list(classes)}, indent=1).encode()


def parse_classes_json(raw: bytes) -> tuple[str, ...]:
    """Read a ``classes.json`` document.

    Raises:
        ValueError: if it is not ``{"classes": [str, ...]}`` without duplicates.
    """
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"classes.json is not valid JSON: {exc}") from exc
    names = data.get("classes") if isinstance(data, dict) else None
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ValueError('classes.json must be {"classes": [name, ...]}')
    if len(set(names)) != len(names):
        raise ValueError("classes.json lists a class twice")
    return tuple(names)
