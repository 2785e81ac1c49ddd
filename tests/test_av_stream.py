"""The label-free stream model (task ``av-stream``): objective, binding in the state, one pass."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from obs_dist.model.alike_clips import alike_sounds
from obs_dist.model.audio_floor import above_floor, speech_gate
from obs_dist.model.av_stream import AVStreamModel, WindowResult
from obs_dist.model.clip_context import clip_positions, with_neighbours
from obs_dist.model.model import ModelConfig, StreamConfig
from obs_dist.model.name_links import NameLinks
from obs_dist.model.state import BigState, StateConfig
from obs_dist.model.window import WindowMemory
from obs_dist.model.writer import WriterConfig
from pipelines.loader import DataConfig, StreamLoader
from pipelines.rehearsal import Rehearsal, RehearsalConfig

NODES = 256


def _model(state_path: bool = True, **stream: object) -> AVStreamModel:
    torch.manual_seed(0)
    cfg = ModelConfig(encoder="av", d_model=16, n_mels=8, image_size=16,
                      writer=WriterConfig(k_max=4, active=8, backward_links=True),
                      stream=StreamConfig(state_path=state_path, embed=8,
                                          **stream))  # type: ignore[arg-type]
    return AVStreamModel(cfg, NODES)


def _batch(b: int = 3, t: int = 4) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    audio = torch.randn(b, t, 8, 21, generator=g) - 8.0
    audio[:, ::2, :, 5:15] += 6.0  # every other clip has a loud stretch (speech)
    return {"audio": audio,
            "video": torch.randint(0, 255, (b, t, 2, 3, 16, 16), generator=g, dtype=torch.uint8),
            "audio_mask": torch.ones(b, t, dtype=torch.bool),
            "video_mask": torch.ones(b, t, dtype=torch.bool),
            "targets": torch.full((b, t), -100)}


def test_speech_gate_scores_only_loud_clips() -> None:
    batch = _batch()
    gate = speech_gate(batch["audio"], batch["audio_mask"], 1.5)
    assert gate[:, ::2].eq(1).all() and gate[:, 1::2].eq(0).all()
    quiet = speech_gate(batch["audio"], torch.zeros(3, 4, dtype=torch.bool), 1.5)
    assert quiet.sum() == 0  # no audio: nothing scored


def test_clip_positions_follow_the_keys_across_a_recording_change() -> None:
    keys = [["rec_a/000010", "rec_a/000011", "rec_b/000000"], ["rec_c/000005", "", ""]]
    rec, when = clip_positions({"keys": keys}, 2, 3, torch.device("cpu"))
    assert rec.tolist()[:3] == [0, 0, 1] and rec[3] not in rec[:3]
    assert when.tolist()[:4] == [10, 11, 0, 5]
    assert rec[4] != rec[3] and rec[4] == rec[5]  # padding: its own row, never rec_c
    rec, when = clip_positions({}, 2, 3, torch.device("cpu"))  # no keys: row and position
    assert rec.tolist() == [0, 0, 0, 1, 1, 1] and when.tolist() == [0, 1, 2, 0, 1, 2]


def _negatives_seen(negatives: str) -> torch.Tensor:
    """Which candidates each scored query of a 2-recording window is scored against."""
    model = _model(False, negatives=negatives, negative_gap=2)
    batch = _batch(2, 6)
    batch["audio"][:, :] += torch.linspace(0, 6, 6)[None, :, None, None]  # every clip loud
    batch["keys"] = [[f"rec_{r}/{i:06d}" for i in range(6)] for r in range(2)]
    seen: list[torch.Tensor] = []
    original = torch.nn.functional.cross_entropy

    def spy(logits: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
        seen.append(torch.isfinite(logits))
        return original(logits, *args, **kwargs)  # type: ignore[arg-type]

    torch.nn.functional.cross_entropy = spy  # type: ignore[assignment]
    try:
        model.window_objective(batch, None, model.initial_carry(2, "cpu"))  # type: ignore[arg-type]
    finally:
        torch.nn.functional.cross_entropy = original
    return seen[0]


def test_negatives_of_the_same_recording_only() -> None:
    everyone = _negatives_seen("all")
    own = _negatives_seen("recording")
    # Query 0 (rec_0, clip 0): itself, then clips 2..5 of rec_0; "all" adds rec_1's six.
    assert own[0].nonzero().flatten().tolist() == [0, 2, 3, 4, 5]
    assert everyone[0].nonzero().flatten().tolist() == [0, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]


def _two_recordings() -> dict[str, Any]:
    """Two recordings of 6 clips, every clip loud, clip 1 of the first without a picture."""
    batch: dict[str, Any] = dict(_batch(2, 6))
    batch["audio"][:, :] += torch.linspace(0, 6, 6)[None, :, None, None]  # every clip loud
    batch["keys"] = [[f"rec_{r}/{i:06d}" for i in range(6)] for r in range(2)]
    batch["video_mask"][0, 1] = False  # no picture: never a positive, never scored
    return batch


def _objective_with_logits(window: int, **stream: object
                           ) -> tuple[WindowResult, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A 2-recording window's result, the logits it scored, which clips have a picture
    and which are scored (a picture and speech)."""
    model = _model(False, negatives="recording", negative_gap=3, positive_window=window,
                   **stream)
    batch = _two_recordings()
    seen: list[torch.Tensor] = []
    scores = model.scores

    def spy(*args: object) -> torch.Tensor:
        seen.append(scores(*args).detach())  # type: ignore[arg-type]
        return seen[-1]

    model.scores = spy  # type: ignore[method-assign]
    result = model.window_objective(batch, None, model.initial_carry(2, "cpu"))  # type: ignore[arg-type]
    pictured = batch["video_mask"].reshape(-1)
    heard = speech_gate(batch["audio"], batch["audio_mask"], 1.5).reshape(-1) > 0
    return result, seen[0], pictured, pictured & heard


