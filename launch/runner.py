"""Composition: build the state, model, data and trainer from a config and run.

This is the one place that knows every package: ``obs train``, ``obs eval``,
the benchmarks and SLURM jobs all come through here.

The same :func:`run_training` runs as one process, as each of ``obs train
--nproc N``'s local processes, under ``torchrun`` or the DeepSpeed launcher, and
in SLURM tasks: the torch.distributed environment (``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``) decides the world.

Seams for the other components: :func:`build_data` (synthetic streams or the
shard loader of ``task.name = "av"``), the ``sinks`` list of :func:`run_training` (metrics
exporters), and :func:`build_trainer`'s result, whose named hooks
(:mod:`obs_dist.hooks`) the run fills: replica checks (stage ``state``), the
checkpoint (``checkpoint``; and on ``on_end`` the final save), preemption
(``control``), data and writer metrics (``report``).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from launch.jobs.job import preemption_hook
from launch.jobs.spawn import threads_per_rank
from launch.run_config import RunConfig
from monitoring.exporter import PrometheusSink, start_sink_for_current_process
from monitoring.history import RunHistory, new_run_dir
from obs_dist.checkpoint.manager import Checkpointer, attach_checkpointing
from obs_dist.config import load_config, to_dict, to_toml
from obs_dist.engine.collectives import make_block_exchange
from obs_dist.engine.dist import get_local_rank, get_rank, get_world_size, is_rank_zero
from obs_dist.engine.replica import ReplicaChecker
from obs_dist.engine.scheduler import PhaseScheduler
from obs_dist.engine.shard_sync import ShardedDeltaSync
from obs_dist.engine.sharding import build_sharded, sharded_engine
from obs_dist.engine.slow_weights import build_slow_weights, joined_world, release
from obs_dist.engine.sync import DeltaSync
from obs_dist.guards import (
    audio_clip_count,
    require_scored,
    require_scored_in_run,
    task_scores_targets,
)
from obs_dist.hooks import NamedHook
from obs_dist.model.av_stream import AVStreamModel
from obs_dist.model.model import OBSModel
from obs_dist.model.sharded_state import ShardedState
from obs_dist.model.state import BigState
from obs_dist.model.state_budget import HEADROOM, available, check_state_fits, rank_bytes
from obs_dist.storage import RedactCredentials, redact_tree
from obs_dist.tasks import ResumableTaskStream, task_batches
from obs_dist.trainer import MetricsSink, SlowWeights, Trainer
from pipelines.av_data import av_batches, av_eval_batches, ensure_local_shards, num_classes
from pipelines.loader import StreamLoader, build_loader
from pipelines.rehearsal import Rehearsal, batch_bytes, reservoir_bytes

log = logging.getLogger("obs.runner")

EVAL_SEED_OFFSET = 1_000_003  # evaluation sequences never overlap training ones


def setup_logging() -> None:
    """Plain timestamped logs on rank 0; warnings only elsewhere."""
    level = logging.INFO if is_rank_zero() else logging.WARNING
    logging.basicConfig(level=level, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    for handler in logging.getLogger().handlers:  # no URL credentials in any log line
        if not any(isinstance(f, RedactCredentials) for f in handler.filters):
            handler.addFilter(RedactCredentials())


def resolve_config(config_path: str | None, overrides: list[str]) -> RunConfig:
    """Defaults < TOML file < ``--set`` overrides, validated before any work."""
    return load_config(RunConfig, config_path, overrides)


def resolve_device(cfg: RunConfig) -> torch.device:
    """``train.device``; a bare ``cuda`` means this rank's GPU (``LOCAL_RANK``)."""
    if cfg.train.device == "cuda" and get_world_size() > 1:
        return torch.device("cuda", get_local_rank())
    return torch.device(cfg.train.device)


def build_model(cfg: RunConfig, device: torch.device
                ) -> tuple[OBSModel | AVStreamModel, BigState | ShardedState]:
    """The slow-weight model (seeded) and the big state on ``device``.

    ``state.layout = "sharded"``: this rank's column slice only (inside the
    joined world; :func:`build_trainer` wires the sharded engine around it).

    ``av-stream`` runs get the label-free :class:`AVStreamModel`; every other task
    the :class:`OBSModel` with its classification head.
    """
    torch.manual_seed(cfg.train.seed)
    model: OBSModel | AVStreamModel
    if cfg.task.name == "av-stream":
        model = AVStreamModel(cfg.model, cfg.state.nodes).to(device)
    else:
        model = OBSModel(cfg.model, cfg.state.nodes).to(device)
    state: BigState | ShardedState
    if cfg.state.layout == "sharded":
        state = build_sharded(cfg.state, cfg.sync, cfg.model.writer.active, device).state
    else:
        state = BigState(cfg.state, device=device)
    return model, state


