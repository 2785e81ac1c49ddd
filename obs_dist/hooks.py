"""The trainer's hooks: named, per event, run in a declared order.

A hook is ``hook(trainer, metrics)``. It is registered under a unique name, for
an *event* and in a *stage*; the trainer runs an event's hooks stage by stage,
and within a stage in registration order. So where a hook runs is written
where it is registered, not implied by who appended first.

Events:

* ``on_step`` — after every optimizer step of :meth:`Trainer.fit` (and of an
  evaluation learner's step), after the step's evaluation and state moments,
  before the metrics reach the sink. ``metrics`` is the step's dictionary; a
  hook may add entries to it.
* ``on_end`` — once when :meth:`Trainer.fit` returns, at a sync point (every
  held-back window committed), with the final metrics.

Stages, in the order they run:

1. ``state`` — change or check the big state (replay consolidation, replica
   checksums): the step's state is final only after them;
2. ``checkpoint`` — save the step (it sees the final state);
3. ``control`` — decide whether the run stops here (preemption), knowing
   whether the save made this step a sync point;
4. ``report`` — add entries to ``metrics`` (counters, aliases) just before the
   sink reads them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

EVENTS = ("on_step", "on_end")
STAGES = ("state", "checkpoint", "control", "report")

# The object the hooks are called with: the Trainer (generic, so this module needs
# nothing of trainer.py, which holds ``Hooks[Trainer]``).
T = TypeVar("T")


@dataclass(frozen=True)
class NamedHook(Generic[T]):
    """One registered hook.

    Attributes:
        name: unique among the trainer's hooks (``checkpoint``, ``replica_check``, …).
        fn: ``fn(trainer, metrics)``; its return value is ignored.
        stage: one of :data:`STAGES`.
        event: one of :data:`EVENTS`.
    """

    name: str
    fn: Callable[[T, dict[str, float]], Any]
    stage: str
    event: str = "on_step"

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("a hook needs a non-empty name")
        if self.event not in EVENTS:
            raise ValueError(f"hook {self.name!r}: event must be one of {list(EVENTS)}, "
                             f"got {self.event!r}")
        if self.stage not in STAGES:
            raise ValueError(f"hook {self.name!r}: stage must be one of {list(STAGES)}, "
                             f"got {self.stage!r}")


class Hooks(Generic[T]):
    """The hooks of one trainer, by name."""

    def __init__(self) -> None:
        self._hooks: list[NamedHook[T]] = []

    def add(self, name: str, fn: Callable[[T, dict[str, float]], Any], stage: str,
            event: str = "on_step") -> NamedHook[T]:
        """Register ``fn`` under ``name`` for ``event`` in ``stage``.

        Raises:
            ValueError: an unknown event or stage, or a name already registered.
        """
        return self.register(NamedHook(name, fn, stage, event))

    def register(self, hook: NamedHook[T]) -> NamedHook[T]:
        """Register an already built :class:`NamedHook` (see :meth:`add`)."""
        if hook.name in self:
            raise ValueError(f"a hook named {hook.name!r} is already registered")
        self._hooks.append(hook)
        return hook

    def remove(self, name: str) -> None:
        """Unregister the hook called ``name`` (nothing happens if there is none)."""
        self._hooks = [h for h in self._hooks if h.name != name]

    def __contains__(self, name: object) -> bool:
        return any(h.name == name for h in self._hooks)

    def names(self, event: str = "on_step") -> list[str]:
        """The names of ``event``'s hooks in the order they run."""
        return [h.name for h in self._ordered(event)]

    def _ordered(self, event: str) -> list[NamedHook[T]]:
        if event not in EVENTS:
            raise ValueError(f"event must be one of {list(EVENTS)}, got {event!r}")
        chosen = [h for h in self._hooks if h.event == event]
        return sorted(chosen, key=lambda h: STAGES.index(h.stage))  # stable: registration order

    def run(self, event: str, trainer: T, metrics: dict[str, float]) -> None:
        """Call every hook of ``event`` in order (stage, then registration)."""
        for hook in self._ordered(event):
            hook.fn(trainer, metrics)