@pytest.mark.parametrize("window", [0, 1, 2])
def test_positive_window_scores_any_nearby_picture_as_the_answer(window: int) -> None:
    """MIL-NCE: -log of the positives' share, over the same recording's far clips and them."""
    result, logits, pictured, scored = _objective_with_logits(window)
    assert 6 <= int(scored.sum()) < 12  # most clips scored, the one without a picture not
    want, correct = torch.tensor(0.0, dtype=torch.float64), 0
    for q in scored.nonzero().flatten().tolist():
        rec = q // 6
        cands = [c for c in range(rec * 6, rec * 6 + 6) if pictured[c]]
        pos = [c for c in cands if abs(c - q) <= window]
        pool = [c for c in cands if abs(c - q) >= 3 or c in pos]
        assert q in pos and not set(pos) & {c for c in cands if abs(c - q) >= 3}
        row = logits[q].double()
        want += torch.logsumexp(row[pool], 0) - torch.logsumexp(row[pos], 0)
        correct += int(pool[int(row[pool].argmax())] in pos)
    assert result.scored == int(scored.sum())
    torch.testing.assert_close(result.loss_sum.double(), want, rtol=1e-5, atol=1e-6)  # float32 sums
    assert result.correct == correct


def test_false_negatives_leave_out_the_negatives_whose_pictures_look_most_alike() -> None:
    result, logits, pictured, scored = _objective_with_logits(0, false_negatives=1)
    model = _model(False)  # the same initial weights (seed 0) and no augmentation
    batch = _batch(2, 6)
    with torch.no_grad():
        fv = model._features(batch)[1].flatten(0, 1)
    pictures = torch.nn.functional.normalize(fv, dim=-1)
    want = torch.tensor(0.0, dtype=torch.float64)
    for q in scored.nonzero().flatten().tolist():
        rec = q // 6
        negatives = [c for c in range(rec * 6, rec * 6 + 6) if pictured[c] and abs(c - q) >= 3]
        alike = max(negatives, key=lambda c: float(pictures[q] @ pictures[c]))
        pool = [q] + [c for c in negatives if c != alike]
        want += torch.logsumexp(logits[q].double()[pool], 0) - logits[q, q].double()
    torch.testing.assert_close(result.loss_sum.double(), want, rtol=1e-5, atol=1e-6)  # float32 sums
    with pytest.raises(ValueError, match="false_negatives must be >= 0"):
        StreamConfig(false_negatives=-1)


