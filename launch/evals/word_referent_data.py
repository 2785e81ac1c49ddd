"""The word–referent suite's held-out data: its clips in time order, their labels and media.

Split from :mod:`launch.evals.word_referent` (the suite itself); the scripts that
diagnose a finished suite (``scripts/diagnose_word_referent.py``,
``count_word_referent_trials.py``, ``address_features_ceiling.py``) read held-out
data through the same functions.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch

from launch.evals.word_referent_trials import ClipLabel, Trial


def heldout_batches(run_cfg: Any, source: str, streams: int) -> Iterator[dict[str, Any]]:
    """The held-out stream in time order, one recording per row (``streams`` rows)."""
    from pipelines.loader import DataConfig, build_loader

    d = run_cfg.data
    data = DataConfig(source=source, streams=streams, window=d.window, mode="ordered",
                      workers=0, frames=d.frames, image_size=d.image_size, n_mels=d.n_mels,
                      audio_seconds=d.audio_seconds, loop=False,
                      endpoint_url=d.endpoint_url)
    loader = build_loader(data)
    classes = loader.classes
    for batch in loader:
        batch["object_names"] = [[classes[o] if o >= 0 else None for o in row.tolist()]
                                 for row in batch["objects"]]
        yield batch


def refuse_shared_recordings(train: str, heldout: str, endpoint_url: str | None) -> None:
    """Held-out recordings must not be trained on: a score on them would be recall."""
    from pipelines.sources import resolve_shards, shared_streams

    both = shared_streams(resolve_shards(train, endpoint_url),
                          resolve_shards(heldout, endpoint_url))
    if both or train.rstrip("/") == heldout.rstrip("/"):
        raise ValueError(f"heldout_source {heldout} shares recordings with train_source {train}"
                         f" ({len(both)} streams, e.g. {both[:3]}): pack held-out recordings "
                         f"apart, from recordings the learners never see (or set "
                         f"heldout_may_be_trained=true to measure recall on purpose)")


def count_recordings(run_cfg: Any, source: str) -> int:
    """Recordings (shard chains) of a held-out source."""
    from pipelines.sources import resolve_shards

    return len(resolve_shards(source, run_cfg.data.endpoint_url).chains)


Media = dict[tuple[str, int], tuple[torch.Tensor, torch.Tensor]]


def collect(run_cfg: Any, source: str, streams: int) -> tuple[list[ClipLabel], Media]:
    """Every held-out clip's labels, and its audio log-mel and video (both present only)."""
    labels: list[ClipLabel] = []
    media: Media = {}
    for batch in heldout_batches(run_cfg, source, streams):
        for b, row in enumerate(batch["keys"]):
            for t, key in enumerate(row):
                if not key:
                    continue
                recording, index = key.rsplit("/", 1)
                labels.append(ClipLabel(recording, int(index), batch["words"][b][t],
                                        batch["object_names"][b][t]))
                if batch["audio_mask"][b, t] and batch["video_mask"][b, t]:
                    media[(recording, int(index))] = (batch["audio"][b, t].clone(),
                                                      batch["video"][b, t].clone())
    return labels, media


def usable(trials: list[Trial], media: Media) -> list[Trial]:
    """Trials whose query has audio and whose candidates have video."""
    return [t for t in trials if (t.recording, t.query) in media
            and all((t.recording, c) in media for c in t.candidates)]


def clips_by_recording(media: Media) -> dict[str, list[int]]:
    """Each held-out recording's clip indices in ``media``, in time order (recordings sorted)."""
    out: dict[str, list[int]] = {}
    for recording, index in media:
        out.setdefault(recording, []).append(index)
    return {recording: sorted(out[recording]) for recording in sorted(out)}


def heard_audio(media: Media, recording: str, index: int, context: int) -> torch.Tensor:
    """A held-out clip's log-mel as the model hears it (with ``context`` neighbours)."""
    from obs_dist.model.clip_context import with_neighbours

    def clip(i: int) -> torch.Tensor | None:
        entry = media.get((recording, i))
        return None if entry is None else entry[0]

    return with_neighbours(clip, index, context)
