"""The evaluation tasks: generators produce exactly the sequences they describe."""

from __future__ import annotations

import pytest
import torch

from obs_dist.tasks import IGNORE
from obs_dist.tasks.continual import (
    ContinualConfig,
    continual_metrics,
    make_world,
    query_batch,
    study_batch,
)
from obs_dist.tasks.crossmodal import CrossmodalConfig, episode_batch, split_study_clips
from obs_dist.tasks.memory_function import (
    MemoryFunctionConfig,
    memory_function,
    memory_function_batch,
)
from obs_dist.tasks.state_tracking import (
    StateTrackingConfig,
    accuracy_by_position,
    modular_batch,
    parity_batch,
)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_parity_targets_are_running_xor() -> None:
    b = parity_batch(4, 17, gen())
    for row, tgt in zip(b["tokens"].tolist(), b["targets"].tolist()):
        acc = 0
        for x, y in zip(row, tgt):
            acc ^= x
            assert y == acc


@pytest.mark.parametrize("length", [1, 2, 7, 8])
def test_modular_targets_match_a_reference_evaluation(length: int) -> None:
    m = 5
    b = modular_batch(6, length, m, gen(length))
    for row, tgt in zip(b["tokens"].tolist(), b["targets"].tolist()):
        value, op = 0, m  # the first number is added to 0
        for pos, (tok, y) in enumerate(zip(row, tgt)):
            if pos % 2 == 0:
                assert 0 <= tok < m
                value = (value + tok) % m if op == m else (value - tok) % m
                assert y == value
            else:
                assert tok in (m, m + 1) and y == IGNORE
                op = tok


def test_state_tracking_config_rejects_bad_lengths() -> None:
    with pytest.raises(ValueError, match="train_min_len"):
        StateTrackingConfig(train_min_len=50, train_max_len=40)
    with pytest.raises(ValueError, match="kind"):
        StateTrackingConfig(kind="xor")  # type: ignore[arg-type]


def test_accuracy_by_position_buckets() -> None:
    correct = torch.tensor([[True, False, True, True]])
    scored = torch.tensor([[True, True, True, False]])
    assert accuracy_by_position(correct, scored, [2, 4]) == {"1-2": 0.5, "3-4": 1.0}


def test_memory_function_probes_ask_for_the_item_k_steps_back() -> None:
    cfg = MemoryFunctionConfig(vocab=8, length=40, delays=[1, 3, 9], batch=16)
    b = memory_function_batch(cfg, gen())
    tokens, targets, which = b["tokens"], b["targets"], b["delay_index"]
    scored = targets != IGNORE
    assert scored.any()
    assert not (tokens[:, :9] >= cfg.vocab).any()  # no probe before the longest delay
    for r, t in scored.nonzero().tolist():
        k = cfg.delays[int(which[r, t])]
        assert int(tokens[r, t]) == cfg.vocab + int(which[r, t])
        assert int(targets[r, t]) == int(tokens[r, t - k]) < cfg.vocab
    assert ((which >= 0) == scored).all()


def test_memory_function_metrics_are_chance_corrected() -> None:
    correct = torch.tensor([[True, True, False, False]])
    which = torch.tensor([[0, 0, 1, -1]])
    out = memory_function(correct, which, [1, 2], vocab=4)
    assert out["accuracy"] == [1.0, 0.0]
    assert out["mf"] == [1.0, 0.0] and out["capacity"] == 1.0


