"""Slow weights across ranks: a DeepSpeed engine, or a rank-ordered gradient all-reduce.

Both implement the trainer's :class:`~obs_dist.trainer.SlowWeights` protocol
(``backward`` per window, ``step`` per batch):

* :class:`DeepSpeedSlowWeights` — ``deepspeed.initialize`` with a config built
  from the ``[deepspeed]`` section: AdamW with our learning rate, a
  ``WarmupCosineLR`` schedule shaped like the single-process one, gradient
  clipping, ZeRO stage 0, 1 or 2. The trainer runs several windows (backward
  passes) per optimizer step, so the engine is used with
  ``managed_gradient_accumulation = false``: ``engine.backward`` only
  accumulates, ``engine.step`` reduces and updates. On CPU
  (``DS_ACCELERATOR=cpu``) it communicates over gloo; on GPU over NCCL.
* :class:`AllReduceSlowWeights` — plain AdamW (:class:`TorchSlowWeights`) whose
  gradients are averaged with :func:`~obs_dist.engine.collectives.mean_in_rank_order`,
  so every rank's weights stay bit-identical. No extra dependency; the fallback
  when DeepSpeed is missing or broken.

Two DeepSpeed defaults are changed for CPU machines, both because they compile
C++ at first use (minutes on 2 cores) for no gain here: ``torch_adam = true``
uses ``torch.optim.AdamW`` instead of the JIT-built FusedAdam/CPUAdam, and
``cpu_shm_comm = false`` skips DeepSpeed's shared-memory collective op (used only
by its inference all-reduce).
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.distributed as torch_dist
from torch import nn

from obs_dist.config import load_json_object
from obs_dist.engine.collectives import mean_in_rank_order
from obs_dist.engine.dist import destroy, get_world_size, init_from_env, is_initialized
from obs_dist.trainer import SlowWeights, TorchSlowWeights, TrainConfig

log = logging.getLogger("obs.engine")

ENGINES = ("auto", "deepspeed", "torch")


@dataclass
class DistConfig:
    """Multi-process training.

    Attributes:
        engine: slow-weight engine when the world has more than one rank:
            ``deepspeed``, ``torch`` (rank-ordered gradient all-reduce), or
            ``auto`` (DeepSpeed when it imports, else torch).
        backend: ``auto`` (NCCL on CUDA, gloo on CPU), ``gloo`` or ``nccl``.
        timeout_s: collective timeout in seconds.
    """

    engine: Literal["auto", "deepspeed", "torch"] = "auto"
    backend: Literal["auto", "gloo", "nccl"] = "auto"
    timeout_s: float = 300.0

    def __post_init__(self) -> None:
        if self.engine not in ENGINES:
            raise ValueError(f"engine must be one of {list(ENGINES)}, got {self.engine!r}")
        if self.backend not in ("auto", "gloo", "nccl"):
            raise ValueError(f"backend must be auto, gloo or nccl, got {self.backend!r}")
        if not self.timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, got {self.timeout_s}")


@dataclass
class DeepSpeedConfig:
    """The DeepSpeed engine of the slow weights (used when ``dist.engine`` picks it).

    Attributes:
        zero_stage: ZeRO stage 0, 1 or 2 (3 needs DeepSpeed's forward hooks,
            which the trainer's window loop bypasses).
        torch_adam: ``torch.optim.AdamW`` instead of DeepSpeed's compiled Adam.
        cpu_shm_comm: build DeepSpeed's CPU shared-memory comm op (slow JIT build).
        overlap_comm: overlap gradient reduction with backward (ZeRO 1/2).
        bucket_size: ZeRO reduce/all-gather bucket size in elements.
        config: a user's DeepSpeed JSON file (bf16/fp16, offload, ...), merged under
            what OBS sets (:func:`deepspeed_config`); a key it sets to another value
            than OBS's is refused, naming the key. Empty: OBS's settings only.
    """

    zero_stage: int = 1
    torch_adam: bool = True
    cpu_shm_comm: bool = False
    overlap_comm: bool = False
    bucket_size: int = 50_000_000
    config: str = ""

    def __post_init__(self) -> None:
        if self.config:
            read_user_config(self.config)  # a missing or broken file is refused at start
        if self.zero_stage not in (0, 1, 2):
            raise ValueError(f"zero_stage must be 0, 1 or 2 (3 is not supported by the window "
                             f"loop), got {self.zero_stage}")
        if self.bucket_size < 1:
            raise ValueError(f"bucket_size must be >= 1, got {self.bucket_size}")


def deepspeed_available() -> bool:
    """Whether ``import deepspeed`` works here."""
    try:
        import deepspeed  # noqa: F401
    except Exception as exc:  # any import failure means: fall back
        log.warning("DeepSpeed is not usable (%s: %s); using the torch engine",
                    type(exc).__name__, exc)
        return False
    return True


def prepare_deepspeed_env(device: torch.device) -> None:
    """Environment DeepSpeed reads at import: the accelerator (cpu or cuda)."""
    os.environ.setdefault("DS_ACCELERATOR", "cuda" if device.type == "cuda" else "cpu")


def deepspeed_config(train: TrainConfig, ds: DeepSpeedConfig, micro_batch: int) -> dict[str, Any]:
    """The DeepSpeed config dict for our slow weights.

    Args:
        train: learning rate, schedule, clipping, steps.
        ds: ZeRO settings.
        micro_batch: streams per rank and step (DeepSpeed's bookkeeping only).

    Raises:
        ValueError: ``ds.config``'s JSON sets a key OBS sets, to another value.
    """
    user = {**USER_MAY_SET, **(read_user_config(ds.config) if ds.config else {})}
    return merge_user_config(user, _obs_deepspeed_config(train, ds, micro_batch))


# OBS's choices that a user's JSON may change (logging only).
USER_MAY_SET: dict[str, Any] = {"steps_per_print": 2**31 - 1, "wall_clock_breakdown": False}


def _obs_deepspeed_config(train: TrainConfig, ds: DeepSpeedConfig,
                          micro_batch: int) -> dict[str, Any]:
    """What OBS itself sets in the DeepSpeed config (see :func:`deepspeed_config`)."""
    zero: dict[str, Any] = {"stage": ds.zero_stage}
    if ds.zero_stage > 0:
        zero.update({"overlap_comm": ds.overlap_comm, "reduce_bucket_size": ds.bucket_size,
                     "allgather_bucket_size": ds.bucket_size})
    return {
        "train_micro_batch_size_per_gpu": micro_batch,
        "gradient_accumulation_steps": 1,
        # Several windows (backward passes) per step: backward accumulates, step reduces.
        "managed_gradient_accumulation": False,
        "optimizer": {"type": "AdamW", "params": {"lr": train.lr,
                                                  "weight_decay": train.weight_decay,
                                                  "torch_adam": ds.torch_adam}},
        "scheduler": {"type": "WarmupCosineLR", "params": {
            "total_num_steps": max(train.schedule_steps or train.steps, 1),
            "warmup_num_steps": max(train.warmup, 1),
            "warmup_type": "linear",
            "warmup_min_ratio": 0.0,
            "cos_min_ratio": 0.1,  # as TorchSlowWeights: decay to 10 % of lr
        }},
        "gradient_clipping": train.grad_clip,
        "zero_optimization": zero,
    }


def read_user_config(path: str) -> dict[str, Any]:
    """The JSON object of ``deepspeed.config`` (ValueError if missing or not one object)."""
    return load_json_object(path, "deepspeed.config")


def merge_user_config(user: dict[str, Any], ours: dict[str, Any],
                      prefix: str = "") -> dict[str, Any]:
    """``user`` with every key of ``ours`` laid over it.

    OBS owns what it sets (the window loop steps the engine itself, the
    learning-rate schedule and ZeRO stage come from ``train``/``deepspeed``): a
    user key that OBS sets too must agree with it (or be ``"auto"``, as
    Hugging Face's configs write it). Every other user key passes through.

    Raises:
        ValueError: naming the first conflicting dotted key and both values.
    """
    out = dict(user)
    for key, value in ours.items():
        name = prefix + key
        if key not in user or user[key] == "auto":
            out[key] = value
        elif isinstance(value, dict) and isinstance(user[key], dict):
            out[key] = merge_user_config(user[key], value, name + ".")
        elif user[key] != value:
            raise ValueError(
                f"deepspeed.config sets {name} = {user[key]!r}, but OBS sets it to {value!r} "
                "from its own settings (train.*, deepspeed.*); remove the key from the JSON "
                "or change the OBS setting")
    return out


@contextlib.contextmanager
def scalar_parameters_broadcast() -> Iterator[None]:
    """Let DeepSpeed's initial parameter broadcast take 0-dim parameters.

    DeepSpeed (0.19) broadcasts each parameter as ``p.data.view(torch.uint8)``,
    which a 0-dim tensor refuses ("self.dim() cannot be 0 to view Float as
    Byte"), so a model with a scalar parameter (the ``av-stream`` model's
    temperatures) could not start under ``obs train --nproc N``. While the engine
    is built, its broadcast sees each scalar as a 1-element view of the same
    storage, so the broadcast values land in the parameter; each shape is put
    back as soon as the broadcast returns, before ``initialize`` builds the
    optimizer.
    """
    from deepspeed.runtime.engine import DeepSpeedEngine

    original = DeepSpeedEngine._broadcast_model

    def broadcast(engine: Any) -> None:
        scalars = [(p, p.data) for p in engine.module.parameters() if p.dim() == 0]
        for p, data in scalars:
            p.data = data.reshape(1)  # a view: the broadcast writes into ``data``
        try:
            original(engine)
        finally:
            for p, data in scalars:
                p.data = data

    DeepSpeedEngine._broadcast_model = broadcast
    try:
        yield
    finally:
        DeepSpeedEngine._broadcast_model = original


class DeepSpeedSlowWeights:
    """Slow weights stepped by a DeepSpeed engine.

    Args:
        model: the module (already on its device; all ranks built it alike).
        train: learning-rate settings.
        ds: engine settings.
        micro_batch: streams per rank and step.
    """

    def __init__(self, model: nn.Module, train: TrainConfig, ds: DeepSpeedConfig,
                 micro_batch: int) -> None:
        prepare_deepspeed_env(next(model.parameters()).device)
        import deepspeed

        logging.getLogger("DeepSpeed").setLevel(logging.ERROR)  # chatty on every rank
        # DeepSpeed still calls the collective torch renamed; the warning is theirs.
        warnings.filterwarnings("ignore", message=".*all_gather_into_tensor.*deprecated")
        if not ds.cpu_shm_comm and os.environ.get("DS_ACCELERATOR") == "cpu":
            import deepspeed.ops

            # DeepSpeed builds this op when its comm backend starts; marking it
            # incompatible skips a multi-minute C++ build we never use.
            deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
        self.config = deepspeed_config(train, ds, micro_batch)
        with scalar_parameters_broadcast():
            self.engine, self.optimizer, _, self.scheduler = deepspeed.initialize(
                model=model, model_parameters=[p for p in model.parameters() if p.requires_grad],
                config=self.config)
        self.params = [p for p in model.parameters() if p.requires_grad]

    def backward(self, loss: torch.Tensor) -> None:
        """Accumulate gradients (no reduction until :meth:`step`)."""
        self.engine.backward(loss, scale_wrt_gas=False)

    def step(self) -> float:
        """Reduce gradients across ranks, clip, update, advance the schedule.

        A parameter that got no gradient on this rank's batch (the ``av-stream``
        model's state path when no clip of the window is scored) gets a zero
        one first: DeepSpeed reduces only the gradients that exist, so the ranks'
        reductions would differ in size (a collective mismatch), and a missing
        gradient means the same as a zero one in the mean over ranks (as in
        :class:`AllReduceSlowWeights`).
        """
        for p in self.params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        self.engine.step()
        norm = self.engine.get_global_grad_norm()
        return float(norm) if norm is not None else 0.0

    def state_dict(self) -> dict[str, Any]:
        """Optimizer (this rank's ZeRO partition) and schedule state."""
        return {"optimizer": self.engine.optimizer.state_dict(),
                "scheduler": self.engine.lr_scheduler.state_dict(),
                "global_steps": self.engine.global_steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        optimizer = state["optimizer"]
        if isinstance(optimizer, dict) and "zero_stage" in optimizer:
            # ZeRO-1/2 optimizers load a list indexed by data-parallel rank; each
            # rank saved only its own partition, which goes at its own index.
            optimizer = [optimizer] * get_world_size()
        self.engine.optimizer.load_state_dict(optimizer)
        self.engine.lr_scheduler.load_state_dict(state["scheduler"])
        self.engine.global_steps = int(state["global_steps"])

    def close(self) -> None:
        """Release the engine before the process group is destroyed.

        DeepSpeed's gradient hooks (held in C++) and the engine reference each other,
        a cycle Python's collector cannot see; until :meth:`DeepSpeedEngine.destroy`
        breaks it, the engine and the parameters keep their process groups, and the
        groups' gloo threads, alive up to interpreter shutdown (see
        :func:`obs_dist.engine.dist.destroy`).
        """
        self.engine.destroy()


class AllReduceSlowWeights(TorchSlowWeights):
    """AdamW with gradients averaged across ranks in rank order (bit-identical weights).

    Args:
        model: the module; its parameters are broadcast from rank 0 at start.
        cfg: learning-rate settings.
    """

    def __init__(self, model: nn.Module, cfg: TrainConfig) -> None:
        super().__init__(model, cfg)
        self.params = [p for p in model.parameters() if p.requires_grad]
        if is_initialized():
            with torch.no_grad():
                for p in self.params:
                    torch_dist.broadcast(p.data, src=0)

    def step(self) -> float:
        """Average the gradients over ranks, then clip and step as one process would."""
        if get_world_size() > 1:
            grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params]
            flat = torch.cat([g.reshape(-1) for g in grads])
            mean = mean_in_rank_order(flat)
            offset = 0
            for p in self.params:
                n = p.numel()
                p.grad = mean[offset:offset + n].view_as(p).clone()
                offset += n
        return super().step()


def resolve_engine(cfg: DistConfig) -> str:
    """The engine a run uses: ``single`` for one rank, else deepspeed/torch per config."""
    if get_world_size() == 1:
        return "single"
    if cfg.engine == "auto":
        return "deepspeed" if deepspeed_available() else "torch"
    return cfg.engine


def build_slow_weights(cfg: DistConfig, ds: DeepSpeedConfig, model: nn.Module,
                       train: TrainConfig, micro_batch: int) -> tuple[SlowWeights, str]:
    """The slow-weight engine for this world, and its name.

    One process keeps the plain :class:`TorchSlowWeights` (no overhead).
    """
    engine = resolve_engine(cfg)
    if engine == "deepspeed":
        return DeepSpeedSlowWeights(model, train, ds, micro_batch), engine
    if engine == "torch":
        return AllReduceSlowWeights(model, train), engine
    return TorchSlowWeights(model, train), engine


def release(slow: SlowWeights | None) -> None:
    """Let go of what a slow-weight engine holds of the process groups (DeepSpeed's engine).

    Call it before the world is left (:func:`joined_world`); plain engines hold
    nothing and need no call, but taking one is harmless.
    """
    close = getattr(slow, "close", None)
    if close is not None:
        close()


@contextlib.contextmanager
def joined_world(cfg: DistConfig, device: torch.device) -> Iterator[bool]:
    """Join the world (:func:`init_distributed`) for the ``with`` block, then leave it.

    On the way out the reference cycles of what the block built (a DeepSpeed
    engine and its gradient hooks, released with :func:`release`) are collected
    first, which drops the last references to the process groups, so
    :func:`~obs_dist.engine.dist.destroy` ends their threads before interpreter
    shutdown. Build the run's objects inside a function called in the block, so
    they are gone when it ends.

    Yields:
        True when a process group was started here.
    """
    started = init_distributed(cfg, device)
    try:
        yield started
    finally:
        if started:
            gc.collect()
            destroy()


def init_distributed(cfg: DistConfig, device: torch.device) -> bool:
    """Join the process group the environment describes (torchrun, SLURM, ``--nproc``).

    Reads ``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT``; a world
    of one starts nothing. Sets ``DS_ACCELERATOR`` before DeepSpeed can be
    imported, so DeepSpeed uses gloo on CPU and NCCL on CUDA.

    Returns:
        True when a process group is (now) initialised.
    """
    if is_initialized():
        return True
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    if cfg.engine != "torch":
        prepare_deepspeed_env(device)
        # Imported after the group exists, DeepSpeed keeps it (and its gloo threads)
        # alive past destroy_process_group; see obs_dist.engine.dist.init_from_env.
        deepspeed_available()
    if cfg.backend == "nccl" and device.type != "cuda":
        raise ValueError("dist.backend = 'nccl' needs train.device = 'cuda'")
    return init_from_env(device, cfg.timeout_s, None if cfg.backend == "auto" else cfg.backend)
