"""The cross-modal suite on real audio-visual shards (``shards = "<dir>"``).

Batches come from :func:`pipelines.loader.build_loader` (``obs make-shards
--synthetic`` streams or packed recordings). Each batch is adapted by
:func:`~obs_dist.tasks.crossmodal.split_study_clips` (audio step, then video
step, per clip). A row is one episode: its *study clips* are the clips with both
video and audio (a silent-video distractor is not one), the candidates are the
objects of its study clips (the answer is the nearest study clip), and a query
is scored only if its object was studied earlier in the same window (per-window
memory cannot answer anything else). Models use the ``av`` encoder
(:class:`~obs_dist.model.av_encoders.AVEncoder`). Held-out windows come from
``shards_eval`` when set (other streams: with ``obs make-shards --names stream``
no word means the same there), else from other draws of ``shards``. With
``audio_words_steps`` every model hears the words through one frozen keyword
recognizer trained on the training shards' word labels, and with
``video_objects_steps`` sees objects through one frozen object recognizer trained
on their object labels (:mod:`launch.evals.front_ends`).

Scores are reported overall, by delay (clips between the query and where its
object was last seen), by the objects studied before the query, by the objects
the episode studies, and as the issue's headline: queries in episodes of at
least ``primary[0]`` objects with at least ``primary[1]`` clips between study
and query.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import torch
from torch import nn

from launch.evals.crossmodal_config import CrossmodalSuiteConfig
from launch.evals.front_ends import (
    Recognizer,
    object_recognizer,
    object_views,
    recognizer_front_end,
    train_recognizer,
    word_recognizer,
    word_utterances,
)
from launch.evals.harness import build_learner, describe, fit, score
from launch.evals.learners import Learner
from obs_dist.model.augment import shift_and_flip, time_shift
from obs_dist.tasks import IGNORE
from obs_dist.tasks.crossmodal import seen_candidates, split_study_clips

DELAY_BUCKETS = (8, 16, 32, 64)


def study_objects(batch: dict[str, Any]) -> torch.Tensor:
    """``[B, 2T]``: the object of every study clip's video step, -1 elsewhere.

    A study clip has both senses: after :func:`split_study_clips` its audio sits
    on step ``2t`` and its video on ``2t + 1``. Without presence masks every
    object counts.
    """
    objects: torch.Tensor = batch["objects"]
    if "audio_mask" not in batch or "video_mask" not in batch:
        return objects
    audio, video = batch["audio_mask"].bool(), batch["video_mask"].bool()
    studied = torch.zeros_like(video)
    studied[:, 1::2] = audio[:, 0::2] & video[:, 1::2]
    return torch.where(studied, objects, torch.full_like(objects, -1))


def answerable(batch: dict[str, Any], classes: int) -> dict[str, Any]:
    """Add ``candidates`` (studied objects); drop targets not studied before in the row."""
    out = dict(batch)
    studied = study_objects(batch)
    targets: torch.Tensor = batch["targets"].clone()
    out["candidates"] = seen_candidates(studied, classes)
    bsz, steps = targets.shape
    for b in range(bsz):
        seen: set[int] = set()
        for t in range(steps):
            o = int(studied[b, t])
            if int(targets[b, t]) != IGNORE and int(targets[b, t]) not in seen:
                targets[b, t] = IGNORE
            if o >= 0:
                seen.add(o)
    out["targets"] = targets
    return out


def query_facts(batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per step: clips between the query and where its object was last seen, and
    the objects studied so far."""
    objects: torch.Tensor = batch["objects"]
    studied = study_objects(batch)
    targets: torch.Tensor = batch["targets"]
    bsz, steps = targets.shape
    delay = torch.full((bsz, steps), -1, dtype=torch.long)
    count = torch.zeros(bsz, steps, dtype=torch.long)
    for b in range(bsz):
        last: dict[int, int] = {}
        known: set[int] = set()
        for t in range(steps):
            target = int(targets[b, t])
            if target != IGNORE and target in last:
                # Two steps per clip; the object sat on a video step (odd), the query
                # on an audio step (even), so this counts the clips in between.
                delay[b, t] = (t - last[target]) // 2
            count[b, t] = len(known)
            o = int(objects[b, t])
            if o >= 0:
                last[o] = t
            if int(studied[b, t]) >= 0:
                known.add(int(studied[b, t]))
    return delay, count


