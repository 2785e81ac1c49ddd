"""What one rank contributes to a checkpoint, and how it is put back.

Every rank writes its own tree (DESIGN §6): the slow weights and the
optimizer/schedule state (through the :class:`~obs_dist.trainer.SlowWeights`
protocol, so the DeepSpeed engine plugs in the same way), the trainer's loop
position, counters and carried activity, the random number generators of this
process (torch CPU and CUDA, Python ``random``, NumPy), and any extra stateful
components the caller registers — data-stream positions, the phase scheduler.
The big state is not here: its replicas are identical, so rank 0 writes it once
(:mod:`obs_dist.checkpoint.format`).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Mapping
from typing import Any, Protocol

import numpy as np
import torch

from obs_dist.trainer import Trainer

log = logging.getLogger("obs.checkpoint")


class Stateful(Protocol):
    """Anything whose position a checkpoint must carry (data streams, schedulers)."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def capture_rng() -> dict[str, Any]:
    """The generator states of this process: torch CPU/CUDA, Python, NumPy."""
    version, mt, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    out: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": {"version": version, "state": list(mt), "gauss": gauss},
        "numpy": {"kind": kind, "keys": keys, "pos": int(pos), "has_gauss": int(has_gauss),
                  "cached": float(cached)},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["cuda"] = list(torch.cuda.get_rng_state_all())
    return out


def restore_rng(state: Mapping[str, Any]) -> None:
    """Set this process's generators to a :func:`capture_rng` result."""
    torch.set_rng_state(state["torch"])
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss"]))
    npy = state["numpy"]
    np.random.set_state((npy["kind"], np.asarray(npy["keys"], dtype=np.uint32), npy["pos"],
                         npy["has_gauss"], npy["cached"]))
    cuda = state.get("cuda")
    if cuda is not None:
        if torch.cuda.is_available() and torch.cuda.device_count() == len(cuda):
            torch.cuda.set_rng_state_all(cuda)
        else:
            log.warning("checkpoint holds %d CUDA generator state(s) but this process sees "
                        "%d device(s); CUDA generators are left as they are", len(cuda),
                        torch.cuda.device_count() if torch.cuda.is_available() else 0)


def capture_rank(trainer: Trainer, extra: Mapping[str, Stateful]) -> dict[str, Any]:
    """This rank's share of a checkpoint as a nested tree (tensors, numbers, strings).

    Args:
        trainer: the running trainer (model, slow weights, loop state).
        extra: named components with ``state_dict()`` (data positions, scheduler).
    """
    return {
        "model": trainer.model.state_dict(),
        "slow": trainer.slow.state_dict(),
        "trainer": trainer.state_dict(),
        "rng": capture_rng(),
        "extra": {name: component.state_dict() for name, component in extra.items()},
    }


def restore_rank(trainer: Trainer, tree: Mapping[str, Any],
                 extra: Mapping[str, Stateful]) -> None:
    """Put a :func:`capture_rank` tree back into ``trainer`` and the extra components.

    A component registered now but absent from the checkpoint keeps its fresh
    state, with a warning (e.g. a checkpoint written before it existed).

    Raises:
        ValueError: the tree lacks a section, or the model does not match it.
    """
    for section in ("model", "slow", "trainer", "rng", "extra"):
        if section not in tree:
            raise ValueError(f"checkpoint rank state has no {section!r} section")
    try:
        trainer.model.load_state_dict(tree["model"])
    except RuntimeError as exc:
        raise ValueError(f"checkpoint slow weights do not fit this model: {exc}") from None
    trainer.slow.load_state_dict(tree["slow"])
    trainer.load_state_dict(tree["trainer"])
    restore_rng(tree["rng"])
    saved = tree["extra"]
    for name, component in extra.items():
        if name in saved:
            component.load_state_dict(saved[name])
        else:
            log.warning("checkpoint has no state for %r; it starts fresh", name)
    for name in sorted(set(saved) - set(extra)):
        log.warning("checkpoint holds state for %r, which this run does not register", name)
