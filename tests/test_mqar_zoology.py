"""The Zoology protocol as a config of the MQAR sweep: widths, lr sweep, examples, conv first."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch

from launch.cmd_eval import _merge
from launch.evals import run_suite, suite_config, write_result
from launch.evals.cell_pool import run_cells
from obs_dist.baselines import BaselineConfig, build_baseline
from obs_dist.baselines.deltanet import ShortConvMixer


def test_zoology_config_loads_with_the_protocol() -> None:
    cfg = suite_config("mqar-sweep", "configs/eval_mqar_zoology.toml", [])
    assert cfg.vocab == 8192 and cfg.widths == [64, 128]
    assert cfg.lrs == [1e-3, 3e-3, 1e-2, 3e-2] and cfg.train_examples == 100_000
    assert cfg.baseline.conv_first and cfg.baseline.layers == 2
    # Zoology's language model: head tied to the token embedding, weights N(0, 0.02).
    assert cfg.baseline.tie_head and cfg.baseline.init_std == 0.02
    assert cfg.points == [[4, 64]] and cfg.seconds == 0


def test_conv_first_builds_convolution_then_mixer() -> None:
    model = build_baseline(BaselineConfig(kind="deltanet", d_model=16, heads=2, conv_first=True),
                           11, 5)
    assert isinstance(model.blocks[0].mixer, ShortConvMixer)
    assert not isinstance(model.blocks[1].mixer, ShortConvMixer)
    with pytest.raises(ValueError, match="conv_first"):
        BaselineConfig(layers=1, conv_first=True)


def test_lr_sweep_trains_each_width_and_rate_counted_in_examples() -> None:
    torch.set_num_threads(1)
    out = run_suite("mqar-sweep", None, [
        "vocab=32", "batch=4", "points=[[2, 12]]", "state_point=[2, 12]", "eval_batches=1",
        'models=["attention", "deltanet"]', "widths=[8, 16]", "lrs=[1e-3, 1e-2]",
        "train_examples=10", "match_parameters=false", "baseline.heads=2",
        "baseline.conv_first=true", "train.eval_every=0", "train.progress=false",
        "train.warmup=1"], quick=False, command=["eval"])
    rows = out["results"]
    assert len(rows) == 2 * 2 * 2
    assert {(r["d_model"], r["lr"]) for r in rows} == {(8, 1e-3), (8, 1e-2), (16, 1e-3),
                                                       (16, 1e-2)}
    assert all(r["steps"] == 3 and r["examples"] == 12 for r in rows)  # ceil(10 / 4) steps
    best = out["best"]
    assert len(best) == 4
    for b in best:
        same = [r for r in rows if (r["model"], r["d_model"]) == (b["model"], b["d_model"])]
        assert b["accuracy"] == max(r["accuracy"] for r in same)


SWEEP = ["vocab=32", "batch=4", "points=[[2, 12]]", "state_point=[2, 12]", "eval_batches=1",
         'models=["obs", "deltanet"]', "lrs=[1e-2, 3e-2]", "train_examples=160",
         "state_sizes=[64]", "state.nodes=64", "train.steps=40", "state.partitions=1",
         "model.d_model=16",
         "model.writer.k_max=4", "model.writer.active=4", "model.writer.key_dim=8",
         "baseline.heads=2", "train.eval_every=2", "train.progress=false", "train.warmup=1"]


def _without_seconds(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]


def test_workers_give_the_rows_one_process_gives_in_the_same_order() -> None:
    torch.set_num_threads(1)
    one = run_suite("mqar-sweep", None, SWEEP, command=["eval"])
    two = run_suite("mqar-sweep", None, [*SWEEP, "workers=2"], command=["eval"])
    assert len(one["results"]) == 4 and len(one["state_sweep"]) == 1
    # Every cell seeds itself and runs single-threaded: accuracies and curves are equal.
    assert _without_seconds(two["results"]) == _without_seconds(one["results"])
    assert _without_seconds(two["state_sweep"]) == _without_seconds(one["state_sweep"])
    assert [r["model"] for r in two["results"]] == ["obs", "obs", "deltanet", "deltanet"]
    # The rows differ from each other, so equal lists are not equal by accident.
    assert len({r["train_accuracy"] for r in one["results"]}) > 1


def test_a_failing_cell_is_raised_not_dropped() -> None:
    with pytest.raises(ZeroDivisionError):
        run_cells(divmod, [(1, 1), (1, 0), (4, 2)], workers=2, threads=1)
    assert run_cells(divmod, [(7, 2), (9, 4)], workers=2, threads=1) == [(3, 1), (2, 1)]
    with pytest.raises(ValueError, match="workers"):
        suite_config("mqar-sweep", None, ["workers=0"])


def test_parts_merge_into_the_sweep_one_command_gives(tmp_path: Path,
                                                      capsys: pytest.CaptureFixture) -> None:
    from launch.cli import main

    base = [s for s in SWEEP if not s.startswith(("models=", "state_sizes="))]
    whole = run_suite("mqar-sweep", None, [*base, 'models=["obs", "deltanet"]'],
                      command=["eval"])
    files = []
    for i, model in enumerate(["obs", "deltanet"]):
        part = run_suite("mqar-sweep", None, [*base, f'models=["{model}"]'],
                         command=["eval", f"part{i}"])
        files.append(str(write_result(part, tmp_path / f"p{i}.json")))
    out = tmp_path / "merged.json"
    assert main(["eval", "--merge", *files, "--out", str(out), "--json"]) == 0
    merged = json.loads(out.read_text())
    assert _without_seconds(merged["results"]) == json.loads(json.dumps(
        _without_seconds(whole["results"])))  # tuples in curves become lists in JSON
    assert [(b["model"], b["lr"]) for b in merged["best"]] == [
        (b["model"], b["lr"]) for b in whole["best"]]
    assert merged["config"]["models"] == ["obs", "deltanet"]
    assert merged["parts"] == ["obs eval part0", "obs eval part1"]
    assert merged["command"].startswith("obs eval --merge")
    from launch.cmd_report import section

    text = section(merged, "merged", tmp_path, tmp_path)
    assert "Merged from parts" in text and "`obs eval part1`" in text
    capsys.readouterr()

    # Bad parts are refused with what is wrong, and nothing is written.
    other = run_suite("mqar-sweep", None, [*base, 'models=["deltanet"]', "batch=8"],
                      command=["eval"])
    files.append(str(write_result(other, tmp_path / "other.json")))
    for bad, message in [([files[0], files[2]], "differs from part 0 in \\['batch'\\]"),
                         ([files[0], files[0]], "is in two parts"),
                         ([files[0], str(tmp_path / "none.json")], "does not exist")]:
        with pytest.raises(ValueError, match=message):
            _merge(argparse.Namespace(merge=bad, out=str(tmp_path / "bad.json"), task=None,
                                      json=True, command_line=["eval"]))
    assert not (tmp_path / "bad.json").exists()
    assert main(["eval", "--merge", files[0]]) == 2  # no --out
    assert "needs --out" in capsys.readouterr().err
