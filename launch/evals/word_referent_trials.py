"""Word–referent trials from clip labels (the Labeled-S protocol of CVCL), and their tallies.

Pure functions, no model and no ``obs_dist``: labels are used here only to
*build* and *grade* trials, never for training.

A held-out recording is a list of :class:`ClipLabel` (its clips in time order:
the normalised transcript line spoken there, ``labels.word``, and the object in
view, ``labels.object``). :func:`build_trials` turns it into trials:

* a *text* is a distinct non-empty ``word`` label ("dax", "look the dax"); an
  *occurrence* of it is a run of consecutive clips with that text (one
  utterance may span two clips);
* its *referent* is the majority object over the clips of its occurrences and
  their neighbours (±1 clip); a text is kept if it occurs at least
  ``min_occurrences`` times and the referent is in view (±1 clip) in at least
  ``min_purity`` of its occurrences: fillers ("hmm", "oh") fall out;
* a trial is one occurrence (its clips' audio, alone, is the query: the whole
  utterance is heard, as CVCL's query is the whole word; an utterance starting
  late in a clip leaves only a fragment there, and a carrier phrase may put the
  name in its second clip) and
  ``candidates`` video clips in a seeded random order: one showing the
  referent, and one each of ``candidates - 1`` *different* other objects of the
  same recording, all from clips where nothing is said, at least ``min_gap``
  clips away from the query when the recording allows.

:func:`tally` scores chosen candidates: accuracy overall and per text, with a
95 % Wilson interval (:func:`wilson`), and the referent × chosen confusion.
"""

from __future__ import annotations

import math
import zlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class ClipLabel:
    """One held-out clip's labels.

    Attributes:
        recording: its stream (recording) name.
        index: its clip index in the recording.
        word: the normalised transcript line spoken there ('' if none).
        object: the object in view (None if none).
    """

    recording: str
    index: int
    word: str
    object: str | None


@dataclass(frozen=True)
class Trial:
    """One trial: a spoken text and its candidate pictures.

    Attributes:
        recording: the recording the trial comes from.
        text: the spoken text of the query.
        referent: the object the text names (its majority referent).
        query: clip index of the query's first clip (audio only).
        candidates: clip indices of the candidate videos, in presentation order.
        objects: the object shown by each candidate.
        answer: position of the referent among the candidates.
        heard: clip indices of the whole occurrence (``query`` first).
    """

    recording: str
    text: str
    referent: str
    query: int
    candidates: tuple[int, ...]
    objects: tuple[str, ...]
    answer: int
    heard: tuple[int, ...] = ()


def occurrences(clips: Sequence[ClipLabel]) -> dict[str, list[list[int]]]:
    """Per text, its occurrences: runs of consecutive positions in ``clips`` with that text."""
    out: dict[str, list[list[int]]] = {}
    previous = ""
    for pos, clip in enumerate(clips):
        if clip.word and clip.word == previous and pos > 0 \
                and clips[pos - 1].index == clip.index - 1:
            out[clip.word][-1].append(pos)
        elif clip.word:
            out.setdefault(clip.word, []).append([pos])
        previous = clip.word
    return out


def _around(clips: Sequence[ClipLabel], run: list[int]) -> list[str]:
    """The objects in view over a run of positions and one clip either side."""
    lo, hi = max(run[0] - 1, 0), min(run[-1] + 1, len(clips) - 1)
    return [o for o in (clips[p].object for p in range(lo, hi + 1)) if o is not None]


def referents(clips: Sequence[ClipLabel], min_occurrences: int = 2, min_purity: float = 0.6
              ) -> dict[str, tuple[str, float, list[list[int]]]]:
    """The kept texts of one recording: ``text → (referent, purity, occurrences)``.

    Args:
        clips: one recording's clips in time order.
        min_occurrences: a text must occur at least this often.
        min_purity: the referent must be in view (±1 clip) in at least this share
            of the text's occurrences.

    Raises:
        ValueError: naming ``min_occurrences`` or ``min_purity`` when out of range.
    """
    if min_occurrences < 1:
        raise ValueError(f"min_occurrences must be >= 1, got {min_occurrences}")
    if not 0.0 <= min_purity <= 1.0:
        raise ValueError(f"min_purity must be in [0, 1], got {min_purity}")
    kept: dict[str, tuple[str, float, list[list[int]]]] = {}
    for text, runs in sorted(occurrences(clips).items()):
        if len(runs) < min_occurrences:
            continue
        seen = [_around(clips, run) for run in runs]
        counts = Counter(o for objs in seen for o in objs)
        if not counts:
            continue
        # The majority object; ties go to the name first in sorted order.
        referent = min(counts, key=lambda o: (-counts[o], o))
        purity = sum(referent in objs for objs in seen) / len(runs)
        if purity >= min_purity:
            kept[text] = (referent, purity, runs)
    return kept


def _pick(rng: np.random.Generator, pool: list[int], query: int, min_gap: int,
          clips: Sequence[ClipLabel]) -> int:
    """A position of ``pool``, ``min_gap`` clips from the query when any is that far."""
    far = [p for p in pool if abs(clips[p].index - query) >= min_gap]
    choice = far or pool
    return choice[int(rng.integers(len(choice)))]


