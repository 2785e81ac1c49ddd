"""Word–referent trials from clip labels (the Labeled-S protocol of CVCL), and their tallies.

Pure functions, no model and no ``obs_dist``: labels are used here only to
*build* and *grade* trials, never for training.

A held-out recording is a list of :class:`ClipLabel` (its clips in time order:
the normalised transcript line spoken there, ``labels.word``, and the object in
view, ``labels.object``). :func:`build_trials` turns it into trials:

* with ``unit = "line"`` a *text* is a distinct non-empty ``word`` label
  ("dax", "look the dax"); an *occurrence* of it is a run of consecutive clips
  with that text (one utterance may span two clips). With ``unit = "name"`` a
  text is a run of up to :data:`NAME_WORDS` words *inside* the lines, and its
  occurrences are the utterances that contain it ("look the dax", "a dax" and
  "dax" are three occurrences of "dax"): real narration rarely repeats a whole
  line, and a name said only in carrier phrases would otherwise give few
  trials or none (:func:`name_occurrences` says which runs of words count);
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


#: The longest run of words a ``name`` text may have ("striped red circle" is 3).
NAME_WORDS = 4

UNITS = ("line", "name")


def _word_runs(line: str) -> set[str]:
    """Every run of 1..NAME_WORDS consecutive words of a normalised line."""
    words = line.split()
    return {" ".join(words[i:i + n]) for n in range(1, min(NAME_WORDS, len(words)) + 1)
            for i in range(len(words) - n + 1)}


def name_occurrences(clips: Sequence[ClipLabel]) -> dict[str, list[list[int]]]:
    """Per run of words, the utterances (runs of positions, time order) whose line holds it.

    Every run of up to :data:`NAME_WORDS` words of every line is a candidate;
    :func:`referents` keeps those whose occurrences have one referent in view,
    so carrier words ("look", "the") fall out as fillers do, for they are said
    with every object.
    """
    out: dict[str, list[list[int]]] = {}
    for line, runs in occurrences(clips).items():
        for words in _word_runs(line):
            out.setdefault(words, []).extend(runs)
    return {words: sorted(runs) for words, runs in out.items()}


def _in_view_rates(clips: Sequence[ClipLabel]) -> dict[str, float]:
    """Per object, the share of all utterances (line occurrences) it is in view around."""
    runs = [run for line_runs in occurrences(clips).values() for run in line_runs]
    counts = Counter(o for run in runs for o in set(_around(clips, run)))
    return {o: n / len(runs) for o, n in counts.items()} if runs else {}


def _referent(clips: Sequence[ClipLabel], runs: list[list[int]]
              ) -> tuple[str, float, list[list[int]]]:
    """The majority object around ``runs`` (ties: first in sorted order), its purity, runs."""
    seen = [_around(clips, run) for run in runs]
    counts = Counter(o for objs in seen for o in objs)
    if not counts:
        return "", 0.0, runs
    referent = min(counts, key=lambda o: (-counts[o], o))
    return referent, sum(referent in objs for objs in seen) / len(runs), runs


def _one_name_per_utterance(clips: Sequence[ClipLabel],
                            kept: dict[str, tuple[str, float, list[list[int]]]],
                            min_purity: float) -> dict[str, tuple[str, float, list[list[int]]]]:
    """Keep the ``name`` texts that surely name their referent, one per utterance.

    Thousands of runs of words are tried, so some pass ``min_purity`` by
    chance: a carrier word ("look the") said a few times while one object was
    about, a filler ("oh"), an object seen in most scenes. A text is kept only
    if its purity is above its referent's share of *all* utterances with 95 %
    confidence (the lower bound of its Wilson interval): words said whatever
    is in view are not names. Then each utterance, which holds several kept
    texts (the name in pieces, "striped red circle" and "red circle"; a word
    two objects share, "triangle"), goes to the text with the highest margin,
    then the longest; a text left with no utterance goes.
    """
    base = _in_view_rates(clips)

    def margin(text: str) -> float:
        referent, purity, runs = kept[text]
        return wilson(round(purity * len(runs)), len(runs))[0] - base.get(referent, 0.0)

    sure = {t: margin(t) for t in kept if margin(t) > 0}
    order = sorted(sure, key=lambda t: (-sure[t], -len(t.split()), t))
    while True:
        owner: dict[int, str] = {}
        for text in order:
            for run in kept[text][2]:
                owner.setdefault(run[0], text)
        out = {}
        for text in order:
            runs = [run for run in kept[text][2] if owner[run[0]] == text]
            if runs:
                out[text] = _referent(clips, runs)
        # A piece of a name ("circle", "striped") may keep its majority only
        # through utterances that a longer name took: over what is left to it,
        # it must still name its referent, or it goes and frees those utterances.
        drop = {t for t, (_, purity, _) in out.items() if purity < min_purity}
        if not drop:
            return {t: out[t] for t in sorted(out)}
        order = [t for t in order if t not in drop]


def _around(clips: Sequence[ClipLabel], run: list[int]) -> list[str]:
    """The objects in view over a run of positions and one clip either side."""
    lo, hi = max(run[0] - 1, 0), min(run[-1] + 1, len(clips) - 1)
    return [o for o in (clips[p].object for p in range(lo, hi + 1)) if o is not None]


def referents(clips: Sequence[ClipLabel], min_occurrences: int = 2, min_purity: float = 0.6,
              unit: str = "line") -> dict[str, tuple[str, float, list[list[int]]]]:
    """The kept texts of one recording: ``text → (referent, purity, occurrences)``.

    Args:
        clips: one recording's clips in time order.
        min_occurrences: a text must occur at least this often.
        min_purity: the referent must be in view (±1 clip) in at least this share
            of the text's occurrences.
        unit: ``line`` (a text is a whole transcript line) or ``name`` (a run of
            words inside the lines; see the module docstring).

    Raises:
        ValueError: naming ``min_occurrences``, ``min_purity`` or ``unit`` when
            out of range.
    """
    if min_occurrences < 1:
        raise ValueError(f"min_occurrences must be >= 1, got {min_occurrences}")
    if not 0.0 <= min_purity <= 1.0:
        raise ValueError(f"min_purity must be in [0, 1], got {min_purity}")
    if unit not in UNITS:
        raise ValueError(f"unit must be one of {list(UNITS)}, got {unit!r}")
    found = occurrences(clips) if unit == "line" else name_occurrences(clips)
    kept: dict[str, tuple[str, float, list[list[int]]]] = {}
    for text, runs in sorted(found.items()):
        if len(runs) < min_occurrences:
            continue
        referent, purity, _ = _referent(clips, runs)
        if referent and purity >= min_purity:
            kept[text] = (referent, purity, runs)
    return kept if unit == "line" else _one_name_per_utterance(clips, kept, min_purity)


def _pick(rng: np.random.Generator, pool: list[int], query: int, min_gap: int,
          clips: Sequence[ClipLabel]) -> int:
    """A position of ``pool``, ``min_gap`` clips from the query when any is that far."""
    far = [p for p in pool if abs(clips[p].index - query) >= min_gap]
    choice = far or pool
    return choice[int(rng.integers(len(choice)))]


def recording_trials(clips: Sequence[ClipLabel], candidates: int = 4, min_occurrences: int = 2,
                     min_purity: float = 0.6, min_gap: int = 10, seed: int = 0,
                     unit: str = "line") -> list[Trial]:
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
                                                      min_purity, unit).items():
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
                 min_purity: float = 0.6, min_gap: int = 10, seed: int = 0,
                 unit: str = "line") -> list[Trial]:
    """Trials of every recording among ``clips`` (grouped by recording, sorted by index).

    Args:
        clips: labels of held-out clips, any order, any number of recordings.
        candidates: candidate videos per trial (one referent, the rest foils).
        min_occurrences: occurrences a text needs to be kept.
        min_purity: share of occurrences with the referent in view a text needs.
        min_gap: clips between the query and a candidate, when possible.
        seed: seed of the foil choice, clip choice and order (the same seed gives
            the same trials).
        unit: ``line`` or ``name``: what a text is (see the module docstring).
    """
    by_recording: dict[str, list[ClipLabel]] = {}
    for clip in clips:
        by_recording.setdefault(clip.recording, []).append(clip)
    trials: list[Trial] = []
    for name in sorted(by_recording):
        ordered = sorted(by_recording[name], key=lambda c: c.index)
        trials += recording_trials(ordered, candidates, min_occurrences, min_purity, min_gap,
                                   seed, unit)
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


# Clips apart that count as "the same moment" (a scene lasts seconds) and as "another
# moment": the recipe's ``negative_gap``, beyond which training contrasts pictures.
NEAR_CLIPS = 4
FAR_CLIPS = 24


def accuracy_by_distance(trials: Sequence[Trial], chosen: Sequence[int],
                         clips: Sequence[ClipLabel], near: int = NEAR_CLIPS,
                         far: int = FAR_CLIPS) -> dict[str, dict[str, float]]:
    """Accuracy split by how far the referent's picture is from its text's nearest
    spoken clip (any occurrence, the query's own included).

    A referent within ``near`` clips of where its name was said can be found by the
    scene the name was heard in; one ``far`` or more clips away must be found by the
    object itself, in another scene.

    Args:
        trials: the trials.
        chosen: the candidate position each trial's learner chose.
        clips: the held-out clips' labels (where each text was spoken).
        near: referents fewer than this many clips away are "near".
        far: referents this many or more clips away are "far" (between: "between").

    Returns:
        ``{"near" | "between" | "far": {"accuracy", "trials"}}`` (accuracy NaN
        where a band has no trial).

    Raises:
        ValueError: ``chosen`` does not match ``trials``, or a trial's text was
            never spoken in its recording.
    """
    if len(chosen) != len(trials):
        raise ValueError(f"chosen has {len(chosen)} entries for {len(trials)} trials")
    if not 0 < near <= far:
        raise ValueError(f"need 0 < near <= far, got near={near}, far={far}")
    lines: dict[str, list[tuple[int, str]]] = {}
    for c in clips:
        if c.word:
            # Padded words, so a text matches whole words only, whatever the spacing.
            lines.setdefault(c.recording, []).append((c.index, f" {' '.join(c.word.split())} "))
    counts = {band: [0, 0] for band in ("near", "between", "far")}
    for trial, pick in zip(trials, chosen):
        text = f" {' '.join(trial.text.split())} "
        said = [i for i, line in lines.get(trial.recording, ()) if text in line]
        if not said:
            raise ValueError(f"text {trial.text!r} of a trial is never spoken in "
                             f"recording {trial.recording!r}")
        d = min(abs(trial.candidates[trial.answer] - i) for i in said)
        entry = counts["near" if d < near else "between" if d < far else "far"]
        entry[0] += int(pick == trial.answer)
        entry[1] += 1
    return {band: {"accuracy": right / n if n else float("nan"), "trials": n}
            for band, (right, n) in counts.items()}


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
