"""``obs make-shards``: write WebDataset shards, synthetic or from a folder of media.

Examples::

    obs make-shards --synthetic --out data/syn --streams 64 --clips-per-stream 32
    obs make-shards --synthetic --out s3://bucket/syn --endpoint-url http://127.0.0.1:9000
    obs make-shards --synthetic --out data/episodes --names stream --layout episodes \
        --episode-objects 16 --episode-delays 32 --classes 48
    obs make-shards --from ~/videos --out data/mine --shard-size 256MB --kind continuous
    obs make-shards --from ~/saycam --out s3://bucket/saycam --clip-seconds 1 --max-side 256 \
        --max-fps 5
    obs make-shards --from ~/saycam --out s3://bucket/saycam --clip-seconds 1 --max-side 256 \
        --max-fps 5 --resume    # after the pack above stopped: its finished recordings are kept
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
import time
from typing import Any

from pipelines.pack import CUT_MODES, pack_folder
from pipelines.synthetic import SyntheticConfig, write_synthetic

_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "kib": 1024, "m": 1000**2, "mb": 1000**2,
          "mib": 1024**2, "g": 1000**3, "gb": 1000**3, "gib": 1024**3}


def parse_size(text: str) -> int:
    """Parse a byte size such as ``64MB``, ``512KiB`` or ``1000000``.

    Raises:
        ValueError: naming the text when it is not a size.
    """
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", text)
    unit = match.group(2).lower() if match else None
    if match is None or unit not in _UNITS:
        raise ValueError(f"--shard-size {text!r} is not a size like 64MB, 512KiB or 1000000")
    return int(float(match.group(1)) * _UNITS[unit])


def _int_list(text: str) -> list[int]:
    """``"4,8,16"`` → ``[4, 8, 16]`` (argparse type)."""
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}")\
            from None


def register(subparsers: Any) -> None:
    """Add ``obs make-shards`` to the command line."""
    p = subparsers.add_parser("make-shards", help="write WebDataset shards (synthetic or "
                              "from a folder)", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--synthetic", action="store_true", help="generate synthetic AV streams")
    what.add_argument("--from", dest="from_dir", metavar="DIR",
                      help="pack a folder of clips (mp4/wav/flac + json sidecars) and/or "
                      "long recordings (mp4/mkv/webm/mov, wav/flac)")
    p.add_argument("--out", required=True, help="output directory, file:// or s3://bucket/prefix")
    p.add_argument("--endpoint-url", default=None, help="S3 endpoint (else OBS_S3_ENDPOINT_URL "
                   "/ AWS_ENDPOINT_URL)")
    p.add_argument("--shard-size", default=None,
                   help="target shard size (default 1MiB synthetic, 256MB --from)")
    p.add_argument("--overwrite", action="store_true", help="replace shards already at --out")
    p.add_argument("--resume", action="store_true",
                   help="--from: continue a pack that stopped (its pack_journal.json at "
                   "--out): same folder and options; finished recordings are kept")
    p.add_argument("--json", action="store_true", help="print a JSON summary")
    d = SyntheticConfig()
    g = p.add_argument_group("synthetic data")
    g.add_argument("--streams", type=int, default=d.streams)
    g.add_argument("--clips-per-stream", type=int, default=d.clips_per_stream)
    g.add_argument("--frames", type=int, default=d.frames)
    g.add_argument("--image-size", type=int, default=d.image_size)
    g.add_argument("--fps", type=float, default=d.fps)
    g.add_argument("--classes", type=int, default=d.classes, help="object classes used")
    g.add_argument("--continuous-fraction", type=float, default=d.continuous_fraction)
    g.add_argument("--scene-clips", type=int, default=d.scene_clips,
                   help="clips a scene lasts in continuous streams")
    g.add_argument("--query-fraction", type=float, default=d.query_fraction)
    g.add_argument("--audio-format", choices=("flac", "wav"), default=d.audio_format)
    g.add_argument("--names", choices=("class", "stream"), default=d.names,
                   help="speak class names, or each stream's own random words (so a "
                   "name's meaning lives only in its stream)")
    g.add_argument("--layout", choices=("free", "episodes"), default=d.layout,
                   help="study and query clips mixed at random, or episodes: study, "
                   "distractors, queries")
    g.add_argument("--episode-objects", type=_int_list, default=d.episode_objects,
                   help="objects studied per episode, e.g. 16 or 4,8,16 (one drawn per episode)")
    g.add_argument("--episode-delays", type=_int_list, default=d.episode_delays,
                   help="distractor clips before the queries, e.g. 32 or 0,16,32")
    g.add_argument("--seed", type=int, default=d.seed)
    f = p.add_argument_group("--from")
    f.add_argument("--kind", choices=("continuous", "discrete"), default=None,
                   help="kind of clips whose sidecar does not say (default discrete) and of "
                   "the clips cut from recordings (default continuous)")
    f.add_argument("--cut", choices=CUT_MODES, default="auto",
                   help="which media files are recordings to cut into clips: auto (no clip "
                   "sidecar <stem>.json and longer than 1.5 clips, or a video other than "
                   "mp4), always, never")
    f.add_argument("--clip-seconds", type=float, default=1.0,
                   help="length of the clips a recording is cut into")
    f.add_argument("--max-side", type=int, default=256,
                   help="scale recordings' frames so the long side is at most this (pixels)")
    f.add_argument("--max-fps", type=int, default=None,
                   help="frames a second kept in recordings' clips, at most (default: the "
                   "recording's rate); a model uses a few frames a clip, and training "
                   "decodes every frame up to the last one it uses")
    f.add_argument("--workers", type=int, default=1,
                   help="processes cutting recordings at once (the same shards whatever the "
                   "number; each cuts one recording into a spool file under TMPDIR)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Write the shards; print a summary."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    start = time.perf_counter()
    summary: dict[str, Any]
    if args.synthetic:
        if args.resume:
            raise ValueError("--resume continues a pack of a folder (--from); synthetic "
                             "shards are quick to write again (--overwrite)")
        cfg = SyntheticConfig(
            streams=args.streams, clips_per_stream=args.clips_per_stream, frames=args.frames,
            image_size=args.image_size, fps=args.fps, classes=args.classes,
            continuous_fraction=args.continuous_fraction, scene_clips=args.scene_clips,
            query_fraction=args.query_fraction, audio_format=args.audio_format,
            names=args.names, layout=args.layout, episode_objects=args.episode_objects,
            episode_delays=args.episode_delays, seed=args.seed)
        size = parse_size(args.shard_size) if args.shard_size else 1 << 20
        summary = write_synthetic(args.out, cfg, target_bytes=size,
                                  endpoint_url=args.endpoint_url, overwrite=args.overwrite)
    else:
        size = parse_size(args.shard_size) if args.shard_size else 256 * 1000**2
        summary = pack_folder(args.from_dir, args.out, target_bytes=size, kind=args.kind,
                              clip_seconds=args.clip_seconds, max_side=args.max_side,
                              max_fps=args.max_fps,
                              cut=args.cut, endpoint_url=args.endpoint_url,
                              overwrite=args.overwrite, workers=args.workers,
                              resume=args.resume)
    seconds = time.perf_counter() - start
    shards = summary["shards"]
    total = sum(int(s["bytes"]) for s in shards)
    out = {"out": args.out, "samples": summary["samples"], "streams": summary["streams"],
           "shards": len(shards), "bytes": total, "seconds": round(seconds, 2),
           "skipped": summary.get("skipped", {})}
    if "recordings" in summary:
        out["recordings"] = summary["recordings"]
    if args.json:
        print(json.dumps(out))
    else:
        cut = f", {out['recordings']} of them recordings," if out.get("recordings") else ""
        print(f"wrote {out['samples']} clips of {out['streams']} streams{cut} in "
              f"{out['shards']} shards ({total / 1e6:.1f} MB) to {args.out} in {seconds:.1f} s",
              file=sys.stderr)
        if out["skipped"]:
            print(f"skipped: {out['skipped']}", file=sys.stderr)
    return 0
