"""``obs submit``: launch a training run on SLURM (or as local processes) through submitit.

Every run gets its own job folder. The command prints the job id and the stdout and
stderr file of every task, then returns (or, with ``--wait``, waits for the result).
Each task exports the torch.distributed environment and runs the training entry
point, which joins the process group; on preemption or timeout the job saves a
checkpoint and is requeued, resuming from the newest complete checkpoint in the store
(see ``docs/slurm.md``). A job on several nodes is refused before ``sbatch`` if its
``checkpoint.url`` is a node-local directory (:mod:`launch.jobs.shared_storage`).

Example::

    obs submit --config configs/demo.toml --nodes 1 --tasks-per-node 2 \\
        --partition debug --time 30 --set checkpoint.url=s3://bucket/run1
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from launch.jobs.submit import (
    EXECUTORS,
    SubmitConfig,
    TrainingJob,
    submit,
    wait_for_results,
)


def register(subparsers: Any) -> None:
    """Add ``obs submit`` to the ``obs`` command line."""
    defaults = SubmitConfig()
    p = subparsers.add_parser(
        "submit",
        help="launch a distributed training run on SLURM (or locally) via submitit",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", default=None, help="training config (TOML, or JSON)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value (repeatable), e.g. --set train.steps=100",
    )
    p.add_argument("--executor", choices=EXECUTORS, default=defaults.executor)
    p.add_argument("--nodes", type=int, default=defaults.nodes)
    p.add_argument("--tasks-per-node", type=int, default=defaults.tasks_per_node)
    p.add_argument("--cpus-per-task", type=int, default=defaults.cpus_per_task)
    p.add_argument(
        "--partition", default=defaults.partition, help="SLURM partition (default: the cluster's)"
    )
    p.add_argument(
        "--time", dest="time_min", type=int, default=defaults.time_min, metavar="MIN",
        help="time limit in minutes",
    )  # fmt: skip
    p.add_argument("--mem-gb", type=float, default=defaults.mem_gb, help="memory per node")
    p.add_argument("--mem", default=defaults.mem, help="memory per node as sbatch takes it (16G)")
    p.add_argument("--gpus-per-node", type=int, default=defaults.gpus_per_node,
                   help="GPUs per node (sbatch --gpus-per-node)")
    p.add_argument("--account", default=defaults.account, help="SLURM account to charge")
    p.add_argument("--qos", default=defaults.qos, help="SLURM quality of service")
    p.add_argument("--constraint", default=defaults.constraint,
                   help="node features the job needs (sbatch --constraint)")
    p.add_argument("--setup", action="append", default=[], metavar="LINE",
                   help="a shell line run before the tasks, e.g. 'module load cuda' "
                        "(repeatable, in order)")
    p.add_argument("--sbatch-option", dest="sbatch_options", action="append", default=[],
                   metavar="KEY=VALUE",
                   help="any other sbatch option, e.g. --sbatch-option exclude=node3 "
                        "(repeatable; KEY alone for a flag)")
    p.add_argument(
        "--max-requeues", type=int, default=defaults.max_requeues,
        help="requeues after preemption/timeout before giving up",
    )  # fmt: skip
    p.add_argument(
        "--signal-delay-s", type=int, default=defaults.signal_delay_s,
        help="the timeout signal comes this long before the time limit",
    )  # fmt: skip
    p.add_argument(
        "--preempt-grace-s", type=float, default=defaults.preempt_grace_s,
        help="how long the training loop has to checkpoint after the signal",
    )  # fmt: skip
    p.add_argument("--folder", default=defaults.folder, help="root of the per-run job folders")
    p.add_argument("--job-name", default=defaults.job_name)
    p.add_argument("--wait", action="store_true", help="wait for the run and print its result")
    p.set_defaults(func=run_submit)


def _check_training_config(path: str | None, overrides: list[str], nodes: int) -> None:
    """Resolve and validate the whole training config before anything is queued.

    The same check ``obs train`` makes at start (unknown keys, types, cross-section
    rules), so a typo is refused here and not on the node after the queue wait. A
    job on several nodes must also checkpoint where every node sees it
    (:func:`launch.jobs.shared_storage.check_checkpoint_store`).
    """
    from launch.jobs.shared_storage import check_checkpoint_store
    from launch.run_config import RunConfig
    from obs_dist.config import load_config

    config = load_config(RunConfig, path, overrides)
    check_checkpoint_store(config.checkpoint.url, config.checkpoint.shared, nodes)


def parse_sbatch_options(items: list[str]) -> dict[str, str]:
    """``KEY=VALUE`` (or a bare ``KEY`` flag) strings as a dict; ``--`` in front is allowed."""
    out: dict[str, str] = {}
    for item in items:
        key, _, value = item.partition("=")
        key = key.strip().removeprefix("--")
        if not key:
            raise ValueError(f"--sbatch-option {item!r} must look like key=value")
        out[key] = value.strip()
    return out


def run_submit(args: argparse.Namespace) -> int:
    """Submit the run described by ``args``; print the job id and log paths.

    Returns:
        0 once submitted (or, with ``--wait``, when the run succeeded), 1 if the
        waited-for run failed.

    Raises:
        ValueError: bad arguments, or the scheduler refused the job (with its reason).
    """
    _check_training_config(args.config, args.overrides, args.nodes)  # before folder, sbatch
    cfg = SubmitConfig(
        executor=args.executor,
        folder=args.folder,
        job_name=args.job_name,
        nodes=args.nodes,
        tasks_per_node=args.tasks_per_node,
        cpus_per_task=args.cpus_per_task,
        partition=args.partition,
        time_min=args.time_min,
        mem_gb=args.mem_gb,
        mem=args.mem,
        gpus_per_node=args.gpus_per_node,
        account=args.account,
        qos=args.qos,
        constraint=args.constraint,
        setup=list(args.setup),
        sbatch_options=parse_sbatch_options(args.sbatch_options),
        max_requeues=args.max_requeues,
        signal_delay_s=args.signal_delay_s,
        preempt_grace_s=args.preempt_grace_s,
    )
    job = TrainingJob(args.config, args.overrides, cfg.job_settings())
    run = submit(job, cfg)
    print(run.describe(), flush=True)
    if not args.wait:
        if cfg.executor == "local":
            print("the local job runs in the background; follow the logs above", flush=True)
        return 0
    try:
        results = wait_for_results(run)
    except RuntimeError as exc:  # FailedJobError is one: a task raised
        print(f"obs submit: job {run.job_id} failed:\n{exc}", file=sys.stderr)
        return 1
    print(json.dumps(results[0], default=str, indent=2))
    return 0
