"""The word–referent suite: trial building from labels (pure) and ``--quick`` end to end."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from launch.evals import SUITES, suite_config, word_referent
from launch.evals.word_referent import WordReferentConfig, learner_overrides, targets
from launch.evals.word_referent_trials import (
    ClipLabel,
    build_trials,
    name_occurrences,
    occurrences,
    recording_trials,
    referents,
    tally,
    wilson,
)
from pipelines.cutter_probe import write_test_recording
from pipelines.pack import pack_folder
from pipelines.schema import INDEX_FILE


def _recording(name: str = "rec_000", words: int = 3) -> list[ClipLabel]:
    """A recording: ``dax`` said near the ball, ``wug`` near the cup, the filler ``hmm``
    next to a different object each time, silent stretches of car, doll and kite."""
    plan: list[tuple[str, str | None]] = []
    for k in range(words):
        plan += [("dax", "ball"), ("dax", "ball"), ("", "ball")] + [("", "car")] * 4
        plan += [("wug", "cup"), ("", "cup")] + [("", "doll")] * 4 + [("", "kite")] * 4
        plan += [("", None), ("hmm", None), ("", ("car", "doll", "kite")[k % 3])]
    return [ClipLabel(name, i, w, o) for i, (w, o) in enumerate(plan)]


def test_occurrences_merge_consecutive_clips_of_one_text() -> None:
    runs = occurrences(_recording(words=2))
    assert len(runs["dax"]) == 2 and all(len(r) == 2 for r in runs["dax"])
    assert len(runs["wug"]) == 2 and len(runs["hmm"]) == 2


def test_majority_referent_and_fillers_fall_out() -> None:
    kept = referents(_recording())
    assert kept["dax"][0] == "ball" and kept["wug"][0] == "cup"
    assert kept["dax"][1] == 1.0
    assert "hmm" not in kept  # in view of no object, or of another one each time


def test_purity_threshold_and_minimum_occurrences() -> None:
    clips = [ClipLabel("r", 0, "dax", "ball"), ClipLabel("r", 1, "", None),
             ClipLabel("r", 2, "", None), ClipLabel("r", 3, "dax", "cup"),
             ClipLabel("r", 4, "", None), ClipLabel("r", 5, "", None),
             ClipLabel("r", 6, "dax", "ball")]
    assert referents(clips, min_purity=0.6)["dax"][0] == "ball"  # 2 of 3
    assert "dax" not in referents(clips, min_purity=0.7)
    assert "dax" not in referents(clips, min_occurrences=4)
    with pytest.raises(ValueError, match="min_purity"):
        referents(clips, min_purity=1.5)


def test_trials_have_distinct_silent_candidates_and_one_answer() -> None:
    clips = _recording()
    by_index = {c.index: c for c in clips}
    trials = recording_trials(clips, candidates=4, min_gap=5, seed=3)
    assert len(trials) == 6  # 3 occurrences each of dax and wug
    for t in trials:
        assert len(set(t.objects)) == 4 and t.objects[t.answer] == t.referent
        assert [by_index[c].object for c in t.candidates] == list(t.objects)
        assert all(by_index[c].word == "" for c in t.candidates)
        assert by_index[t.query].word == t.text
        assert all(abs(c - t.query) >= 5 for c in t.candidates)
        # The whole utterance is heard: every clip of the run, the query first.
        assert t.heard[0] == t.query and all(by_index[c].word == t.text for c in t.heard)
        assert list(t.heard) == list(range(t.query, t.query + len(t.heard)))
        assert t.query + len(t.heard) not in by_index \
            or by_index[t.query + len(t.heard)].word != t.text
    assert len({t.answer for t in trials}) > 1  # the answer's position is shuffled


def test_trials_are_deterministic_per_seed() -> None:
    clips = _recording() + _recording("rec_001")
    assert build_trials(clips, seed=1) == build_trials(list(reversed(clips)), seed=1)
    assert build_trials(clips, seed=1) != build_trials(clips, seed=2)
    assert {t.recording for t in build_trials(clips)} == {"rec_000", "rec_001"}


def test_too_few_other_objects_give_no_trial() -> None:
    clips = _recording()
    assert recording_trials(clips, candidates=5) != []  # ball + car, cup, doll, kite
    assert recording_trials(clips, candidates=6) == []
    with pytest.raises(ValueError, match="candidates"):
        recording_trials(clips, candidates=1)
    with pytest.raises(ValueError, match="one recording"):
        recording_trials(clips + _recording("other"))


CARRIERS = ["look the {}", "where s the {}", "a {}", "{}", "see the {}", "it s a {}",
            "there s the {}", "oh a {}", "can you see the {}"]
NAMES = ["striped red circle", "dotted red circle", "striped blue square"]


def _narrated(name: str = "rec_000") -> list[ClipLabel]:
    """Three objects whose names share words ("red circle", "striped"), each named nine
    times, every time in another carrier phrase (no line is said twice), the filler
    ``look`` near another object each time, and silent stretches of three more objects."""
    plan: list[tuple[str, str | None]] = []
    for k in range(3):
        for obj in NAMES:
            for j in range(3):
                plan += [(CARRIERS[3 * k + j].format(obj), obj), ("", obj), ("", None)]
            plan += [("", "car"), ("", "car"), ("", None)]
        plan += [("look", ("doll", "kite", "car")[k]), ("", None)]
        plan += [("", "doll"), ("", "doll"), ("", "kite"), ("", "kite"), ("", None)]
    return [ClipLabel(name, i, w, o) for i, (w, o) in enumerate(plan)]


def test_name_unit_finds_names_inside_varying_lines() -> None:
    clips = _narrated()
    by_index = {c.index: c for c in clips}
    assert recording_trials(clips, min_gap=3) == []  # no line recurs
    assert len(name_occurrences(clips)["red circle"]) == 18
    trials = recording_trials(clips, min_gap=3, unit="name")
    # One trial per naming utterance, named by the whole name: its pieces ("red circle",
    # "striped", "circle") name two objects and carrier words ("the", "look") name none.
    assert {t.text for t in trials} == set(NAMES)
    assert len(trials) == 27 and len({t.query for t in trials}) == 27
    for t in trials:
        assert t.referent == t.text and t.objects[t.answer] == t.referent
        assert t.text in by_index[t.query].word
        assert [c for c in t.heard] == [t.query]
    kept = referents(clips, unit="name")
    assert set(kept) == set(NAMES) and all(kept[n][1] == 1.0 for n in NAMES)
    # The line unit is unchanged where lines recur, and both give the same trials there.
    recurring = _recording()
    assert recording_trials(recurring, unit="name") == recording_trials(recurring)
    with pytest.raises(ValueError, match="unit"):
        referents(clips, unit="word")


def test_held_out_data_without_trials_is_refused_before_training(
        monkeypatch: pytest.MonkeyPatch) -> None:
    clips = _narrated()
    media = {(c.recording, c.index): (torch.zeros(1), torch.zeros(1)) for c in clips}
    monkeypatch.setattr(word_referent, "count_recordings", lambda *_: 1)
    monkeypatch.setattr(word_referent, "collect", lambda *_: (clips, media))
    monkeypatch.setattr(word_referent, "refuse_shared_recordings", lambda *_: None)

    def no_training(*_: object) -> None:
        raise AssertionError("trained before the trials were checked")

    monkeypatch.setattr(word_referent, "train", no_training)
    cfg = WordReferentConfig(train_source="train", heldout_source="heldout", min_gap=3)
    with pytest.raises(ValueError, match="no word-referent trial in heldout.*trial_unit=name"):
        word_referent.run_setting(cfg, "class")
    with pytest.raises(ValueError, match="trial_unit"):
        WordReferentConfig(trial_unit="word")


def test_held_out_recordings_that_were_trained_on_are_refused(tmp_path: Path) -> None:
    # A user who packs one folder twice, or overlapping folders, would score the
    # learners on recordings they trained on: recall, not word learning. One file
    # each, copied into the folders: two writes of a test recording can differ in
    # bytes (the encoder), and so would be two recordings.
    for name in "abc":
        write_test_recording(tmp_path / "src" / f"{name}.mp4", 4.0, width=32, height=32,
                             fps=4, audio_track=False)
    for folder, names in (("train", "ab"), ("held", "c"), ("all", "abc")):
        (tmp_path / folder).mkdir()
        for name in names:
            shutil.copy(tmp_path / "src" / f"{name}.mp4", tmp_path / folder / f"{name}.mp4")
        pack_folder(tmp_path / folder, str(tmp_path / f"{folder}_shards"), progress=False)
    train, held, every = (str(tmp_path / f"{f}_shards") for f in ("train", "held", "all"))
    word_referent.refuse_shared_recordings(train, held, None)  # apart: fine
    with pytest.raises(ValueError, match=r"shares recordings .* \(1 streams, e.g. \['c'\]"):
        word_referent.refuse_shared_recordings(every, held, None)
    with pytest.raises(ValueError, match="shares recordings"):
        word_referent.refuse_shared_recordings(train, train + "/", None)


def test_recordings_sharing_a_name_and_a_size_are_told_apart_by_their_digest(
        tmp_path: Path) -> None:
    # Generated sets name their recordings alike (rec_010 in each), and shards of
    # fixed-size clips differ in size only by their sidecars' padding: two
    # different recordings with one name and one size were refused as the same.
    for folder, white_at in (("held", 1.0), ("other", 3.0)):
        write_test_recording(tmp_path / folder / "c.mp4", 4.0, width=32, height=32, fps=4,
                             audio_track=False, white_at=white_at)
        pack_folder(tmp_path / folder, str(tmp_path / f"{folder}_shards"), progress=False)
    held, other = (tmp_path / f"{f}_shards" / INDEX_FILE for f in ("held", "other"))
    index = json.loads(other.read_text())
    size = json.loads(held.read_text())["shards"][0]["bytes"]
    index["shards"][0]["bytes"] = size  # the collision, whatever the codec gave
    other.write_text(json.dumps(index))
    digests = {json.loads(p.read_text())["shards"][0]["media_sha256"] for p in (held, other)}
    assert len(digests) == 2  # two contents
    word_referent.refuse_shared_recordings(str(held.parent), str(other.parent), None)
    # An index from before digests cannot tell them apart: the safe side, refused.
    del index["shards"][0]["media_sha256"]
    other.write_text(json.dumps(index))
    with pytest.raises(ValueError, match=r"shares recordings .* \['c'\]"):
        word_referent.refuse_shared_recordings(str(held.parent), str(other.parent), None)


def test_tally_and_wilson_interval() -> None:
    trials = recording_trials(_recording())
    out = tally(trials, [t.answer for t in trials])
    assert out["accuracy"] == 1.0 and out["trials"] == 6
    assert out["per_word"]["dax"] == {"accuracy": 1.0, "trials": 3, "referent": "ball"}
    assert all(r == c for r, c, _ in out["confusion"])
    lo, hi = wilson(50, 100)
    assert lo == pytest.approx(0.4038, abs=1e-3) and hi == pytest.approx(0.5962, abs=1e-3)
    assert wilson(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError, match="chosen"):
        tally(trials, [0])


def test_config_validation_and_learner_overrides(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="settings"):
        suite_config("word-referent", None, ["settings=['nope']"])
    with pytest.raises(ValueError, match="heldout_source"):
        suite_config("word-referent", None, ["train_source='x'"])
    with pytest.raises(ValueError, match="models"):
        suite_config("word-referent", None, ["models=['dual']"])
    cfg = suite_config("word-referent", None, ["rehearsal_ratio=3", "offline_factor=2.5"])
    obs = learner_overrides(cfg, "obs", "/d", tmp_path, 0)
    assert "rehearsal.ratio=3" in obs and "model.stream.state_path=true" in obs
    assert not any(s.startswith("train.steps") for s in obs)
    dual = learner_overrides(cfg, "dual", "/d", tmp_path, 40)
    assert "model.stream.state_path=false" in dual and "train.steps=40" in dual
    assert not any(o.startswith("model.stream.recent") for o in obs + dual)
    attention = learner_overrides(cfg, "attention", "/d", tmp_path, 40)
    assert {"model.stream.state_path=false", "model.stream.recent=64", "train.steps=40",
            "rehearsal.ratio=3", 'model.stream.recent_match="features"'} <= set(attention)
    with pytest.raises(ValueError, match="attention_match"):
        suite_config("word-referent", None, ["attention_match='nearest'"])
    offline = learner_overrides(cfg, "dual-offline", "/d", tmp_path, 40)
    assert {"data.mode=\"shuffled\"", "data.loop=true", "rehearsal.ratio=0",
            "train.steps=100"} <= set(offline)
    assert "model.stream.embed=99" in learner_overrides(cfg, "dual", "/d", tmp_path, 40, 99)


def test_peers_are_sized_to_obs_trainable_parameters(tmp_path: Path) -> None:
    from launch.evals.word_referent_learners import matched_embed, trainable_params
    from launch.runner import resolve_config

    cfg = suite_config("word-referent", None, [])
    assert cfg.match_params
    assert matched_embed(cfg, "obs", "/d", tmp_path, 0) is None

    def params(learner: str, embed: int | None) -> int:
        run = resolve_config(cfg.config, learner_overrides(cfg, learner, "/d", tmp_path, 40,
                                                           embed))
        return trainable_params(run.model, run.state.nodes)

    obs = params("obs", None)
    for learner in ("dual", "dual-offline", "attention"):
        embed = matched_embed(cfg, learner, "/d", tmp_path, 40)
        assert embed is not None and embed > 64
        # The nearest width: one unit narrower or wider is farther from OBS's count.
        gaps = [abs(params(learner, e) - obs) for e in (embed - 1, embed, embed + 1)]
        assert gaps[1] < min(gaps[0], gaps[2]) and gaps[1] < 0.001 * obs, (learner, gaps)
        assert abs(params(learner, None) - obs) > 10_000  # the writer, without matching
    off = suite_config("word-referent", None, ["match_params=false"])
    assert matched_embed(off, "dual", "/d", tmp_path, 40) is None


def test_the_attention_peer_attends_over_the_whole_recording_or_its_last_clips() -> None:
    # context_features stands in for the model: it returns which clips it was given.
    def features(audio: torch.Tensor, video: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return audio[:, 0, 0], video[:, 0]

    model = SimpleNamespace(audio_context=0, context_features=features)
    learner = SimpleNamespace(model=model,
                              run_cfg=SimpleNamespace(train=SimpleNamespace(device="cpu")))
    media = {(rec, i): (torch.full((2, 3), float(i)), torch.full((4,), float(100 * i)))
             for rec, clips in (("a", 10), ("b", 4)) for i in range(clips)}
    whole = word_referent.recent_context(learner, media, 0)  # type: ignore[arg-type]
    assert whole["a"][0].tolist() == list(range(10)) and whole["b"][0].tolist() == [0, 1, 2, 3]
    last = word_referent.recent_context(learner, media, 3)  # type: ignore[arg-type]
    assert last["a"][0].tolist() == [7, 8, 9] and last["a"][1].tolist() == [700, 800, 900]
    assert suite_config("word-referent", None, []).attention_context == 0
    with pytest.raises(ValueError, match="attention_context"):
        suite_config("word-referent", None, ["attention_context=-1"])


def test_targets_read_the_rows() -> None:
    rows = [{"setting": "recording", "model": "obs", "accuracy": 0.85, "trials": 40,
             "ci_low": 0.71, "ci_high": 0.93},
            {"setting": "recording", "model": "dual", "accuracy": 0.3, "trials": 40}]
    lines = targets({"results": rows})
    assert len(lines) == 3 and all("**met**" in line for line in lines)
    # A tie at chance is no win over the dual encoder.
    rows[0].update(accuracy=0.3, ci_low=0.18, ci_high=0.45)
    assert "**missed**" in targets({"results": rows})[1]


def test_cli_quick_runs_every_learner_and_draws(tmp_path: Path) -> None:
    assert "word-referent" in SUITES
    out = tmp_path / "wr.json"
    proc = subprocess.run(
        [sys.executable, "-m", "launch.cli", "eval", "--task", "word-referent", "--quick",
         "--set", f"work_dir={json.dumps(str(tmp_path / 'work'))}", "--json", "--out", str(out)],
        capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    rows = result["results"]
    assert [r["model"] for r in rows] == ["obs", "dual", "dual-offline", "attention"]
    for r in rows:
        assert r["trials"] > 0 and 0.0 <= r["accuracy"] <= 1.0
        assert r["steps"] == rows[0]["steps"] > 0 and r["params"] > 0
    # The peers' embedding is widened to OBS's trainable parameters (match_params, on
    # by default): they differ by less than one embedding unit (two heads of d + 1),
    # where the writer alone is thousands.
    unit = 2 * (64 + 1)
    assert all(abs(r["params"] - rows[0]["params"]) <= unit // 2 for r in rows[1:]), rows
    learners = result["details"]["class"]["learners"]
    assert set(learners["obs"]["addresses"]) == {"video", "audio"}  # OBS's addresses measured
    assert 0.0 <= learners["obs"]["hebbian_ceiling"] <= 1.0
    assert learners["dual"]["addresses"] is None and learners["dual"]["hebbian_ceiling"] is None
    moments = learners["obs"]["moments"]  # the studied picture nodes, by object and time apart
    assert moments["same_near_pairs"] > 0 and 0.0 <= moments["same_near"] <= 1.0
    assert learners["dual"]["moments"] is None
    for name in ("obs", "dual"):  # every learner's accuracy by the referent's distance
        bands = learners[name]["by_distance"]
        assert sum(b["trials"] for b in bands.values()) == rows[0]["trials"]
    assert Path(result["figure"]).is_file() and result["figure"].endswith(".png")


def test_address_agreement_tells_collapse_from_naming() -> None:
    from launch.evals.word_referent_addresses import pair_agreement

    items = [("r", 0, "ball"), ("r", 1, "ball"), ("r", 2, "cup"), ("s", 3, "ball")]
    naming = torch.tensor([[1, 2], [1, 2], [7, 8], [5, 6]])
    a = pair_agreement(naming, items)
    assert a["same"] == 1.0 and a["different"] == 0.0  # the other recording is never paired
    assert a["same_pairs"] == 1 and a["different_pairs"] == 2 and a["distinct_nodes"] == 6
    collapsed = pair_agreement(torch.tensor([[1, 2]] * 4), items)
    assert collapsed["same"] == collapsed["different"] == 1.0 and collapsed["distinct_nodes"] == 2
    with pytest.raises(ValueError, match="rows"):
        pair_agreement(naming[:2], items)


def test_moment_agreement_tells_the_scene_from_the_object() -> None:
    from launch.evals.word_referent_addresses import moment_agreement

    # One recording: a ball at clips 0-1 (scene A) and 40 (scene B), a cup at 2 (scene A).
    # The nodes follow the scene: {1, 2} in scene A, {5, 6} in scene B.
    labels = [ClipLabel("r", i, "", o) for i, o in ((0, "ball"), (1, "ball"), (2, "cup"),
                                                    (10, "cup"), (40, "ball"))]
    labels += [ClipLabel("r", 41, "", None), ClipLabel("s", 0, "", "ball")]
    video = {("r", 0): [1, 2], ("r", 1): [1, 2], ("r", 2): [1, 2], ("r", 10): [9],
             ("r", 40): [5, 6], ("r", 41): [1, 2], ("s", 0): [1, 2]}
    m = moment_agreement(video, labels, near=4, far=24)
    assert m["same_near"] == 1.0 and m["same_near_pairs"] == 1  # clips 0 and 1
    assert m["different_near"] == 1.0 and m["different_near_pairs"] == 2  # 2 with 0 and 1
    assert m["same_far"] == 0.0 and m["same_far_pairs"] == 2  # 40 with 0 and 1
    assert m["different_far"] == 0.0 and m["different_far_pairs"] == 2  # 40 with 2 and 10
    # Pairs 4-23 apart (10 with 0, 1, 2), an unlabelled clip (41) and another
    # recording (s) are left out.
    assert sum(v for k, v in m.items() if k.endswith("_pairs")) == 7
    with pytest.raises(ValueError, match="near"):
        moment_agreement(video, labels, near=5, far=4)
    # A long recording's far pairs are a seeded draw of far_pairs; its near ones all count.
    long = [ClipLabel("r", i, "", "ball" if i % 100 < 50 else "cup") for i in range(2000)]
    nodes = {("r", i): [i // 10] for i in range(2000)}  # ten clips a scene
    m = moment_agreement(nodes, long, far_pairs=500)
    assert m["same_far_pairs"] + m["different_far_pairs"] == 500
    assert m["same_far"] == m["different_far"] == 0.0  # never one scene
    assert m["same_near_pairs"] + m["different_near_pairs"] == 3 * 2000 - 6
    assert m == moment_agreement(nodes, long, far_pairs=500)  # the same draw


def test_accuracy_by_distance_splits_near_from_far_referents() -> None:
    from launch.evals.word_referent_trials import Trial, accuracy_by_distance

    # "ball" said at clip 10 ("look a  ball") and 100; "cup" said at clip 50 only.
    clips = [ClipLabel("r", 10, "look a  ball", "ball"), ClipLabel("r", 100, "ball", "ball"),
             ClipLabel("r", 20, "balloon", "balloon"),
             ClipLabel("r", 50, "cup", "cup"), ClipLabel("s", 5, "cup", "cup")]

    def trial(text: str, referent_at: int) -> Trial:
        return Trial("r", text, text, 0, (referent_at, 200), (text, "x"), 0)

    trials = [trial("ball", 12), trial("ball", 90), trial("ball", 130), trial("cup", 53),
              trial("cup", 80), trial("ball", 23)]
    out = accuracy_by_distance(trials, [0, 1, 0, 1, 0, 0], clips)
    # 12: 2 from "look a  ball" (the name inside a line counts, whole words only:
    # not "balloon" at 20); 90: 10 from 100;
    # 130 and 80: 30 from the nearest; 53: 3; 23: 13 from 10 ("balloon" is 3 away).
    assert out["near"] == {"accuracy": 0.5, "trials": 2}
    assert out["between"] == {"accuracy": 0.5, "trials": 2}
    assert out["far"] == {"accuracy": 1.0, "trials": 2}
    with pytest.raises(ValueError, match="never spoken"):
        accuracy_by_distance([trial("dog", 1)], [0], clips)
    with pytest.raises(ValueError, match="entries"):
        accuracy_by_distance(trials, [0], clips)


class _FakeAddresses:
    """A stand-in learner whose writer addresses one node set per object or word."""

    writer = True
    audio_context = 0
    num_nodes = 1024
    config = SimpleNamespace(writer=SimpleNamespace(k_max=4))

    def __init__(self, collapsed: bool = False) -> None:
        self.collapsed = collapsed

    def addresses(self, clips: torch.Tensor, kind: str, nodes: int = 0) -> torch.Tensor:
        k = nodes or 4
        code = clips.flatten(1)[:, 0].round().long()  # the clip's identity, planted below
        base = torch.zeros_like(code) if self.collapsed else code * k
        return base[:, None] + torch.arange(k)[None, :] + (100 if kind == "audio" else 0)


def test_hebbian_ceiling_binds_good_addresses_and_not_collapsed_ones() -> None:
    from launch.evals.word_referent_addresses import clip_addresses, hebbian_ceiling

    clips = _recording()
    names = sorted({c.object for c in clips if c.object})
    words = sorted({c.word for c in clips if c.word})
    media = {}
    for c in clips:
        video = torch.full((1, 3, 4, 4), float(names.index(c.object) + 1 if c.object else 0))
        audio = torch.full((2, 5), float(words.index(c.word) + 1 if c.word else 0))
        media[(c.recording, c.index)] = (audio, video)
    trials = build_trials(clips, candidates=4, min_gap=5, seed=3)
    assert trials
    assert hebbian_ceiling(_FakeAddresses(), clips, media, trials) == 1.0
    collapsed = hebbian_ceiling(_FakeAddresses(collapsed=True), clips, media, trials)
    assert collapsed is not None and collapsed < 1.0
    # Perfect addresses from the labels in place of the collapsed ones: which modality loses it.
    fake = _FakeAddresses(collapsed=True)
    assert hebbian_ceiling(fake, clips, media, trials, perfect=("video", "audio")) == 1.0
    video_only = hebbian_ceiling(fake, clips, media, trials, perfect=("video",))
    assert video_only is not None and collapsed < video_only < 1.0  # the words still collapse
    # Addresses computed once (as the suite does) give the same ceilings.
    nodes = clip_addresses(fake, media)
    assert hebbian_ceiling(fake, clips, media, trials, addresses=nodes) == collapsed
    assert hebbian_ceiling(fake, clips, media, trials, perfect=("video",),
                           addresses=nodes) == video_only
    good = clip_addresses(_FakeAddresses(), media)
    assert hebbian_ceiling(fake, clips, media, trials, addresses=good) == 1.0  # they are used
    wide = clip_addresses(_FakeAddresses(), media, nodes=8)  # study_nodes' addresses
    assert {len(v) for v in wide[0].values()} == {8}
    assert hebbian_ceiling(fake, clips, media, trials, addresses=wide) == 1.0
    with pytest.raises(ValueError, match="perfect"):
        hebbian_ceiling(fake, clips, media, trials, perfect=("smell",))


def test_trained_learners_are_reused_only_with_the_same_config(tmp_path: Path) -> None:
    """Scoring the same learner on other recordings costs no training; another config
    in the same folder is refused, never reused silently."""
    from launch.evals.word_referent import QUICK, run

    base = [*QUICK, f"work_dir={json.dumps(str(tmp_path))}", "models=['dual']", "steps=2"]
    first = run(suite_config("word-referent", None, base))
    weights = tmp_path / "class" / "dual" / "model.safetensors"
    stamp = weights.stat().st_mtime_ns
    again = run(suite_config("word-referent", None, [*base, "reuse_trained=true"]))
    assert weights.stat().st_mtime_ns == stamp  # loaded, not trained again
    assert again["results"][0]["accuracy"] == first["results"][0]["accuracy"]
    assert again["results"][0]["seconds"] == first["results"][0]["seconds"]
    with pytest.raises(ValueError, match="another config"):
        run(suite_config("word-referent", None, [*base, "steps=3", "reuse_trained=true"]))
    # A learner moved to another work folder (same data) is still the same learner.
    moved = tmp_path.parent / f"{tmp_path.name}-moved"
    shutil.copytree(tmp_path / "class" / "dual", moved / "class" / "dual")
    data = [f"{k}_source={json.dumps(str(tmp_path / 'class' / f'{part}_shards'))}"
            for k, part in (("train", "train"), ("heldout", "heldout"))]
    elsewhere = [*QUICK, f"work_dir={json.dumps(str(moved))}", "models=['dual']", "steps=2",
                 "reuse_trained=true", "settings=['class']", *data]
    copied = moved / "class" / "dual" / "model.safetensors"
    stamp = copied.stat().st_mtime_ns
    result = run(suite_config("word-referent", None, elsewhere))
    assert copied.stat().st_mtime_ns == stamp
    assert result["results"][0]["accuracy"] == first["results"][0]["accuracy"]


def test_apart_studies_each_held_out_recording_in_a_state_of_its_own(tmp_path: Path) -> None:
    """``study = "apart"``: recording r's state is what studying r alone writes; the
    shared state of ``together`` holds both recordings (and equals neither)."""
    from launch.evals.word_referent import (
        QUICK,
        choose,
        choose_apart,
        prepare_data,
        study,
        study_apart,
        train,
    )
    from launch.evals.word_referent_adapt import recording_statistics, speech_clips
    from launch.evals.word_referent_addresses import clip_addresses
    from launch.evals.word_referent_data import collect
    from launch.evals.word_referent_trials import Trial
    from obs_dist.model.name_links import NameLinks

    cfg = suite_config("word-referent", None, [
        *QUICK, f"work_dir={json.dumps(str(tmp_path / 'work'))}", "models=['obs']",
        "steps=2", "heldout_recordings=2"])
    train_source, heldout = prepare_data(cfg, "class")
    learner = train(cfg, "class", "obs", train_source, 2)
    states = study_apart(learner, heldout, 2)
    assert len(states) == 2
    held = tmp_path / "work" / "class" / "heldout_recordings"
    for name, state in states.items():
        alone = tmp_path / "alone" / name
        alone.mkdir(parents=True)
        for f in held.glob(f"{name}.*"):
            shutil.copy(f, alone / f.name)
        pack_folder(alone, str(tmp_path / f"{name}_shards"), progress=False)
        single = study(learner, str(tmp_path / f"{name}_shards"), 1)
        assert torch.equal(single.matrix(), state.matrix())
        assert float(state.matrix().abs().sum()) > 0  # something was bound
    together = study(learner, heldout, 2)
    assert not any(torch.equal(together.matrix(), s.matrix()) for s in states.values())
    # Each trial is answered from its own recording's state.
    _, media = collect(learner.run_cfg, heldout, 2)
    first, second = sorted(states)
    clips = sorted(i for r, i in media if r == first)
    trial = Trial(first, "x", "o", clips[0], tuple(clips[1:5]), ("a", "b", "c", "d"), 0,
                  (clips[0],))
    assert choose_apart(learner, states, [trial], media, 8) == choose(
        learner, states[first], [trial], media, 8)
    with pytest.raises(ValueError, match="never reached"):
        choose_apart(learner, {second: states[second]}, [trial], media, 8)
    # The study rule is the suite's: the same trained model, reused, studies the
    # Hebbian way, and its states differ from the learnt rule's.
    assert learner.model.study_rule == "learnt"
    linked = train(dataclasses.replace(cfg, study_rule="name_links", reuse_trained=True),
                    "class", "obs", train_source, 2)
    assert linked.model.study_rule == "name_links"
    assert abs(linked.seconds - learner.seconds) <= 0.05  # reused: its recorded time
    plain = study_apart(linked, heldout, 2)
    assert all(float(plain[n].matrix().abs().sum()) > 0 for n in plain)
    assert not any(torch.equal(plain[n].matrix(), states[n].matrix()) for n in plain)
    # Adapted to each recording (word_referent_adapt): 16 nodes a clip, names linked
    # to the 2 pictures before them too, each recording's own statistics centring
    # it, candidates z-scored over its speech.
    adapted = train(dataclasses.replace(cfg, study_rule="name_links", study_nodes=16,
                                        study_lookback=2, study_centring="recording",
                                        candidate_norm="speech", reuse_trained=True),
                    "class", "obs", train_source, 2)
    assert adapted.model.name_links == NameLinks(16, 2)
    centring = recording_statistics(adapted.model, media)
    wide = study_apart(adapted, heldout, 2)
    centred = study_apart(adapted, heldout, 2, centring)
    for n in wide:  # a name's 16 nodes to a picture's 16: up to 256 links a pair
        assert int((wide[n].matrix() != 0).sum()) > int((plain[n].matrix() != 0).sum())
        assert not torch.equal(centred[n].matrix(), wide[n].matrix())
    video, _ = clip_addresses(adapted.model, media, 16, centring)
    assert {len(v) for v in video.values()} == {16}
    reference = speech_clips(adapted.model, media, adapted.run_cfg.data.window)
    assert choose_apart(adapted, centred, [trial], media, 8, centring, reference)[0] in range(4)
    with pytest.raises(ValueError, match="study_rule"):
        WordReferentConfig(study_rule="oja")
    with pytest.raises(ValueError, match="study"):
        WordReferentConfig(study="shared")
    with pytest.raises(ValueError, match="study_streams"):
        WordReferentConfig(study="apart", study_streams=2)


def test_apart_refuses_states_that_would_not_fit_together(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(word_referent, "STUDY_APART_BYTES", 64 * 64 * 4)  # one 64² state
    from obs_dist.model.state import StateConfig

    learner = SimpleNamespace(model=None, run_cfg=SimpleNamespace(
        train=SimpleNamespace(device="cpu"), state=StateConfig(nodes=64, partitions=1)))
    with pytest.raises(ValueError, match=r"holds 2 states .* study = 'together'"):
        word_referent.study_apart(learner, "nowhere", 2)
