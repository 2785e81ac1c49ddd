"""A multi-node job's checkpoint store must be one every node sees (launch.jobs.shared_storage).

The mount-table logic on made-up ``/proc/mounts`` contents, and ``obs submit`` refusing
a node-local ``checkpoint.url`` for ``--nodes 2`` before any folder or ``sbatch``
(no cluster needed: the refusal comes first). The same refusal on the real two-node
cluster is in ``tests/test_slurm_multinode.py``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from launch import cli
from launch.jobs.shared_storage import check_checkpoint_store, local_store_path, mount_of

MOUNTS = """\
/dev/vda1 / ext4 rw,relatime 0 0
proc /proc proc rw 0 0
fileserver:/export/runs /shared/runs nfs4 rw,vers=4.2 0 0
10.0.0.5@tcp:/lfs /lustre lustre rw 0 0
tmpfs /shared/runs/tmp tmpfs rw 0 0
/dev/vdb /mnt/my\\040disk xfs rw 0 0
"""


@pytest.mark.parametrize(
    ("path", "mount", "fs_type"),
    [
        ("/home/me/ckpt", "/", "ext4"),
        ("/shared/runs/exp1/ckpt", "/shared/runs", "nfs4"),
        ("/shared/runs/tmp/x", "/shared/runs/tmp", "tmpfs"),  # the longest mount wins
        ("/lustre/proj/run", "/lustre", "lustre"),
        ("/mnt/my disk/run", "/mnt/my disk", "xfs"),  # octal escapes of /proc/mounts
    ],
)
def test_mount_of_finds_the_longest_mount_point(path: str, mount: str, fs_type: str) -> None:
    found = mount_of(path, MOUNTS)
    assert (found.path, found.fs_type) == (Path(mount), fs_type)


def test_local_store_path_of_each_url_form() -> None:
    assert local_store_path("") is None
    assert local_store_path("s3://bucket/run") is None
    assert local_store_path("file:///data/run") == "/data/run"
    assert local_store_path("runs/ckpt") == "runs/ckpt"


@pytest.mark.parametrize(
    ("url", "shared", "nodes"),
    [
        ("s3://bucket/run", False, 4),  # every node reaches S3
        ("", False, 4),  # no checkpoints
        ("/shared/runs/exp1", False, 2),  # NFS
        ("file:///lustre/proj/run", False, 2),  # Lustre
        ("/home/me/ckpt", True, 2),  # declared shared by the operator
        ("/home/me/ckpt", False, 1),  # one node sees its own disk
    ],
)
def test_stores_every_node_sees_are_accepted(url: str, shared: bool, nodes: int) -> None:
    check_checkpoint_store(url, shared, nodes, MOUNTS)


@pytest.mark.parametrize("url", ["/home/me/ckpt", "file:///shared/runs/tmp/ckpt"])
def test_a_node_local_store_of_a_multi_node_job_is_refused_with_the_reason(url: str) -> None:
    with pytest.raises(ValueError, match="node-local file system") as err:
        check_checkpoint_store(url, False, 2, MOUNTS)
    message = str(err.value)
    assert "2 nodes" in message and "checkpoint.shared = true" in message
    assert "s3://" in message


def test_obs_submit_refuses_a_local_checkpoint_dir_for_two_nodes_before_sbatch(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    if mount_of(tmp_path).fs_type in {"nfs", "nfs4", "lustre"}:
        pytest.skip(f"{tmp_path} is on a shared file system here")
    argv = ["submit", "--nodes", "2", "--tasks-per-node", "2", "--folder",
            str(tmp_path / "runs"), "--set", f"checkpoint.url={tmp_path / 'ckpt'}"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "obs: error: checkpoint.url" in err and "node-local file system" in err, err
    assert not (tmp_path / "runs").exists()