@pytest.mark.parametrize("window", [0, 1])
@pytest.mark.parametrize("use", ["exclude", "positive"])
def test_heard_alike_pairs_the_far_clips_that_sound_alike(use: str, window: int) -> None:
    """Mutual nearest sounds among a query's negatives: left out, or positives (each its
    own target; with a positive window, more positives of the MIL-NCE)."""
    result, logits, pictured, scored = _objective_with_logits(window, heard_alike=1,
                                                              heard_alike_use=use)
    model = _model(False)  # the same initial weights (seed 0) and no augmentation
    with torch.no_grad():
        fa = model._features(_two_recordings())[0].flatten(0, 1)
    sounds = torch.nn.functional.normalize(fa, dim=-1)

    def negatives(q: int) -> list[int]:
        rec = q // 6
        return [c for c in range(rec * 6, rec * 6 + 6) if scored[c] and abs(c - q) >= 3]

    def nearest(q: int) -> int | None:
        return max(negatives(q), key=lambda c: float(sounds[q] @ sounds[c]), default=None)

    want, pairs = torch.tensor(0.0, dtype=torch.float64), 0
    for q in scored.nonzero().flatten().tolist():
        rec = q // 6
        cands = [c for c in range(rec * 6, rec * 6 + 6) if pictured[c]]
        near = [c for c in cands if abs(c - q) <= window]
        pool = near + [c for c in cands if abs(c - q) >= 3]
        c = nearest(q)
        bridged = [c] if c is not None and nearest(c) == q else []
        pairs += len(bridged)
        if use == "exclude":
            pool = [p for p in pool if p not in bridged]
        row = logits[q].double()
        if window:  # MIL-NCE: -log of the positives' share
            pos = near + (bridged if use == "positive" else [])
            want += torch.logsumexp(row[pool], 0) - torch.logsumexp(row[pos], 0)
            continue
        for target in [q] + (bridged if use == "positive" else []):
            want += torch.logsumexp(row[pool], 0) - row[target]
    assert pairs >= 2  # the case is not empty: some clips are each other's nearest
    assert result.stats["heard_alike"] == pairs  # reported, whichever use they are put to
    torch.testing.assert_close(result.loss_sum.double(), want, rtol=1e-5, atol=1e-6)  # float32 sums
    with pytest.raises(ValueError, match="heard_alike_use must be one of"):
        StreamConfig(heard_alike=1, heard_alike_use="both")
    with pytest.raises(ValueError, match="heard_alike must be >= 0"):
        StreamConfig(heard_alike=-1)


def test_alike_sounds_are_mutual_and_only_where_allowed() -> None:
    # Clips 0 and 1 sound alike, 2 is nearest to 1 but 1 prefers 0; 3 is allowed nothing.
    fa = torch.tensor([[[1.0, 0.0], [0.9, 0.1], [0.5, 0.5], [0.0, 1.0]]])
    allowed = ~torch.eye(4, dtype=torch.bool)
    allowed[3, :] = allowed[:, 3] = False
    pairs = alike_sounds(fa, allowed, 1)
    assert pairs.nonzero().tolist() == [[0, 1], [1, 0]]
    assert alike_sounds(fa, allowed, 2)[1, 2] and not alike_sounds(fa, allowed, 2)[3].any()
    with pytest.raises(ValueError, match="k >= 1"):
        alike_sounds(fa, allowed, 0)


def test_positive_window_is_refused_where_it_would_meet_the_negatives() -> None:
    for bad, message in ((-1, "must be >= 0"), (3, "below model.stream.negative_gap")):
        with pytest.raises(ValueError, match=message):
            StreamConfig(negative_gap=3, positive_window=bad)
    StreamConfig(negative_gap=0, positive_window=5)  # the whole window excluded: no clash


def test_above_floor_hears_the_word_not_the_room() -> None:
    g = torch.Generator().manual_seed(0)
    word = torch.zeros(8, 50)
    word[2:5, 20:35] = 4.0  # a word: three bands up for 15 of 50 frames
    quiet = torch.randn(8, 50, generator=g) * 0.1 - 9.0 + word
    loud = quiet + 3.0  # the same word in a louder room (log-mel: a constant shift)
    assert torch.allclose(above_floor(quiet), above_floor(loud), atol=1e-5)
    heard = above_floor(quiet)
    assert heard.min() >= 0 and heard[2:5, 20:35].mean() > 3.5 and heard[5:, :].mean() < 0.2


