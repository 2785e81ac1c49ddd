"""The whole run's configuration: one section per component.

Each section is the dataclass that lives next to the component it configures;
this file only gathers them (launch may import every package) and checks what
spans sections (e.g. ``model.writer.k_max <= state.nodes``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from monitoring.exporter import MetricsConfig
from monitoring.history import HistoryConfig
from obs_dist.checkpoint.manager import CheckpointConfig
from obs_dist.engine.scheduler import SchedulerConfig
from obs_dist.engine.slow_weights import DeepSpeedConfig, DistConfig, deepspeed_config
from obs_dist.engine.sync import SyncConfig
from obs_dist.model.model import ModelConfig
from obs_dist.model.state import StateConfig
from obs_dist.tasks import TaskConfig
from obs_dist.trainer import TrainConfig
from pipelines.loader import DataConfig
from pipelines.rehearsal import RehearsalConfig
from pipelines.synthetic import SyntheticConfig


@dataclass
class RunConfig:
    """Everything ``obs train`` needs.

    Attributes:
        name: run name (metrics job label, output folder name).
        out_dir: where rank 0 writes the run's files (final weights, logs, plots).
        state: the big state.
        model: slow weights (encoder, writer, head).
        task: what to train on.
        train: the loop.
        dist: multi-process training (engine, backend, timeout).
        deepspeed: the DeepSpeed engine of the slow weights (ZeRO stage, …).
        scheduler: sequential/parallel phases (committing tasks).
        sync: summing committed deltas across ranks, replica checks.
        data: audio-visual shards (``task.name = "av"`` or ``"av-stream"``).
        rehearsal: past batches replayed between new ones (``av-stream``'s one pass).
        synthetic: the recipe of the shards that ``make_synthetic`` generates.
        make_synthetic: generate the synthetic set at an empty local
            ``data.source`` (and ``data.eval_source``) before training (the
            embedded default of ``make demo``); off: an empty source is an error.
        checkpoint: where and how often checkpoints go (empty url: none).
        metrics: the per-rank Prometheus exporter.
        history: the run's history on disk (``out_dir/history/<run id>/``).
    """

    name: str = "obs"
    out_dir: str = "runs/obs"
    state: StateConfig = field(default_factory=StateConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    dist: DistConfig = field(default_factory=DistConfig)
    deepspeed: DeepSpeedConfig = field(default_factory=DeepSpeedConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    sync: SyncConfig = field(default_factory=SyncConfig)
    data: DataConfig = field(default_factory=DataConfig)
    rehearsal: RehearsalConfig = field(default_factory=RehearsalConfig)
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    make_synthetic: bool = False
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    history: HistoryConfig = field(default_factory=HistoryConfig)

    def __post_init__(self) -> None:
        if not self.name or "/" in self.name:
            raise ValueError(f"name must be a non-empty word without '/', got {self.name!r}")
        # Data paths may follow the run's folder: "{out_dir}/shards" in a config
        # goes wherever --set out_dir=... puts the run.
        for key in ("source", "eval_source"):
            value = getattr(self.data, key)
            if "{out_dir}" in value:
                setattr(self.data, key, value.replace("{out_dir}", self.out_dir))
        self.model.writer.check_nodes(self.state.nodes)
        if self.state.layout == "sharded" and self.task.name == "av-stream":
            raise ValueError("state.layout = 'sharded' does not support task.name = 'av-stream' "
                             "(its recall score reads every column of X); use "
                             "state.layout = 'replicated'")
        if self.dist.backend == "nccl" and not self.train.device.startswith("cuda"):
            raise ValueError(f"dist.backend = 'nccl' needs train.device = 'cuda', got "
                             f"{self.train.device!r}")
        if self.task.name in ("av", "av-stream"):
            self._check_av()
        if self.model.writer.balance > 0 and self.task.name != "av-stream":
            raise ValueError(f"model.writer.balance is used by task.name = 'av-stream' only, "
                             f"not {self.task.name!r}")
        if self.deepspeed.config:  # a conflicting key is refused before any work
            deepspeed_config(self.train, self.deepspeed, self.task.batch)
        if self.model.encoder == "tokens":
            # 0 means "as the task needs"; an explicit value must be large enough.
            self.model.vocab = self.model.vocab or self.task.input_vocab
            self.model.classes = self.model.classes or self.task.vocab
            if self.model.vocab < self.task.input_vocab:
                raise ValueError(f"model.vocab ({self.model.vocab}) must be >= the task's input "
                                 f"vocabulary ({self.task.input_vocab})")
            if self.model.classes < self.task.vocab:
                raise ValueError(f"model.classes ({self.model.classes}) must be >= task.vocab "
                                 f"({self.task.vocab})")

    def _check_av(self) -> None:
        """Audio-visual runs: the data section must agree with the model and the task."""
        if self.model.encoder != "av":
            raise ValueError(f"task.name = {self.task.name!r} needs model.encoder = 'av'")
        if not self.data.source:
            raise ValueError(f"task.name = {self.task.name!r} needs data.source (a shard "
                             "directory, "
                             "file://, s3:// or pipe:)")
        for key in ("n_mels", "image_size"):
            if getattr(self.model, key) != getattr(self.data, key):
                raise ValueError(f"model.{key} ({getattr(self.model, key)}) must equal "
                                 f"data.{key} ({getattr(self.data, key)})")
        if self.task.batch != self.data.streams:
            raise ValueError(f"task.batch ({self.task.batch}) must equal data.streams "
                             f"({self.data.streams}): each stream is one row of a batch")
        stream = self.model.stream
        if (self.task.name == "av-stream" and stream.negatives == "recording"
                and not 0 < stream.negative_gap < self.data.window):
            # Every negative would be masked: the contrastive loss is 0 and the
            # run would train on nothing but its side terms.
            raise ValueError(f"model.stream.negative_gap ({stream.negative_gap}) must be in "
                             f"[1, data.window) = [1, {self.data.window}) with "
                             f"model.stream.negatives = 'recording': negatives come from the "
                             f"same recording's window, at least negative_gap clips away")
