"""The word–referent suite's learners: each one's training overrides, its training, its reuse.

Every learner trains through :func:`launch.runner.run_training` with the suite's
``config`` and the overrides of :func:`learner_overrides`; :func:`train` loads the
weights it saved. The peers are sized to OBS's trainable parameters
(:func:`matched_embed`) unless ``match_params`` is off. With ``reuse_trained`` a
learner trained before in the same ``work_dir`` with exactly the same resolved
config is loaded instead (scoring it on other held-out recordings costs no
training); one trained otherwise is refused.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from launch.evals.word_referent_config import WordReferentConfig
from obs_dist.model.name_links import NameLinks

TRAINED_FILE = "word_referent_trained.json"  # beside the run's weights: its training time


def _quoted(value: Any) -> str:
    """A value as a TOML literal for an override (paths stay strings)."""
    return json.dumps(value) if isinstance(value, str) else str(value).lower() \
        if isinstance(value, bool) else str(value)


def learner_overrides(cfg: WordReferentConfig, learner: str, source: str, out_dir: Path,
                      steps: int, embed: int | None = None) -> list[str]:
    """The ``--set`` overrides of one learner's training run.

    Args:
        cfg: the suite config.
        learner: ``obs``, ``dual``, ``dual-offline`` or ``attention``.
        source: the training shards.
        out_dir: the run's output folder.
        steps: OBS's optimizer steps (for ``obs`` itself: ``cfg.steps``, 0 = a pass).
        embed: the learner's ``model.stream.embed`` (None: the config's).
    """
    sets: dict[str, Any] = {
        "data.source": source, "out_dir": str(out_dir), "checkpoint.url": "",
        "train.seed": cfg.seed, "model.stream.state_path": learner == "obs"}
    if learner == "attention":
        sets["model.stream.recent"] = cfg.recent_clips
        sets["model.stream.recent_match"] = cfg.attention_match
    if learner == "dual-offline":
        sets.update({"data.mode": "shuffled", "data.loop": True, "rehearsal.ratio": 0,
                     "train.steps": max(1, round(cfg.offline_factor * steps))})
    else:
        sets.update({"data.mode": "ordered", "data.loop": False,
                     "rehearsal.ratio": cfg.rehearsal_ratio})
        if steps:
            sets["train.steps"] = steps
    if embed is not None:
        sets["model.stream.embed"] = embed
    return [*cfg.train_set, *(f"{k}={_quoted(v)}" for k, v in sets.items())]


def trainable_params(model_cfg: Any, nodes: int) -> int:
    """Trainable parameters of the av-stream model ``model_cfg`` builds (RNG untouched)."""
    from obs_dist.model.av_stream import AVStreamModel

    with torch.random.fork_rng(devices=[]):
        model = AVStreamModel(model_cfg, nodes)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def matched_embed(cfg: WordReferentConfig, learner: str, source: str, out_dir: Path,
                  steps: int) -> int | None:
    """The peer's ``model.stream.embed`` that brings its trainable parameters
    nearest OBS's (None for OBS itself, or with ``match_params`` off).

    Why the embedding: OBS and its peers share the encoders, the objective and
    the direct path; OBS alone has the writer and the state's scales. Widening
    the peers' direct-path heads (``d × embed`` each, 130 parameters per unit at
    ``d = 64``) spends the difference where a dual encoder keeps what it learns.
    """
    if not cfg.match_params or learner == "obs":
        return None
    from launch.runner import resolve_config

    obs = resolve_config(cfg.config, learner_overrides(cfg, "obs", source, out_dir, steps))
    peer = resolve_config(cfg.config, learner_overrides(cfg, learner, source, out_dir, steps))
    target = trainable_params(obs.model, obs.state.nodes)

    def count(embed: int) -> int:
        stream = dataclasses.replace(peer.model.stream, embed=embed)
        return trainable_params(dataclasses.replace(peer.model, stream=stream), peer.state.nodes)

    base = peer.model.stream.embed
    have = count(base)
    per_unit = count(base + 1) - have
    assert per_unit > 0, "the direct-path heads grow with the embedding"
    return max(2, base + round((target - have) / per_unit))


@dataclass
class Trained:
    """A trained learner: its model (eval mode), run config and figures."""

    name: str
    model: Any
    run_cfg: Any
    steps: int
    params: int
    seconds: float


def reusable(out: Path, run_cfg: Any) -> bool:
    """Whether ``out`` holds a finished run of exactly ``run_cfg``.

    Raises:
        ValueError: if ``out`` holds a finished run of another config.
    """
    from obs_dist.config import from_dict, to_dict
    from obs_dist.storage import redact_tree

    saved = out / "config.json"
    if not ((out / "model.safetensors").is_file() and saved.is_file()
            and (out / TRAINED_FILE).is_file()):
        return False

    def canonical(cfg: Any) -> dict[str, Any]:
        tree = json.loads(json.dumps(redact_tree(to_dict(cfg))))
        # Where the run wrote is not what it learnt: a suite's work folder may move.
        tree.pop("out_dir", None)
        return dict(tree)

    wanted = canonical(run_cfg)
    try:  # through today's config classes: a setting added since reads as its default
        have = canonical(from_dict(type(run_cfg), json.loads(saved.read_text())))
    except (ValueError, TypeError) as exc:
        raise ValueError(f"reuse_trained: {saved} does not load as a config today ({exc}); "
                         f"remove that folder or set reuse_trained=false") from exc
    if have != wanted:
        differ = sorted(k for k in set(have) | set(wanted) if have.get(k) != wanted.get(k))
        raise ValueError(f"reuse_trained: {out} was trained with another config (differs "
                         f"in {differ}); remove that folder or set reuse_trained=false")
    return True


def train(cfg: WordReferentConfig, setting: str, learner: str, source: str,
          steps: int) -> Trained:
    """Train one learner through :func:`launch.runner.run_training` and load its weights.

    With ``cfg.reuse_trained``, a finished run of the same config is loaded instead.
    """
    from launch.runner import build_model, load_weights, resolve_config, run_training

    out = Path(cfg.work_dir) / setting / learner
    overrides = learner_overrides(cfg, learner, source, out, steps,
                                  matched_embed(cfg, learner, source, out, steps))
    run_cfg = resolve_config(cfg.config, overrides)
    if cfg.reuse_trained and reusable(out, run_cfg):
        metrics = json.loads((out / "metrics.json").read_text())
        seconds = float(json.loads((out / TRAINED_FILE).read_text())["seconds"])
    else:
        start = time.perf_counter()
        metrics = run_training(cfg.config, overrides, resume="never")
        seconds = time.perf_counter() - start
        (out / TRAINED_FILE).write_text(json.dumps({"seconds": round(seconds, 1)}))
    torch.set_num_threads(cfg.threads)
    model, _ = build_model(run_cfg, torch.device(run_cfg.train.device))
    load_weights(model, out / "model.safetensors")
    model.eval()
    if getattr(model, "writer", None) is not None:  # a state to study into
        model.set_study_rule(cfg.study_rule, NameLinks(cfg.study_nodes, cfg.study_lookback,
                                                       cfg.study_decay))
    params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return Trained(learner, model, run_cfg, int(metrics.get("step", 0)), params, seconds)
