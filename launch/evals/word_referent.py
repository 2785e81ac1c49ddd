"""``obs eval --task word-referent``: which picture does a heard word name? (CVCL's Labeled-S).

The protocol of Vong et al. (Science 2024) on held-out long recordings, for OBS
and its peers. Labels are used only to build and grade trials, never to train.
Per *setting* (``names`` of :mod:`pipelines.recording_gen`: ``class``, a name
means the same in every recording, cross-situational word learning; or
``recording``, every recording names its objects with its own pseudo-words, so
a name can only be bound in the state):

1. **Data.** Training recordings (seed ``seed``) and other, held-out recordings
   (seed ``seed + 1000``) are generated and packed (one shard chain per
   recording), or taken from ``train_source``/``heldout_source``.
2. **Train** the learners through :func:`launch.runner.run_training` with
   ``config`` (``configs/av_stream.toml``) at the same encoders, data and
   optimizer: ``obs``, one chronological pass with rehearsal; ``dual``, the dual
   encoder (``model.stream.state_path = false``), the same pass and rehearsal
   and OBS's number of optimizer steps; ``dual-offline``, the dual encoder on
   shuffled, looped data for ``offline_factor`` × OBS's steps, without
   rehearsal (the upper bound); ``attention``, the dual encoder with attention
   over earlier clips of the recording (``model.stream.recent``; up to
   ``recent_clips`` back in training), trained as ``dual``: a memory that is a
   context window, not a state.
3. **Score.** A *study pass* runs the held-out recordings in time order (one per
   batch row) through the model's window objective, each recording into a fresh
   big state of its own (``study = "apart"``; ``together``: one state for all),
   committing every window: where a name heard near an object is bound (the
   dual encoder has no state and skips it; the attention peer keeps the
   recording's clips, or its last ``attention_context``, as its context). Trials
   come from the held-out labels (:mod:`launch.evals.word_referent_trials`): a
   text's audio clip alone
   is the query, four silent video clips (its referent and three other objects
   of the same recording) the candidates; every clip of the query's utterance
   is heard alone, and the answer is the candidate with the highest summed
   log-probability under :meth:`~obs_dist.model.av_stream.AVStreamModel.scores`.
   Chance is 0.25.

Rows per (setting, learner): accuracy with a 95 % Wilson interval, trials,
steps, trainable parameters and seconds; per-word accuracies and the confusion
(referent × chosen object) are in ``details``, drawn as one PNG
(``<work_dir>/word_referent_confusion.png`` and ``obs report``'s figure).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from launch.evals.suite import Suite, verdict
from launch.evals.word_referent_adapt import (
    Statistics,
    centred_on,
    normalised,
    recording_statistics,
    speech_clips,
)
from launch.evals.word_referent_addresses import (
    address_agreement,
    clip_addresses,
    hebbian_ceiling,
    moment_agreement,
)
from launch.evals.word_referent_config import (
    CHANCE,
    HELDOUT_SEED_OFFSET,
    LEARNERS,
    NEAR_CHANCE,
    PERFECT,
    QUICK,
    TARGETS,
    WordReferentConfig,
)
from launch.evals.word_referent_data import (
    Media,
    clips_by_recording,
    collect,
    count_recordings,
    heard_audio,
    heldout_batches,
    refuse_shared_recordings,
    usable,
)
from launch.evals.word_referent_learners import Trained, learner_overrides, train
from launch.evals.word_referent_trials import (
    FAR_CLIPS,
    NEAR_CLIPS,
    Trial,
    accuracy_by_distance,
    build_trials,
    tally,
)

log = logging.getLogger("obs.eval.word_referent")

# The most memory the per-recording states of ``study = "apart"`` may hold together.
STUDY_APART_BYTES = 8 * 2**30



# ---------------------------------------------------------------------------- data
def prepare_data(cfg: WordReferentConfig, setting: str) -> tuple[str, str]:
    """The (training, held-out) shard sources of a setting, generated when not given."""
    if cfg.train_source:
        return cfg.train_source, cfg.heldout_source
    from pipelines.pack import pack_folder
    from pipelines.recording_gen import RecordingConfig, write_recordings

    root = Path(cfg.work_dir) / setting
    sources = []
    for part, seed, count in (("train", cfg.seed, cfg.recordings),
                              ("heldout", cfg.seed + HELDOUT_SEED_OFFSET,
                               cfg.heldout_recordings)):
        rec = RecordingConfig(recordings=count, seconds=cfg.seconds, names=setting, seed=seed,
                              objects_per_recording=cfg.objects_per_recording,
                              scene_seconds=tuple(cfg.scene_seconds),  # type: ignore[arg-type]
                              name_gap=tuple(cfg.name_gap),  # type: ignore[arg-type]
                              carrier_fraction=cfg.carrier_fraction)
        folder = root / f"{part}_recordings"
        write_recordings(folder, rec, workers=cfg.gen_workers, overwrite=True, progress=False)
        shards = root / f"{part}_shards"
        pack_folder(folder, str(shards), overwrite=True, progress=False, workers=cfg.gen_workers)
        sources.append(str(shards))
    return sources[0], sources[1]


# ------------------------------------------------------------------------- held out
def study(learner: Trained, source: str, streams: int) -> Any:
    """The study pass: a fresh big state after the held-out stream, window by window."""
    from obs_dist.model.state import BigState

    model, run_cfg = learner.model, learner.run_cfg
    device = torch.device(run_cfg.train.device)
    state = BigState(run_cfg.state, device=device)
    carry = model.initial_carry(streams, device)
    with torch.no_grad():
        for batch in heldout_batches(run_cfg, source, streams):
            batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v
                     for k, v in batch.items()}
            carry = study_batch(model, batch, state, carry, run_cfg.train.window)
    return state


def study_batch(model: Any, batch: dict[str, Any], state: Any, carry: Any, width: int) -> Any:
    """One held-out batch through the window objective, window by window, each committed.

    Args:
        model: the learner's model (eval mode).
        batch: ``[B, T, ...]`` tensors and per-row lists (``keys``).
        state: the big state its windows read and commit to.
        carry: the active nodes handed on from the batch before.
        width: clips per window (0: the whole batch is one window).

    Returns:
        The carry after the batch's last window.
    """
    from obs_dist.model.window import WindowMemory

    rows, length = batch["video_mask"].shape
    width = width or length
    for s in range(0, length, width):
        part = {k: v[:, s:s + width] if isinstance(v, torch.Tensor) and v.dim() >= 2
                else v for k, v in batch.items()}
        if isinstance(batch.get("keys"), list):
            part["keys"] = [row[s:s + width] for row in batch["keys"]]
        if s > 0:
            part.pop("reset", None)
        memory = WindowMemory(state.matrix(), rows)
        carry = model.window_objective(part, memory, carry).carry
        state.apply(memory.to_delta())
    return carry


def study_apart(learner: Trained, source: str, streams: int,
                centring: dict[str, Statistics] | None = None) -> dict[str, Any]:
    """The study pass with one fresh big state per held-out recording.

    The held-out stream runs as in :func:`study` (one recording per batch row,
    the same windows), but row ``r`` writes only recording ``r``'s state: what a
    trial's query recalls was bound in its own recording alone, whatever else is
    held out (the attention peer, likewise, attends over its own recording).

    Returns:
        Each recording's state after its last clip.
    """
    from obs_dist.model.state import BigState

    model, run_cfg = learner.model, learner.run_cfg
    device = torch.device(run_cfg.train.device)
    need = streams * run_cfg.state.bytes
    if need > STUDY_APART_BYTES:
        raise ValueError(f"study = 'apart' holds {streams} states of {run_cfg.state.nodes}² "
                         f"entries ({need / 2**30:.1f} GiB, over {STUDY_APART_BYTES / 2**30:.0f}"
                         f" GiB): score fewer held-out recordings or set study = 'together'")
    states: dict[str, Any] = {}
    carries: dict[str, Any] = {}
    with torch.no_grad():
        for batch in heldout_batches(run_cfg, source, streams):
            rows = batch["video_mask"].shape[0]
            for r in range(rows):
                names = {key.rpartition("/")[0] for key in batch["keys"][r] if key}
                if not names:  # padding: this row's recording has ended
                    continue
                if len(names) > 1:
                    raise ValueError(f"a study row holds clips of {sorted(names)}: the "
                                     f"loader gave a row more than one recording")
                name = names.pop()
                if name not in states:
                    states[name] = BigState(run_cfg.state, device=device)
                    carries[name] = model.initial_carry(1, device)
                row = {k: v[r:r + 1].to(device) if isinstance(v, torch.Tensor)
                       else [v[r]] if isinstance(v, list) and len(v) == rows else v
                       for k, v in batch.items()}
                with centred_on(model, centring.get(name) if centring else None):
                    carries[name] = study_batch(model, row, states[name], carries[name],
                                                run_cfg.train.window)
    return states


def choose_apart(learner: Trained, states: dict[str, Any], trials: list[Trial], media: Media,
                 query_batch: int, centring: dict[str, Statistics] | None = None,
                 reference: dict[str, list[int]] | None = None) -> list[int]:
    """:func:`choose` with each trial's query recalling from its own recording's state
    (and centred by its statistics, ``centring``; ``reference``: as :func:`choose`)."""
    picks: list[int | None] = [None] * len(trials)
    for name, state in states.items():
        mine = [i for i, t in enumerate(trials) if t.recording == name]
        if mine:
            with centred_on(learner.model, centring.get(name) if centring else None):
                chosen = choose(learner, state, [trials[i] for i in mine], media, query_batch,
                                reference=reference)
            for i, pick in zip(mine, chosen):
                picks[i] = pick
    missing = sorted({t.recording for t, p in zip(trials, picks) if p is None})
    if missing:
        raise ValueError(f"the study pass never reached recordings {missing[:3]} of the trials")
    return [p for p in picks if p is not None]


def recent_context(learner: Trained, media: Media, span: int
                   ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """The attention peer's context per held-out recording: its last ``span`` clips
    (``span`` 0: all of them).

    Returns, per recording, the clips' audio features (heard as a query is) and
    picture embeddings (:meth:`~obs_dist.model.av_stream.AVStreamModel.context_features`).
    """
    model = learner.model
    device = torch.device(learner.run_cfg.train.device)
    context = {}
    with torch.no_grad():
        for recording, indices in clips_by_recording(media).items():
            kept = indices[-span:] if span else indices
            audio = torch.stack([heard_audio(media, recording, i, model.audio_context)
                                 for i in kept]).to(device)
            video = torch.stack([media[(recording, i)][1] for i in kept]).to(device)
            context[recording] = model.context_features(audio, video)
    return context


def choose(learner: Trained, state: Any, trials: list[Trial], media: Media,
           query_batch: int,
           recent: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None,
           reference: dict[str, list[int]] | None = None) -> list[int]:
    """The candidate position each trial's query picks.

    Every clip of the query's utterance (``Trial.heard``) is heard alone and
    scored against the candidates; the utterance's score of a candidate is the
    sum of its clips' log-probabilities (the clips are independent evidence).
    ``recent`` (the attention peer, :func:`recent_context`): each query attends
    over its own recording's context. ``reference`` (``candidate_norm =
    "speech"``): per recording, heard clips whose scores of each candidate are
    that candidate's prior; its scores are z-scored over them before the choice
    (:func:`~launch.evals.word_referent_adapt.normalised`).
    """
    from obs_dist.model.av_stream import Candidates
    from obs_dist.model.window import WindowMemory

    if reference is not None and (state is None or recent is not None):
        raise ValueError("candidate_norm = 'speech' needs a learner with a state (OBS)")
    model = learner.model
    device = torch.device(learner.run_cfg.train.device)
    keys = sorted({(t.recording, c) for t in trials for c in t.candidates})
    column = {k: i for i, k in enumerate(keys)}
    # One row per heard clip: (trial, clip).
    heard = [(i, c) for i, t in enumerate(trials) for c in (t.heard or (t.query,))
             if (t.recording, c) in media]
    totals = torch.zeros(len(trials), max((len(t.candidates) for t in trials), default=0))

    def scores(clips: list[tuple[str, int]]) -> torch.Tensor:
        """``[len(clips), len(keys)]``: each heard clip's logits of every candidate."""
        out = [torch.zeros(0, len(keys))]
        for i in range(0, len(clips), query_batch):
            chunk = clips[i:i + query_batch]
            audio = torch.stack([heard_audio(media, r, c, model.audio_context)
                                 for r, c in chunk]).to(device)
            memory = WindowMemory(state.matrix(), len(chunk)) if state is not None else None
            attend = None
            if recent is not None:
                names = sorted({r for r, _ in chunk})
                owner = torch.cat([torch.full((recent[n][0].shape[0],), i)
                                   for i, n in enumerate(names)])
                mine = torch.tensor([names.index(r) for r, _ in chunk])
                attend = (torch.cat([recent[n][0] for n in names]),
                          torch.cat([recent[n][1] for n in names]),
                          (mine[:, None] == owner[None, :]).to(device))
            out.append(model.answer_scores(model.probe(audio, memory, attend), cands).cpu())
        return torch.cat(out)

    with torch.no_grad():
        parts = [model.candidates(torch.stack([media[k][1] for k in keys[i:i + 512]])
                                  .to(device)) for i in range(0, len(keys), 512)]
        cands = Candidates(torch.cat([p.embed for p in parts]),
                           *(None if getattr(parts[0], f) is None else
                             torch.cat([getattr(p, f) for p in parts]) for f in ("ids", "alpha")))
        logits = scores([(trials[j].recording, c) for j, c in heard])
        if reference is not None:
            owner = [r for r, _ in keys]
            logits = normalised(logits, owner, {
                r: scores([(r, c) for c in reference.get(r, [])]) for r in set(owner)})
    cols = torch.tensor([[column[(trials[j].recording, c)] for c in trials[j].candidates]
                         for j, _ in heard], dtype=torch.long).view(len(heard), totals.shape[1])
    logp = logits.gather(1, cols).log_softmax(1)
    totals.index_add_(0, torch.tensor([j for j, _ in heard], dtype=torch.long), logp)
    return totals.argmax(1).tolist()