@dataclass
class RunData:
    """What a run trains and evaluates on.

    Attributes:
        train: the endless training batch iterator of this rank.
        evals: a factory of fresh evaluation batches (None: no evaluation).
        position: the stream's resumable position (``state_dict``/``load_state_dict``),
            saved in every checkpoint.
        loader: the shard loader of ``av`` runs (for its error counts), else None.
        stages: further stateful stages between the stream and the trainer (name →
            component), checkpointed beside the position: ``rehearsal`` in
            ``av-stream`` runs.
    """

    train: Iterator[dict[str, Any]]
    evals: Callable[[], Iterable[dict[str, Any]]] | None
    position: Any
    loader: StreamLoader | None = None
    stages: dict[str, Any] = field(default_factory=dict)


def build_data(cfg: RunConfig, rank: int = 0, world: int = 1) -> RunData:
    """The batches of the configured task for this rank.

    Synthetic tasks: each rank draws its own sequences (seed + rank) through a
    :class:`ResumableTaskStream`; evaluation sequences are the same on all ranks.
    Audio-visual shards: the loader's rank split, and its cursor as the position.
    """
    if cfg.task.name == "av-stream":
        # One chronological pass (no epochs unless data.loop), with rehearsals of
        # past batches in between; held-out recordings are scored by
        # `obs eval --task word-referent`, not during training.
        loader = build_loader(cfg.data, rank=rank, world_size=world)
        # The rehearsal stage's reservoir and draws are checkpointed (its batches as
        # write-once objects), so a resumed run rehearses what an uninterrupted one would.
        rehearsal = Rehearsal(iter(loader), replace(cfg.rehearsal, seed=cfg.rehearsal.seed + rank))
        return RunData(rehearsal, None, loader, loader, {"rehearsal": rehearsal})
    if cfg.task.name == "av":
        ensure_local_shards(cfg.data, cfg.synthetic if cfg.make_synthetic else None, rank)
        if world > 1:
            torch.distributed.barrier()  # rank 0 may have just written the shards
        loader, batches = av_batches(cfg.data, rank, world)
        evals = (lambda: av_eval_batches(cfg.data)) if cfg.data.eval_source else None
        return RunData(batches, evals, loader, loader)
    stream = ResumableTaskStream(cfg.task, seed_offset=rank)
    return RunData(stream, lambda: task_batches(cfg.task, seed_offset=EVAL_SEED_OFFSET), stream)


def set_threads(world_local: int) -> None:
    """Give each local rank its share of the cores, unless the user chose a count.

    Torch's default (every core in every process) makes ranks on one machine
    fight for cores; on a loaded 2-core machine steps ran 10x slower.
    """
    if os.environ.get("OMP_NUM_THREADS"):
        return
    torch.set_num_threads(threads_per_rank(world_local))


def fan_out(sinks: list[MetricsSink]) -> MetricsSink | None:
    """One sink that calls every sink of the list (None for an empty list)."""
    if not sinks:
        return None
    if len(sinks) == 1:
        return sinks[0]

    def sink(metrics: dict[str, float], step: int) -> None:
        for s in sinks:
            s(metrics, step)

    return sink


def build_trainer(cfg: RunConfig, model: OBSModel, state: BigState | ShardedState,
                  slow: SlowWeights,
                  sinks: list[MetricsSink] | None = None) -> Trainer:
    """The trainer with the distributed engine wired in.

    One process: identity sync, no exchange, no replica checks. Several ranks:
    :class:`DeltaSync` for commits, the per-step block exchange of the
    sequential phase, and replica checksums every ``sync.check_every`` steps.
    The phase scheduler governs committing tasks (the big state is what the
    phases order); per-sequence tasks keep each stream's memory private.
    """
    world = get_world_size()
    device = state.device
    sync: DeltaSync | ShardedDeltaSync
    sharded: dict[str, Any] = {}
    if isinstance(state, ShardedState):
        engine = sharded_engine(state, cfg.sync, cfg.model.writer.active,
                                rule=cfg.model.writer.rule)
        sync = engine.sync
        sharded = {"deferred": engine.deferred, "make_memory": engine.make_memory}
    else:
        sync = DeltaSync(state.bounds, state.num_nodes, cfg.sync, cfg.model.writer.rule)
    scheduler = PhaseScheduler(cfg.scheduler, device) if cfg.task.commits else None
    trainer = Trainer(cfg.train, model, state, commit=cfg.task.commits,
                      penalty=cfg.state.penalty, slow=slow, sync=sync,
                      sink=fan_out(list(sinks or [])), scheduler=scheduler,
                      exchange=make_block_exchange(sync.meter) if world > 1 else None,
                      parallel_every=cfg.sync.parallel_every, **sharded)
    if world > 1 and cfg.sync.check_every:
        trainer.hooks.add("replica_check", ReplicaChecker(
            state, cfg.sync.check_every, model if cfg.sync.check_slow_weights else None,
            before_check=trainer.flush), stage="state")
    return trainer


