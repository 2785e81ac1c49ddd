"""OBS adapted to the held-out recording it studies, without labels (``study_centring``).

A held-out recording is another room, another camera and another voice than
training's: its pictures and sounds as a whole sit elsewhere in feature space
than the running statistics that centre features before they address nodes
(:class:`~obs_dist.model.address_centring.AddressCentring`). With
``study_centring = "recording"`` the suite recomputes those statistics on the
recording itself (all its clips, seen and heard as a study pass does; no label
read) and uses them while that recording is studied and its trials answered:
batch-norm statistics recomputed on the target domain (AdaBN, Li et al. 2016).
What every clip of the recording shares, its room and its voice, then no longer
steers every clip's address the same way (docs/decisions.md §25).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from launch.evals.word_referent_data import Media, clips_by_recording, heard_audio

log = logging.getLogger("obs.eval.word_referent")

# ``study_centring``: "running", the statistics training left; "recording", the
# held-out recording's own.
STUDY_CENTRINGS = ("running", "recording")
# ``candidate_norm``: "none", the scores as they are; "speech", :func:`normalised`
# over the recording's speech (:func:`speech_clips`).
CANDIDATE_NORMS = ("none", "speech")

# (mean, var) of the addressing features ``[d]`` each, per modality: video, audio.
Statistics = tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def recording_statistics(model: Any, media: Media, batch: int = 256) -> dict[str, Statistics]:
    """Each held-out recording's own feature statistics, pictures and sounds.

    Args:
        model: a trained :class:`~obs_dist.model.av_stream.AVStreamModel` with
            address centring.
        media: the held-out clips, ``{(recording, index): (log-mel, video)}``.
        batch: clips encoded together.

    Returns:
        ``{recording: ((video mean, video var), (audio mean, audio var))}``, the
        features as they enter the centring (encoder output plus modality). A
        recording of one clip has no variance to measure: it is left out (logged),
        and is studied with the running statistics.

    Raises:
        ValueError: the model has no address centring to adapt.
    """
    if getattr(model, "centring", None) is None:
        raise ValueError("study_centring = 'recording' needs a model trained with "
                         "model.stream.address_centring = true")
    out: dict[str, Statistics] = {}
    with torch.no_grad():
        for recording, indices in clips_by_recording(media).items():
            if len(indices) < 2:
                log.warning("held-out recording %r has %d clip: it is studied with the "
                            "running statistics", recording, len(indices))
                continue
            video, audio = [], []
            for i in range(0, len(indices), batch):
                part = indices[i:i + batch]
                video.append(model.video(torch.stack([media[(recording, j)][1] for j in part])))
                audio.append(model.audio(model._hearable(torch.stack(
                    [heard_audio(media, recording, j, model.audio_context) for j in part]))))
            fv = torch.cat(video) + model.modality[0]
            fa = torch.cat(audio) + model.modality[1]
            out[recording] = ((fv.mean(0), fv.var(0, unbiased=False)),
                              (fa.mean(0), fa.var(0, unbiased=False)))
    return out


@contextmanager
def centred_on(model: Any, stats: Statistics | None) -> Iterator[None]:
    """Inside the block the model's address centring uses ``stats`` (None: unchanged)."""
    if stats is None:
        yield
        return
    saved = [(c.mean.clone(), c.var.clone()) for c in model.centring]
    try:
        for c, (mean, var) in zip(model.centring, stats, strict=True):
            c.mean.copy_(mean)
            c.var.copy_(var)
        yield
    finally:
        for c, (mean, var) in zip(model.centring, saved, strict=True):
            c.mean.copy_(mean)
            c.var.copy_(var)


def speech_clips(model: Any, media: Media, window: int) -> dict[str, list[int]]:
    """The clips of each held-out recording that the speech gate passes.

    The gate is the one the study pass applies (a clip is speech when its loud
    frames rise above the quiet of its window of ``window`` clips), so these are
    the heard clips the study pass linked names from, found without a label.

    Raises:
        ValueError: ``window`` < 1.
    """
    if window < 1:
        raise ValueError(f"the speech gate's window must be >= 1 clip, got {window}")
    from obs_dist.model.audio_floor import speech_gate

    out: dict[str, list[int]] = {}
    for recording, indices in clips_by_recording(media).items():
        passed: list[int] = []
        for i in range(0, len(indices), window):
            part = indices[i:i + window]
            audio = torch.stack([media[(recording, j)][0] for j in part])[None]
            gate = speech_gate(audio, torch.ones(1, len(part)), model.stream_cfg.gate)[0]
            passed += [j for j, g in zip(part, gate.tolist(), strict=True) if g > 0]
        out[recording] = passed
    return out


def normalised(logits: torch.Tensor, owner: list[str],
               reference: dict[str, torch.Tensor]) -> torch.Tensor:
    """Each candidate's logits z-scored over its recording's reference clips.

    A picture whose nodes any name of the recording recalls (it shares them
    with the room, or with every object seen) scores high for every query; its
    score is no evidence for *this* name. Its mean and spread over the
    recording's speech (``reference``) measure that; subtracting the mean and
    dividing by the spread leaves how much more this query recalls it than
    speech at large does: the hubness correction of cross-domain retrieval
    (Conneau et al. 2018's CSLS, here with the recording's speech as the
    neighbourhood).

    Args:
        logits: ``[Q, C]`` queries' logits of the candidates.
        owner: the recording of each candidate column (``C`` entries).
        reference: per recording, ``[R, C]``: its reference clips' logits of
            the same candidates.

    Raises:
        ValueError: a recording with candidates has fewer than two reference clips.
    """
    mean = torch.zeros(logits.shape[1])
    spread = torch.ones(logits.shape[1])
    for recording, ref in reference.items():
        if ref.shape[0] < 2:
            raise ValueError(f"candidate_norm = 'speech': held-out recording {recording!r} "
                             f"has {ref.shape[0]} clip(s) of speech, too few to normalise by")
        cols = torch.tensor([o == recording for o in owner])
        mean[cols] = ref[:, cols].mean(0)
        spread[cols] = ref[:, cols].std(0).clamp_min(1e-6)
    return (logits - mean) / spread
