"""Packing a small folder and reading its shards back, for the tests of ``--from``.

:func:`pack` runs :func:`pipelines.pack.pack_folder` with 1 MiB shards and no
progress bars; :func:`samples` reads every shard of a local output folder back
as ``{key: {extension: bytes}}``. ``SMALL`` is the size of the test recordings
(:func:`pipelines.cutter_probe.write_test_recording`) that keeps each test to
seconds.
"""

from __future__ import annotations

from pathlib import Path

from pipelines.pack import pack_folder
from pipelines.tario import iter_samples

SMALL = {"width": 64, "height": 48, "fps": 10}


def pack(src: Path, out: Path, **kwargs: object) -> dict[str, object]:
    """Pack ``src`` into ``out`` (1 MiB shards, no progress bars); the summary."""
    return pack_folder(src, str(out), target_bytes=1 << 20, progress=False, **kwargs)


def samples(out: Path) -> dict[str, dict[str, bytes]]:
    """Every sample of the shards in ``out``, by key."""
    found: dict[str, dict[str, bytes]] = {}
    for shard in sorted(out.glob("*.tar")):
        with shard.open("rb") as fh:
            found.update((s.key, s.members) for s in iter_samples(fh))
    return found
