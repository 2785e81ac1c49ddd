"""The cross-modal suite on real audio-visual shards (``shards = "<dir>"``).

Batches come from :func:`pipelines.loader.build_loader` (``obs make-shards
--synthetic`` streams or packed recordings). Each batch is adapted by
:func:`~obs_dist.tasks.crossmodal.split_study_clips` (audio step, then video
step, per clip), the candidates of a row are the objects it has seen on video
in that window, and a query is scored only if its object was seen earlier in
the same window (per-window memory cannot answer anything else). Models use the
``av`` encoder (:class:`~obs_dist.av_encoders.AVEncoder`).

Scores are reported overall, by delay (clips since the queried object was last
seen) and by the number of distinct objects seen before the query.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

import torch

from launch.evals.harness import build_learner, describe, fit, score
from launch.evals.learners import Learner
from obs_dist.tasks import IGNORE
from obs_dist.tasks.crossmodal import seen_candidates, split_study_clips

if TYPE_CHECKING:
    from launch.evals.crossmodal import CrossmodalSuiteConfig

DELAY_BUCKETS = (8, 16, 32, 64)


def answerable(batch: dict[str, Any], classes: int) -> dict[str, Any]:
    """Add ``candidates``; drop targets whose object was not seen before in the row."""
    out = dict(batch)
    objects: torch.Tensor = batch["objects"]
    targets: torch.Tensor = batch["targets"].clone()
    out["candidates"] = seen_candidates(objects, classes)
    bsz, steps = targets.shape
    for b in range(bsz):
        seen: set[int] = set()
        for t in range(steps):
            o = int(objects[b, t])
            if int(targets[b, t]) != IGNORE and int(targets[b, t]) not in seen:
                targets[b, t] = IGNORE
            if o >= 0:
                seen.add(o)
    out["targets"] = targets
    return out


def query_facts(batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per step: clips since the target object was last seen, and objects seen so far."""
    objects: torch.Tensor = batch["objects"]
    targets: torch.Tensor = batch["targets"]
    bsz, steps = targets.shape
    delay = torch.full((bsz, steps), -1, dtype=torch.long)
    count = torch.zeros(bsz, steps, dtype=torch.long)
    for b in range(bsz):
        last: dict[int, int] = {}
        for t in range(steps):
            target = int(targets[b, t])
            if target != IGNORE and target in last:
                delay[b, t] = (t - last[target]) // 2  # two steps per clip
            count[b, t] = len(last)
            o = int(objects[b, t])
            if o >= 0:
                last[o] = t
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


def _scores(learner: Learner, batches: list[dict[str, Any]]) -> dict[str, Any]:
    right = total = 0
    by_delay: dict[str, list[int]] = {}
    by_count: dict[int, list[int]] = {}
    for batch in batches:
        correct, scored = score(learner.predict(batch), batch["targets"], batch["candidates"])
        delay, count = query_facts(batch)
        right += int(correct.sum())
        total += int(scored.sum())
        for b, t in scored.nonzero().tolist():
            ok = int(correct[b, t])
            by_delay.setdefault(_bucket(int(delay[b, t])), [0, 0])
            by_delay[_bucket(int(delay[b, t]))][0] += ok
            by_delay[_bucket(int(delay[b, t]))][1] += 1
            by_count.setdefault(int(count[b, t]), [0, 0])
            by_count[int(count[b, t])][0] += ok
            by_count[int(count[b, t])][1] += 1
    return {"accuracy": right / max(total, 1), "queries": total,
            "by_delay": {k: v[0] / v[1] for k, v in sorted(by_delay.items())},
            "by_objects_seen": {k: v[0] / v[1] for k, v in sorted(by_count.items())}}


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
    eval_loader = build_loader(DataConfig(**common, seed=cfg.task.seed + 1_000_003))  # type: ignore[arg-type]
    held_out = list(itertools.islice(shard_batches(eval_loader, classes), cfg.eval_batches))
    rows = []
    details: dict[str, Any] = {}
    for name in cfg.models:
        learner = build_learner(name, cfg, 2, classes, commit=False)
        res = fit(learner, shard_batches(train_loader, classes), cfg.train.steps, cfg.seconds,
                  desc=f"{name} shards", progress=cfg.train.progress)
        scores = _scores(learner, held_out)
        details[name] = scores
        rows.append({**describe(learner), "steps": res.steps, "seconds": round(res.seconds, 1),
                     "stopped": res.stopped, "accuracy": scores["accuracy"],
                     "queries": scores["queries"]})
    return {"results": rows, "shards": details, "path": f"shards:{cfg.shards}",
            "classes": classes}