def test_address_balance_is_zero_when_sub_keys_are_used_evenly() -> None:
    from obs_dist.model.writer import Writer, WriterConfig

    writer = Writer(WriterConfig(k_max=4, key_dim=32, balance=1.0), 256, context_dim=4)
    n1 = writer.keys1.shape[0]  # 16 sub-keys of width 16 in each codebook
    with torch.no_grad():  # one query per sub-key, pointing at it: usage is flat
        writer.keys1.copy_(torch.eye(n1) * 50)
        writer.keys2.copy_(torch.eye(n1) * 50)
    even = torch.cat([torch.eye(n1), torch.eye(n1)], dim=1)
    with torch.no_grad():
        assert float(writer.address_balance(even)) < 0.05
        collapsed = even[:1].expand(n1, -1)  # every query on the first sub-key
        assert float(writer.address_balance(collapsed)) > n1 - 2
    writer.train()
    writer(torch.randn(3, 4, requires_grad=True))
    term = writer.pop_balance()
    assert term is not None and term.requires_grad and writer.pop_balance() is None


def test_audio_context_hears_each_clip_with_its_neighbours() -> None:
    model = _model(False, audio_context=1, audio_floor=True)
    batch = _batch(2, 5)
    batch["audio_mask"][1, 3] = False  # a clip without audio: heard as silence
    heard = model._heard_window(batch["audio"], batch["audio_mask"])
    # Each clip floored once, then in context: the floor of each part of the context.
    assert torch.equal(heard, model._hearable(model._in_context(batch["audio"],
                                                                batch["audio_mask"])))
    a = batch["audio"].shape[-1]
    assert heard.shape == (2, 5, 8, 3 * a)
    assert torch.equal(heard[0, 2, :, a:2 * a], above_floor(batch["audio"][0, 2]))
    assert torch.equal(heard[0, 2, :, :a], above_floor(batch["audio"][0, 1]))
    assert torch.equal(heard[0, 2, :, 2 * a:], above_floor(batch["audio"][0, 3]))
    assert heard[0, 0, :, :a].abs().sum() == 0 and heard[1, 2, :, 2 * a:].abs().sum() == 0
    # The word-referent probe hears a held-out clip the same way.
    row = {i: batch["audio"][0, i] for i in range(5)}
    alone = model._hearable(with_neighbours(row.get, 2, 1)[None])[0]
    assert torch.equal(alone, heard[0, 2])
    edge = model._hearable(with_neighbours(row.get, 0, 1)[None])[0]
    assert torch.equal(edge, heard[0, 0])  # silence beyond the recording's first clip
    with pytest.raises(ValueError, match="audio_context"):
        StreamConfig(audio_context=9)


def test_addressed_carry_and_normalised_recall() -> None:
    model = _model(True, carry="addressed", recall_norm=True)
    state = BigState(StateConfig(nodes=NODES, partitions=2, init_std=0.0))
    x = torch.zeros(NODES, NODES)
    x[:, 7] = 5.0  # node 7 is linked to from everywhere: a hub
    state.matrix().copy_(x)
    memory = WindowMemory(state.matrix(), 2)
    f = torch.randn(2, 16)
    carry = model.initial_carry(2, "cpu")
    h0, carry, ids, alpha = model._state_step(f, memory, carry, recall=True)
    k = ids.shape[1]
    assert torch.equal(carry.ids[:, :k], ids)  # the step's own addressed nodes are passed on
    assert torch.allclose(carry.vals[:, :k].norm(dim=1), torch.ones(2))
    assert carry.vals[:, k:].abs().sum() == 0
    assert torch.allclose(memory.column_mass()[7], torch.tensor(5.0 * NODES))
    raw = WindowMemory(state.matrix(), 2).read(ids, alpha)
    assert h0 is not None and torch.allclose(h0, raw / (1.0 + memory.column_mass()))


