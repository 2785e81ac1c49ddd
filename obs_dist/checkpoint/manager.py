"""The checkpoint manager of a run: config, the step hook, saving, resuming.

The runner needs two lines (after building the trainer, before ``fit``)::

    ckpt = attach_checkpointing(trainer, cfg.checkpoint, extra_state={"data": train},
                                rank=rank, world=world, config=to_dict(cfg))
    ckpt.resume(resume)          # "auto" | "never" | a step | a manifest or store URL

(with ``train`` a :class:`obs_dist.tasks.ResumableTaskStream`, what
``task_batches`` returns).

``attach_checkpointing`` registers the ``checkpoint`` hook (``on_step``, stage
``checkpoint``) in ``trainer.hooks``, which writes a checkpoint every ``every``
steps, and starts recording the state entries that committed deltas change (for
incremental logs). ``resume`` loads the newest
checkpoint whose objects all verify — falling back past damaged ones with a
warning that names the bad object — into the trainer, the big state and every
registered component. With several ranks, rank 0 proposes each candidate and
all ranks agree (a collective) before anything is used, so replicas never load
different checkpoints.
"""

from __future__ import annotations

import itertools
import logging
import sys
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from obs_dist.checkpoint.codec import (
    decode_from_objects,
    encode_to_objects,
    register_plain_class,
)
from obs_dist.checkpoint.delta_log import TouchedEntries, encode_log, entry_bytes
from obs_dist.checkpoint.format import (
    CheckpointCorrupt,
    Manifest,
    apply_retention,
    base_key,
    check_compatible,
    list_steps,
    log_key,
    put_object,
    read_manifest,
    read_rank,
    read_rank_index,
    state_shape,
    write_base,
    write_manifest,
    write_rank,
)
from obs_dist.checkpoint.lease import (
    RUN_ID_ENV,
    StoreInUse,
    acquire,
    collect_leftovers,
    release,
    renew,
    run_identity,
)
from obs_dist.checkpoint.rank_state import Stateful, capture_rank, restore_rank
from obs_dist.checkpoint.shard_state import (
    check_layout,
    load_layout,
    sharded_chain,
    sharded_kind,
    slice_shape,
    write_slice_base,
    write_slice_log,
)
from obs_dist.checkpoint.side_objects import SideObjects
from obs_dist.engine.collectives import all_ranks_agree, broadcast_int
from obs_dist.engine.dist import barrier, get_rank, get_world_size
from obs_dist.guards import RunFailed, nonfinite_path, tensors_finite
from obs_dist.model.sharded_state import ShardedState
from obs_dist.model.state import BigState
from obs_dist.storage import ObjectStore, StorageError, open_store
from obs_dist.trainer import Trainer

log = logging.getLogger("obs.checkpointing")

# Upper bound of a log's safetensors header, so that the logs' real size stays
# within ``base_every_fraction`` of the state.
LOG_HEADER_BYTES = 512

HOOK_NAME = "checkpoint"


@dataclass
class CheckpointConfig:
    """Where and how often checkpoints are written.

    Attributes:
        url: the store: a local path, ``file://path`` or ``s3://bucket/prefix``;
            empty disables checkpointing.
        every: write a checkpoint every this many steps (0: only explicit saves).
        keep_bases: retention keeps this many newest bases and every checkpoint on them.
        base_every_fraction: write a new full base instead of a log once the logs
            since the last base would exceed this fraction of the state's bytes.
        endpoint_url: S3 endpoint (MinIO, Ceph, moto); None: environment or AWS.
        retries: retries of transient S3 failures per request.
        patience_s: besides ``retries``, keep retrying a failing S3 request this
            long (an outage; each backoff sleep is at most 10 s). Keep it below
            ``dist.timeout_s``: the other ranks wait for the save.
        lease_s: another run's lease on the store (:mod:`obs_dist.checkpoint.lease`)
            not renewed for this long is taken over (its run is gone).
        shared: a local ``url`` is on a file system every node of a multi-node
            job mounts at the same path. ``obs submit --nodes N`` (N > 1) refuses
            a local ``url`` on a node-local file system unless this is true
            (:mod:`launch.jobs.shared_storage`); S3 needs nothing.
    """

    url: str = ""
    every: int = 1000
    keep_bases: int = 2
    base_every_fraction: float = 0.5
    endpoint_url: str | None = None
    retries: int = 5
    patience_s: float = 120.0
    lease_s: float = 1800.0
    shared: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.shared, bool):
            raise ValueError(f"shared must be true or false, got {self.shared!r}")
        if "://" in self.url and not self.url.startswith(("s3://", "file://")):
            raise ValueError(f"url must be a path, file:// or s3://, got {self.url!r}")
        if self.every < 0:
            raise ValueError(f"every must be >= 0, got {self.every}")
        if self.keep_bases < 1:
            raise ValueError(f"keep_bases must be >= 1, got {self.keep_bases}")
        if not 0 < self.base_every_fraction <= 100:
            raise ValueError(f"base_every_fraction must be in (0, 100], got "
                             f"{self.base_every_fraction}")
        if self.retries < 0:
            raise ValueError(f"retries must be >= 0, got {self.retries}")
        if self.patience_s < 0:
            raise ValueError(f"patience_s must be >= 0, got {self.patience_s}")
        if not self.lease_s > 0:
            raise ValueError(f"lease_s must be > 0, got {self.lease_s}")


