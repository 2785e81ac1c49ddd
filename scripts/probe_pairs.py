"""Pairs of far clips a bank of a recording's heard clips would choose (probes).

Used by ``scripts/probe_word_referent.py`` (its probes ``bridges``, ``horizon``,
``bands`` and ``sounds``; the usage is there). They count, on the held-out recordings, how often
two clips of one recording 24 or more clips apart (``model.stream.negative_gap``)
show one object and had one line said: every such pair, and those whose sounds
are each other's nearest (``obs_dist/model/alike_clips.py``'s mutual nearest
neighbours), chosen inside one training window or over the whole recording. The
figures of docs/results/notes.md, "nineteenth" to "twenty-first round", come from
them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from obs_dist.model.alike_clips import alike_sounds

if TYPE_CHECKING:
    from probe_word_referent import Setup


def alike_in_labels(q: int, c: int, shown: list[Any], said: list[Any]) -> tuple[int, int]:
    """Whether clips ``q`` and ``c`` show one object, and had one line said (1 or 0)."""
    return (int(shown[q] is not None and shown[q] == shown[c]),
            int(bool(said[q]) and said[q] == said[c]))


def count_pairs(tally: dict[str, list[int]], name: str, pairs: torch.Tensor,
                shown: list[Any], said: list[Any]) -> None:
    """Add ``pairs``' count, and how many show one object and had one line said."""
    for q, c in pairs.nonzero().tolist():
        counts = tally.setdefault(name, [0, 0, 0])
        same_object, same_line = alike_in_labels(q, c, shown, said)
        counts[0] += 1
        counts[1] += same_object
        counts[2] += same_line


def heard_clips(model: Any, batch: dict[str, Any]) -> torch.Tensor:
    """``[B, T]``: the clips the objective scores (speech heard, a picture shown)."""
    from obs_dist.model.audio_floor import speech_gate

    return (speech_gate(batch["audio"], batch["audio_mask"], model.stream_cfg.gate)
            * batch["video_mask"].float()) > 0


def print_pairs(probe: str, tally: dict[str, list[int]]) -> None:
    for name, (pairs, same_object, same_line) in tally.items():
        print(f"{probe:8s} {name:44s} {pairs:7d} pairs: one object {same_object / pairs:.3f}, "
              f"one line said {same_line / pairs:.3f}", flush=True)


def probe_bridges(s: Setup) -> None:
    """How often ``model.stream.heard_alike``'s pairs (k = 1, 2) show one object, against
    every pair it could choose from, on the held-out windows as training sees them."""
    from launch.evals.word_referent_data import heldout_batches
    from obs_dist.model.clip_context import clip_positions

    model, gap = s.model, s.model.stream_cfg.negative_gap
    tally: dict[str, list[int]] = {}
    with torch.no_grad():
        for batch in heldout_batches(s.learner.run_cfg, s.heldout, s.streams):
            fa = model._features(batch)[0]
            b, t = fa.shape[:2]
            stream, when = clip_positions(batch, b, t, fa.device)
            keep = heard_clips(model, batch).reshape(-1)
            far = (stream[:, None] == stream[None, :]) & (
                (when[:, None] - when[None, :]).abs() >= gap)
            shown = [o for row in batch["object_names"] for o in row]
            said = [w for row in batch["words"] for w in row]
            allowed = far & keep[:, None] & keep[None, :]
            for name, pairs in [("any far pair", allowed)] + [
                    (f"heard_alike = {k}", alike_sounds(fa, allowed, k)) for k in (1, 2)]:
                count_pairs(tally, name, pairs, shown, said)
    print_pairs("bridges", tally)


Heard = dict[str, dict[int, tuple[torch.Tensor, Any, Any, torch.Tensor]]]


def recording_sounds(s: Setup) -> Heard:
    """Every heard clip of each held-out recording, as training's windows hear it:
    ``{recording: {clip index: (audio feature, object shown, line said, log-mel)}}``,
    the log-mel the clip's own ``[n_mels, A]`` above its floor (no encoder)."""
    from launch.evals.word_referent_data import heldout_batches
    from obs_dist.model.audio_floor import above_floor

    clips: Heard = {}
    with torch.no_grad():
        for batch in heldout_batches(s.learner.run_cfg, s.heldout, s.streams):
            fa = s.model._features(batch)[0]
            mels = above_floor(batch["audio"])
            keep = heard_clips(s.model, batch)
            for b, row in enumerate(batch["keys"]):
                for j, key in enumerate(row):
                    stream, _, index = key.rpartition("/")
                    if stream and index.isdigit() and bool(keep[b, j]):
                        clips.setdefault(stream, {})[int(index)] = (
                            fa[b, j], batch["object_names"][b][j], batch["words"][b][j],
                            mels[b, j])
    return clips