def recording_trials(clips: Sequence[ClipLabel], candidates: int = 4, min_occurrences: int = 2,
                     min_purity: float = 0.6, min_gap: int = 10, seed: int = 0) -> list[Trial]:
    """The trials of one recording (see the module docstring).

    Occurrences for which the recording lacks silent clips of the referent or
    of ``candidates - 1`` other objects give no trial.

    Raises:
        ValueError: naming ``candidates`` or ``min_gap`` when out of range, or
            ``clips`` when they span several recordings.
    """
    if candidates < 2:
        raise ValueError(f"candidates must be >= 2, got {candidates}")
    if min_gap < 0:
        raise ValueError(f"min_gap must be >= 0, got {min_gap}")
    if not clips:
        return []
    names = {c.recording for c in clips}
    if len(names) > 1:
        raise ValueError(f"clips must come from one recording, got {sorted(names)}")
    recording = clips[0].recording
    silent: dict[str, list[int]] = {}
    for pos, clip in enumerate(clips):
        if clip.object is not None and not clip.word:
            silent.setdefault(clip.object, []).append(pos)
    rng = np.random.default_rng([seed, zlib.crc32(recording.encode())])
    trials: list[Trial] = []
    for text, (referent, _purity, runs) in referents(clips, min_occurrences,
                                                      min_purity).items():
        others = sorted(o for o in silent if o != referent)
        if referent not in silent or len(others) < candidates - 1:
            continue
        for run in runs:
            query = clips[run[0]].index
            chosen = [referent] + [others[int(i)] for i in
                                   rng.choice(len(others), candidates - 1, replace=False)]
            picks = [_pick(rng, silent[o], query, min_gap, clips) for o in chosen]
            order = [int(i) for i in rng.permutation(candidates)]
            trials.append(Trial(recording, text, referent, query,
                                tuple(clips[picks[i]].index for i in order),
                                tuple(chosen[i] for i in order), order.index(0),
                                tuple(clips[p].index for p in run)))
    return trials


def build_trials(clips: Sequence[ClipLabel], candidates: int = 4, min_occurrences: int = 2,
                 min_purity: float = 0.6, min_gap: int = 10, seed: int = 0) -> list[Trial]:
    """Trials of every recording among ``clips`` (grouped by recording, sorted by index).

    Args:
        clips: labels of held-out clips, any order, any number of recordings.
        candidates: candidate videos per trial (one referent, the rest foils).
        min_occurrences: occurrences a text needs to be kept.
        min_purity: share of occurrences with the referent in view a text needs.
        min_gap: clips between the query and a candidate, when possible.
        seed: seed of the foil choice, clip choice and order (the same seed gives
            the same trials).
    """
    by_recording: dict[str, list[ClipLabel]] = {}
    for clip in clips:
        by_recording.setdefault(clip.recording, []).append(clip)
    trials: list[Trial] = []
    for name in sorted(by_recording):
        ordered = sorted(by_recording[name], key=lambda c: c.index)
        trials += recording_trials(ordered, candidates, min_occurrences, min_purity, min_gap,
                                   seed)
    return trials


def wilson(correct: int, total: int, z: float = 1.959964) -> tuple[float, float]:
    """The 95 % Wilson score interval of a binomial proportion (``(0, 1)`` when empty)."""
    if total < 0 or not 0 <= correct <= max(total, 0):
        raise ValueError(f"need 0 <= correct <= total, got correct={correct}, total={total}")
    if total == 0:
        return 0.0, 1.0
    p = correct / total
    den = 1 + z * z / total
    mid = (p + z * z / (2 * total)) / den
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / den
    return max(0.0, mid - half), min(1.0, mid + half)


def tally(trials: Sequence[Trial], chosen: Sequence[int]) -> dict[str, Any]:
    """Grade chosen candidate positions: accuracy, trials, interval, per text, confusion.

    Args:
        trials: the trials.
        chosen: the candidate position each trial's learner chose.

    Returns:
        ``accuracy``, ``trials``, ``ci`` ``[lo, hi]``, ``per_word`` (text →
        ``{"accuracy", "trials", "referent"}``) and ``confusion`` (list of
        ``[referent, chosen object, count]``).

    Raises:
        ValueError: naming ``chosen`` when its length or a position is wrong.
    """
    if len(chosen) != len(trials):
        raise ValueError(f"chosen has {len(chosen)} entries for {len(trials)} trials")
    right = 0
    words: dict[str, list[int]] = {}
    confusion: Counter[tuple[str, str]] = Counter()
    for trial, pick in zip(trials, chosen):
        if not 0 <= pick < len(trial.candidates):
            raise ValueError(f"chosen position {pick} is outside the trial's "
                             f"{len(trial.candidates)} candidates")
        ok = int(pick == trial.answer)
        right += ok
        entry = words.setdefault(trial.text, [0, 0])
        entry[0] += ok
        entry[1] += 1
        confusion[(trial.referent, trial.objects[pick])] += 1
    referent_of = {t.text: t.referent for t in trials}
    lo, hi = wilson(right, len(trials))
    return {"accuracy": right / len(trials) if trials else float("nan"),
            "trials": len(trials), "ci": [lo, hi],
            "per_word": {w: {"accuracy": c / n, "trials": n, "referent": referent_of[w]}
                         for w, (c, n) in sorted(words.items())},
            "confusion": [[r, c, n] for (r, c), n in sorted(confusion.items())]}
