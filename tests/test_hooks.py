"""The trainer's public step and its named hooks: order by stage, events, bad input."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import torch

from launch.run_config import RunConfig
from launch.runner import build_model
from obs_dist.config import from_dict
from obs_dist.hooks import Hooks, NamedHook
from obs_dist.tasks import task_batches
from obs_dist.trainer import Trainer


def _trainer(steps: int = 3) -> tuple[Trainer, Iterator[dict[str, Any]]]:
    """A tiny committing trainer and its batches (2 streams of 12 steps)."""
    cfg = from_dict(RunConfig, {
        "state": {"nodes": 64, "partitions": 1},
        "model": {"d_model": 16, "writer": {"k_max": 4, "active": 8, "key_dim": 16}},
        "task": {"name": "mqar", "vocab": 16, "seq_len": 12, "pairs": 2, "batch": 2,
                 "commit": True},
        "train": {"steps": steps, "progress": False, "window": 4}})
    model, state = build_model(cfg, torch.device("cpu"))
    return Trainer(cfg.train, model, state, commit=True), task_batches(cfg.task)


def test_hooks_run_by_stage_then_registration_order() -> None:
    calls: list[str] = []
    hooks = Hooks()

    def note(name: str) -> Any:
        return lambda trainer, metrics: calls.append(name)

    hooks.add("metrics", note("metrics"), stage="report")
    hooks.add("stop", note("stop"), stage="control")
    hooks.add("save", note("save"), stage="checkpoint")
    hooks.add("check", note("check"), stage="state")
    hooks.add("replay", note("replay"), stage="state")
    hooks.add("final", note("final"), stage="checkpoint", event="on_end")
    assert hooks.names() == ["check", "replay", "save", "stop", "metrics"]
    hooks.run("on_step", None, {})  # type: ignore[arg-type]
    assert calls == ["check", "replay", "save", "stop", "metrics"]
    hooks.run("on_end", None, {})  # type: ignore[arg-type]
    assert calls[-1] == "final" and len(calls) == 6
    hooks.remove("save")
    assert "save" not in hooks and hooks.names() == ["check", "replay", "stop", "metrics"]


@pytest.mark.parametrize("kwargs, message", [
    ({"stage": "later"}, "stage must be one of"),
    ({"stage": "state", "event": "on_batch"}, "event must be one of"),
])
def test_a_hook_in_an_unknown_stage_or_event_is_refused(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Hooks().add("h", lambda t, m: None, **kwargs)


def test_a_hook_name_is_registered_once() -> None:
    hooks = Hooks()
    hooks.register(NamedHook("checkpoint", lambda t, m: None, "checkpoint"))
    with pytest.raises(ValueError, match="already registered"):
        hooks.add("checkpoint", lambda t, m: None, stage="checkpoint")


def test_train_step_counts_the_step_unless_told_not_to() -> None:
    trainer, batches = _trainer()
    out = trainer.train_step(next(batches))
    assert set(out) >= {"loss", "accuracy", "scored"}
    assert trainer.step == 1 and trainer.counters["samples_total"] == 2
    assert trainer.counters["tokens_total"] == 2 * 12
    trainer.train_step(next(batches), advance=False)  # a replayed batch: no step
    assert trainer.step == 1 and trainer.counters["samples_total"] == 2


def test_fit_runs_on_step_hooks_every_step_and_on_end_once() -> None:
    trainer, batches = _trainer(steps=3)
    seen: list[tuple[str, int]] = []
    trainer.hooks.add("steps", lambda t, m: seen.append(("step", t.step)), stage="report")
    trainer.hooks.add("end", lambda t, m: seen.append(("end", t.step)), stage="checkpoint",
                      event="on_end")
    trainer.fit(batches)
    assert seen == [("step", 1), ("step", 2), ("step", 3), ("end", 3)]