def test_continual_world_study_and_query_batches() -> None:
    cfg = ContinualConfig(sets=3, objects_per_set=4, names=6, gap=1, distractors=2, batch=5)
    world = make_world(cfg)
    for s in range(cfg.sets):
        assert len(set(world.names[s].tolist())) == cfg.objects_per_set
    b = study_batch(cfg, world, 1, gen())
    assert b["tokens"].shape == (5, cfg.study_length)
    name_of = dict(zip(world.objects[1].tolist(), world.names[1].tolist()))
    for row, tgt in zip(b["tokens"].tolist(), b["targets"].tolist()):
        for i in range(cfg.objects_per_set):
            obj, name = row[3 * i], row[3 * i + 1]
            assert name == name_of[obj] + cfg.num_objects
            assert row[3 * i + 2] >= cfg.num_objects + cfg.names  # distractor
        queries = [(x, y) for x, y in zip(row, tgt) if y != IGNORE]
        assert sorted(x for x, _ in queries) == sorted(name_of)
        assert all(name_of[x] == y for x, y in queries)
    q = query_batch(cfg, world, 2, gen())
    assert (q["targets"] != IGNORE).all()
    with pytest.raises(ValueError, match="out of range"):
        query_batch(cfg, world, 3, gen())


def test_continual_metrics_on_a_known_matrix() -> None:
    m = [[1.0, 0.0, 0.0], [0.5, 1.0, 0.0], [0.25, 0.75, 1.0]]
    out = continual_metrics(m)
    assert out["first_set_curve"] == [1.0, 0.5, 0.25]
    assert out["backward_transfer"] == pytest.approx(((0.25 - 1.0) + (0.75 - 1.0)) / 2)
    assert out["forgetting"] == [0.75, 0.25, 0.0]
    assert out["average_accuracy"] == pytest.approx(2.0 / 3)


def test_crossmodal_episode_structure() -> None:
    cfg = CrossmodalConfig(objects=12, words=10, per_episode=3, delay=4, batch=6)
    b = episode_batch(cfg, 3, 4, gen())
    length = 2 * 3 + 4 + 3
    assert b["tokens"].shape == (6, length)
    assert (b["audio_mask"] ^ b["video_mask"]).all()  # one sense per step
    for r in range(6):
        word_of = {int(b["words"][r, 2 * i]): int(b["objects"][r, 2 * i + 1]) for i in range(3)}
        studied = set(word_of.values())
        assert set(b["candidates"][r].nonzero().flatten().tolist()) == studied
        for t in range(6, 10):  # distractors are other objects, on video
            assert int(b["objects"][r, t]) not in studied and b["video_mask"][r, t]
        for t in range(10, length):
            assert int(b["targets"][r, t]) == word_of[int(b["words"][r, t])]
            assert int(b["tokens"][r, t]) == int(b["words"][r, t]) < cfg.words
    world = episode_batch(CrossmodalConfig(objects=12, words=10, per_episode=3, binding="world",
                                          batch=2),
                          3, 0, gen())
    studied = world["objects"][:, 1:6:2]
    assert (world["words"][:, 0:6:2] == studied % 10).all()


def test_split_study_clips_puts_audio_then_video() -> None:
    bsz, steps = 2, 3
    batch = {
        "video": torch.arange(bsz * steps, dtype=torch.uint8).reshape(bsz, steps, 1, 1, 1, 1)
        .expand(bsz, steps, 1, 3, 2, 2).clone(),
        "audio": torch.ones(bsz, steps, 4, 5),
        "video_mask": torch.tensor([[True, True, False], [True, False, False]]),
        "audio_mask": torch.tensor([[True, False, True], [True, True, False]]),
        "objects": torch.tensor([[3, 4, 3], [5, -1, -1]]),
        "targets": torch.tensor([[IGNORE, IGNORE, 3], [IGNORE, IGNORE, IGNORE]]),
        "reset": torch.ones(bsz, dtype=torch.bool),
    }
    out = split_study_clips(batch)
    assert out["video"].shape[1] == out["audio"].shape[1] == 2 * steps
    assert out["audio_mask"][0].tolist() == [True, False, False, False, True, False]
    assert out["video_mask"][0].tolist() == [False, True, False, True, False, False]
    assert out["targets"][0].tolist() == [IGNORE] * 4 + [3, IGNORE]
    assert out["objects"][0].tolist() == [-1, 3, -1, 4, -1, -1]
    assert (out["video"][0, 1] == batch["video"][0, 0]).all()
    assert (out["video"][0, 0] == 0).all()
    with pytest.raises(ValueError, match="lacks"):
        split_study_clips({"video": batch["video"]})
