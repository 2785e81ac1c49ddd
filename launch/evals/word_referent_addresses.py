"""Do the state's addresses name what is heard and seen? (a word–referent diagnostic)

OBS can bind a name to an object in its state only if the writer addresses
*the same nodes* whenever it sees the same object (in another scene, place or
size) or hears the same text (in another voice or phrase), and *other nodes*
for other objects and texts. This module measures that on held-out clips,
labels used only to group them:

* for pairs of silent clips of one recording, the share of the ``k_max``
  addressed nodes two clips have in common (Jaccard of the node sets), averaged
  over pairs showing the same object and over pairs showing different objects;
* the same for spoken clips, grouped by transcript text;
* how many distinct nodes all those clips address together;
* for the pictures OBS studies with, the same overlap split by time
  (:func:`moment_agreement`): one object in another scene must share nodes, while
  another object in the same scene must not. A picture's addresses that follow
  the scene more than the object show as different objects near in time sharing
  more than one object far apart (docs/results/notes.md, "eighteenth round").

Same-label agreement well above different-label agreement is what binding
needs. Both high and few distinct nodes is *address collapse*: everything
lands on a handful of hub nodes and the state cannot tell anything apart.
"""

from __future__ import annotations

import bisect
import random
import zlib
from collections.abc import Sequence
from typing import Any

import torch

from launch.evals.word_referent_adapt import Statistics, centred_on
from launch.evals.word_referent_data import Media, clips_by_recording
from launch.evals.word_referent_trials import FAR_CLIPS, NEAR_CLIPS, ClipLabel
from obs_dist.model.clip_context import with_neighbours


def _groups(labels: Sequence[ClipLabel], media: Media, kind: str
            ) -> list[tuple[str, int, str]]:
    """``(recording, index, label)`` of silent clips with an object, or of spoken clips."""
    if kind == "video":
        return [(c.recording, c.index, c.object) for c in labels
                if c.object and not c.word and (c.recording, c.index) in media]
    return [(c.recording, c.index, c.word) for c in labels
            if c.word and (c.recording, c.index) in media]


def pair_agreement(ids: torch.Tensor, items: Sequence[tuple[str, int, str]]
                   ) -> dict[str, float]:
    """Mean node-set overlap of same-label and different-label pairs within a recording.

    Args:
        ids: ``[n, k]`` addressed nodes of each clip.
        items: ``(recording, index, label)`` of each clip (same order as ``ids``).

    Returns:
        ``same``, ``different`` (mean Jaccard overlaps), their pair counts and
        ``distinct_nodes``.
    """
    if ids.shape[0] != len(items):
        raise ValueError(f"ids has {ids.shape[0]} rows for {len(items)} clips")
    sets = [set(row.tolist()) for row in ids]
    sums = {True: [0.0, 0], False: [0.0, 0]}
    for a in range(len(items)):
        for b in range(a + 1, len(items)):
            if items[a][0] != items[b][0]:
                continue
            overlap = len(sets[a] & sets[b]) / max(len(sets[a] | sets[b]), 1)
            entry = sums[items[a][2] == items[b][2]]
            entry[0] += overlap
            entry[1] += 1
    return {"same": sums[True][0] / max(sums[True][1], 1), "same_pairs": sums[True][1],
            "different": sums[False][0] / max(sums[False][1], 1),
            "different_pairs": sums[False][1],
            "distinct_nodes": len(set().union(*sets)) if sets else 0}


def address_agreement(model: Any, labels: Sequence[ClipLabel], media: Media,
                      clips: int = 400, seed: int = 0) -> dict[str, dict[str, float]] | None:
    """:func:`pair_agreement` of a stream model's writer for pictures and for words.

    Args:
        model: an :class:`~obs_dist.model.av_stream.AVStreamModel` in eval mode.
        labels: the held-out clips' labels.
        media: their audio and video.
        clips: at most this many clips per modality (a seeded sample).
        seed: seed of the sample.

    Returns:
        ``{"video": ..., "audio": ...}``, or None for a model without a state.
    """
    if getattr(model, "writer", None) is None:
        return None
    rng = random.Random(seed)
    out: dict[str, dict[str, float]] = {}
    with torch.no_grad():
        for kind in ("video", "audio"):
            items = _groups(labels, media, kind)
            items = rng.sample(items, min(clips, len(items)))
            if not items:
                continue
            if kind == "video":
                x = torch.stack([media[(r, i)][1] for r, i, _ in items])
            else:  # heard as the model hears a clip (with its neighbours, if so configured)
                context = getattr(model, "audio_context", 0)
                x = torch.stack([with_neighbours(
                    lambda j, r=r: media[(r, j)][0] if (r, j) in media else None, i, context)
                    for r, i, _ in items])
            ids = model.addresses(x, kind)
            out[kind] = pair_agreement(ids, items)
    return out