def save_final(cfg: RunConfig, model: OBSModel, metrics: dict[str, float]) -> Path:
    """Rank 0 writes the resolved config, final slow weights and metrics."""
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(redact_tree(to_dict(cfg)), indent=2))
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
                 sinks: list[MetricsSink] | None = None,
                 hooks: Sequence[NamedHook[Trainer]] = ()) -> dict[str, float]:
    """Resolve the config, join the world, train, save, and return the final metrics.

    Args:
        config_path: TOML file (None: defaults only).
        overrides: ``a.b=value`` strings, applied after the file.
        resume: ``auto`` (newest complete checkpoint of ``checkpoint.url``, if
            any), ``never``, or a checkpoint (step, manifest or store URL).
        sinks: metrics sinks, all called (the Prometheus exporter of
            ``metrics.enabled`` is added by the runner).
        hooks: extra named hooks for the trainer (each in its event and stage).

    Returns:
        This rank's final metrics (step, loss, accuracy, eval accuracy, …).
    """
    cfg = resolve_config(config_path, overrides)
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    set_threads(local_world)
    device = resolve_device(cfg)
    # Before anything is allocated (or the world joined): refuse a state that cannot fit.
    need = check_state_fits(cfg.state, int(os.environ.get("WORLD_SIZE", "1")),
                            cfg.model.d_model, available(device, local_world))
    log.info("state: %s layout, ~%.2f GiB per rank (estimate)", cfg.state.layout, need / 2**30)
    with joined_world(cfg.dist, device):
        return _train(cfg, device, resume, sinks, hooks)


def _train(cfg: RunConfig, device: torch.device, resume: str,
           sinks: list[MetricsSink] | None, hooks: Sequence[NamedHook[Trainer]]
           ) -> dict[str, float]:
    """:func:`run_training` inside the joined world: build, resume, train, save."""
    exporter: PrometheusSink | None = None
    ckpt: Checkpointer | None = None
    slow: SlowWeights | None = None
    history: RunHistory | None = None
    try:
        setup_logging()
        rank, world = get_rank(), get_world_size()
        history = start_history(cfg)
        data = build_data(cfg, rank, world)
        # One pass's new batches (av-stream, when the index tells): sizes the
        # rehearsal reservoir's estimate and the progress bar.
        new_batches = data.loader.pass_batches() \
            if cfg.task.name == "av-stream" and data.loader is not None else None
        _check_reservoir_fits(cfg, data, device, world, new_batches)
        if cfg.task.name == "av" and not cfg.model.classes:
            cfg.model.classes = num_classes(cfg.data)
        model, state = build_model(cfg, device)
        slow, engine = build_slow_weights(cfg.dist, cfg.deepspeed, model, cfg.train,
                                          cfg.task.batch)
        if is_rank_zero():
            log.info("resolved config: %s", json.dumps(redact_tree(to_dict(cfg)), sort_keys=True))
            log.info("world %d, device %s, slow-weight engine %s", world, device, engine)
        all_sinks = list(sinks or [])
        if cfg.metrics.enabled:
            exporter = start_sink_for_current_process(cfg.metrics)
            all_sinks.append(exporter)
        trainer = build_trainer(cfg, model, state, slow, all_sinks)
        if new_batches is not None:
            trainer.expected_steps = new_batches * (1 + cfg.rehearsal.ratio)
        trainer.hooks.add("nodes_written", _nodes_written, stage="report")
        if data.loader is not None:
            trainer.hooks.add("data_metrics", _data_metrics(data.loader), stage="report")
        ckpt = attach_checkpointing(trainer, cfg.checkpoint, extra_state={"data": data.position,
                                                                 **data.stages},
                                    rank=rank, world=world,
                                    config=redact_tree(to_dict(cfg)))
        resumed = ckpt.resume(resume)
        if resumed is not None and is_rank_zero():
            log.info("resumed from the checkpoint of step %d", resumed)
        trainer.hooks.add("preemption", preemption_hook(), stage="control")
        # The end of a run (or a preempted one) is always resumable.
        trainer.hooks.add("final_checkpoint", ckpt.save_unsaved, stage="checkpoint",
                          event="on_end")
        for hook in hooks:
            trainer.hooks.register(hook)
        if history is not None:
            history.attach(trainer)  # last of stage report: it records every entry
        metrics = trainer.fit(_scored_batches(cfg, data, fresh=resumed is None), data.evals)
        if "step" not in metrics:  # resumed from a run that had already finished
            log.info("the checkpoint is at step %d of %d: nothing left to train",
                     trainer.step, cfg.train.steps)
            metrics = {"step": float(trainer.step), **trainer.counters}
            if data.evals is not None:
                trainer.flush()
                metrics.update(trainer.evaluate(data.evals(), cfg.train.eval_batches))
        metrics.update({"world_size": float(world), "rank": float(rank),
                        "resumed_from": float(-1 if resumed is None else resumed)})
        if is_rank_zero():
            out = save_final(cfg, model, metrics)
            log.info("final metrics written to %s", out / "metrics.json")
        ckpt.require_final()  # a lost final checkpoint fails the run (exit 1)
        _require_heard(cfg, trainer)
        return metrics
    finally:
        if ckpt is not None:
            ckpt.close()
        if exporter is not None:
            exporter.close()
        if history is not None:
            history.close()
        release(slow)  # DeepSpeed's engine holds process groups


