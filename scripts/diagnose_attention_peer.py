"""Why does the attention peer answer as it does? (diagnostics, not a suite)

Run on a finished ``obs eval --task word-referent`` work folder whose ``attention``
learner was trained (the suite's command with ``--set reuse_trained=true`` loads
it; a learner trained with another config is refused). Over the suite's trials of
the held-out shards, with each recording's clips as the context (the suite's
``attention_context``, default every clip), it prints:

* ``attention on the name``: the share of each heard clip's attention that falls
  on other clips where the same text was said, against that share under uniform
  attention (does the learnt key match one name's utterances?);
* accuracy with the attention path alone, the direct path alone, and both (the
  suite's answer), and each path's learnt scale;
* the same share and accuracy when the match is the audio features' own cosine
  similarity (centred over the recording, no learnt query or key): would an
  attention that matched sounds this way bind names?

Usage (the suite's ``--set`` overrides, as the suite ran; ``OBS_DIAG_TAU`` sets the
feature-similarity read's temperature, default 0.05)::

    python scripts/diagnose_attention_peer.py SETTING --set recordings=64 \\
        --set train_source=TRAIN --set heldout_source=HELDOUT --set work_dir=DIR ...
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

from launch.evals import suite_config
from launch.evals.word_referent import heard_audio, recent_context
from launch.evals.word_referent_data import collect, count_recordings, usable
from launch.evals.word_referent_learners import train
from launch.evals.word_referent_trials import build_trials

TAU = float(os.environ.get("OBS_DIAG_TAU", "0.05"))  # the feature-similarity read's temperature


def main() -> None:
    setting, *rest = sys.argv[1:]
    overrides = [rest[i + 1] for i in range(0, len(rest), 2) if rest[i] == "--set"]
    cfg = suite_config("word-referent", "configs/eval_word_referent.toml",
                       [*overrides, "reuse_trained=true"])
    torch.set_num_threads(1)
    # The peer trains OBS's step count (the suite's steps when OBS was not run).
    obs_metrics = Path(cfg.work_dir) / setting / "obs" / "metrics.json"
    steps = int(json.loads(obs_metrics.read_text())["step"]) if obs_metrics.is_file() \
        else cfg.steps
    learner = train(cfg, setting, "attention", cfg.train_source, steps)
    model = learner.model
    streams = cfg.study_streams or count_recordings(learner.run_cfg, cfg.heldout_source)
    labels, media = collect(learner.run_cfg, cfg.heldout_source, streams)
    trials = usable(build_trials(labels, cfg.candidates, cfg.min_occurrences, cfg.min_purity,
                                 cfg.min_gap, cfg.trial_seed, cfg.trial_unit), media)
    context = recent_context(learner, media, cfg.attention_context)
    words = {(c.recording, c.index): c.word for c in labels}
    order = {rec: sorted(i for r, i in media if r == rec) for rec in context}
    on_name, uniform = [], []
    on_name_raw: list[float] = []
    totals = {"attention": 0, "direct": 0, "both": 0, "feature-similarity attention": 0}
    with torch.no_grad():
        for trial in trials:
            rec = trial.recording
            fa_ctx, values = context[rec]
            said = torch.tensor([words.get((rec, i), "") == trial.text for i in order[rec]])
            cands = model.candidates(torch.stack([media[(rec, c)][1]
                                                  for c in trial.candidates]))
            summed = {name: torch.zeros(len(trial.candidates)) for name in totals}
            for clip in trial.heard or (trial.query,):
                audio = heard_audio(media, rec, clip, model.audio_context)[None]
                allowed = torch.ones(1, fa_ctx.shape[0], dtype=torch.bool)
                probe = model.probe(audio, None, (fa_ctx, values, allowed))
                fa = model.audio(model._hearable(audio)) + model.modality[1]
                weights = torch.softmax(model.recent.match_logits(fa, fa_ctx, allowed), 1)[0]
                others = said.clone()
                others[order[rec].index(clip)] = False  # the clip itself is not "another"
                on_name.append(float(weights[others].sum()))
                uniform.append(float(others.float().mean()))
                # The same read with the audio features' own cosine similarity as the
                # match (centred over the recording, no learnt projection).
                centre = fa_ctx.mean(0)
                a = torch.nn.functional.normalize(fa - centre, dim=-1)
                b = torch.nn.functional.normalize(fa_ctx - centre, dim=-1)
                raw = torch.softmax((a @ b.t())[0] / TAU, dim=0)
                on_name_raw.append(float(raw[others].sum()))
                retrieved_raw = (raw @ values)[None]
                plain = model.recent.scores(retrieved_raw, cands.embed)[0]
                attention = model.recent.scores(probe.retrieved, cands.embed)[0]
                both = model.answer_scores(probe, cands)[0]
                for name, logits in (("attention", attention), ("direct", both - attention),
                                     ("both", both), ("feature-similarity attention", plain)):
                    summed[name] += logits.log_softmax(0)
            for name in totals:
                totals[name] += int(summed[name].argmax()) == trial.answer
    n = len(trials)
    print(f"{n} trials, {len(on_name)} heard clips; context: "
          f"{cfg.attention_context or 'every clip'} of each recording")
    print(f"attention on the name's other clips: {sum(on_name) / len(on_name):.3f} "
          f"(uniform attention: {sum(uniform) / len(uniform):.3f}; the audio features' own "
          f"cosine similarity, centred, softmax at {TAU}: "
          f"{sum(on_name_raw) / len(on_name_raw):.3f})")
    for name, right in totals.items():
        print(f"accuracy, {name} path{'s' if name == 'both' else ''}: {right / n:.3f}")
    print(f"scales: attention path {float(model.recent.scale.exp().detach()):.2f}, "
          f"direct path {float(model.direct_scale.exp().detach()):.2f}")


if __name__ == "__main__":
    main()