# ------------------------------------------------------------------------------ run
def run_setting(cfg: WordReferentConfig, setting: str) -> tuple[list[dict[str, Any]],
                                                                 dict[str, Any]]:
    """Data, the learners' training and their trials in one setting: rows and details."""
    train_source, heldout_source = prepare_data(cfg, setting)
    order = [n for n in LEARNERS if n in cfg.models]
    # The trials first: held-out data that gives none is refused before any training.
    from launch.runner import resolve_config

    run_cfg = resolve_config(cfg.config, learner_overrides(
        cfg, order[0], train_source, Path(cfg.work_dir) / setting / order[0], cfg.steps))
    if not cfg.heldout_may_be_trained:
        refuse_shared_recordings(train_source, heldout_source, run_cfg.data.endpoint_url)
    streams = cfg.study_streams or count_recordings(run_cfg, heldout_source)
    labels, media = collect(run_cfg, heldout_source, streams)
    trials = usable(build_trials(labels, cfg.candidates, cfg.min_occurrences, cfg.min_purity,
                                 cfg.min_gap, cfg.trial_seed, cfg.trial_unit), media)
    if not trials:
        # No score is better than a NaN in a table: say what the trials need.
        raise ValueError(
            f"no word-referent trial in {heldout_source} ({len(labels)} clips): a trial "
            f"needs a transcript text said >= {cfg.min_occurrences} times with one object "
            f"in view around >= {cfg.min_purity:.0%} of them (objects.json), and "
            f"{cfg.candidates} objects of the recording seen in silence; with "
            f"trial_unit={cfg.trial_unit!r}"
            + (" whole lines must recur: narration whose lines vary needs "
               "--set trial_unit=name" if cfg.trial_unit == "line" else ""))
    log.info("setting %s: %d held-out clips, %d trials over %d texts", setting, len(labels),
             len(trials), len({(t.recording, t.text) for t in trials}))
    trained: list[Trained] = []
    obs_steps = cfg.steps
    for name in order:
        learner = train(cfg, setting, name, train_source, cfg.steps if name == "obs"
                        else obs_steps)
        if name == "obs":
            obs_steps = learner.steps
        trained.append(learner)
    rows, details = [], {}
    for learner in trained:
        recent = (recent_context(learner, media, cfg.attention_context)
                  if getattr(learner.model, "recent", None) is not None else None)
        has_state = getattr(learner.model, "writer", None) is not None
        centring = (recording_statistics(learner.model, media)
                    if has_state and cfg.study_centring == "recording" else None)
        reference = (speech_clips(learner.model, media, learner.run_cfg.data.window)
                     if has_state and cfg.candidate_norm == "speech" else None)
        if not has_state:
            picks = choose(learner, None, trials, media, cfg.query_batch, recent)
        elif cfg.study == "apart":
            picks = choose_apart(learner, study_apart(learner, heldout_source, streams, centring),
                                 trials, media, cfg.query_batch, centring, reference)
        else:
            picks = choose(learner, study(learner, heldout_source, streams), trials, media,
                           cfg.query_batch, reference=reference)
        scores = tally(trials, picks)
        # The ceiling over the addresses OBS studied with (its nodes and centring).
        nodes = (clip_addresses(learner.model, media, cfg.study_nodes, centring)
                 if has_state else None)
        details[learner.name] = {"per_word": scores["per_word"],
                                 "confusion": scores["confusion"],
                                 "by_distance": accuracy_by_distance(trials, picks, labels),
                                 "addresses": address_agreement(learner.model, labels, media),
                                 "moments": (moment_agreement(nodes[0], labels)
                                             if nodes is not None else None),
                                 "hebbian_ceiling": hebbian_ceiling(learner.model, labels, media,
                                                                    trials, addresses=nodes),
                                 "hebbian_ceiling_perfect": {
                                     kind: hebbian_ceiling(learner.model, labels, media, trials,
                                                           perfect=kinds, addresses=nodes)
                                     for kind, kinds in PERFECT.items()}}
        rows.append({"setting": setting, "model": learner.name,
                     "accuracy": scores["accuracy"], "trials": scores["trials"],
                     "ci_low": scores["ci"][0], "ci_high": scores["ci"][1],
                     "ci": scores["ci"], "chance": CHANCE, "steps": learner.steps,
                     "params": learner.params, "seconds": round(learner.seconds, 1)})
    return rows, {"learners": details, "clips": len(labels), "trials": len(trials),
                  "texts": sorted({t.text for t in trials}), "train_source": train_source,
                  "heldout_source": heldout_source}


