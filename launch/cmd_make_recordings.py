"""``obs make-recordings``: long synthetic audio-visual recordings (head-camera stand-ins).

Per recording, ``DIR/rec_XXX.mp4`` (H.264 or mpeg4 video with a mono AAC
track), ``rec_XXX.srt`` (what the narrator said) and ``rec_XXX.objects.json``
(which object is in view when). ``obs make-shards --from DIR`` packs them.

Examples::

    obs make-recordings --out data/recs
    obs make-recordings --out data/demo --recordings 6 --seconds 120 --workers 2
    obs make-recordings --out data/own-words --names recording --objects-per-recording 12 --json
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from launch.output import format_table
from pipelines.recording_gen import NAMES, SAMPLE_RATES, RecordingConfig, write_recordings


def _pair(text: str) -> tuple[float, float]:
    """``"8,30"`` → ``(8.0, 30.0)`` (argparse type)."""
    try:
        lo, hi = (float(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected two numbers like 8,30, got {text!r}") \
            from None
    return lo, hi


def _words(text: str) -> tuple[str, ...]:
    """``"en-us+f3,en+m3"`` → a tuple of names (argparse type)."""
    return tuple(part.strip() for part in text.split(",") if part.strip())


def register(subparsers: Any) -> None:
    """Add ``obs make-recordings`` to the command line."""
    p = subparsers.add_parser("make-recordings", help="write long synthetic audio-visual "
                              "recordings (mp4 + srt + objects.json)", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    d = RecordingConfig()
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--recordings", type=int, default=d.recordings)
    p.add_argument("--seconds", type=float, default=d.seconds, help="length of each recording")
    p.add_argument("--names", choices=NAMES, default=d.names,
                   help="say the class name, or each recording's own pseudo-words")
    p.add_argument("--seed", type=int, default=d.seed, help="recording i uses (seed, i)")
    p.add_argument("--size", type=int, default=d.size, help="frame width and height (even)")
    p.add_argument("--fps", type=int, default=d.fps)
    p.add_argument("--objects-per-recording", type=int, default=d.objects_per_recording)
    p.add_argument("--classes", type=int, default=d.classes,
                   help="draw each recording's objects from CLASSES classes")
    p.add_argument("--first-class", type=int, default=d.first_class,
                   help="the first of those classes (e.g. 24: objects a model trained on "
                        "--classes 24 never saw)")
    p.add_argument("--scene-seconds", type=_pair, default=d.scene_seconds, metavar="MIN,MAX")
    p.add_argument("--name-gap", type=_pair, default=d.name_gap, metavar="MIN,MAX",
                   help="seconds of in-view time between namings")
    p.add_argument("--name-tolerance", type=float, default=d.name_tolerance,
                   help="a naming starts at most this many seconds from its object in view")
    p.add_argument("--carrier-fraction", type=float, default=d.carrier_fraction,
                   help="share of namings in a carrier phrase ('look, the dax')")
    p.add_argument("--filler-rate", type=float, default=d.filler_rate,
                   help="fillers ('oh', 'hmm') per minute")
    p.add_argument("--sound-rate", type=float, default=d.sound_rate,
                   help="non-speech sounds (hum, click, knock, ...) per minute")
    p.add_argument("--sample-rate", type=int, choices=SAMPLE_RATES, default=d.sample_rate)
    p.add_argument("--voices", type=_words, default=d.voices, metavar="V1,V2,...",
                   help="espeak-ng voices (default: 16 accents and variants)")
    p.add_argument("--other-voice-fraction", type=float, default=d.other_voice_fraction)
    p.add_argument("--workers", type=int, default=1, help="recordings generated side by side")
    p.add_argument("--overwrite", action="store_true", help="replace recordings already there")
    p.add_argument("--json", action="store_true", help="print a JSON summary")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Write the recordings; print a summary (table, or JSON with ``--json``)."""
    cfg = RecordingConfig(
        recordings=args.recordings, seconds=args.seconds, names=args.names, seed=args.seed,
        size=args.size, fps=args.fps, objects_per_recording=args.objects_per_recording,
        classes=args.classes, first_class=args.first_class,
        scene_seconds=args.scene_seconds, name_gap=args.name_gap,
        name_tolerance=args.name_tolerance, carrier_fraction=args.carrier_fraction,
        filler_rate=args.filler_rate, sound_rate=args.sound_rate,
        sample_rate=args.sample_rate, voices=args.voices,
        other_voice_fraction=args.other_voice_fraction)
    summary = write_recordings(args.out, cfg, workers=args.workers, overwrite=args.overwrite,
                               progress=not args.json)
    if args.json:
        print(json.dumps(summary))
        return 0
    rows = [{"recording": r["name"], "seconds": f"{r['seconds']:.1f}",
             "utterances": r["utterances"], "namings": r["namings"], "sounds": r["sounds"],
             "voice": r["voice"],
             "objects": ", ".join(f"{o}={r['words'][o]}" if args.names == "recording" else o
                                  for o in r["objects"])} for r in summary["recordings"]]
    print(format_table(rows))
    total = sum(r["seconds"] for r in summary["recordings"])
    print(f"wrote {len(rows)} recordings ({total:.0f} s, {summary['bytes'] / 1e6:.1f} MB) to "
          f"{args.out} in {summary['seconds']:.1f} s ({total / summary['seconds']:.0f} "
          "recorded s/s)", file=sys.stderr)
    return 0
