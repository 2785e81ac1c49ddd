"""A small streaming tar reader that groups members into samples and knows byte offsets.

``tarfile`` cannot start reading at an arbitrary header nor tell where a
WebDataset sample begins, and the exact cursor of the loader needs both: a
resumed reader seeks (or issues an S3 Range request) to the first header of the
next unread sample. This reader handles ustar, GNU long names (``L``) and pax
headers (``x``/``g``), verifies header checksums, and groups consecutive
members sharing a key exactly as WebDataset does.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

from pipelines.schema import split_member_name

BLOCK = 512


class TarFormatError(ValueError):
    """The tar stream is truncated or holds a corrupt header."""


@dataclass
class TarSample:
    """One WebDataset sample read from a tar.

    Attributes:
        key: the members' shared key.
        members: extension → payload.
        offset: byte offset of the sample's first header in the shard.
        end: byte offset just after its last member (the next sample's offset).
    """

    key: str
    members: dict[str, bytes]
    offset: int
    end: int


def _read_exact(fh: BinaryIO, n: int) -> bytes:
    chunks = []
    left = n
    while left:
        chunk = fh.read(left)
        if not chunk:
            break
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _octal(field: bytes, what: str, offset: int) -> int:
    if field[:1] and field[0] & 0x80:  # GNU base-256 for sizes >= 8 GiB
        value = int.from_bytes(field[1:], "big")
        return value
    text = field.split(b"\0", 1)[0].strip()
    try:
        return int(text, 8) if text else 0
    except ValueError as exc:
        raise TarFormatError(f"corrupt tar header at byte {offset}: bad {what} {text!r}") from exc


def _parse_pax(data: bytes) -> dict[str, str]:
    out = {}
    pos = 0
    while pos < len(data):
        space = data.find(b" ", pos)
        if space < 0:
            break
        length = int(data[pos:space])
        record = data[space + 1: pos + length - 1]
        key, _, value = record.partition(b"=")
        out[key.decode("utf-8", "replace")] = value.decode("utf-8", "replace")
        pos += length
    return out


def iter_members(fh: BinaryIO, start: int = 0, *, require_end: bool = False
                 ) -> Iterator[tuple[str, bytes, int, int]]:
    """Yield (name, payload, header_offset, end_offset) of each regular file member.

    Args:
        fh: a stream positioned at byte ``start`` of the tar, on a header.
        start: that position, so offsets are absolute in the shard.
        require_end: a stream that ends without the end-of-archive marker (two
            zero blocks) is truncated, at a member boundary: raise instead of
            tolerating it (shards OBS wrote, listed in ``index.json``, have it).

    Raises:
        TarFormatError: on a bad checksum, a stream that ends inside a member,
            or (``require_end``) one that ends without the end-of-archive marker.
    """
    pos = start
    long_name: str | None = None
    pax: dict[str, str] = {}
    first_header = pos
    while True:
        header = _read_exact(fh, BLOCK)
        if not header:
            if require_end:
                raise TarFormatError(f"tar ends at byte {pos} without its end-of-archive "
                                     f"marker: truncated at a member boundary")
            return  # tolerate a missing end-of-archive marker
        if len(header) < BLOCK:
            raise TarFormatError(f"tar truncated inside a header at byte {pos}")
        if header == b"\0" * BLOCK:
            return
        checksum = _octal(header[148:156], "checksum", pos)
        actual = sum(header[:148]) + 8 * 32 + sum(header[156:])
        if checksum != actual:
            raise TarFormatError(f"corrupt tar header at byte {pos} (checksum mismatch)")
        size = _octal(header[124:136], "size", pos)
        kind = header[156:157]
        padded = -(-size // BLOCK) * BLOCK
        if long_name is None and not pax:
            first_header = pos
        data = _read_exact(fh, padded)
        if len(data) < padded:
            raise TarFormatError(f"tar truncated inside a member at byte {pos} "
                                 f"({len(data)} of {padded} bytes)")
        pos += BLOCK + padded
        payload = data[:size]
        if kind == b"L":
            long_name = payload.rstrip(b"\0").decode("utf-8", "replace")
            continue
        if kind == b"x":
            pax = _parse_pax(payload)
            continue
        if kind == b"g":
            continue
        name = header[:100].split(b"\0", 1)[0].decode("utf-8", "replace")
        if header[257:262] == b"ustar":
            prefix = header[345:500].split(b"\0", 1)[0].decode("utf-8", "replace")
            if prefix:
                name = f"{prefix}/{name}"
        name = pax.get("path", long_name or name)
        long_name, pax = None, {}
        if kind in (b"0", b"\0", b"7"):
            yield name, payload, first_header, pos


def iter_samples(fh: BinaryIO, start: int = 0, *, require_end: bool = False
                 ) -> Iterator[TarSample]:
    """Group consecutive members with the same key into :class:`TarSample` objects.

    Args:
        fh: a stream positioned at byte ``start`` of the tar, on a header.
        start: that position, so offsets are absolute in the shard.
        require_end: as :func:`iter_members`; then the last sample of a tar cut
            at a member boundary (which may lack members) is never yielded.

    Raises:
        TarFormatError: as :func:`iter_members`; samples before the damage are
        yielded first, the sample the damage is in is not.
    """
    current: TarSample | None = None
    for name, payload, offset, end in iter_members(fh, start, require_end=require_end):
        key, ext = split_member_name(name)
        if key.rsplit("/", 1)[-1].startswith("._"):
            continue  # macOS resource forks are not samples
        if current is not None and key != current.key:
            yield current
            current = None
        if current is None:
            current = TarSample(key, {}, offset, end)
        current.members[ext] = payload
        current.end = end
    if current is not None:
        yield current
