"""The distributed engine's command line end to end: ``obs train --nproc N`` (DeepSpeed on
gloo/CPU), the local launcher, ``obs bench sync``, ``shard`` and ``scaling`` (small sizes)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from launch.bench.scaling import relay_episode
from launch.bench.sync import crossover
from launch.jobs.spawn import spawn_local
from obs_dist.tasks import IGNORE

SMALL = ["--set", "state.nodes=256", "--set", "state.partitions=4",
         "--set", "model.d_model=16", "--set", "model.writer.k_max=4",
         "--set", "model.writer.active=8", "--set", "model.writer.key_dim=16",
         "--set", "task.name=association", "--set", "task.fixed_mapping=true",
         "--set", "task.vocab=32", "--set", "task.pairs=2", "--set", "task.batch=4",
         "--set", "train.eval_every=0", "--set", "train.eval_batches=1",
         "--set", "train.progress=false"]


def _obs(*args: str, env: dict[str, str] | None = None,
         timeout: int = 400) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "launch.cli", *args], capture_output=True,
                          text=True, timeout=timeout, env=env)


def _deepspeed_installed() -> bool:
    return importlib.util.find_spec("deepspeed") is not None


@pytest.mark.slow
@pytest.mark.parametrize("stage", [1])
def test_train_nproc_2_with_deepspeed_keeps_replicas_identical(tmp_path: Path, stage: int) -> None:
    if not _deepspeed_installed():
        pytest.skip("deepspeed is not installed (it is a project dependency: install it)")
    out = tmp_path / "run"
    proc = _obs("train", *SMALL, "--set", f"out_dir={out}", "--set", "train.steps=8",
                "--set", "dist.engine=deepspeed", "--set", f"deepspeed.zero_stage={stage}",
                "--set", "sync.check_every=4", "--set", "sync.parallel_every=2",
                "--nproc", "2", "--json")
    assert proc.returncode == 0, proc.stderr[-4000:]
    lines = [ln for ln in proc.stdout.strip().splitlines() if ln.startswith("{")]
    assert len(lines) == 1, proc.stdout  # rank 0 alone prints the result
    result = json.loads(lines[0])
    assert result["world_size"] == 2 and result["step"] == 8
    assert result["checksum_mismatches_total"] == 0  # state and slow weights checked twice
    assert result["sync_bytes_total"] > 0 and result["committed_entries_total"] > 0
    assert "slow-weight engine deepspeed" in proc.stderr
    assert (out / "model.safetensors").is_file()


RANK_THREADS = """
import json, os, sys
from launch.runner import run_training

out, engine = sys.argv[1], sys.argv[2]
run_training(None, [*sys.argv[3:], f"dist.engine={engine}", f"out_dir={out}/run"],
             resume="never")
tasks = sorted(os.listdir("/proc/self/task"))
names = [open(f"/proc/self/task/{t}/comm").read().strip() for t in tasks]
with open(f"{out}/threads{os.environ['RANK']}.json", "w") as f:
    json.dump(names, f)