def test_answer_through_the_state_alone() -> None:
    state = BigState(StateConfig(nodes=NODES, partitions=2, init_std=0.0))
    state.matrix().normal_()
    for answer in ("both", "state"):
        torch.manual_seed(0)
        model = _model(True, answer=answer).eval()
        with torch.no_grad():
            probe = model.probe(torch.randn(3, 8, 20), WindowMemory(state.matrix(), 3))
            cands = model.candidates(torch.randint(0, 255, (4, 2, 3, 16, 16), dtype=torch.uint8))
            got = model.answer_scores(probe, cands)
            both = model.scores(probe, cands)
        assert probe.recall is not None and cands.ids is not None and cands.alpha is not None
        state_only = model.state_scale.exp() * model._state_scores(probe.recall, cands.ids,
                                                                   cands.alpha)
        assert torch.allclose(got, both if answer == "both" else state_only)
        assert not torch.allclose(both, state_only)  # the direct path is really left out
    dual = _model(False, answer="state").eval()  # no state: the direct path answers
    with torch.no_grad():
        probe = dual.probe(torch.randn(3, 8, 20), None)
        cands = dual.candidates(torch.randint(0, 255, (4, 2, 3, 16, 16), dtype=torch.uint8))
        assert torch.equal(dual.answer_scores(probe, cands), dual.scores(probe, cands))
    with pytest.raises(ValueError, match="model.stream.answer"):
        StreamConfig(answer="direct")


def test_direct_weight_zero_leaves_the_state_path_to_train_the_encoders() -> None:
    state = BigState(StateConfig(nodes=NODES, partitions=2, init_std=0.0))
    state.matrix().normal_()
    model = _model(True, direct_weight=0.0, answer="both").eval()
    with torch.no_grad():
        probe = model.probe(torch.randn(3, 8, 20), WindowMemory(state.matrix(), 3))
        cands = model.candidates(torch.randint(0, 255, (4, 2, 3, 16, 16), dtype=torch.uint8))
        assert probe.recall is not None and cands.ids is not None and cands.alpha is not None
        state_only = model.state_scale.exp() * model._state_scores(probe.recall, cands.ids,
                                                                   cands.alpha)
        assert torch.equal(model.scores(probe, cands), state_only)
    # Trained from an empty state, the encoders still learn, through the state alone:
    # a window's later clips recall what its earlier ones wrote.
    model.train()
    batch = _batch(2, 8)
    batch["audio"][:, :] += 6.0 * (torch.arange(8) % 2 == 0)[None, :, None, None]
    memory = WindowMemory(BigState(StateConfig(nodes=NODES, partitions=2,
                                               init_std=0.0)).matrix(), 2)
    out = model.window_objective(batch, memory, model.initial_carry(2, "cpu"))
    out.loss_sum.backward()
    assert model.audio.proj.weight.grad is not None and model.video.proj.weight.grad is not None
    assert model.audio.proj.weight.grad.abs().sum() > 0
    assert model.video.proj.weight.grad.abs().sum() > 0
    assert model.head_a.weight.grad is None or model.head_a.weight.grad.abs().sum() == 0
    for bad in (-0.5, float("nan")):
        with pytest.raises(ValueError, match="direct_weight must be a finite number"):
            StreamConfig(direct_weight=bad)
    with pytest.raises(ValueError, match="leaves the dual encoder"):
        StreamConfig(state_path=False, direct_weight=0.0)


def test_augmentation_only_while_training() -> None:
    model = _model(False, augment=True)
    batch = _batch()
    model.eval()
    first = model._features(batch)[1]
    assert torch.equal(first, model._features(batch)[1])  # evaluation: no augmentation
    model.train()
    torch.manual_seed(3)
    assert not torch.equal(first, model._features(batch)[1])


