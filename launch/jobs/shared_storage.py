"""Whether a multi-node job's checkpoint store is one every node can see.

Every rank of a job writes its part of a checkpoint into ``checkpoint.url`` and a
resumed job reads all of them back, possibly on other nodes. S3 is reachable from
every node. A local path is only if it lies on a file system all nodes mount: a
``/scratch`` or ``/tmp`` of the submitting node would leave ranks on the other nodes
writing into directories nobody else sees, and the run would fail (or resume from a
partial checkpoint) long after the queue wait. So ``obs submit`` checks before
``sbatch``, with :func:`check_checkpoint_store`:

* ``s3://…`` and an empty url (no checkpoints): accepted;
* a local path (or ``file://``) whose file system, found in ``/proc/mounts`` for the
  path's nearest existing directory, is a network or cluster file system
  (:data:`SHARED_FILESYSTEMS`: NFS, Lustre, GPFS, BeeGFS, CephFS, …): accepted;
* any other local path: refused with a ``ValueError`` that names the file system and
  what to do, unless the config declares ``checkpoint.shared = true`` (the operator
  knows every node mounts it at the same path, e.g. a bind mount of a shared disk).

One node jobs are never refused: all their ranks see the same local file system.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

# File system types (the third field of /proc/mounts) that several machines mount.
SHARED_FILESYSTEMS = frozenset({
    "nfs", "nfs4", "lustre", "gpfs", "beegfs", "cifs", "smb3", "smbfs", "ceph",
    "fuse.ceph-fuse", "glusterfs", "fuse.glusterfs", "fuse.sshfs", "wekafs", "panfs",
    "fuse.juicefs", "fuse.s3fs", "fuse.gcsfuse", "pvfs2", "orangefs", "ocfs2", "gfs2",
})  # fmt: skip

MOUNTS_FILE = Path("/proc/mounts")


@dataclass(frozen=True)
class MountPoint:
    """The mount a path lives on: where it is mounted and its file system type."""

    path: Path
    fs_type: str


def _unescape(field: str) -> str:
    """``/proc/mounts`` writes spaces, tabs, newlines and backslashes as octal escapes."""
    for code, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        field = field.replace(code, char)
    return field


def mount_of(path: str | Path, mounts_text: str | None = None) -> MountPoint:
    """The mount holding ``path`` (which need not exist yet).

    Args:
        path: a local path, absolute or relative to the working directory.
        mounts_text: the contents of ``/proc/mounts`` (read from the system if None).

    Returns:
        The longest mount point that contains the resolved path.

    Raises:
        ValueError: if no mount contains it (an unreadable or empty mount table).
    """
    # Symlinks in the part that exists are followed; a missing tail is kept as written.
    target = Path(path).expanduser().resolve()
    text = MOUNTS_FILE.read_text() if mounts_text is None else mounts_text
    best: MountPoint | None = None
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 3:
            continue
        mount = Path(_unescape(fields[1]))
        contains = target == mount or mount in target.parents
        # Later lines win ties: a mount over an earlier one at the same place hides it.
        if contains and (best is None or len(mount.parts) >= len(best.path.parts)):
            best = MountPoint(mount, fields[2])
    if best is None:
        raise ValueError(f"no mount in the mount table contains {target}")
    return best


def local_store_path(url: str) -> str | None:
    """The local path of a checkpoint url, or None for S3 and for no checkpoints."""
    if not url or url.startswith("s3://"):
        return None
    return url.removeprefix("file://")


def check_checkpoint_store(
    url: str, shared: bool, nodes: int, mounts_text: str | None = None
) -> None:
    """Refuse a node-local checkpoint directory for a job on several nodes.

    Args:
        url: ``checkpoint.url`` of the training config.
        shared: ``checkpoint.shared``: the operator declares the path shared.
        nodes: the job's node count.
        mounts_text: ``/proc/mounts`` contents (read from the system if None; tests).

    Raises:
        ValueError: ``nodes > 1``, ``url`` is a local path on a file system that is
            not a network/cluster one, and ``shared`` is false. The message says
            which file system was found and how to proceed.
    """
    path = local_store_path(url)
    if nodes <= 1 or path is None or shared:
        return
    mount = mount_of(path, mounts_text)
    if mount.fs_type in SHARED_FILESYSTEMS:
        return
    raise ValueError(
        f"checkpoint.url {url!r} is on a node-local file system ({mount.fs_type} mounted at "
        f"{mount.path}), but the job runs on {nodes} nodes: ranks on the other nodes could "
        "not see each other's checkpoint parts, and a requeued job could not resume from "
        "them. Use an s3:// url, a path on a shared file system (NFS, Lustre, GPFS, "
        "BeeGFS, CephFS, …), or set checkpoint.shared = true if every node mounts this path."
    )