def run(cfg: WordReferentConfig) -> dict[str, Any]:
    """Every setting: data, three learners, study pass and trials; rows and the figure."""
    torch.set_num_threads(cfg.threads)
    rows: list[dict[str, Any]] = []
    details: dict[str, Any] = {}
    for setting in cfg.settings:
        setting_rows, details[setting] = run_setting(cfg, setting)
        rows += setting_rows
    result: dict[str, Any] = {"results": rows, "details": details, "chance": CHANCE}
    figure = confusion_figure(result, Path(cfg.work_dir) / "word_referent_confusion.png")
    result["figure"] = str(figure) if figure is not None else ""
    return result


def _row(result: dict[str, Any], setting: str, learner: str) -> dict[str, Any] | None:
    return next((r for r in result.get("results", []) if r["setting"] == setting
                 and r["model"] == learner and r["trials"]), None)


def targets(result: dict[str, Any]) -> list[str]:
    """OBS's accuracy per setting, OBS against the one-pass dual encoder, novel-name chance."""
    lines = []
    for setting, what in (("class", "consistent names"), ("recording", "novel names")):
        obs, dual = _row(result, setting, "obs"), _row(result, setting, "dual")
        if obs is None:
            continue
        goal = TARGETS[setting]
        lines.append(f"Word–referent, {what}: OBS >= {goal:.2f} — "
                     f"{verdict(obs['accuracy'] >= goal)} (OBS {obs['accuracy']:.3f} over "
                     f"{obs['trials']} trials)")
        if dual is not None:
            # A tie at chance shows nothing: OBS must also be above chance (its 95 %
            # interval clear of it) for the comparison to count as met.
            learned = obs["ci_low"] > CHANCE
            lines.append(f"Word–referent, {what}: OBS >= the one-pass dual encoder, above "
                         f"chance — {verdict(learned and obs['accuracy'] >= dual['accuracy'])} "
                         f"(dual encoder {dual['accuracy']:.3f}; OBS's 95 % interval "
                         f"{obs['ci_low']:.3f}–{obs['ci_high']:.3f})")
            if setting == "recording":
                near = abs(dual["accuracy"] - CHANCE) <= NEAR_CHANCE
                lines.append(f"Word–referent, novel names: the dual encoder near chance "
                             f"({CHANCE} ± {NEAR_CHANCE}) — {verdict(near)} "
                             f"({dual['accuracy']:.3f})")
    return lines


