"""The README's commands: every ``obs`` line parses, and the "Using it" block runs in order.

The parse test catches what a reader hits first (a flag that does not exist, a
config file that moved, an override naming no key) in a second. The slow test
runs the "Using it" block as a fresh clone would, in order, each line with
overrides that shrink it to a tiny size, against a moto S3 server.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from support.s3_server import MotoServer
from support.tiny_run import TINY_AV

from launch.cli import build_parser
from launch.evals import SUITES, suite_config
from launch.run_config import RunConfig
from obs_dist.config import load_config

README = Path(__file__).resolve().parents[1] / "README.md"


def split_commands(text: str) -> list[list[str]]:
    """The commands of bash lines, split into argv (program first), in order.

    A line holds one command per ``;``; comments are dropped. A word with
    alternatives (``list|inspect|verify``) makes one command per alternative.
    """
    out = []
    for line in text.splitlines():
        for part in line.split(";"):
            words = shlex.split(part, comments=True)
            if not words:
                continue
            alternatives = [w.split("|") for w in words]
            for choice in range(max(len(a) for a in alternatives)):
                out.append([a[min(choice, len(a) - 1)] for a in alternatives])
    return out


def readme_commands() -> list[list[str]]:
    """Every ``obs …`` command of the README's bash blocks, split into argv (no ``obs``)."""
    blocks = re.findall(r"```bash\n(.*?)```", README.read_text(), flags=re.S)
    return [argv[1:] for argv in split_commands("\n".join(blocks)) if argv[0] == "obs"]


COMMANDS = readme_commands()


def test_the_readme_has_obs_commands() -> None:
    assert len(COMMANDS) >= 15 and ["report"] in COMMANDS


@pytest.mark.parametrize("argv", COMMANDS, ids=[" ".join(a)[:60] for a in COMMANDS])
def test_a_readme_command_parses_and_its_config_resolves(argv: list[str]) -> None:
    args = build_parser().parse_args(argv)
    config = getattr(args, "config", None)
    overrides = list(getattr(args, "overrides", []))
    if getattr(args, "task", None) is not None:  # an evaluation suite's own config
        suite_config(args.task, config, overrides)
    elif config is not None or overrides:
        load_config(RunConfig, config, overrides)


# --- the "Using it" block, run in order at tiny sizes ------------------------------------------


def _sets(*items: str) -> list[str]:
    """``--set`` arguments of ``key=value`` strings."""
    return [arg for item in items for arg in ("--set", item)]


# A tiny MQAR run (the sizes of tests/support/tiny_run.py); obs eval builds the same model.
TINY_MQAR = ["state.nodes=256", "task.batch=4", "task.seq_len=16", "task.pairs=2",
             "model.d_model=16", "train.steps=2", "train.warmup=0", "train.eval_every=0",
             "train.eval_batches=1", "train.progress=false"]

# What each README command gets appended, by the longest matching start of its argv (after
# ``obs``). A ``--set`` key the README line sets itself keeps the README's value.
TINY: dict[str, list[str]] = {
    "train --config configs/mqar.toml": _sets(*TINY_MQAR),
    "train --config configs/dist.toml": _sets(
        "state.nodes=256", "task.batch=4", "task.pairs=2", "model.d_model=16",
        "train.steps=4", "train.eval_every=0", "train.eval_batches=1", "train.progress=false",
        "sync.check_every=2"),
    "train --config configs/demo.toml": _sets(*TINY_AV),
    "eval --config configs/mqar.toml": _sets(*TINY_MQAR),
    # The suite's own --quick sizes, given as --set: a --quick result is marked quick and
    # `obs report` leaves it out (unless --include-quick), so the README's `; obs report`
    # would find nothing to report.
    "eval --task continual": _sets(*SUITES["continual"].quick),
    # The step-matched sweep in parts: two rates and a few examples keep the best-rate
    # merge meaningful; no state-size sweep.
    "eval --task mqar-sweep": _sets(*SUITES["mqar-sweep"].quick, "train_examples=32",
                                    "lrs=[3e-3, 1e-2]", "state_sizes=[]"),
    "eval --merge": [],
    "report": [],
    "plot": [],
    "config show": [],
    "make-shards --synthetic": ["--streams", "2", "--clips-per-stream", "4", "--frames", "2",
                                "--image-size", "16", "--classes", "4"],
    "ckpt": [],
    "bench step": ["--nodes", "256", "--k-max", "4", "--active", "8", "--d-model", "16",
                   "--batch", "2", "--window", "4", "--windows", "1"],
    "bench deltanet": ["--seq-len", "20", "--batch", "2", "--d-model", "16", "--heads", "2",
                       "--chunk-size", "8", "--vocab", "32", "--repeats", "1"],
    "bench data": ["--data-streams", "2", "--clips-per-stream", "4", "--streams", "2",
                   "--window", "2", "--batches", "1", "--workers", "0"],
}