def unpacked(heard: dict[int, tuple[torch.Tensor, Any, Any, torch.Tensor]], gap: int
             ) -> tuple[torch.Tensor, torch.Tensor, list[Any], list[Any], torch.Tensor]:
    """One recording's heard clips as ``(audio features [n, d], log-mels [n, M, A],
    objects shown, lines said, far [n, n])``, far meaning ``gap`` or more clips apart."""
    when = torch.tensor(list(heard))
    rows = list(heard.values())
    return (torch.stack([v[0] for v in rows]), torch.stack([v[3] for v in rows]).float(),
            [v[1] for v in rows], [v[2] for v in rows],
            (when[:, None] - when[None, :]).abs() >= gap)


def probe_horizon(s: Setup) -> None:
    """``bridges`` over each whole held-out recording: far pairs and mutual nearest sounds
    (k = 1, 2) among every heard clip of the recording, not only the window's."""
    gap = s.model.stream_cfg.negative_gap
    tally: dict[str, list[int]] = {}
    for heard in recording_sounds(s).values():
        fa, _, shown, said, far = unpacked(heard, gap)
        for name, pairs in [("any far pair, whole recording", far)] + [
                (f"mutual nearest {k}, whole recording", alike_sounds(fa[None], far, k))
                for k in (1, 2)]:
            count_pairs(tally, name, pairs, shown, said)
    print_pairs("horizon", tally)


BANDS = (0.0, 0.5, 0.75, 0.9, 0.95, 0.99, 1.0)  # quantiles of each kind's similarities


def probe_bands(s: Setup) -> None:
    """``horizon``'s pairs split by how alike they sound (the cosine of their audio
    features; bands at the 50th to 99th percentile of each kind's own cosines), each
    unordered pair once: whether the most alike pairs are the same object often
    enough to train on (as a second positive, or to leave out of the negatives)."""
    gap = s.model.stream_cfg.negative_gap
    found: dict[str, list[tuple[float, int, int]]] = {}
    for heard in recording_sounds(s).values():
        fa, _, shown, said, far = unpacked(heard, gap)
        sounds = torch.nn.functional.normalize(fa.float(), dim=-1)
        cosine = sounds @ sounds.t()
        for name, pairs in [("any far pair", far)] + [
                (f"mutual nearest {k}", alike_sounds(fa[None], far, k)) for k in (1, 2)]:
            for q, c in pairs.triu(1).nonzero().tolist():
                found.setdefault(name, []).append((float(cosine[q, c]),
                                                   *alike_in_labels(q, c, shown, said)))
    for name, rows in found.items():
        table = torch.tensor(rows, dtype=torch.float64)
        edges = torch.quantile(table[:, 0], torch.tensor(BANDS, dtype=torch.float64))
        for i, (lo, hi) in enumerate(zip(edges[:-1].tolist(), edges[1:].tolist())):
            band = (table[:, 0] >= lo) & ((table[:, 0] < hi) | (i == len(BANDS) - 2))
            n = int(band.sum())
            print(f"bands    {name:18s} cosine {lo:6.3f}-{hi:5.3f} "
                  f"(percentile {100 * BANDS[i]:4.0f}-{100 * BANDS[i + 1]:3.0f}) "
                  f"{n:6d} pairs: one object {float(table[band, 1].mean()):.3f}, "
                  f"one line said {float(table[band, 2].mean()):.3f}", flush=True)


def probe_sounds(s: Setup) -> None:
    """``horizon``'s mutual nearest sounds (k = 1) found by other features of the same
    clips: whether the trained audio encoder tells a line said twice from the rest
    better than the log-mel it hears does, with no learning at all."""
    gap = s.model.stream_cfg.negative_gap
    tally: dict[str, list[int]] = {}
    for heard in recording_sounds(s).values():
        fa, mels, shown, said, far = unpacked(heard, gap)
        features = {"the trained audio features": fa,
                    "log-mel above the floor, time-averaged": mels.mean(-1),
                    "log-mel above the floor, whole (bands x frames)": mels.flatten(1)}
        for name, f in features.items():
            count_pairs(tally, name, alike_sounds(f[None], far, 1), shown, said)
    print_pairs("sounds", tally)