def _bucket(delay: int) -> str:
    lo = 0
    for hi in DELAY_BUCKETS:
        if delay < hi:
            return f"{lo}-{hi - 1}"
        lo = hi
    return f"{lo}+"


def shard_batches(loader: Iterable[dict[str, Any]], classes: int) -> Iterator[dict[str, Any]]:
    """Adapted batches of a loader, endlessly (the loader is resampled)."""
    for batch in loader:
        yield answerable(split_study_clips(batch), classes)


def _tally(table: dict[Any, list[int]], key: Any, ok: int) -> None:
    table.setdefault(key, [0, 0])
    table[key][0] += ok
    table[key][1] += 1


def _scores(learner: Learner, batches: list[dict[str, Any]],
            primary: list[int]) -> dict[str, Any]:
    """Accuracy overall, by delay, by objects studied so far and per episode, and the headline.

    The headline counts queries in rows that study at least ``primary[0]``
    objects, with at least ``primary[1]`` clips between the study clip and the query.
    """
    right = total = 0
    by_delay: dict[str, list[int]] = {}
    by_count: dict[int, list[int]] = {}
    by_episode: dict[int, list[int]] = {}
    headline = [0, 0]
    for batch in batches:
        correct, scored = score(learner.predict(batch), batch["targets"], batch["candidates"])
        delay, count = query_facts(batch)
        episode_objects = batch["candidates"].sum(dim=1)
        right += int(correct.sum())
        total += int(scored.sum())
        for b, t in scored.nonzero().tolist():
            ok = int(correct[b, t])
            _tally(by_delay, _bucket(int(delay[b, t])), ok)
            _tally(by_count, int(count[b, t]), ok)
            _tally(by_episode, int(episode_objects[b]), ok)
            if int(episode_objects[b]) >= primary[0] and int(delay[b, t]) >= primary[1]:
                headline[0] += ok
                headline[1] += 1
    return {"accuracy": right / max(total, 1), "queries": total,
            "by_delay": {k: v[0] / v[1] for k, v in sorted(by_delay.items())},
            "by_objects_seen": {k: v[0] / v[1] for k, v in sorted(by_count.items())},
            "by_episode_objects": {k: v[0] / v[1] for k, v in sorted(by_episode.items())},
            "headline": {"objects": primary[0], "clips_between": primary[1],
                         "accuracy": headline[0] / max(headline[1], 1),
                         "queries": headline[1]}}


