"""Which part of a trained word-referent learner picks the referent? (diagnostics, not a suite)

Run on a finished ``obs eval --task word-referent`` work folder, it loads the OBS
learner of one setting, runs the study pass over the held-out shards and scores
the suite's trials five ways:

* ``both``: the model's own scores (direct path + state path), as the suite does;
* ``direct``: the direct (dual-encoder) path alone;
* ``state``: the state path alone;
* ``X raw`` / ``X normalised``: the committed entries ``X[word nodes, candidate's
  nodes]`` after the study pass, summed (divided by each column's mass);

and, for the audio, how often the nearest other spoken occurrence (pooled
above-floor log-mel, one or two clips) has the same text, and how often the
nearest other occurrence in the model's own audio features names the same
referent (does the model recognise a name when it hears it again?).

Usage (the overrides are the run's ``train_set``, so the model is rebuilt as trained;
``trial_unit=name`` among them builds the trials by names instead of lines)::

    python scripts/diagnose_word_referent.py WORK_DIR SETTING HELDOUT_SHARDS \\
        model.stream.audio_floor=true data.window=64 model.stream.audio_context=1 ...
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from launch.evals import word_referent as wr
from launch.evals.word_referent_data import collect, count_recordings, usable
from launch.evals.word_referent_trials import build_trials, occurrences, referents, tally
from launch.runner import build_model, load_weights, resolve_config
from obs_dist.model.audio_floor import above_floor
from obs_dist.model.av_stream import Candidates, Probe


def main() -> None:
    work_dir, setting, source, *overrides = sys.argv[1:]
    # trial_unit=line|name picks the suite's trial unit; every other entry is a --set.
    unit = next((o.split("=", 1)[1] for o in overrides if o.startswith("trial_unit=")), "line")
    overrides = [o for o in overrides if not o.startswith("trial_unit=")]
    torch.set_num_threads(1)
    out = Path(work_dir) / setting / "obs"
    cfg = resolve_config("configs/av_stream.toml",
                         [f"data.source={source}", f"out_dir={out}", *overrides])
    model, _ = build_model(cfg, torch.device("cpu"))
    load_weights(model, out / "model.safetensors")
    model.eval()
    learner = wr.Trained("obs", model, cfg, 0, 0, 0.0)
    streams = count_recordings(cfg, source)
    labels, media = collect(cfg, source, streams)
    trials = usable(build_trials(labels, unit=unit), media)
    state = wr.study(learner, source, streams)
    x = state.matrix()
    mass = x.abs().sum(0)
    own = model.scores

    def direct(probe: Probe, cands: Candidates) -> torch.Tensor:
        return own(Probe(probe.embed, None), cands)

    def through_state(probe: Probe, cands: Candidates) -> torch.Tensor:
        assert probe.recall is not None and cands.ids is not None and cands.alpha is not None
        return model._state_scores(probe.recall, cands.ids, cands.alpha)

    # The suite answers through answer_scores (which, with answer = "state", never calls
    # scores): replace that, so each row is scored the way it names.
    answer = model.answer_scores
    for name, score in (("both", own), ("direct", direct), ("state", through_state)):
        model.answer_scores = score  # type: ignore[method-assign]
        picks = wr.choose(learner, state, trials, media, 256)
        print(f"{name:14s} {tally(trials, picks)['accuracy']:.3f} ({len(trials)} trials)")
    model.answer_scores = answer  # type: ignore[method-assign]
    for normalised in (False, True):
        picks = []
        with torch.no_grad():
            for t in trials:
                heard = torch.stack([wr.heard_audio(media, t.recording, q, model.audio_context)
                                     for q in (t.heard or (t.query,))])
                words = model.addresses(heard, "audio").flatten()
                seen = model.addresses(torch.stack([media[(t.recording, c)][1]
                                                    for c in t.candidates]), "video")
                sums = [float((x[words][:, nodes] / ((mass[nodes] + 1.0) if normalised
                                                     else 1.0)).sum()) for nodes in seen]
                picks.append(max(range(len(sums)), key=sums.__getitem__))
        print(f"X {'normalised' if normalised else 'raw':12s} "
              f"{tally(trials, picks)['accuracy']:.3f}")
    by_recording: dict[str, list] = {}
    for c in labels:
        by_recording.setdefault(c.recording, []).append(c)
    for clips_heard in (1, 2):
        hits = total = 0
        for rec, clips in by_recording.items():
            clips.sort(key=lambda c: c.index)
            items = []
            for text, runs in occurrences(clips).items():
                for run in runs:
                    idx = [clips[p].index for p in run][:clips_heard]
                    if all((rec, i) in media for i in idx):
                        mel = torch.cat([above_floor(media[(rec, i)][0]) for i in idx], -1)
                        f = torch.cat([mel.mean(-1), mel.amax(-1)])
                        items.append((text, f / f.norm()))
            for i, (text, f) in enumerate(items):
                if not any(u == text for j, (u, _) in enumerate(items) if j != i):
                    continue
                best = max((float(f @ g), j) for j, (_, g) in enumerate(items) if j != i)[1]
                hits += items[best][0] == text
                total += 1
        print(f"audio nearest same text, {clips_heard} clip(s): {hits / max(total, 1):.3f} "
              f"({total} occurrences)")
    print(f"learnt audio features, nearest other occurrence names the same referent: "
          f"{nearest_same_referent(model, by_recording, media):.3f}")


def nearest_same_referent(model: torch.nn.Module, by_recording: dict[str, list],
                          media: dict) -> float:
    """How often the nearest other occurrence (learnt audio features) has the same referent.

    Each occurrence of a kept text (:func:`referents`) is heard as the model hears
    it (its first clip with the model's audio context); within its recording, the
    occurrence whose feature is nearest in cosine, among the other occurrences, is
    looked up. A hit when both texts name the same object: can the model recognise a
    name when it hears it again (the state can bind only what it recognises)?
    """
    hits = total = 0
    with torch.no_grad():
        for rec, clips in by_recording.items():
            items: list[tuple[str, int]] = []
            for referent, _, runs in referents(clips).values():
                items += [(referent, clips[run[0]].index) for run in runs
                          if (rec, clips[run[0]].index) in media]
            if len(items) < 2:
                continue
            heard = torch.stack([wr.heard_audio(media, rec, i, model.audio_context)
                                 for _, i in items])
            f = torch.nn.functional.normalize(model.audio(model._hearable(heard)), dim=1)
            sim = f @ f.t()
            sim.fill_diagonal_(float("-inf"))
            for a, b in enumerate(sim.argmax(1).tolist()):
                hits += items[a][0] == items[b][0]
                total += 1
    return hits / max(total, 1)


if __name__ == "__main__":
    main()
