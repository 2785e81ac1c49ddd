"""A tiny ``obs train`` run in a subprocess: the settings and the call, once.

The reliability tests (``test_divergence.py``, ``test_checkpoint_failures.py``,
…) each start a few seconds of MQAR training with one fault injected; the
settings below keep such a run to a couple of seconds on a loaded 2-core
machine. ``TINY_AV`` does the same for the audio-visual demo config.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

# A tiny audio-visual run (``configs/demo.toml``): a few seconds of training.
TINY_AV = ["state.nodes=256", "state.partitions=2", "model.d_model=16", "model.writer.k_max=4",
           "model.writer.active=8", "model.writer.key_dim=16", "model.n_mels=16",
           "model.image_size=16", "task.batch=2", "data.streams=2", "data.window=4",
           "data.workers=1", "data.frames=2", "data.image_size=16", "data.n_mels=16",
           "data.audio_seconds=0.5", "synthetic.streams=2", "synthetic.clips_per_stream=8",
           "synthetic.frames=2", "synthetic.image_size=16", "synthetic.classes=4",
           "train.steps=4", "train.eval_every=2", "train.eval_batches=1", "train.warmup=1",
           "train.progress=false", "checkpoint.every=2"]


def tiny_args(tmp_path: Path, steps: int = 4, *extra: str) -> list[str]:
    """``obs train`` arguments of a tiny MQAR run writing under ``tmp_path``.

    Args:
        tmp_path: the test's folder (``out`` and ``ckpt`` go below it).
        steps: optimizer steps.
        extra: further ``--set`` values (``key=value`` strings).
    """
    sets = [f"out_dir={tmp_path / 'out'}", "state.nodes=256", "task.batch=4",
            "task.seq_len=16", "task.pairs=2", "model.d_model=16", f"train.steps={steps}",
            "train.warmup=0", "train.eval_every=0", "train.eval_batches=1",
            "train.progress=false", *extra]
    args = ["train", "--config", "configs/mqar.toml"]
    for item in sets:
        args += ["--set", item]
    return args


def obs(*args: str, timeout: int = 300) -> subprocess.CompletedProcess[str]:
    """Run ``obs ARGS`` (``python -m launch.cli``) and capture its output."""
    return subprocess.run([sys.executable, "-m", "launch.cli", *args], capture_output=True,
                          text=True, timeout=timeout, env=None)
