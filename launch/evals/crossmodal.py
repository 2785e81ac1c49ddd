"""``obs eval --task crossmodal``: retrieve what a spoken name looked like, through the state.

Episodes (:mod:`obs_dist.tasks.crossmodal`): study clips pair a word's audio with
an object's video, ``delay`` distractor clips follow, then audio-only queries;
the answer is the nearest study clip (argmax over the episode's objects).
Every model is trained once on a mix of episode sizes and delays, then scored
on a grid: accuracy vs objects per episode (at ``primary[1]`` delay) and vs
delay (at ``primary[0]`` objects).

Two data paths:

* the **stand-in** (default): word audio and object video are token ids through
  two embedding ranges, with per-episode random names (``task.binding``), so
  the binding can only live in the state;
* **real shards** (``shards = "<dir>"``): ``pipelines.loader`` batches of the
  ``obs make-shards --synthetic`` streams, every study clip split into an audio
  step and a video step, the :class:`~obs_dist.model.av_encoders.AVEncoder` as encoder
  (see :mod:`launch.evals.crossmodal_shards`).

For OBS the suite also draws the state's strongest circuits (see
:mod:`launch.evals.circuits`): after scoring, episodes with fixed names are
committed into the state and the entries between word-audio nodes and
object-video nodes are read out.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from launch.evals import plots
from launch.evals.circuits import circuits
from launch.evals.crossmodal_config import CrossmodalSuiteConfig
from launch.evals.crossmodal_shards import run_shards
from launch.evals.harness import accuracy, build_learner, describe, fit
from launch.evals.learners import Learner, OBSLearner
from launch.evals.suite import Suite, markdown_table, verdict
from obs_dist.tasks.crossmodal import eval_episodes, train_episodes

QUICK = [
    "task.objects=16", "task.words=16", "task.per_episode=4", "task.train_per_episode=[2, 4]",
    "task.delay=4", "task.train_max_delay=6", "task.batch=16", "objects_grid=[2, 4]",
    "delays=[0, 4]", "primary=[4, 4]", "eval_batches=1", "circuits_objects=4",
    "circuits_exposures=2", "state.nodes=256", "state.partitions=1", "model.d_model=32",
    "model.writer.k_max=8", "model.writer.active=8", "model.writer.key_dim=16",
    "baseline.heads=2", "train.steps=40", "train.lr=5e-3", "train.warmup=5",
    "train.eval_every=0", "train.progress=false",
]


def _grid(cfg: CrossmodalSuiteConfig, learner: Any) -> list[dict[str, Any]]:
    """Accuracy at every scored (objects, delay) point."""
    n0, d0 = cfg.primary
    points = sorted({(n, d0) for n in cfg.objects_grid} | {(n0, d) for d in cfg.delays}
                    | {(n0, d0)})
    rows = []
    for n, d in points:
        batches = eval_episodes(cfg.task, n, d, cfg.eval_batches)
        rows.append({"objects": n, "delay": d, "accuracy": accuracy(learner, batches),
                     "chance": 1.0 / n})
    return rows


def run(cfg: CrossmodalSuiteConfig) -> dict[str, Any]:
    """Train every model on the episodes, score the grid, draw OBS's circuits."""
    if cfg.shards:
        return run_shards(cfg)
    task = cfg.task
    rows: list[dict[str, Any]] = []
    grids: dict[str, list[dict[str, Any]]] = {}
    picture: dict[str, Any] | None = None
    n0, d0 = cfg.primary
    for name in cfg.models:
        learner = build_learner(name, cfg, task.input_vocab, task.classes, commit=False)
        probe = eval_episodes(task, n0, d0, 1, seed_offset=77)

        def check(learner: Learner = learner, probe: list = probe) -> float:
            return accuracy(learner, probe)

        res = fit(learner, train_episodes(task), cfg.train.steps, cfg.seconds, evaluate=check,
                  eval_every=cfg.train.eval_every, target=cfg.train.target_accuracy,
                  desc=f"{name} crossmodal", progress=cfg.train.progress)
        grid = _grid(cfg, learner)
        grids[name] = grid
        headline = next(r["accuracy"] for r in grid if (r["objects"], r["delay"]) == (n0, d0))
        rows.append({**describe(learner), "steps": res.steps, "seconds": round(res.seconds, 1),
                     "stopped": res.stopped, "objects": n0, "delay": d0,
                     "accuracy": headline})
        if isinstance(learner, OBSLearner) and picture is None:
            picture = circuits(learner, task, cfg.circuits_objects, cfg.circuits_exposures)
    return {"results": rows, "grid": grids, "circuits": picture, "path": "stand-in",
            "primary": cfg.primary}