def extras(result: dict[str, Any]) -> list[str]:
    """Per-word accuracy of every learner, and its address agreement, per setting."""
    from launch.evals.suite import markdown_table

    parts = []
    for setting, info in result.get("details", {}).items():
        rows = [{"model": name, "text": text, "referent": w["referent"],
                 "accuracy": w["accuracy"], "trials": w["trials"]}
                for name, d in info.get("learners", {}).items()
                for text, w in d["per_word"].items()]
        if rows:
            parts.append(f"\nWord–referent accuracy per word ({setting} names, "
                         f"{info['trials']} trials):\n\n" + markdown_table(rows))
        agree = [{"model": name, "clips": kind, "same label": a["same"],
                  "different label": a["different"], "distinct nodes": a["distinct_nodes"],
                  "Hebbian ceiling": d.get("hebbian_ceiling"),
                  "ceiling, these perfect": (d.get("hebbian_ceiling_perfect") or {}).get(kind),
                  "ceiling, both perfect": (d.get("hebbian_ceiling_perfect") or {}).get("both")}
                 for name, d in info.get("learners", {}).items()
                 for kind, a in (d.get("addresses") or {}).items()]
        if agree:
            parts.append(f"\nAddress agreement ({setting} names; node-set overlap of two "
                         "held-out clips of one recording, same label vs different; the "
                         "accuracy a frequency-normalised Hebbian binding over these "
                         "addresses would reach; `launch/evals/word_referent_addresses.py`):"
                         "\n\n"
                         + markdown_table(agree))
        distance = [{"model": name, **{
                        f"{title} ({d[band]['trials']} trials)": d[band]["accuracy"]
                        for band, title in (("near", f"under {NEAR_CLIPS} clips"),
                                            ("between", f"{NEAR_CLIPS}–{FAR_CLIPS - 1}"),
                                            ("far", f"{FAR_CLIPS} or more"))}}
                    for name, entry in info.get("learners", {}).items()
                    if (d := entry.get("by_distance"))]
        if distance:
            parts.append(f"\nAccuracy by how far the referent's picture is from the nearest "
                         f"clip where its name was said ({setting} names; a near referent "
                         "can be found by the scene the name was heard in, a far one only by "
                         "the object):\n\n" + markdown_table(distance))
        moments = [{"model": name, "same object, near": m["same_near"],
                    "same object, far": m["same_far"],
                    "different objects, near": m["different_near"],
                    "different objects, far": m["different_far"]}
                   for name, d in info.get("learners", {}).items()
                   if (m := d.get("moments"))]
        if moments:
            parts.append(f"\nPicture nodes across moments ({setting} names; node-set overlap "
                         "of two held-out pictures of one recording, with the nodes OBS "
                         f"studies with: near is under {NEAR_CLIPS} clips apart, far "
                         f"{FAR_CLIPS} or more; a name heard in one scene finds its object in "
                         "another only where one object far apart shares more than different "
                         "objects near):\n\n" + markdown_table(moments))
    return parts