def start_history(cfg: RunConfig) -> RunHistory | None:
    """Rank 0: a new ``out_dir/history/<run id>/`` with the resolved config in it.

    A new folder per run, so a rerun or a resume into the same ``out_dir``
    keeps every earlier run's history; the config is written before any work,
    so a run that fails still leaves it. None on other ranks or when disabled.
    """
    if not (cfg.history.enabled and is_rank_zero()):
        return None
    history = RunHistory(new_run_dir(cfg.out_dir), cfg.history, cfg.train.log_every,
                         cfg.train.steps)
    history.write_config(to_toml(redact_tree(to_dict(cfg))))
    log.info("run history in %s", history.run_dir)
    return history


def _scored_batches(cfg: RunConfig, data: RunData, fresh: bool) -> Iterator[dict[str, Any]]:
    """The training batches; a fresh run must find something to learn from first.

    :func:`obs_dist.guards.require_scored` refuses, before the first optimizer
    step, a stream whose first batches score no target (e.g. no label is in
    classes.json), or, for the label-free ``av-stream``, none of whose first
    clips has sound (recordings packed without their audio track): it learns
    by hearing. Its silent stretches are scored as nothing by design, so only a
    missing track is refused here; a pass in which no clip was ever heard fails
    at the end (:func:`_require_heard`).
    """
    if fresh and cfg.task.name == "av-stream":
        return require_scored(
            data.train, lambda: (
                f"task 'av-stream' learns by hearing a clip and finding its picture, and "
                f"no clip of {cfg.data.source or 'the source'} has an audio track so far. "
                f"Pack recordings with their audio (or a same-named wav/flac beside "
                f"each video)"), count=audio_clip_count, what="no clip had an audio track")
    if not (fresh and task_scores_targets(cfg.task.name)):
        return data.train
    loader = data.loader
    explain = loader.explain_unscored if loader is not None else (
        lambda: f"task {cfg.task.name!r} produced batches without a scored position")
    return require_scored(data.train, explain)