@pytest.mark.parametrize("state_path", [True, False])
def test_window_objective_is_finite_and_trains_every_part(state_path: bool) -> None:
    model = _model(state_path)
    batch = _batch()
    state = BigState(StateConfig(nodes=NODES, partitions=2, init_std=0.0))
    memory = WindowMemory(state.matrix(), 3)
    out = model.window_objective(batch, memory, model.initial_carry(3, "cpu"))
    assert out.scored == model.count_scored(batch) == 6
    assert torch.isfinite(out.loss_sum) and out.loss_sum > 0
    out.loss_sum.backward()
    assert model.audio.proj.weight.grad is not None and model.video.proj.weight.grad is not None
    if state_path:
        assert model.writer is not None and model.writer.query.weight.grad.abs().sum() > 0
        assert memory.to_delta().nnz > 0  # the window wrote into the state
    else:
        assert model.writer is None


def test_a_sound_heard_near_a_picture_recalls_its_nodes() -> None:
    """Fast mapping: after one study window, hearing the sound alone lands on the
    nodes that the picture addresses (and the dual encoder has no such path)."""
    model = _model()
    model.eval()
    batch = _batch(b=1, t=2)
    state = BigState(StateConfig(nodes=NODES, partitions=2, init_std=0.0))
    with torch.no_grad():
        memory = WindowMemory(state.matrix(), 1)
        model.window_objective(batch, memory, model.initial_carry(1, "cpu"))
        state.apply(memory.to_delta())
        probe = model.probe(batch["audio"][0, :1], WindowMemory(state.matrix(), 1))
        seen = model.candidates(batch["video"][0, :1])
    assert probe.recall is not None and seen.ids is not None
    on_seen = probe.recall[0, seen.ids[0]].abs().sum()
    assert on_seen > 0
    fresh = model.probe(batch["audio"][0, :1], WindowMemory(
        BigState(StateConfig(nodes=NODES, partitions=2, init_std=0.0)).matrix(), 1))
    assert fresh.recall is not None and fresh.recall.abs().sum() == 0  # nothing bound yet


def test_rehearsal_interleaves_past_batches_and_ends_with_the_stream() -> None:
    stream = [{"targets": torch.full((1, 2), i), "reset": torch.tensor([True])} for i in range(5)]
    out = list(Rehearsal(iter(stream), RehearsalConfig(ratio=2, capacity=3, seed=0)))
    assert len(out) == 15
    new = [b for b in out if not b.get("replay")]
    assert [int(b["targets"][0, 0]) for b in new] == [0, 1, 2, 3, 4]
    for i, b in enumerate(out):
        if b.get("replay"):
            assert "reset" not in b
            # only batches already seen are rehearsed
            last_new = max(j for j in range(i) if not out[j].get("replay"))
            assert int(b["targets"][0, 0]) <= int(out[last_new]["targets"][0, 0])
    again = list(Rehearsal(iter(stream), RehearsalConfig(ratio=2, capacity=3, seed=0)))
    assert [int(b["targets"][0, 0]) for b in again] == [int(b["targets"][0, 0]) for b in out]
    with pytest.raises(ValueError, match="rehearsal.ratio"):
        RehearsalConfig(ratio=-1)


@pytest.mark.slow
def test_one_chronological_pass_from_raw_recordings(tmp_path: Path) -> None:
    """Generated mp4s (audio inside) → make-shards --from → one pass of av-stream."""
    obs = [sys.executable, "-m", "launch.cli"]
    rec, shards, out = tmp_path / "rec", tmp_path / "shards", tmp_path / "run"
    subprocess.run(obs + ["make-recordings", "--out", str(rec), "--recordings", "2",
                          "--seconds", "40", "--names", "recording"], check=True,
                   capture_output=True)
    subprocess.run(obs + ["make-shards", "--from", str(rec), "--out", str(shards)], check=True,
                   capture_output=True)
    index = json.loads((shards / "index.json").read_text())
    assert index["streams"] == 2 and len(index["shards"]) == 2  # a shard chain per recording
    run = subprocess.run(obs + ["train", "--config", "configs/av_stream.toml", "--json",
                                "--set", f"data.source={shards}", "--set", "data.streams=2",
                                "--set", "task.batch=2", "--set", f"out_dir={out}",
                                "--set", "data.window=16", "--set", "model.stream.negative_gap=8",
                                "--set", "rehearsal.ratio=1", "--set", "train.progress=false"],
                         check=True, capture_output=True, text=True)
    metrics = json.loads(run.stdout.strip().splitlines()[-1])
    # 40 clips per recording, windows of 16: 3 new batches, each followed by one rehearsal.
    assert metrics["step"] == 6 and metrics["replay_steps_total"] == 3
    told = StreamLoader(DataConfig(source=str(shards), streams=2, window=16)).pass_batches()
    assert told == 3  # what the progress bar counted to: 3 × (1 + 1) steps
    assert metrics["committed_entries_total"] > 0 and metrics["scored_total"] > 0
    assert (out / "model.safetensors").is_file()


