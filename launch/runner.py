"""Composition: build the state, model, data and trainer from a config and run.

This is the one place that knows every package: ``obs train``, ``obs eval``,
the benchmarks and SLURM jobs all come through here.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from launch.run_config import RunConfig
from obs_dist.config import load_config, to_dict
from obs_dist.dist import is_rank_zero
from obs_dist.model import OBSModel
from obs_dist.state import BigState
from obs_dist.tasks import task_batches
from obs_dist.trainer import MetricsSink, Trainer

log = logging.getLogger("obs.runner")

EVAL_SEED_OFFSET = 1_000_003  # evaluation sequences never overlap training ones


def setup_logging() -> None:
    """Plain timestamped logs on rank 0; warnings only elsewhere."""
    level = logging.INFO if is_rank_zero() else logging.WARNING
    logging.basicConfig(level=level, format="%(asctime)s %(name)s %(levelname)s %(message)s")


def resolve_config(config_path: str | None, overrides: list[str]) -> RunConfig:
    """Defaults < TOML file < ``--set`` overrides, validated before any work."""
    return load_config(RunConfig, config_path, overrides)


def build_model(cfg: RunConfig, device: torch.device) -> tuple[OBSModel, BigState]:
    """The slow-weight model (seeded) and the big state on ``device``."""
    torch.manual_seed(cfg.train.seed)
    model = OBSModel(cfg.model, cfg.state.nodes).to(device)
    state = BigState(cfg.state, device=device)
    return model, state


def build_batches(cfg: RunConfig, rank: int = 0,
                  world: int = 1) -> tuple[Iterator[dict[str, Any]],
                                           Callable[[], Iterable[dict[str, Any]]] | None]:
    """Training batches and a factory of fresh evaluation batches for the task."""
    # Each rank draws its own sequences; evaluation sequences are the same on all ranks.
    train = task_batches(cfg.task, seed_offset=rank)
    return train, lambda: task_batches(cfg.task, seed_offset=EVAL_SEED_OFFSET)


def save_final(cfg: RunConfig, model: OBSModel, metrics: dict[str, float]) -> Path:
    """Rank 0 writes the resolved config, final slow weights and metrics."""
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(to_dict(cfg), indent=2))
    weights = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(weights, str(out / "model.safetensors"))
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True))
    return out


def load_weights(model: OBSModel, path: Path) -> None:
    """Load slow weights saved by :func:`save_final` (safetensors, no pickle)."""
    if not path.is_file():
        raise ValueError(f"no trained weights at {path}; run `obs train` with this out_dir first")
    model.load_state_dict(load_file(str(path)))


def run_training(config_path: str | None, overrides: list[str], resume: str = "auto",
                 sink: MetricsSink | None = None) -> dict[str, float]:
    """Resolve the config, train, save, and return the final metrics.

    Args:
        config_path: TOML file (None: defaults only).
        overrides: ``a.b=value`` strings, applied after the file.
        resume: ``auto`` (newest complete checkpoint if any), ``never``, or a path.
        sink: extra metrics sink.

    Returns:
        The final metrics (step, loss, accuracy, eval accuracy, …).
    """
    cfg = resolve_config(config_path, overrides)
    setup_logging()
    if is_rank_zero():
        log.info("resolved config: %s", json.dumps(to_dict(cfg), sort_keys=True))
    device = torch.device(cfg.train.device)
    model, state = build_model(cfg, device)
    trainer = Trainer(cfg.train, model, state, commit=cfg.task.commits,
                      penalty=cfg.state.penalty, sink=sink)
    train, evals = build_batches(cfg)
    metrics = trainer.fit(train, evals)
    if is_rank_zero():
        out = save_final(cfg, model, metrics)
        log.info("final metrics written to %s", out / "metrics.json")
    return metrics


def run_eval(config_path: str | None, overrides: list[str], batches: int) -> dict[str, float]:
    """Evaluate the weights saved in ``out_dir`` on fresh task batches."""
    cfg = resolve_config(config_path, overrides)
    setup_logging()
    device = torch.device(cfg.train.device)
    model, state = build_model(cfg, device)
    load_weights(model, Path(cfg.out_dir) / "model.safetensors")
    trainer = Trainer(cfg.train, model, state, commit=cfg.task.commits)
    _, evals = build_batches(cfg)
    assert evals is not None
    return trainer.evaluate(evals(), batches)