"""


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux /proc")
@pytest.mark.slow
@pytest.mark.parametrize("engine", ["torch", "deepspeed"])
def test_no_process_group_thread_outlives_a_distributed_run(tmp_path: Path, engine: str) -> None:
    """After ``run_training`` returns, no gloo or TCPStore thread is left in either rank.

    A group kept alive past ``destroy_process_group`` (a late ``torch.distributed.fsdp``
    or DeepSpeed import, DeepSpeed's engine) keeps its threads, which race interpreter
    shutdown: a rank that finished its work dies with SIGABRT and SLURM marks the job
    FAILED.
    """
    if engine == "deepspeed" and not _deepspeed_installed():
        pytest.skip("deepspeed is not installed (it is a project dependency: install it)")
    script = tmp_path / "rank.py"
    script.write_text(RANK_THREADS)
    sets = [a for a in SMALL if a != "--set"] + ["train.steps=3"]
    code = spawn_local([sys.executable, str(script), str(tmp_path), engine, *sets], 2,
                       timeout_s=300)
    assert code == 0
    for rank in (0, 1):
        names = json.loads((tmp_path / f"threads{rank}.json").read_text())
        left = [n for n in names if n.startswith(("gloo", "pt_gloo", "pt_tcpstore"))]
        assert not left, f"rank {rank}: {names}"


def test_nproc_refuses_a_world_that_is_already_launched() -> None:
    env = {**os.environ, "WORLD_SIZE": "2"}
    proc = _obs("train", "--nproc", "2", env=env, timeout=120)
    assert proc.returncode == 2 and "WORLD_SIZE is set" in proc.stderr


def test_launcher_stops_the_other_ranks_when_one_fails() -> None:
    script = ("import os, sys, time\n"
              "if os.environ['RANK'] == '1': sys.exit(3)\n"
              "time.sleep(120)\n")
    start = time.monotonic()
    code = spawn_local([sys.executable, "-c", script], 2)
    assert code == 3
    assert time.monotonic() - start < 60  # rank 0 was stopped, not waited for


def test_launcher_gives_every_rank_its_environment(tmp_path: Path) -> None:
    script = ("import os, json, sys\n"
              "keys = ['RANK', 'LOCAL_RANK', 'WORLD_SIZE', 'MASTER_ADDR', 'MASTER_PORT']\n"
              f"open(os.path.join({str(tmp_path)!r}, os.environ['RANK']), 'w').write("
              "json.dumps({k: os.environ[k] for k in keys}))\n")
    assert spawn_local([sys.executable, "-c", script], 3) == 0
    envs = [json.loads((tmp_path / str(r)).read_text()) for r in range(3)]
    assert [e["RANK"] for e in envs] == ["0", "1", "2"]
    assert all(e["WORLD_SIZE"] == "3" and e["MASTER_ADDR"] == "127.0.0.1" for e in envs)
    assert len({e["MASTER_PORT"] for e in envs}) == 1
    with pytest.raises(ValueError, match="nproc"):
        spawn_local([sys.executable, "-c", "pass"], 0)


@pytest.mark.slow
def test_bench_sync_reports_bytes_seconds_and_crossover() -> None:
    proc = _obs("bench", "sync", "--nodes", "1024", "--partitions", "4", "--worlds", "2",
                "--densities", "1e-4", "1e-2", "3e-1", "--repeats", "1", "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    rows = result["results"]
    assert [r["density"] for r in rows] == [1e-4, 1e-2, 3e-1]
    for r in rows:
        assert r["world"] == 2 and r["sparse_seconds"] > 0 and r["dense_seconds"] > 0
        # Sparse: the all-gather volume plus the counts (8 bytes per partition).
        assert r["sparse_bytes"] == r["allgather_volume"] + 4 * 8
        assert r["sparse_over_allgather"] <= 1.25
        # Dense: reduce-scatter + all-gather of the whole N² block, 2·(W−1)/W of it.
        assert r["dense_bytes"] == 1024 * 1024 * 4 + 4 * 8
    assert rows[0]["sparse_bytes"] < rows[0]["dense_bytes"] / 100
    summary = result["summary"]["world2"]
    assert summary["bytes_crossover_gathered_density"] == 2 * 4 / 12
    assert set(summary) >= {"crossover_density_per_rank", "crossover_gathered_density"}


@pytest.mark.slow
def test_bench_shard_reports_slices_bytes_against_the_bound_and_gather_latency() -> None:
    proc = _obs("bench", "shard", "--nodes", "512", "--worlds", "2", "--windows", "2",
                "--window", "8", "--k-max", "8", "--active", "8", "--d-model", "32",
                "--phases", "parallel", "--profile", "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    rows = {r["layout"]: r for r in result["results"]}
    # --profile: rank 0's time waiting on collectives; the sharded reads meet every step.
    assert rows["sharded"]["collective_wait_s_per_window"] > 0
    assert "_distributed_c10d" in rows["sharded"]["profile"]
    assert rows["sharded"]["state_bytes_per_rank"] * 2 == rows["replicated"]["state_bytes_per_rank"]
    assert rows["replicated"]["read_bytes_per_step"] == 0  # a replica reads locally
    assert rows["sharded"]["read_bytes_per_step"] > 0
    assert rows["sharded"]["read_over_bound"] <= 1.25
    assert rows["sharded"]["write_bytes_per_step"] <= rows["sharded"]["write_bound_per_step"]
    summary = result["summary"]
    assert summary["world2.parallel"]["state_bytes_ratio"] == 0.5
    assert summary["world2.parallel"]["sharded_over_replicated_seconds"] > 0
    latency = summary["world2.gather_latency"]
    assert latency["back_to_back_ms"] > 0 and latency["between_compute_ms"] > 0


def test_crossover_interpolates_between_the_bracketing_densities() -> None:
    rows = [{"density": 1e-3, "sparse_seconds": 1.0, "dense_seconds": 4.0},
            {"density": 1e-2, "sparse_seconds": 2.0, "dense_seconds": 2.0 / 4.0}]
    assert abs(crossover(rows) - 10 ** -2.5) < 1e-9  # log-midway: gains -log4 and +log4
    assert crossover(rows[:1]) is None


def test_relay_episodes_make_order_matter_only_when_continuous() -> None:
    gen = torch.Generator().manual_seed(0)
    cont = relay_episode(6, 3, 64, True, gen)
    disc = relay_episode(6, 3, 64, False, gen)
    for ep in (cont, disc):
        assert ep["tokens"].shape == (6, 9) and (ep["targets"][:, :6] == IGNORE).all()
    # Continuous: stream s is asked about stream s+1's study pairs, in one shared world.
    asked = cont["tokens"][:, 6:]
    studied = cont["tokens"][:, 0:6:2]
    for s in range(6):
        assert set(asked[s].tolist()) == set(studied[(s + 1) % 6].tolist())
    pairs = {(int(a), int(b)) for a, b in zip(cont["tokens"][:, 0:6:2].reshape(-1),
                                              cont["tokens"][:, 1:6:2].reshape(-1))}
    assert len({a for a, _ in pairs}) == len(pairs)  # one B per A across all streams
    # Discrete: every stream is asked about its own pairs.
    for s in range(6):
        assert set(disc["tokens"][s, 6:].tolist()) == set(disc["tokens"][s, 0:6:2].tolist())
    assert cont["kind"] == ["continuous"] * 6 and disc["kind"] == ["discrete"] * 6


@pytest.mark.slow
def test_bench_scaling_runs_one_small_policy() -> None:
    proc = _obs("bench", "scaling", "--worlds", "1", "--policies", "adaptive", "--steps", "6",
                "--eval-episodes", "2", "--nodes", "256", "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    row = json.loads(proc.stdout)["results"][0]
    assert row["policy"] == "adaptive" and row["world"] == 1 and row["samples_per_s"] > 0
    assert 0 <= row["accuracy"] <= 1 and 0 <= row["sequential_share"] <= 1