def test_demo_configs_resolve() -> None:
    """`make demo`'s suite config and the training config it names load and validate."""
    from launch.evals import suite_config
    from launch.runner import resolve_config

    demo = suite_config("word-referent", "configs/demo_recordings.toml", [])
    assert demo.models == ["obs", "dual"] and demo.recordings >= 2
    run = resolve_config(demo.config, [])
    assert run.task.name == "av-stream" and run.data.loop is False
    # The demo's own overrides keep every clip of its windows able to have a negative.
    demo_run = resolve_config(demo.config, demo.train_set)
    assert 0 < demo_run.model.stream.negative_gap < demo_run.data.window


def test_a_gap_that_masks_every_negative_is_refused() -> None:
    """Same-recording negatives at least a whole window apart would leave the loss at 0."""
    from launch.runner import resolve_config

    recipe = resolve_config("configs/av_stream.toml", [])
    assert recipe.model.stream.negatives == "recording"
    assert 0 < recipe.model.stream.negative_gap < recipe.data.window
    for sets in (["data.window=16"], ["model.stream.negative_gap=0"]):
        with pytest.raises(ValueError, match="model.stream.negative_gap"):
            resolve_config("configs/av_stream.toml", sets)
    # Other recordings' clips are negatives too: any gap is fine then.
    resolve_config("configs/av_stream.toml", ["data.window=16", 'model.stream.negatives="all"'])


@pytest.mark.parametrize("match", ["learnt", "features"])
def test_the_attention_peer_trains_its_path_and_answers_from_its_context(match: str) -> None:
    model = _model(False, recent=4, negative_gap=2, recent_match=match)
    assert model.writer is None and model.recent is not None
    batch = _batch(2, 6)
    memory = WindowMemory(BigState(StateConfig(nodes=256, partitions=2)).matrix(), 2)
    out = model.window_objective(batch, memory, model.initial_carry(2, "cpu"))
    assert torch.isfinite(out.loss_sum) and out.scored == 6
    out.loss_sum.backward()
    trained = [model.recent.scale, *((model.recent.query.weight, model.recent.key.weight)
                                     if match == "learnt" else (model.recent.sharpness,))]
    for p in trained:
        assert p.grad is not None and p.grad.abs().sum() > 0
    # At test time a query attends over the clips it is given, and that changes its scores.
    model.eval()
    with torch.no_grad():
        fa, values = model.context_features(batch["audio"][0], batch["video"][0])
        allowed = torch.ones(2, 6, dtype=torch.bool)
        alone = model.probe(batch["audio"][1, :2], None)
        heard = model.probe(batch["audio"][1, :2], None, (fa, values, allowed))
        cands = model.candidates(batch["video"][1])
        assert alone.retrieved is None and heard.retrieved is not None
        assert not torch.allclose(model.answer_scores(alone, cands),
                                  model.answer_scores(heard, cands))
        # answer = "state": the memory path alone, here what the context retrieved.
        model.stream_cfg.answer = "state"
        torch.testing.assert_close(model.answer_scores(heard, cands),
                                   model.recent.scores(heard.retrieved, cands.embed))
        torch.testing.assert_close(model.answer_scores(alone, cands),
                                   model.scores(alone, cands))  # nothing retrieved


def test_video_width_sizes_the_picture_encoder_for_both_learners() -> None:
    # The dual-encoder peer is the same model without a state, so a wider picture
    # encoder widens both: the two learners keep the same encoders.
    for state_path in (True, False):
        cfg = ModelConfig(encoder="av", d_model=16, n_mels=8, image_size=16, video_width=32,
                          writer=WriterConfig(k_max=4, active=4),
                          stream=StreamConfig(state_path=state_path))
        model = AVStreamModel(cfg, 64)
        assert model.video.convs[2].out_channels == 32
        assert model.video(torch.zeros(2, 1, 3, 16, 16, dtype=torch.uint8)).shape == (2, 16)
    with pytest.raises(ValueError, match="video_width"):
        ModelConfig(encoder="av", video_width=7)