# Far pairs measured per recording at most (a seeded draw beyond).
FAR_PAIRS = 50_000


def moment_agreement(video: dict[tuple[str, int], list[int]], labels: Sequence[ClipLabel],
                     near: int = NEAR_CLIPS, far: int = FAR_CLIPS,
                     far_pairs: int = FAR_PAIRS, seed: int = 0) -> dict[str, float]:
    """Node-set overlap of two pictures of one recording, by object and by time apart.

    Every near pair is measured. Far pairs grow with the square of a recording's
    length (an hour of 1-second clips has six million), so a recording with more
    than ``far_pairs`` of them is measured on that many drawn at random.

    Args:
        video: each clip's picture nodes (:func:`clip_addresses`' first part).
        labels: the held-out clips' labels (only ``object`` is used).
        near: pairs fewer than this many clips apart are "near".
        far: pairs this many or more clips apart are "far".
        far_pairs: at most this many far pairs per recording.
        seed: seed of the draw.

    Returns:
        Mean Jaccard overlap and pair count of each of ``same_near``, ``same_far``,
        ``different_near`` and ``different_far`` (pairs ``near``..``far`` apart are
        left out); an overlap is 0.0 where no pair of its kind exists.
    """
    if not 0 < near <= far:
        raise ValueError(f"need 0 < near <= far, got near={near}, far={far}")
    if far_pairs < 1:
        raise ValueError(f"far_pairs must be >= 1, got {far_pairs}")
    by_recording: dict[str, list[tuple[int, str, set[int]]]] = {}
    for c in labels:
        if c.object and (c.recording, c.index) in video:
            by_recording.setdefault(c.recording, []).append(
                (c.index, c.object, set(video[(c.recording, c.index)])))
    sums = {f"{same}_{when}": [0.0, 0] for same in ("same", "different")
            for when in ("near", "far")}

    def add(first: tuple[int, str, set[int]], second: tuple[int, str, set[int]],
            when: str) -> None:
        entry = sums[f"{'same' if first[1] == second[1] else 'different'}_{when}"]
        entry[0] += len(first[2] & second[2]) / max(len(first[2] | second[2]), 1)
        entry[1] += 1

    rng = random.Random(seed)
    for name in sorted(by_recording):
        clips = sorted(by_recording[name], key=lambda c: c[0])
        index = [c[0] for c in clips]
        # Where the clips ``far`` or more after each clip begin.
        far_from = [bisect.bisect_left(index, i + far) for i in index]
        for a, clip in enumerate(clips):
            for b in range(a + 1, bisect.bisect_left(index, clip[0] + near)):
                add(clip, clips[b], "near")
        if sum(len(clips) - start for start in far_from) > far_pairs:  # a seeded draw
            far_list = _draw_far(index, far, far_pairs, rng)
        else:
            far_list = [(a, b) for a, start in enumerate(far_from)
                        for b in range(start, len(clips))]
        for a, b in far_list:
            add(clips[a], clips[b], "far")
    out: dict[str, float] = {}
    for key, (total, count) in sums.items():
        out[key] = total / count if count else 0.0
        out[f"{key}_pairs"] = count
    return out


def _draw_far(index: list[int], far: int, count: int, rng: random.Random
              ) -> list[tuple[int, int]]:
    """``count`` distinct pairs of positions in ``index`` (sorted clip indices) ``far``
    or more clips apart, drawn uniformly (there are more than ``count`` of them)."""
    drawn: set[tuple[int, int]] = set()
    while len(drawn) < count:
        a, b = sorted(rng.sample(range(len(index)), 2))
        if index[b] - index[a] >= far:
            drawn.add((a, b))
    return sorted(drawn)


def label_nodes(name: str, k: int, nodes: int) -> list[int]:
    """``k`` nodes drawn from ``name`` alone (a seeded hash): perfect addresses for a label."""
    rng = random.Random(zlib.crc32(name.encode()))
    return [rng.randrange(nodes) for _ in range(k)]


Addresses = tuple[dict[tuple[str, int], list[int]], dict[tuple[str, int], list[int]]]