def fit_front_ends(cfg: CrossmodalSuiteConfig, common: dict[str, Any], classes: Sequence[str]
                   ) -> tuple[Callable[[nn.Module], None] | None, dict[str, Any]]:
    """Train the recognizer front ends the config asks for, once, on the training shards.

    One recognizer per sense, frozen, perceived through by every model alike. The
    clips come from one pass over the training shards in shuffled stream order
    (each clip once), so the held-out share that scores a recognizer is mostly
    streams it never trained on.

    Returns:
        The ``prepare`` hook (None without front ends) and the results' entries
        (``audio_words``, ``video_objects``) with each recognizer's figures.
    """
    from pipelines.loader import DataConfig, build_loader

    heard: Recognizer | None = None
    seen: Recognizer | None = None
    out: dict[str, Any] = {}

    def one_pass() -> Iterable[dict[str, Any]]:
        return build_loader(DataConfig(**{**common, "mode": "shuffled"},
                                       seed=cfg.task.seed))

    if cfg.audio_words_steps:
        data = word_utterances(one_pass(), cfg.audio_words_utterances)
        torch.manual_seed(cfg.task.seed)
        heard, fit = train_recognizer(
            word_recognizer(cfg.model.n_mels, len(data.vocab)), data, cfg.audio_words_steps,
            seed=cfg.task.seed, progress=cfg.train.progress, desc="word recognizer",
            augment=time_shift)
        out["audio_words"] = {"word_accuracy": fit["accuracy"], "words": fit["labels"],
                              "utterances": fit["examples"], "steps": fit["steps"]}
    if cfg.video_objects_steps:
        views = object_views(one_pass(), cfg.video_objects_clips, classes)
        torch.manual_seed(cfg.task.seed + 1)
        seen, fit = train_recognizer(
            object_recognizer(cfg.model.image_size, len(classes)), views,
            cfg.video_objects_steps, seed=cfg.task.seed + 1, progress=cfg.train.progress,
            desc="object recognizer", augment=shift_and_flip)
        out["video_objects"] = {"object_accuracy": fit["accuracy"], "objects": fit["labels"],
                                "clips": fit["examples"], "steps": fit["steps"]}
    if heard is None and seen is None:
        return None, out
    return recognizer_front_end(heard, seen, cfg.audio_words_temperature,
                                cfg.video_objects_temperature), out


def run_shards(cfg: CrossmodalSuiteConfig) -> dict[str, Any]:
    """Train every model on shard batches and score held-out windows."""
    from pipelines.loader import DataConfig, build_loader

    if cfg.model.encoder != "av":
        raise ValueError("the real-shard path needs model.encoder = 'av' (set it in the "
                         "config or with --set model.encoder=av)")
    common = {"source": cfg.shards, "streams": cfg.task.batch, "window": cfg.shards_window,
              "mode": "resampled", "workers": cfg.shards_workers,
              "image_size": cfg.model.image_size, "n_mels": cfg.model.n_mels}
    train_loader = build_loader(DataConfig(**common, seed=cfg.task.seed))  # type: ignore[arg-type]
    classes = train_loader.num_classes
    eval_common = {**common, "source": cfg.shards_eval or cfg.shards}
    eval_loader = build_loader(DataConfig(**eval_common, seed=cfg.task.seed + 1_000_003))  # type: ignore[arg-type]
    if eval_loader.num_classes != classes:
        raise ValueError(f"shards_eval has {eval_loader.num_classes} classes, shards has "
                         f"{classes}: they must share classes.json")
    held_out = list(itertools.islice(shard_batches(eval_loader, classes), cfg.eval_batches + 1))
    # The last held-out batch only tracks learning (and stops at the target), so
    # the reported figures never come from a batch that decided when to stop.
    probe, held_out = held_out[-1:], held_out[:-1]
    prepare, front = fit_front_ends(cfg, common, train_loader.classes)
    rows = []
    details: dict[str, Any] = {}
    for name in cfg.models:
        learner = build_learner(name, cfg, 2, classes, commit=False, prepare=prepare)

        def check(learner: Learner = learner) -> float:
            return float(_scores(learner, probe, cfg.primary)["accuracy"])

        res = fit(learner, shard_batches(train_loader, classes), cfg.train.steps, cfg.seconds,
                  evaluate=check, eval_every=cfg.train.eval_every,
                  target=cfg.train.target_accuracy, desc=f"{name} shards",
                  progress=cfg.train.progress)
        scores = _scores(learner, held_out, cfg.primary)
        details[name] = {**scores, "curve": res.curve}
        rows.append({**describe(learner), "steps": res.steps, "seconds": round(res.seconds, 1),
                     "stopped": res.stopped, "accuracy": scores["accuracy"],
                     "queries": scores["queries"],
                     "headline": scores["headline"]["accuracy"],
                     "headline_queries": scores["headline"]["queries"]})
    path = f"shards:{cfg.shards}" + (f", held out: {cfg.shards_eval}" if cfg.shards_eval else "")
    return {"results": rows, "shards": details, "path": path, "classes": classes,
            "primary": cfg.primary, **front}