class CheckpointNotWritten(RunFailed):
    """A run ended without a complete checkpoint of its last step."""


# ------------------------------------------------------------ checkpointer
class Checkpointer:
    """Writes checkpoints of a trainer and restores them.

    Use :func:`attach_checkpointing` to build one. It is also the ``on_step``
    hook named ``checkpoint`` (``hook(trainer, metrics)``) and adds ``checkpoint_*`` metrics.
    """

    def __init__(self, trainer: Trainer, cfg: CheckpointConfig, store: ObjectStore | None,
                 extra_state: Mapping[str, Stateful], rank: int, world: int,
                 config: Mapping[str, Any] | None) -> None:
        self.trainer = trainer
        self.cfg = cfg
        self.store = store
        self.extra = dict(extra_state)
        # Components with write-once objects (the rehearsal reservoir): written once each.
        self.side = SideObjects(self.extra, rank)
        self.rank = rank
        self.world = world
        self.config = dict(config or {})
        # No config (a library user, a test): no run identity, no lease, no same-run check.
        self.run_id = run_identity(self.config) if self.config else ""
        self.last: Manifest | None = None  # rank 0: the newest checkpoint, whose chain grows
        self.last_step: int | None = None  # every rank: step of the newest complete checkpoint
        self.last_time: float | None = None
        self.failures = 0
        self.refused_nonfinite = 0  # checkpoints not written because of NaN/inf
        self.leftovers_removed = 0  # rank 0: .tmp-* files of killed writes deleted at start
        self.last_seconds = 0.0
        self.last_bytes = 0
        # Replicas are identical, so only rank 0 writes (and tracks) the big state;
        # in the sharded layout every rank writes (and tracks) its own slice.
        self.sharded = isinstance(trainer.state, ShardedState)
        writes_state = rank == 0 or self.sharded
        self.tracker = TouchedEntries(trainer.state.num_nodes) if writes_state else None
        self._detach = self.tracker.attach(trainer.state) if self.tracker else (lambda: None)

    @property
    def enabled(self) -> bool:
        """Whether a store is configured."""
        return self.store is not None

    def close(self) -> None:
        """Stop recording commits, leave the trainer's hooks, release the store's lease."""
        self._detach()
        self.trainer.hooks.remove(HOOK_NAME)
        if self.store is not None and self.rank == 0 and self.run_id:
            release(self.store, self.run_id)

    def __call__(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        if self.cfg.every and trainer.step % self.cfg.every == 0:
            self.save()
        # Keys of monitoring/metric_catalog.py (obs_checkpoint_age_seconds, …).
        metrics["ckpt_failures_total"] = float(self.failures)
        metrics["ckpt_leftovers_removed_total"] = float(self.leftovers_removed)
        if self.last_time is not None:
            metrics["ckpt_age_s"] = time.time() - self.last_time
            metrics["ckpt_seconds"] = self.last_seconds
            metrics["ckpt_bytes"] = float(self.last_bytes)

    def save_unsaved(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        """Save the current step unless it is saved already (an ``on_end`` hook).

        The end of a run, a stopped (preempted) one included, is then always
        resumable. A failure is counted in the final ``metrics`` too;
        :meth:`require_final` then turns it into a failed run.
        """
        if self.enabled and self.last_step != trainer.step:
            self.save()
        if self.enabled:
            metrics["ckpt_failures_total"] = float(self.failures)
            metrics["ckpt_leftovers_removed_total"] = float(self.leftovers_removed)

    def require_final(self) -> None:
        """Fail the run if its last step has no complete checkpoint (call after ``fit``).

        Raises:
            CheckpointNotWritten: checkpointing is on and the trainer's step is
                not the newest complete checkpoint's (a storage failure, or
                NaN/inf weights that must not be saved).
        """
        if not self.enabled or self.last_step == self.trainer.step:
            return
        assert self.store is not None
        raise CheckpointNotWritten(
            f"the final checkpoint (step {self.trainer.step}) was not written to "
            f"{self.store.root}: ckpt_failures_total = {self.failures}, refused as NaN/inf "
            f"= {self.refused_nonfinite}; the newest complete checkpoint is step "
            f"{self.last_step} (see the errors logged above)")

    # ---------------------------------------------------------------- saving
    def save(self, force_base: bool = False) -> Manifest | None:
        """Write a checkpoint of the current step (a collective: call it on every rank).

        Storage failures are logged and counted (``ckpt_failures_total``),
        not raised: training goes on and the next checkpoint covers the gap.
        A step whose slow weights, optimizer or big state hold NaN/inf is not
        written at all (logged, counted in ``refused_nonfinite``), so the
        newest checkpoint, which retention always keeps, stays finite.

        Returns:
            The manifest on rank 0 when the checkpoint is complete, else None.
        """
        if self.store is None:
            raise ValueError("checkpointing is disabled: set checkpoint.url")
        store, trainer = self.store, self.trainer
        step = trainer.step
        if self.last_step == step and not force_base:
            return self.last if self.rank == 0 else None
        t0 = time.perf_counter()
        flush = getattr(trainer, "flush", None)
        if callable(flush):
            # Deltas the parallel phase holds back are committed now (a collective):
            # replicas agree only at sync points, and a checkpoint must be one.
            flush()
        tree = capture_rank(trainer, self.extra)
        bad = nonfinite_path(tree)
        if bad is None and self.tracker is not None and not tensors_finite(trainer.state.parts):
            bad = "the big state"
        if not all_ranks_agree(bad is None):
            # A diverged run must never replace the last finite checkpoint.
            self.refused_nonfinite += 1
            log.error("checkpoint at step %d not written: %s holds NaN/inf (the last finite "
                      "checkpoint, step %s, is kept)", step, bad or "another rank's state",
                      self.last_step)
            return None
        # Write-once objects first (only those no complete checkpoint holds yet).
        written = self._attempt_value(f"writing rank {self.rank}'s objects",
                                      lambda: self.side.write(store))
        ok = not isinstance(written, str)
        listing, records, new_bytes = written if ok else ({}, {}, 0)
        tree["objects"] = listing  # component → object key per slot
        document, tensors = encode_to_objects(tree)
        chain: dict[str, Any] = {}
        slices: dict[str, dict[str, Any]] = {}
        if self.sharded:  # every rank's slice first, listed in its rank index
            state = trainer.state
            assert isinstance(state, ShardedState) and self.tracker is not None
            base = sharded_kind(state, self.tracker.count(), self.last,
                                self.cfg.base_every_fraction, force_base)
            keys = self.tracker.keys()
            ok = ok and self._attempt(f"rank {self.rank}'s slice", lambda: slices.update(
                write_slice_base(store, state, step) if base
                else write_slice_log(store, state, step, keys)))
            if self.rank == 0:
                chain = sharded_chain(step, self.world, base, self.last)
        ok = ok and self._attempt(f"rank {self.rank} state", lambda: write_rank(
            store, step, self.rank, document, tensors, shared={**records, **slices}))
        if self.rank == 0 and ok and not self.sharded:
            ok = self._attempt("big state", lambda: chain.update(self._write_state(force_base)))
        barrier()
        manifest = self._finish(step, chain) if self.rank == 0 and ok else None
        # Every rank learns whether the checkpoint is complete (for its metrics).
        complete = broadcast_int(int(manifest is not None)) == 1
        if not complete:
            self.failures += 1 if (self.rank == 0 or not ok) else 0
            return None
        self.side.committed(records)
        self.last_time = time.time()
        self.last_seconds = time.perf_counter() - t0
        if manifest is None:  # ranks other than 0: their own share
            if self.tracker is not None:  # their slice's entries are in this checkpoint
                self.tracker.clear()
            self.last_step = step
            self.last_bytes = len(document) + len(tensors) + new_bytes
            return None
        assert self.tracker is not None
        self.tracker.clear()
        self.last = manifest
        self.last_step = step
        self.last_bytes = manifest.own_bytes() + new_bytes
        log.info("checkpoint %s step %d (%s): %.1f MB in %.2f s", store.root, step,
                 manifest.kind, self.last_bytes / 1e6, self.last_seconds)
        self._attempt("retention", lambda: apply_retention(store, self.cfg.keep_bases, manifest))
        return manifest

    def _attempt(self, what: str, fn: Any) -> bool:
        try:
            fn()
            return True
        except (StorageError, OSError) as exc:
            log.error("checkpoint at step %d: writing %s failed: %s", self.trainer.step, what,
                      exc)
            return False

    def _attempt_value(self, what: str, fn: Any) -> Any:
        """``fn()``, or a sentence on why it failed (a storage error, logged)."""
        try:
            return fn()
        except (StorageError, OSError) as exc:
            log.error("checkpoint at step %d: %s failed: %s", self.trainer.step, what, exc)
            return f"{what} failed: {exc}"

    def _write_state(self, force_base: bool) -> dict[str, Any]:
        """Write a base or a log of the big state; returns the manifest's state fields."""
        assert self.store is not None and self.tracker is not None
        state, step, last = self.trainer.state, self.trainer.step, self.last
        assert isinstance(state, BigState)
        keys = self.tracker.keys()
        estimate = keys.numel() * entry_bytes(state.dtype) + LOG_HEADER_BYTES
        limit = self.cfg.base_every_fraction * state.nbytes
        if force_base or last is None or last.log_bytes + estimate > limit:
            objects = write_base(self.store, state, step)
            return {"base_step": step, "base": [base_key(step, p) for p in
                                                range(len(state.parts))],
                    "logs": [], "log_bytes": 0, "touched": 0, "objects": objects}
        key = log_key(step)
        info = put_object(self.store, key, encode_log(state, keys))
        objects = {k: last.objects[k] for k in [*last.base, *last.logs]}
        objects[key] = info
        return {"base_step": last.base_step, "base": list(last.base),
                "logs": [*last.logs, key], "log_bytes": last.log_bytes + int(info["size"]),
                "touched": int(keys.numel()), "objects": objects}

    def _finish(self, step: int, chain: dict[str, Any]) -> Manifest | None:
        """Rank 0: gather every rank's objects and write the manifest."""
        assert self.store is not None
        objects = dict(chain.pop("objects"))
        new_logs = chain.pop("new_logs", [])
        for r in range(self.world):
            try:
                objects.update(read_rank_index(self.store, step, r))
            except FileNotFoundError:
                log.error("checkpoint at step %d: rank %d did not finish writing; no manifest",
                          step, r)
                return None
            except (StorageError, OSError, ValueError) as exc:
                log.error("checkpoint at step %d: index of rank %d unreadable: %s", step, r, exc)
                return None
        for key in new_logs:  # the sharded layout's slice logs: sizes from the indices
            chain["log_bytes"] += int(objects[key]["size"])
        lost = (self._attempt_value("lease", lambda: renew(self.store, self.run_id))
                if self.run_id else None)
        if lost:
            # Another run writes here now: a manifest of ours would interleave with its.
            log.error("checkpoint at step %d: no manifest written: %s", step, lost)
            return None
        state = self.trainer.state
        shape = slice_shape(state) if isinstance(state, ShardedState) else state_shape(state)
        manifest = Manifest(step=step, world_size=self.world, state=shape, objects=objects,
                            counters=dict(self.trainer.counters), config=self.config,
                            run_id=self.run_id, **chain)
        if not self._attempt("manifest", lambda: write_manifest(self.store, manifest)):
            return None
        return manifest

    # -------------------------------------------------------------- resuming
    def _target(self, spec: str) -> tuple[ObjectStore | None, list[int] | None]:
        """The store to read and the candidate steps (None: every manifest, newest first)."""
        if spec == "auto":
            return self.store, None
        if spec.isdigit():
            if self.store is None:
                raise ValueError(f"--resume {spec}: no checkpoint.url configured")
            return self.store, [int(spec)]
        root, sep, name = spec.rpartition("manifests/")
        if sep and name.endswith(".json") and name[:-5].isdigit():
            store = open_store(root.rstrip("/") or ".", endpoint_url=self.cfg.endpoint_url,
                               retries=self.cfg.retries, patience_s=self.cfg.patience_s)
            return store, [int(name[:-5])]
        return open_store(spec, endpoint_url=self.cfg.endpoint_url, retries=self.cfg.retries,
                          patience_s=self.cfg.patience_s), None

    def resume(self, spec: str = "auto") -> int | None:
        """Load a checkpoint (a collective: call it on every rank, before ``fit``).

        Args:
            spec: ``auto`` (the newest complete checkpoint of the configured
                store, skipping damaged ones), ``never``, a step number, a
                manifest URL/path (``…/manifests/NNNNNNNNNN.json``), or a store URL
                (its newest complete checkpoint).

        Returns:
            The step resumed from, or None when there was nothing to resume.

        Raises:
            ValueError: no checkpoint could be used although some exist, an
                explicitly named one is damaged, or the checkpoint does not fit
                this run (state size, world size, model).
        """
        if spec == "never":
            return None
        store, explicit = self._target(spec)
        if store is None:
            log.info("checkpointing disabled (no checkpoint.url): starting fresh")
            return None
        candidates = explicit if explicit is not None else (
            sorted(list_steps(store), reverse=True) if self.rank == 0 else [])
        if spec != "auto" and broadcast_int(len(candidates)) == 0:
            raise ValueError(f"--resume {spec}: no checkpoint in {store.root}")
        problems: list[str] = []
        for attempt in itertools.count():
            proposal = candidates[attempt] if attempt < len(candidates) else -1
            step = broadcast_int(proposal if self.rank == 0 else -1)
            if step < 0:
                break
            problem, loaded = self._try_load(store, step, same_run=spec == "auto")
            if all_ranks_agree(problem is None):
                assert loaded is not None
                self._adopt(store, *loaded)
                log.info("resumed from %s step %d", store.root, step)
                return step
            problem = problem or "another rank could not read its part"
            problems.append(f"step {step}: {problem}")
            if explicit is not None:
                raise CheckpointCorrupt(f"cannot resume from step {step}: {problem}")
            log.warning("checkpoint at step %d is unusable (%s); trying the previous one",
                        step, problem)
        if problems:
            raise ValueError(f"no usable checkpoint in {store.root}: " + "; ".join(problems))
        log.info("no checkpoint in %s: starting fresh", store.root)
        return None

    def _try_load(self, store: ObjectStore, step: int, same_run: bool = False
                  ) -> tuple[str | None, tuple[Manifest, Any, Any] | None]:
        """Verify and load one checkpoint's state and this rank's tree (not yet applied).

        Raises:
            ValueError: the checkpoint does not fit this run, or (``same_run``,
                i.e. ``--resume auto``) another run wrote it.
        """
        try:
            manifest = read_manifest(store, step)
            state = self.trainer.state
            check_layout(manifest, state)
            check_compatible(manifest, state, self.world, self.config)
            if same_run and self.run_id and manifest.run_id not in ("", self.run_id):
                raise ValueError(
                    f"--resume auto: the checkpoint at step {step} of {store.root} was "
                    f"written by run {manifest.run_id!r}, this run is {self.run_id!r} "
                    f"(${RUN_ID_ENV}); name it explicitly (--resume {step} or a manifest "
                    f"URL) to continue another run's checkpoint, or use another checkpoint.url")
            document, tensors = read_rank(store, manifest, self.rank)
            tree = decode_from_objects(document, tensors, f"rank {self.rank} state")
            objects = self.side.read(store, manifest, tree.get("objects", {}))
            load_layout(store, manifest, state)  # sharded: this rank's slice
        except CheckpointCorrupt as exc:
            return str(exc), None
        return None, (manifest, tree, objects)

    def _adopt(self, store: ObjectStore, manifest: Manifest, tree: Any, objects: Any) -> None:
        restore_rank(self.trainer, tree, self.extra)
        self.side.adopt(objects, manifest if store is self.store else None)
        if self.tracker is not None:
            self.tracker.clear()
        # Later checkpoints extend this one's chain of logs, unless it came from
        # another store: then the next checkpoint starts with a base of its own.
        own = store is self.store
        self.last = manifest if own and self.rank == 0 else None
        self.last_step = manifest.step if own else None
        self.last_time = manifest.created


def register_engine_classes() -> None:
    """Allow the plain objects a DeepSpeed ZeRO optimizer state holds (if DeepSpeed is loaded).

    ZeRO-1/2 ``optimizer.state_dict()`` contains a ``LossScaler`` and, per
    parameter, ``fragment_address`` records: bags of numbers, stored as such.
    """
    if "deepspeed" not in sys.modules:
        return
    try:
        from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
        from deepspeed.utils.tensor_fragment import fragment_address
    except ImportError:  # another DeepSpeed layout: unknown objects are refused by name
        return
    for cls in (LossScaler, DynamicLossScaler, fragment_address):
        register_plain_class(cls)


def probe_store(store: ObjectStore, rank: int, url: str) -> None:
    """Write and delete a small object, so an unwritable store stops the run at its start.

    A collective: every rank probes (each writes its own objects), and if one
    cannot, every rank raises, rather than finding out at the first checkpoint
    hours later.

    Raises:
        StorageError: ``checkpoint.url URL cannot be written: …`` on every rank.
    """
    key = f".obs-probe-rank-{rank:05d}-{uuid.uuid4().hex}"
    problem: str | None = None
    try:
        store.put_bytes(key, b"obs checkpoint store probe\n")
        store.delete(key)
    except (StorageError, OSError) as exc:
        problem = f"{type(exc).__name__}: {exc}"
    if not all_ranks_agree(problem is None):
        raise StorageError(f"checkpoint.url {url} cannot be written: "
                           f"{problem or 'another rank failed to write its probe'}")


def attach_checkpointing(trainer: Trainer, cfg: CheckpointConfig, *,
                         extra_state: Mapping[str, Stateful] | None = None,
                         rank: int | None = None, world: int | None = None,
                         config: Mapping[str, Any] | None = None,
                         store: ObjectStore | None = None) -> Checkpointer:
    """Hook checkpointing into ``trainer`` (call on every rank, before ``resume``/``fit``).

    Args:
        trainer: the trainer to checkpoint.
        cfg: store URL, frequency, retention, rebase threshold.
        extra_state: named components with ``state_dict``/``load_state_dict``
            (the batch stream, the phase scheduler, data cursors), per rank.
        rank: this process's rank (default: from :mod:`obs_dist.engine.dist`).
        world: the number of ranks (default: from :mod:`obs_dist.engine.dist`).
        config: the run's resolved configuration, recorded in each manifest.
        store: an already opened store (overrides ``cfg.url``; tests, benchmarks).

    With a ``config``, rank 0 takes the store's lease
    (:mod:`obs_dist.checkpoint.lease`) and, as its single writer, deletes the
    ``.tmp-*`` leftovers of killed local writes (``ckpt_leftovers_removed_total``).

    Returns:
        The :class:`Checkpointer`, registered in ``trainer.hooks`` as ``checkpoint``.

    Raises:
        StorageError: the configured bucket is missing or refuses access, or
            the store cannot be written (:func:`probe_store`).
    """
    register_engine_classes()
    if store is None and cfg.url:
        store = open_store(cfg.url, endpoint_url=cfg.endpoint_url, retries=cfg.retries,
                           patience_s=cfg.patience_s)
    rank = get_rank() if rank is None else rank
    if store is not None:
        probe_store(store, rank, cfg.url or store.root)
    ckpt = Checkpointer(trainer, cfg, store, extra_state or {}, rank,
                        get_world_size() if world is None else world, config)
    if store is not None and ckpt.run_id:
        problem: str | None = None
        if rank == 0:
            try:
                acquire(store, ckpt.run_id, cfg.lease_s)
                # The single writer now: .tmp-* files are killed writes (others wait here).
                ckpt.leftovers_removed = collect_leftovers(store)
            except StoreInUse as exc:
                problem = str(exc)
        if not all_ranks_agree(problem is None):
            ckpt.store = None  # nothing of this run may touch the store (nor its lease)
            ckpt.close()
            raise StoreInUse(problem or f"checkpoint.url {store.root} is in use by another run")
    trainer.hooks.add(HOOK_NAME, ckpt, stage="checkpoint")
    return ckpt