def clip_addresses(model: Any, media: Media, nodes: int = 0,
                   centring: dict[str, Statistics] | None = None) -> Addresses:
    """The nodes each clip's picture and sound address, seen or heard alone.

    Args:
        model: the learner's model (with a writer).
        media: the held-out clips.
        nodes: nodes per clip (0: the writer's ``k_max``; else the product keys'
            best, as ``study_nodes`` studies with).
        centring: each recording's own feature statistics (``study_centring =
            "recording"``; :mod:`launch.evals.word_referent_adapt`), or None.

    Returns:
        ``(video, audio)``: ``{(recording, index): [node, ...]}`` each; the sound
        is heard with its neighbours if the model hears so.
    """
    context = getattr(model, "audio_context", 0)
    video: dict[tuple[str, int], list[int]] = {}
    audio: dict[tuple[str, int], list[int]] = {}
    with torch.no_grad():
        for recording, indices in clips_by_recording(media).items():
            keys = [(recording, i) for i in indices]
            with centred_on(model, centring.get(recording) if centring else None):
                for i in range(0, len(keys), 256):
                    part = keys[i:i + 256]
                    v = model.addresses(torch.stack([media[k][1] for k in part]), "video", nodes)
                    a = model.addresses(torch.stack([with_neighbours(
                        lambda j, r=k[0]: media[(r, j)][0] if (r, j) in media else None, k[1],
                        context) for k in part]), "audio", nodes)
                    for k, vi, ai in zip(part, v.tolist(), a.tolist(), strict=True):
                        video[k], audio[k] = vi, ai
    return video, audio


def hebbian_ceiling(model: Any, labels: Sequence[ClipLabel], media: Media,
                    trials: Sequence[Any], lag: int = 1,
                    perfect: Sequence[str] = (), addresses: Addresses | None = None
                    ) -> float | None:
    """What a plain Hebbian binding over this learner's addresses would score.

    Within each held-out recording, every spoken clip's audio nodes are linked
    to the video nodes of the clips ``lag`` either side of it (counts), and a
    trial's candidate is scored by the links from its query's audio nodes to
    the candidate's video nodes, each divided by how often that video node was
    linked at all (so nodes that every picture uses count for little). No
    learning, no state dynamics: an upper reference for what the addresses
    alone allow, to tell weak addresses from a weak write/read rule.

    Args:
        model: an :class:`~obs_dist.model.av_stream.AVStreamModel` in eval mode.
        labels: the held-out clips' labels (only which clips are spoken is used).
        media: their audio and video.
        trials: the word–referent trials (``recording``, ``heard``/``query``,
            ``candidates``, ``answer``).
        lag: clips either side of a spoken clip whose pictures it is linked to.
        perfect: modalities (``video``, ``audio``) whose learnt addresses are
            replaced by perfect ones, drawn from the labels (one node set per
            object, or per text, of a recording; a clip without one gets its
            own): how much of the loss each modality's addresses cause.
        addresses: :func:`clip_addresses` of this model and ``media``, if already
            computed (the suite asks for four ceilings of one model).

    Returns:
        Accuracy over ``trials``, or None for a model without a state or no trial.
    """
    unknown = set(perfect) - {"video", "audio"}
    if unknown:
        raise ValueError(f"perfect must name 'video' or 'audio', got {sorted(unknown)}")
    if getattr(model, "writer", None) is None or not trials:
        return None
    keys = sorted(media)
    if set(perfect) >= {"video", "audio"}:  # nothing learnt is used
        video: dict[tuple[str, int], list[int]] = {}
        audio: dict[tuple[str, int], list[int]] = {}
    else:
        learnt = addresses if addresses is not None else clip_addresses(model, media)
        video, audio = dict(learnt[0]), dict(learnt[1])
    if perfect:
        by_key = {(c.recording, c.index): c for c in labels}
        k_max, nodes = model.config.writer.k_max, model.num_nodes
        for key in keys:
            c = by_key.get(key)
            if "video" in perfect:
                what = f"object {c.object}" if c is not None and c.object else f"clip {key[1]}"
                video[key] = label_nodes(f"video {key[0]} {what}", k_max, nodes)
            if "audio" in perfect:
                what = f"text {c.word}" if c is not None and c.word else f"clip {key[1]}"
                audio[key] = label_nodes(f"audio {key[0]} {what}", k_max, nodes)
    links: dict[tuple[str, int, int], float] = {}
    linked: dict[tuple[str, int], float] = {}
    for c in labels:
        key = (c.recording, c.index)
        if not c.word or key not in audio:
            continue
        for dt in range(-lag, lag + 1):
            for vn in video.get((c.recording, c.index + dt), ()):
                linked[(c.recording, vn)] = linked.get((c.recording, vn), 0.0) + len(audio[key])
                for an in audio[key]:
                    links[(c.recording, an, vn)] = links.get((c.recording, an, vn), 0.0) + 1.0
    right = 0
    for t in trials:
        scores = []
        for cand in t.candidates:
            total = 0.0
            for q in (t.heard or (t.query,)):
                for an in audio.get((t.recording, q), ()):
                    for vn in video[(t.recording, cand)]:
                        total += links.get((t.recording, an, vn), 0.0) / (
                            linked.get((t.recording, vn), 0.0) + 1.0)
            scores.append(total)
        right += int(max(range(len(scores)), key=scores.__getitem__) == t.answer)
    return right / len(trials)