def _check_reservoir_fits(cfg: RunConfig, data: RunData, device: torch.device,
                          world: int, new_batches: int | None) -> None:
    """Refuse a rehearsal reservoir that would outgrow this rank's RAM, before training.

    The reservoir fills as the pass goes (``rehearsal.capacity`` batches, held on
    the host), so a run that does not fit would be killed hours in. On a CPU
    run it shares the RAM with the state (the estimate of
    :func:`obs_dist.model.state_budget.rank_bytes`). ``new_batches``: the pass's
    new batches when known (a shorter pass keeps fewer than the capacity).

    Raises:
        ValueError: naming the estimate, the RAM each rank has and the capacity
            that would fit.
    """
    if cfg.task.name != "av-stream" or data.loader is None or cfg.rehearsal.ratio == 0:
        return
    d = cfg.data
    one = batch_bytes(d.streams, d.window, d.frames, d.image_size, d.n_mels, d.audio_frames)
    need = reservoir_bytes(cfg.rehearsal, one, new_batches)
    budget = available(torch.device("cpu"), int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    state = rank_bytes(cfg.state, cfg.state.layout, world, cfg.model.d_model) \
        if device.type == "cpu" else 0
    room = budget.bytes_per_rank - state
    log.info("rehearsal reservoir: up to %.2f GiB per rank (%d batches of %.1f MiB)",
             need / 2**30, need // max(one, 1), one / 2**20)
    if need <= room:
        return
    fits = max(room // max(one, 1), 0)
    advice = (f"set rehearsal.capacity <= {fits} or make the batches smaller" if fits else
              "not one batch fits: make the batches smaller (data.streams, data.window, "
              "data.frames, data.image_size) or turn rehearsal off (rehearsal.ratio = 0)")
    raise ValueError(
        f"the rehearsal reservoir would grow to ~{need / 2**30:.1f} GiB per rank "
        f"({need // one} batches of ~{one / 2**20:.1f} MiB: data.streams x data.window clips "
        f"of data.frames x data.image_size^2 video and data.n_mels log-mel audio), but each "
        f"rank has ~{room / 2**30:.1f} GiB ({budget.what}, {HEADROOM:.0%} usable"
        f"{', less the state' if state else ''}); {advice}")


def _require_heard(cfg: RunConfig, trainer: Trainer) -> None:
    """A label-free pass that scored no clip learned nothing: fail it (exit 1).

    Checked after the final checkpoint and metrics are written, so nothing of
    the run is lost; scoring tasks are refused before their first step instead.
    """
    if cfg.task.name != "av-stream":
        return
    require_scored_in_run(
        trainer.counters["scored_total"], trainer.step,
        f"no clip's sound rose above its window's noise floor by model.stream.gate = "
        f"{cfg.model.stream.gate} (log-mel units) while its picture was there. Check "
        f"that the recordings of {cfg.data.source or 'the source'} have speech in "
        f"their audio, or lower model.stream.gate")


def _data_metrics(loader: StreamLoader) -> Callable[[Trainer, dict[str, float]], None]:
    """An ``on_step`` hook: the loader's skipped samples by kind, and its clips/s."""
    last = [time.perf_counter(), loader.clips_seen]

    def hook(trainer: Trainer, metrics: dict[str, float]) -> None:
        for kind, n in loader.errors.items():
            metrics[f"data_errors_total.{kind}"] = float(n)
        for kind, n in loader.unknown_labels.items():
            metrics[f"data_unknown_labels_total.{kind}"] = float(n)
        metrics["data_store_retries_total"] = float(loader.store_retries)
        now = time.perf_counter()
        metrics["data_clips_per_s"] = (loader.clips_seen - last[1]) / max(now - last[0], 1e-9)
        last[:] = [now, loader.clips_seen]

    return hook


def _nodes_written(trainer: Trainer, metrics: dict[str, float]) -> None:
    """``on_step``: the writer's k-hat (``mean_count``) under monitoring's ``nodes_written``."""
    if "mean_count" in metrics:
        metrics["nodes_written"] = metrics["mean_count"]


def run_eval(config_path: str | None, overrides: list[str], batches: int) -> dict[str, float]:
    """Evaluate the weights saved in ``out_dir`` on fresh task batches."""
    cfg = resolve_config(config_path, overrides)
    setup_logging()
    device = torch.device(cfg.train.device)
    model, state = build_model(cfg, device)
    load_weights(model, Path(cfg.out_dir) / "model.safetensors")
    sharded: dict[str, Any] = {}
    if isinstance(state, ShardedState):  # one process: one slice, all of X
        engine = sharded_engine(state, cfg.sync, cfg.model.writer.active,
                                rule=cfg.model.writer.rule)
        sharded = {"deferred": engine.deferred, "make_memory": engine.make_memory}
    trainer = Trainer(cfg.train, model, state, commit=cfg.task.commits, **sharded)
    evals = build_data(cfg).evals
    if evals is None:
        raise ValueError(f"task {cfg.task.name!r} has no evaluation stream of its own; "
                         "use `obs eval --task ...` for the audio-visual suites")
    return trainer.evaluate(evals(), batches)
