"""``obs eval --task memory``: the memory function — recall of an input vs its delay.

Seed ``002`` evaluates a state-space model by its *memory function* ``MF(k)``
(how well the input ``k`` steps back can be read from the state) and its
*memory capacity* ``MC = Σ_k MF(k)``. Here every model is trained on random
item streams with probe tokens that ask for the item ``k`` steps back
(:mod:`obs_dist.tasks.memory_function`), then scored per delay; ``MF(k)`` is
the chance-corrected accuracy.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from launch.evals import plots
from launch.evals.harness import SuiteConfig, build_learner, describe, fit, score
from launch.evals.learners import Learner
from launch.evals.suite import Suite
from obs_dist.tasks.memory_function import (
    MemoryFunctionConfig,
    memory_function,
    memory_function_batches,
)

QUICK = [
    "task.vocab=8", "task.length=24", "task.delays=[1, 2, 4, 8]", "task.batch=16",
    "eval_batches=2", "state.nodes=256", "state.partitions=1", "model.d_model=32",
    "model.writer.k_max=8", "model.writer.active=8", "model.writer.key_dim=16",
    "baseline.heads=2", "train.steps=40", "train.lr=5e-3", "train.warmup=5",
    "train.eval_every=0", "train.progress=false",
]


@dataclass
class MemorySuiteConfig(SuiteConfig):
    """The memory-function suite.

    Attributes:
        task: the probed item stream.
    """

    task: MemoryFunctionConfig = field(default_factory=MemoryFunctionConfig)


def measure(learner: Learner, cfg: MemorySuiteConfig) -> dict[str, Any]:
    """``MF(k)`` and ``MC`` of a trained learner on held-out streams."""
    batches = memory_function_batches(cfg.task, seed_offset=1_000_003)
    corrects, delays = [], []
    for _ in range(cfg.eval_batches):
        batch = next(batches)
        correct, _ = score(learner.predict(batch), batch["targets"])
        corrects.append(correct)
        delays.append(batch["delay_index"])
    return memory_function(torch.cat(corrects), torch.cat(delays), cfg.task.delays,
                           cfg.task.vocab)


def run(cfg: MemorySuiteConfig) -> dict[str, Any]:
    """Train every model on the probed streams and measure its memory function."""
    task = cfg.task
    rows = []
    curves: dict[str, Any] = {}
    for name in cfg.models:
        learner = build_learner(name, cfg, task.input_vocab, task.vocab, commit=False)
        res = fit(learner, memory_function_batches(task), cfg.train.steps, cfg.seconds,
                  desc=f"{name} memory", progress=cfg.train.progress)
        mf = measure(learner, cfg)
        curves[name] = mf
        row = {**describe(learner), "steps": res.steps, "seconds": round(res.seconds, 1),
               "capacity": mf["capacity"]}
        for k, acc in zip(task.delays, mf["accuracy"]):
            row[f"acc@{k}"] = acc
        rows.append(row)
    return {"results": rows, "curves": curves, "delays": list(task.delays),
            "chance": 1.0 / task.vocab}


SUITE = Suite(name="memory", title="Memory function", config=MemorySuiteConfig, run=run,
              quick=QUICK, figures=[("memory_function", plots.memory_function)])
