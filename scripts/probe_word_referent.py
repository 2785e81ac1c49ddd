"""Where a trained OBS learner loses word–referent score (probes, not a suite).

Each probe loads a learner trained by ``obs eval --task word-referent`` (with
``reuse_trained``, so nothing is trained), changes one thing after training, and
scores the suite's trials on held-out shards, each recording studied apart. The
figures of docs/results/notes.md, "sixteenth round", come from these probes on
the fourteenth round's models.

Probes (one or more per run):

* ``lag``: the Hebbian ceiling (``hebbian_ceiling``) at lags 0, 1, 2, 3, 5, and
  with perfect picture addresses;
* ``gate``: the ceiling linked at the clips the speech gate passes instead of the
  labelled spoken ones, with learnt and with perfect picture addresses;
* ``cells``: the ceiling with picture addresses from the video encoder's 4 × 4
  cells or 2 × 2 quadrants (each cell's top nodes, the union);
* ``read``: OBS's answer with the column mass, the candidate's or the query's
  weights changed;
* ``answer``: OBS's answer with the utterance's vote temperature scaled;
* ``study``: OBS's answer with the study pass changed: the write strength at its
  mean, a silent second clearing the carry, the names' links alone
  (``study_rule = "name_links"``), or those linked to the next picture only;
* ``topk``: the ceiling with each clip's product keys' best 8–64 nodes instead of
  the writer's k_max (pictures alone, then both modalities);
* ``centre``: the ceiling with each held-out recording's own feature statistics
  centring its addresses (mean and variance, or the mean alone), at 8 and 32 nodes;
* ``pcs``: the same at 32 nodes with the first 1–8 principal directions of the
  recording's centred pictures also removed from its pictures;
* ``moments``: how the pictures' nodes agree by object and by time apart
  (``moment_agreement``), as trained and as studied;
* ``knn``: the ceiling with each picture's feature averaged with its most
  similar pictures of the recording (all, or only those 8 or more clips away);
* ``pool``: the ceiling with the encoder's pool changed (its mean or its max held
  at the recording's average, the max taken over the cells less the picture's
  mean), and with each picture's feature averaged with its neighbours in time;
* ``local``: the ceiling and ``moment_agreement`` with a running average over the
  neighbouring 2w + 1 clips (a scene's look) subtracted from each picture;
* ``split``: OBS's answer as the config studies (32 nodes, the recording's
  statistics, lookback 3), split by how far the referent's picture is from the
  nearest clip where its text was spoken (``accuracy_by_distance``: near, under 4
  clips; between; far, 24 or more): how much of the score could come from the
  scene the name was heard in;
* ``bridges``: how often the pairs ``model.stream.heard_alike`` would choose (far
  clips of one recording that sound alike, k = 1 and 2) show one object and had
  one line said, against all the far pairs it chooses from;
* ``horizon``: the same counts with the pairs chosen over each whole held-out
  recording instead of one window (what a bank of a recording's heard clips,
  kept through the pass, would pair);
* ``bands``: ``horizon``'s pairs split by how alike they sound (the cosine's
  percentile bands), each pair once;
* ``sounds``: ``horizon``'s mutual nearest sounds found by the trained audio
  features and by the log-mel they are made from (no learning).

``bridges``, ``horizon``, ``bands`` and ``sounds`` live in ``scripts/probe_pairs.py``.

The figures of the seventeenth round (``topk``, ``centre``, ``pcs``) and of the
eighteenth (``moments``, ``knn``, ``pool``, ``local``) come from these probes on
the same models.

Usage (``SEED`` and the overrides are the suite's ``seed`` and ``train_set`` of
the run, so the learner is found and loaded as trained)::

    python scripts/probe_word_referent.py WORK_DIR TRAIN_SHARDS HELDOUT_SHARDS SEED \\
        PROBE[,PROBE...] [OVERRIDE ...]

e.g. the notes' seed-0 model: ``... runs/px64sp_s0/suite gen/train_shards
gen/familiar24_shards 0 gate,study data.image_size=64 model.image_size=64
'model.stream.audio_pool="speech"'``.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from probe_pairs import probe_bands, probe_bridges, probe_horizon, probe_sounds

from obs_dist.model.name_links import name_nodes


@contextmanager
def replaced(owner: Any, name: str, value: Any) -> Iterator[None]:
    """``owner.name`` is ``value`` inside the block (a probe's one change)."""
    old = getattr(owner, name)
    setattr(owner, name, value)
    try:
        yield
    finally:
        setattr(owner, name, old)


def gated_labels(model: Any, labels: list[Any], media: dict[Any, Any]) -> list[Any]:
    """The labels with ``word`` set where the speech gate passes (per 64-clip window)."""
    from launch.evals.word_referent_adapt import speech_clips

    passed = {(r, i) for r, clips in speech_clips(model, media, 64).items() for i in clips}
    return [dataclasses.replace(c, word="x" if (c.recording, c.index) in passed else "")
            for c in labels]


def feature_map(enc: Any, clips: torch.Tensor) -> torch.Tensor:
    """The video encoder's last feature map of ``clips`` (``VideoClipEncoder.forward``'s start)."""
    n, f = clips.shape[:2]
    picks = torch.linspace(0, f - 1, min(f, enc.frames_used) + 1)[:-1] if f > 1 \
        else torch.zeros(1)
    x = clips[:, picks.round().long().clamp(0, f - 1)].float() / 255.0
    return enc.convs(((x - 0.5) / 0.25).reshape(n, -1, x.shape[-2], x.shape[-1]))


def cell_addresses(model: Any, media: dict[Any, Any]) -> dict[str, dict[Any, list[int]]]:
    """Picture addresses from the encoder's cells and quadrants (the union per picture)."""
    enc, keys = model.video, sorted(media)

    def nodes(pooled: torch.Tensor) -> torch.Tensor:
        g = model._addressing(enc.proj(pooled) + model.modality[0], 0, track=False)
        return model.writer(torch.cat([g, torch.zeros_like(g)], 1)).ids

    out: dict[str, dict[Any, list[int]]] = {}
    with torch.no_grad():
        h = torch.cat([feature_map(enc, torch.stack([media[k][1] for k in keys[i:i + 256]]))
                       for i in range(0, len(keys), 256)])
        n, w = h.shape[:2]
        cells = h.flatten(2).transpose(1, 2).reshape(-1, w)
        cell_ids = nodes(torch.cat([cells, cells], 1)).view(n, -1, model.writer.config.k_max)
        q = h.unfold(2, 2, 2).unfold(3, 2, 2)
        quads = torch.cat([q.mean((-1, -2)).flatten(2), q.amax((-1, -2)).flatten(2)], 1)
        quad_ids = nodes(quads.transpose(1, 2).reshape(-1, 2 * w)).view(n, 4, -1)
        for j in (1, 2, 4):
            out[f"cells 4x4, top {j}"] = {k: sorted(set(cell_ids[i, :, :j].flatten().tolist()))
                                         for i, k in enumerate(keys)}
        for j in (2, 4):
            out[f"quadrants, top {j}"] = {k: sorted(set(quad_ids[i, :, :j].flatten().tolist()))
                                         for i, k in enumerate(keys)}
    return out


@dataclasses.dataclass
class Setup:
    """A loaded learner, its held-out data and trials, and how to score them."""

    learner: Any
    heldout: str
    streams: int
    labels: list[Any]
    media: dict[Any, Any]
    trials: list[Any]
    addresses: Any

    @property
    def model(self) -> Any:
        return self.learner.model

    def ceiling(self, name: str, labels: list[Any] | None = None, **kw: Any) -> None:
        """Print the Hebbian ceiling with ``kw`` passed to ``hebbian_ceiling``."""
        from launch.evals.word_referent_addresses import hebbian_ceiling

        kw.setdefault("addresses", self.addresses)
        value = hebbian_ceiling(self.model, labels or self.labels, self.media, self.trials, **kw)
        print(f"ceiling  {name:44s} {value:.3f}", flush=True)

    def answer(self, name: str) -> None:
        """Print OBS's score, each held-out recording studied apart as the suite does."""
        from launch.evals import word_referent as wr
        from launch.evals.word_referent_trials import tally

        states = wr.study_apart(self.learner, self.heldout, self.streams)
        picks = wr.choose_apart(self.learner, states, self.trials, self.media, 256)
        print(f"answer   {name:44s} {tally(self.trials, picks)['accuracy']:.3f}", flush=True)


def probe_lag(s: Setup) -> None:
    for lag in (0, 1, 2, 3, 5):
        s.ceiling(f"lag {lag}", lag=lag)
        s.ceiling(f"lag {lag}, perfect pictures", lag=lag, perfect=["video"])


def probe_gate(s: Setup) -> None:
    gated = gated_labels(s.model, s.labels, s.media)
    spoken = {(c.recording, c.index) for c in s.labels if c.word}
    passed = {(c.recording, c.index) for c in gated if c.word}
    print(f"clips: {len(passed)} gated, {len(spoken)} labelled spoken, "
          f"{len(passed & spoken)} both", flush=True)
    s.ceiling("labelled spoken clips")
    s.ceiling("gated clips", labels=gated)
    s.ceiling("gated clips, perfect pictures", labels=gated, perfect=["video"])


def probe_cells(s: Setup) -> None:
    s.ceiling("the whole frame")
    for name, video in cell_addresses(s.model, s.media).items():
        s.ceiling(name, addresses=(video, s.addresses[1]))


def probe_read(s: Setup) -> None:
    from obs_dist.model.av_stream import AVStreamModel
    from obs_dist.model.window import WindowMemory

    mass, scores, read = (WindowMemory.column_mass, AVStreamModel._state_scores,
                          WindowMemory.read)

    def no_diagonal(self: Any) -> torch.Tensor:
        if self._column_mass is None:
            base = self.base.detach().abs()
            self._column_mass = base.sum(0) - base.diagonal()
        return self._column_mass

    def power(p: float) -> Callable[[Any], torch.Tensor]:
        return lambda self: (1.0 + mass(self)) ** p - 1.0

    def even(self: Any, recall: torch.Tensor, ids: torch.Tensor,
             alpha: torch.Tensor) -> torch.Tensor:
        return scores(self, recall, ids, torch.full_like(alpha, 1.0 / alpha.shape[1]))

    def by_size(self: Any, recall: torch.Tensor, ids: torch.Tensor,
                alpha: torch.Tensor) -> torch.Tensor:
        return scores(self, recall, ids, alpha.abs())

    def query_by_size(self: Any, rows: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        return read(self, rows, weights.abs())

    s.answer("as trained")
    for name, owner, attr, value in (
            ("column mass without the diagonal", WindowMemory, "column_mass", no_diagonal),
            ("column mass ^ 0.5", WindowMemory, "column_mass", power(0.5)),
            ("column mass ^ 2", WindowMemory, "column_mass", power(2.0)),
            ("candidate's nodes weighted alike", AVStreamModel, "_state_scores", even),
            ("candidate's nodes weighted by |alpha|", AVStreamModel, "_state_scores", by_size),
            ("query's nodes weighted by |alpha|", WindowMemory, "read", query_by_size)):
        with replaced(owner, attr, value):
            s.answer(name)


def probe_answer(s: Setup) -> None:
    base = float(s.model.state_scale)
    for factor in (1.0, 0.01, 0.1, 0.3, 3.0, 10.0):
        with torch.no_grad():
            s.model.state_scale.fill_(base + math.log(factor))
        s.answer(f"vote temperature x {factor}")
    with torch.no_grad():
        s.model.state_scale.fill_(base)


def probe_study(s: Setup) -> None:
    from launch.evals import word_referent as wr
    from obs_dist.model import av_stream, name_links
    from obs_dist.model.writer import Writer

    forward, step = Writer.forward, av_stream.AVStreamModel._state_step
    link = name_links.name_link_step
    etas: list[torch.Tensor] = []

    def recording(self: Any, *a: Any, **k: Any) -> Any:
        out = forward(self, *a, **k)
        etas.append(out.eta.detach().flatten())
        return out

    def mean_eta(self: Any, *a: Any, **k: Any) -> Any:
        out = forward(self, *a, **k)
        return out._replace(eta=torch.full_like(out.eta, float(torch.cat(etas).mean())))

    def clears(self: Any, f: Any, memory: Any, carry: Any, recall: bool,
               gate: Any = None) -> Any:
        h0, c, ids, alpha = step(self, f, memory, carry, recall, gate)
        if gate is not None:  # a silent second drops the carry instead of keeping it
            c = c._replace(vals=c.vals * (gate[:, None] > 0).to(c.vals.dtype))
        return h0, c, ids, alpha

    def next_only(*a: Any) -> Any:
        h0, c, ids, alpha = link(*a)
        recall = a[5]
        return h0, c if recall else c._replace(vals=torch.zeros_like(c.vals)), ids, alpha

    with replaced(Writer, "forward", recording):  # the strengths of one study pass
        wr.study_apart(s.learner, s.heldout, s.streams)
    s.answer("as trained")
    with replaced(Writer, "forward", mean_eta):
        s.answer(f"every write at the mean strength ({float(torch.cat(etas).mean()):.2f})")
    with replaced(av_stream.AVStreamModel, "_state_step", clears):
        s.answer("a silent second clears the carry")
    s.model.set_study_rule("name_links")
    s.answer("the names' links alone (name_links)")
    with replaced(av_stream, "name_link_step", next_only):
        s.answer("... linked to the next picture only")
    s.model.set_study_rule("learnt")


def without_directions(pcs: int) -> Callable[[torch.Tensor, list[Any]], torch.Tensor]:
    """Each centred picture less the recording's first ``pcs`` principal directions
    (for :func:`studied_pictures`)."""
    def change(x: torch.Tensor, keys: list[Any]) -> torch.Tensor:
        top = torch.linalg.svd(x, full_matrices=False)[2][:pcs]
        return x - (x @ top.t()) @ top
    return change


def probe_topk(s: Setup) -> None:
    from launch.evals.word_referent_addresses import clip_addresses

    for k in (8, 16, 32, 64):
        video, audio = clip_addresses(s.model, s.media, k)
        s.ceiling(f"pictures' top {k}", addresses=(video, s.addresses[1]))
        s.ceiling(f"pictures' and sounds' top {k}", addresses=(video, audio))


def probe_centre(s: Setup) -> None:
    from launch.evals.word_referent_adapt import recording_statistics
    from launch.evals.word_referent_addresses import clip_addresses

    stats = recording_statistics(s.model, s.media)
    running = [c.var for c in s.model.centring]
    mean_only = {r: tuple((m, v) for (m, _), v in zip(st, running, strict=True))
                 for r, st in stats.items()}
    s.ceiling("running statistics (as trained)")
    for k in (8, 32):
        for name, use in (("mean+var", stats), ("mean", mean_only)):
            video, audio = clip_addresses(s.model, s.media, k, use)
            s.ceiling(f"recording-centred pictures, top {k}, {name}",
                      addresses=(video, s.addresses[1]))
            s.ceiling(f"recording-centred both, top {k}, {name}", addresses=(video, audio))


def probe_pcs(s: Setup) -> None:
    from launch.evals.word_referent_adapt import recording_statistics
    from launch.evals.word_referent_addresses import clip_addresses

    stats = recording_statistics(s.model, s.media)
    _, audio = clip_addresses(s.model, s.media, 32, stats)
    for pcs in (0, 1, 2, 4, 8):
        s.ceiling(f"top 32, recording-centred, pictures less {pcs} PCs",
                  addresses=(studied_pictures(s.model, s.media, stats,
                                                   without_directions(pcs)), audio))


def studied_pictures(model: Any, media: Any, stats: Any,
                     change: Callable[[torch.Tensor, list[Any]], torch.Tensor]
                     ) -> dict[Any, list[int]]:
    """32 nodes a picture, centred by its recording, from ``change(x, keys)`` of the
    recording's addressing features ``x`` (its clips ``keys`` in order)."""
    from launch.evals.word_referent_adapt import centred_on

    out: dict[Any, list[int]] = {}
    with torch.no_grad():
        for rec in sorted({r for r, _ in media}):
            keys = sorted(q for q in media if q[0] == rec)
            f = torch.cat([model.video(torch.stack([media[q][1] for q in keys[i:i + 256]]))
                           for i in range(0, len(keys), 256)]) + model.modality[0]
            with centred_on(model, stats[rec]):
                x = model._addressing(f, 0)
            ids = name_nodes(model.writer, change(x, keys), 32)
            out.update({q: row for q, row in zip(keys, ids.tolist(), strict=True)})
    return out


def with_similar(k: int, gap: int) -> Callable[[torch.Tensor, list[Any]], torch.Tensor]:
    """Each feature plus the mean of its ``k`` most similar (cosine) of the recording,
    leaving out those under ``gap`` clips away (and itself)."""
    def change(x: torch.Tensor, keys: list[Any]) -> torch.Tensor:
        if not k:
            return x
        u = torch.nn.functional.normalize(x, dim=1)
        idx = torch.tensor([q[1] for q in keys], dtype=torch.float)
        near = (idx[:, None] - idx[None, :]).abs() < max(gap, 1)
        top = (u @ u.t()).masked_fill(near, -2.0).topk(min(k, len(keys) - 1), dim=1).indices
        return x + x[top].mean(1)
    return change


def less_local(w: int, beta: float) -> Callable[[torch.Tensor, list[Any]], torch.Tensor]:
    """Each feature less ``beta`` times the mean over the clips ``w`` either side."""
    def change(x: torch.Tensor, keys: list[Any]) -> torch.Tensor:
        if not w:
            return x
        c = torch.cumsum(torch.cat([torch.zeros(1, x.shape[1]), x]), 0)
        lo = torch.clamp(torch.arange(len(keys)) - w, min=0)
        hi = torch.clamp(torch.arange(len(keys)) + w + 1, max=len(keys))
        return x - beta * (c[hi] - c[lo]) / (hi - lo)[:, None]
    return change


def moments_line(s: Setup, video: dict[Any, list[int]]) -> str:
    from launch.evals.word_referent_addresses import moment_agreement

    m = moment_agreement(video, s.labels)
    return (f"same object near {m['same_near']:.3f} / far {m['same_far']:.3f}, "
            f"different objects near {m['different_near']:.3f} / far {m['different_far']:.3f}")


def probe_moments(s: Setup) -> None:
    from launch.evals.word_referent_adapt import recording_statistics
    from launch.evals.word_referent_addresses import clip_addresses

    video, _ = clip_addresses(s.model, s.media, 32, recording_statistics(s.model, s.media))
    for name, nodes in (("the writer's 8, running statistics", s.addresses[0]),
                        ("32, recording-centred (as studied)", video)):
        print(f"moments  {name:44s}", moments_line(s, nodes), flush=True)


def probe_knn(s: Setup) -> None:
    from launch.evals.word_referent_adapt import recording_statistics
    from launch.evals.word_referent_addresses import clip_addresses

    stats = recording_statistics(s.model, s.media)
    _, audio = clip_addresses(s.model, s.media, 32, stats)
    for k, gap in ((0, 0), (3, 0), (8, 0), (16, 0), (8, 8), (16, 8), (32, 8)):
        video = studied_pictures(s.model, s.media, stats, with_similar(k, gap))
        s.ceiling(f"32 studied, + {k} most similar, {gap}+ apart", addresses=(video, audio))


def pooled_pictures(model: Any, media: Any, stats: Any) -> dict[str, dict[Any, list[int]]]:
    """32 nodes a picture, centred by its recording, with the encoder's pool changed."""
    from launch.evals.word_referent_adapt import centred_on

    enc = model.video
    out: dict[str, dict[Any, list[int]]] = {}
    with torch.no_grad():
        for rec in sorted({r for r, _ in media}):
            keys = sorted(q for q in media if q[0] == rec)
            h = feature_map(enc, torch.stack([media[q][1] for q in keys]))
            n = h.shape[0]
            mean, top = h.mean((2, 3)), h.amax((2, 3))
            salient = (h - h.mean((2, 3), keepdim=True)).amax((2, 3)) + (top - mean).mean(0)
            average_mean = mean.mean(0).expand_as(mean)
            variants = {"as trained": torch.cat([mean, top], 1),
                        "mean at the recording's": torch.cat([average_mean, top], 1),
                        "max at the recording's": torch.cat([mean, top.mean(0).expand_as(top)], 1),
                        "max over cells less the picture's mean":
                            torch.cat([average_mean, salient], 1)}
            for name, pooled in variants.items():
                g = enc.proj(pooled) + model.modality[0]
                # Each variant centred by its own statistics, as study_centring does.
                with centred_on(model, ((g.mean(0), g.var(0, unbiased=False)), stats[rec][1])):
                    xg = model._addressing(g, 0)
                changes = {name: xg}
                if name == "as trained":
                    for w in (1, 2):
                        changes[f"mean over {w} clips either side"] = torch.stack(
                            [xg[max(0, i - w):i + w + 1].mean(0) for i in range(n)])
                for label, feats in changes.items():
                    out.setdefault(label, {}).update({q: row for q, row in zip(
                        keys, name_nodes(model.writer, feats, 32).tolist(), strict=True)})
    return out


def probe_pool(s: Setup) -> None:
    from launch.evals.word_referent_adapt import recording_statistics
    from launch.evals.word_referent_addresses import clip_addresses

    stats = recording_statistics(s.model, s.media)
    _, audio = clip_addresses(s.model, s.media, 32, stats)
    for name, video in pooled_pictures(s.model, s.media, stats).items():
        s.ceiling(f"32 studied, {name}", addresses=(video, audio))


def probe_local(s: Setup) -> None:
    from launch.evals.word_referent_adapt import recording_statistics
    from launch.evals.word_referent_addresses import clip_addresses

    stats = recording_statistics(s.model, s.media)
    _, audio = clip_addresses(s.model, s.media, 32, stats)
    for w, beta in ((0, 0.0), (4, 0.5), (16, 0.5), (16, 1.0), (64, 0.5), (64, 1.0)):
        video = studied_pictures(s.model, s.media, stats, less_local(w, beta))
        s.ceiling(f"32 studied, less {beta} x mean of {w} either side", addresses=(video, audio))
        print(f"moments  {'':44s}", moments_line(s, video), flush=True)


def probe_split(s: Setup) -> None:
    from launch.evals import word_referent as wr
    from launch.evals.word_referent_adapt import recording_statistics
    from launch.evals.word_referent_trials import accuracy_by_distance, tally
    from obs_dist.model.name_links import NameLinks

    stats = recording_statistics(s.model, s.media)
    s.model.set_study_rule("name_links", NameLinks(32, 3))
    states = wr.study_apart(s.learner, s.heldout, s.streams, stats)
    picks = wr.choose_apart(s.learner, states, s.trials, s.media, 256, stats)
    s.model.set_study_rule("learnt")
    print(f"split    {'all trials':44s} {tally(s.trials, picks)['accuracy']:.3f} "
          f"({len(s.trials)})", flush=True)
    for band, result in accuracy_by_distance(s.trials, picks, s.labels).items():
        print(f"split    {'referent ' + band + ' of its name':44s} {result['accuracy']:.3f} "
              f"({result['trials']})", flush=True)


PROBE_FUNCTIONS = {"lag": probe_lag, "gate": probe_gate, "cells": probe_cells,
                   "read": probe_read, "answer": probe_answer, "study": probe_study,
                   "topk": probe_topk, "centre": probe_centre, "pcs": probe_pcs,
                   "moments": probe_moments, "knn": probe_knn, "pool": probe_pool,
                   "local": probe_local, "split": probe_split, "bridges": probe_bridges,
                   "horizon": probe_horizon, "bands": probe_bands,
                   "sounds": probe_sounds}


def main(argv: list[str]) -> None:
    from launch.evals.word_referent_addresses import clip_addresses
    from launch.evals.word_referent_config import WordReferentConfig
    from launch.evals.word_referent_data import collect, count_recordings, usable
    from launch.evals.word_referent_learners import train
    from launch.evals.word_referent_trials import build_trials

    if len(argv) < 6 or any(p not in PROBE_FUNCTIONS for p in argv[5].split(",")):
        raise SystemExit(__doc__)
    work, train_shards, heldout, seed, probes = argv[1:6]
    torch.set_num_threads(1)
    cfg = WordReferentConfig(settings=["recording"], models=["obs"], seed=int(seed),
                             train_set=argv[6:], train_source=train_shards,
                             heldout_source=heldout, rehearsal_ratio=15, work_dir=work,
                             reuse_trained=True)
    learner = train(cfg, "recording", "obs", train_shards, 0)
    streams = count_recordings(learner.run_cfg, heldout)
    labels, media = collect(learner.run_cfg, heldout, streams)
    trials = usable(build_trials(labels, 4, 2, 0.6, 10, 0, "line"), media)
    setup = Setup(learner, heldout, streams, labels, media, trials,
                  clip_addresses(learner.model, media))
    print(f"{len(trials)} trials", flush=True)
    for probe in probes.split(","):
        PROBE_FUNCTIONS[probe](setup)


if __name__ == "__main__":
    main(sys.argv)
