"""The whole run's configuration: one section per component.

Each section is the dataclass that lives next to the component it configures;
this file only gathers them (launch may import every package) and checks what
spans sections (e.g. ``model.writer.k_max <= state.nodes``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from obs_dist.model import ModelConfig
from obs_dist.state import StateConfig
from obs_dist.tasks import TaskConfig
from obs_dist.trainer import TrainConfig


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
    """

    name: str = "obs"
    out_dir: str = "runs/obs"
    state: StateConfig = field(default_factory=StateConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        if not self.name or "/" in self.name:
            raise ValueError(f"name must be a non-empty word without '/', got {self.name!r}")
        self.model.writer.check_nodes(self.state.nodes)
        if self.model.encoder == "tokens":
            # 0 means "as the task needs"; an explicit value must be large enough.
            self.model.vocab = self.model.vocab or self.task.input_vocab
            self.model.classes = self.model.classes or self.task.vocab
            if self.task.name == "av":
                raise ValueError("task.name = 'av' needs model.encoder = 'av'")
            if self.model.vocab < self.task.input_vocab:
                raise ValueError(f"model.vocab ({self.model.vocab}) must be >= the task's input "
                                 f"vocabulary ({self.task.input_vocab})")
            if self.model.classes < self.task.vocab:
                raise ValueError(f"model.classes ({self.model.classes}) must be >= task.vocab "
                                 f"({self.task.vocab})")