def targets(result: dict[str, Any]) -> list[str]:
    """The issue's target: top-1 >= 0.9 at 16 objects, 32 clips between study and query."""
    if "grid" in result:
        hit = [r for r in result["grid"].get("obs", []) if (r["objects"], r["delay"]) == (16, 32)]
        if hit:
            acc = hit[0]["accuracy"]
            return [f"Cross-modal, 16 objects, 32 clips between study and query: top-1 >= 0.9"
                    f" — {verdict(acc >= 0.9)} (OBS {acc:.3f}; path: {result.get('path')})"]
    elif "shards" in result:
        head = result["shards"].get("obs", {}).get("headline")
        if head and head["queries"] and (head["objects"], head["clips_between"]) == (16, 32):
            acc = head["accuracy"]
            return [f"Cross-modal on audio-visual shards, episodes of >= 16 objects, >= 32 "
                    f"clips between study and query: top-1 >= 0.9 — {verdict(acc >= 0.9)} "
                    f"(OBS {acc:.3f} over {head['queries']} queries)"]
    return []


def shard_tables(details: dict[str, Any]) -> str:
    """Real-shard cross-modal scores by delay, objects studied and episode size, per model."""
    by_delay = [{"model": m, **{f"delay {k}": v for k, v in d["by_delay"].items()}}
                for m, d in details.items()]
    by_seen = [{"model": m, **{f"seen {k}": v for k, v in d["by_objects_seen"].items()}}
               for m, d in details.items()]
    out = ("\nAccuracy by clips between the query and where its object was last seen:\n\n"
           + markdown_table(by_delay)
           + "\nAccuracy by distinct objects studied before the query:\n\n"
           + markdown_table(by_seen))
    by_episode = [{"model": m, **{f"{k} objects": v for k, v in d["by_episode_objects"].items()}}
                  for m, d in details.items() if "by_episode_objects" in d]
    if by_episode:
        out += ("\nAccuracy by objects studied in the episode (window):\n\n"
                + markdown_table(by_episode))
    return out


# (result key, sense, label count key, examples key, examples, accuracy key, config temperature)
FRONT_ENDS = (
    ("audio_words", "hears the words through one frozen keyword recognizer", "words",
     "utterances", "utterances", "word_accuracy", "audio_words_temperature"),
    ("video_objects", "sees the objects through one frozen object recognizer", "objects",
     "clips", "video clips", "object_accuracy", "video_objects_temperature"),
)


def front_end_lines(result: dict[str, Any]) -> list[str]:
    """One line per recognizer front end a cross-modal result was made with."""
    lines = []
    for key, sense, count, examples, what, acc, temp_key in FRONT_ENDS:
        fit = result.get(key)
        if fit:
            temp = result.get("config", {}).get(temp_key, "?")
            lines.append(f"\nEvery model {sense} ({int(fit[count])} {count}, "
                         f"{int(fit[examples])} {what} of the training shards, "
                         f"{int(fit['steps'])} steps; held-out {acc.replace('_', ' ')} "
                         f"{fit[acc]:.3f}; posterior temperature {temp}).\n")
    return lines


def extras(result: dict[str, Any]) -> list[str]:
    """The grid and circuits (stand-in), the front ends and the shard tables (real shards)."""
    parts = []
    if result.get("grid"):
        grid_rows = [{"model": m, **r} for m, rows in result["grid"].items() for r in rows]
        parts.append("\nAccuracy over the (objects, delay) grid:\n\n" + markdown_table(grid_rows))
        pic = result.get("circuits")
        if pic:
            parts.append(f"\nCircuits: {pic['committed_entries']} entries committed from "
                         f"fixed-name episodes; share of words whose strongest object is the "
                         f"one they name: {pic['match']:.3f}.\n")
    parts += front_end_lines(result)
    if result.get("shards"):
        parts.append(shard_tables(result["shards"]))
    return parts


SUITE = Suite(name="crossmodal", title="Cross-modal association", config=CrossmodalSuiteConfig,
              run=run, quick=QUICK, targets=targets, extras=extras,
              figures=[("objects", partial(plots.crossmodal, axis="objects")),
                       ("delay", partial(plots.crossmodal, axis="delay")),
                       ("circuits", plots.circuits)])