def confusion_figure(result: dict[str, Any], path: Path) -> Path | None:
    """Referent × chosen object counts, one panel per (setting, learner); None if no trial."""
    from launch.evals import plots

    panels = [(s, name, d["confusion"]) for s, info in result.get("details", {}).items()
              for name, d in info.get("learners", {}).items() if d["confusion"]]
    if not panels:
        return None
    settings = list(dict.fromkeys(s for s, _, _ in panels))
    learners = list(dict.fromkeys(n for _, n, _ in panels))
    fig, axes = plots._subplots(len(settings), len(learners), squeeze=False,
                                figsize=(3.6 * len(learners) + 1, 3.4 * len(settings) + 0.6))
    for ax in axes.flat:
        ax.set_visible(False)
    for setting, name, cells in panels:
        ax = axes[settings.index(setting)][learners.index(name)]
        ax.set_visible(True)
        objects = sorted({r for r, _, _ in cells} | {c for _, c, _ in cells})
        grid = torch.zeros(len(objects), len(objects))
        for r, c, n in cells:
            grid[objects.index(r), objects.index(c)] += n
        grid = grid / grid.sum(1, keepdim=True).clamp(min=1)
        ax.imshow(grid.numpy(), vmin=0, vmax=1, cmap="viridis")
        row = _row(result, setting, name)
        acc = f"{row['accuracy']:.2f}" if row else "–"
        ax.set_title(f"{name}, {setting} names (acc {acc})", fontsize=9)
        ticks = range(len(objects))
        short = [o if len(o) <= 14 else o[:13] + "…" for o in objects]
        ax.set_xticks(ticks, short, rotation=90, fontsize=6)
        ax.set_yticks(ticks, short, fontsize=6)
        ax.set_xlabel("chosen object", fontsize=8)
        ax.set_ylabel("referent", fontsize=8)
    return plots._save(fig, path)


SUITE = Suite(name="word-referent", title="Word–referent trials (Labeled-S, held-out recordings)",
              config=WordReferentConfig, run=run, quick=QUICK, targets=targets,
              figures=[("confusion", confusion_figure)], extras=extras)