# README commands this test does not run, and where they are run instead.
NOT_RUN: dict[str, str] = {
    # `obs submit` needs a SLURM cluster: tests/test_slurm_cluster.py submits to a real
    # one-node cluster (the --setup, --gpus-per-node and sbatch options included).
    "submit": "needs a SLURM cluster (tests/test_slurm_cluster.py)",
    # several ranks each; tests/test_dist_cli.py runs both at small sizes
    "bench sync": "tests/test_dist_cli.py",
    "bench scaling": "tests/test_dist_cli.py",
    "bench checkpoint": "tests/test_checkpoint_store.py",
    "bench shard": "several ranks: tests/test_dist_cli.py",
    "bench mqar": "whole training runs of two trees: tests/test_cli.py (--quick)",
    "bench train": "whole training runs of two trees: tests/test_cli.py",
}

# The README's stand-in endpoint (MinIO/Ceph on loopback); the test's moto server replaces it.
LOOPBACK_ENDPOINT = re.compile(r"^https?://(127\.0\.0\.1|localhost)(:\d+)?$")
README_BUCKET = re.compile(r"s3://bucket(?=/|$)")


def using_it_commands() -> list[list[str]]:
    """The commands of the README's "Using it" block, in order (program first)."""
    section = README.read_text().split("## Using it", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, flags=re.S)
    assert block is not None, "the README's 'Using it' section has no bash block"
    return split_commands(block.group(1))


def _entry(argv: list[str], table: dict[str, object]) -> str | None:
    """The longest key of ``table`` whose words start ``argv`` (the words after ``obs``)."""
    keys = [k for k in table if argv[:len(k.split())] == k.split()]
    return max(keys, key=len, default=None)


def tiny(argv: list[str]) -> list[str]:
    """``argv`` (after ``obs``) with its tiny overrides appended; the README's own --set win."""
    key = _entry(argv, TINY)
    assert key is not None, (f"no tiny overrides for the README command `obs {shlex.join(argv)}`:"
                             " add it to TINY (or NOT_RUN) in tests/test_readme_commands.py")
    own = {v.split("=", 1)[0] for k, v in zip(argv, argv[1:]) if k == "--set"}
    extra, kept, i = TINY[key], [], 0
    while i < len(extra):
        if extra[i] == "--set" and extra[i + 1].split("=", 1)[0] in own:
            i += 2
            continue
        kept.append(extra[i])
        i += 1
    return [*argv, *kept]


def test_every_using_it_command_is_run_or_accounted_for() -> None:
    commands = using_it_commands()
    assert [c[0] for c in commands].count("obs") >= 15
    for argv in commands:
        if argv[0] == "obs" and _entry(argv[1:], NOT_RUN) is None:
            tiny(argv[1:])  # asserts it has tiny overrides
        else:
            assert argv[0] == "obs" or argv[:1] == ["aws"] and "mb" in argv, argv


@pytest.mark.slow
def test_the_using_it_commands_run_in_order_at_tiny_sizes(
        tmp_path: Path, moto_server: MotoServer, s3_bucket: str) -> None:
    # A fresh clone's working folder: the configs, nothing else (runs/ is written here).
    shutil.copytree(README.parent / "configs", tmp_path / "configs")
    # The README addresses two stores: s3://bucket without an endpoint (AWS itself; here
    # s3_bucket, reached through OBS_S3_ENDPOINT_URL, as a user pointing OBS at MinIO
    # would), and MinIO/Ceph at --endpoint-url, whose bucket the `aws s3 mb` line makes
    # (here a second bucket of the same moto server, made with boto3). Two buckets, since
    # both make-shards lines write s3://bucket/shards and a second write there is refused.
    minio_bucket = f"obs-minio-{uuid.uuid4().hex[:12]}"
    env = {**os.environ, "OBS_S3_ENDPOINT_URL": moto_server.url,
           "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    seconds: list[tuple[str, float]] = []
    for argv in using_it_commands():
        minio = any(LOOPBACK_ENDPOINT.match(w) for w in argv)
        argv = [moto_server.url if LOOPBACK_ENDPOINT.match(w) else
                README_BUCKET.sub(f"s3://{minio_bucket if minio else s3_bucket}", w)
                for w in argv]
        if argv[0] == "aws":
            moto_server.client().create_bucket(Bucket=minio_bucket)
            continue
        if _entry(argv[1:], NOT_RUN) is not None:
            continue
        args = tiny(argv[1:])
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "launch.cli", *args], cwd=tmp_path,
                              env=env, capture_output=True, text=True, timeout=300)
        seconds.append((shlex.join(argv[:4]), round(time.perf_counter() - start, 1)))
        assert proc.returncode == 0, (f"`obs {shlex.join(args)}` exited {proc.returncode}:\n"
                                      f"{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    print("seconds per command:", seconds)
    runs = tmp_path / "runs"
    assert len(list((runs / "mqar" / "history").iterdir())) == 2  # both mqar runs kept
    assert list((runs / "mqar" / "plots").glob("*.png"))
    assert (runs / "report" / "results.md").is_file()
    assert (runs / "eval" / "continual.json").is_file()
    for bucket in (s3_bucket, minio_bucket):
        keys = moto_server.client().list_objects_v2(Bucket=bucket, Prefix="shards/")
        assert keys.get("KeyCount", 0) > 0, bucket
    assert moto_server.client().list_objects_v2(Bucket=s3_bucket, Prefix="run1/")["KeyCount"]