@pytest.mark.parametrize(("nodes", "lookback", "decay"),
                         [(0, 0, 1.0), (12, 0, 1.0), (0, 2, 1.0), (0, 1, 0.5)])
def test_name_links_rule_links_each_name_to_what_is_seen_and_nothing_else(
        nodes: int, lookback: int, decay: float) -> None:
    """``study_rule = "name_links"``: a study window writes only links from a heard
    clip's own nodes to the pictures seen until the next speech, all of one
    weight; training is not affected. With ``nodes`` (here more than k_max = 4 and
    than the carry's 8 active nodes) each clip links its product keys' best
    ``nodes``, the first k_max of them the writer's own, and a candidate picture
    is scored on the same nodes. With ``lookback`` L a heard name also links to
    the L pictures seen before it; with ``decay`` the j-th picture after a name
    is linked at ``decay ** j`` of the weight."""
    model = _model(recall_norm=True).eval()
    model.set_study_rule("name_links", NameLinks(nodes, lookback, decay))
    batch = _batch(b=1, t=4)  # clips 0 and 2 are heard (speech), 1 and 3 silent
    state = BigState(StateConfig(nodes=NODES, partitions=2, init_std=0.0))
    with torch.no_grad():
        memory = WindowMemory(state.matrix(), 1)
        model.window_objective(batch, memory, model.initial_carry(1, "cpu"))
        delta = memory.to_delta()
        sound = model.addresses(batch["audio"][0], "audio", nodes)       # [4, k]
        seen = model.addresses(batch["video"][0], "video", nodes)
        assert torch.equal(seen[:, :4], model.addresses(batch["video"][0], "video"))
        cands = model.candidates(batch["video"][0])
    k = sound.shape[1]
    assert k == (nodes or 4) and torch.equal(cands.ids, seen)
    assert cands.alpha is not None and torch.allclose(cands.alpha, torch.full((4, k), k ** -0.5))
    want: dict[tuple[int, int], float] = {}
    for heard, after in ((0, (0, 1)), (2, (2, 3))):  # a silent second keeps the carry
        before = tuple(t for t in range(heard - lookback, heard) if t >= 0)
        for t in after + before:
            weight = decay ** max(t - heard, 0) / k
            for r in sound[heard].tolist():
                for c in seen[t].tolist():
                    want[(r, c)] = want.get((r, c), 0.0) + weight
    got = {(int(r), int(c)): float(v)
           for r, c, v in zip(delta.rows, delta.cols, delta.values, strict=True)}
    assert got.keys() == want.keys()
    assert all(abs(got[key] - want[key]) < 1e-6 for key in want)
    # A query recalls through those links, divided by the column mass, as trained.
    state.apply(delta)
    with torch.no_grad():
        probe = model.probe(batch["audio"][0, :1], WindowMemory(state.matrix(), 1))
    assert probe.recall is not None and probe.recall[0, seen[0]].min() > 0
    # Training ignores the study rule: the same loss as the learnt rule.
    losses = []
    for rule in ("learnt", "name_links"):
        trained = _model(recall_norm=True).train()
        trained.set_study_rule(rule)
        torch.manual_seed(3)
        memory = WindowMemory(BigState(StateConfig(nodes=NODES, partitions=2,
                                                   init_std=0.0)).matrix(), 1)
        losses.append(trained.window_objective(batch, memory, trained.initial_carry(1, "cpu")
                                               ).loss_sum)
    assert torch.equal(losses[0], losses[1])
    with pytest.raises(ValueError, match="study rule"):
        model.set_study_rule("oja")
    with pytest.raises(ValueError, match="study nodes"):
        model.set_study_rule("name_links", NameLinks(NODES + 1))
    with pytest.raises(ValueError, match="lookback"):
        NameLinks(0, -1)
    with pytest.raises(ValueError, match="decay"):
        NameLinks(decay=0.0)
