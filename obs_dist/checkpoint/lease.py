"""One writer per checkpoint store: the run's identity and its lease on the store.

Two runs writing checkpoints to one prefix would interleave their manifests,
and retention of one would delete the other's objects. So a run takes a
*lease* before it writes anything: the object ``lease.json`` at the store's
root, naming the run, its host and process, and when it was last renewed
(at every checkpoint). A second writer with another run id is refused while
the lease is live, with a message naming the owner; a lease not renewed for
``checkpoint.lease_s`` seconds (its run died) is taken over, and a run that
ends releases its lease.

A run's id is ``OBS_RUN_ID`` when set, else a fingerprint of its config
without the keys that may change on resume
(:func:`obs_dist.checkpoint.format.may_change_on_resume`): a restarted,
requeued or preempted run of the same config is the same run and takes its
own lease back at once, even from a killed process. Every manifest records
the run id, and ``--resume auto`` only continues checkpoints of the same run.

A store without a lease is taken with an atomic create-if-absent
(:meth:`obs_dist.storage.ObjectStore.put_if_absent`: ``link`` on a local disk,
S3's conditional put ``If-None-Match: *``), so of two runs started at once on
an empty store exactly one wins (the lease is read first, so a store that
ignores the condition still never loses a live lease). Taking over a released
or expired lease, and renewing one, overwrite it and read it back
(best-effort: a conditional overwrite on the ETag is not honoured by every S3
implementation); a writer that finds another run's id there gives way.

Holding the lease makes a run the store's single writer, so a ``.tmp-*``
file in a local store is a write that was killed before its ``os.replace``:
:func:`collect_leftovers` deletes them when the lease is taken (S3 leaves no
partial objects, so there it does nothing).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import time
from typing import Any

from obs_dist.checkpoint.format import flatten_config, may_change_on_resume
from obs_dist.storage import LocalStore, ObjectStore, StorageError

log = logging.getLogger("obs.checkpointing")

LEASE_KEY = "lease.json"
TMP_PREFIX = ".tmp-"  # LocalStore's temporary files (write, then os.replace)
RUN_ID_ENV = "OBS_RUN_ID"


class StoreInUse(ValueError):
    """Another run holds a live lease on the checkpoint store."""


def run_identity(config: dict[str, Any]) -> str:
    """This run's id: ``$OBS_RUN_ID``, else a fingerprint of its resume-relevant config.

    Args:
        config: the run's resolved (redacted) configuration.
    """
    explicit = os.environ.get(RUN_ID_ENV, "").strip()
    if explicit:
        return explicit
    flat = {k: v for k, v in flatten_config(config).items() if not may_change_on_resume(k, config)}
    digest = hashlib.sha256(json.dumps(flat, sort_keys=True, default=str).encode())
    return "cfg-" + digest.hexdigest()[:16]


def read_lease(store: ObjectStore) -> dict[str, Any] | None:
    """The store's lease document, or None when there is none (or it is unreadable)."""
    try:
        doc = json.loads(store.get_bytes(LEASE_KEY).decode("utf-8"))
    except FileNotFoundError:
        return None
    except (UnicodeDecodeError, json.JSONDecodeError):
        log.warning("%s is unreadable; treating the store as unleased",
                    store.url_for(LEASE_KEY))
        return None
    return doc if isinstance(doc, dict) else None


def _describe(doc: dict[str, Any], now: float) -> str:
    age = now - float(doc.get("renewed", 0.0))
    return (f"run {doc.get('run_id')!r} (host {doc.get('host')}, pid {doc.get('pid')}, "
            f"renewed {age:.0f} s ago)")


def _document(run_id: str, acquired: float) -> bytes:
    doc = {"run_id": run_id, "host": socket.gethostname(), "pid": os.getpid(),
           "acquired": acquired, "renewed": time.time()}
    return json.dumps(doc, indent=1).encode()


def _write(store: ObjectStore, run_id: str, acquired: float) -> None:
    store.put_bytes(LEASE_KEY, _document(run_id, acquired))


def acquire(store: ObjectStore, run_id: str, lease_s: float) -> None:
    """Take the store's lease for ``run_id`` (rank 0, before anything is written).

    Raises:
        StoreInUse: another run's lease was renewed less than ``lease_s`` ago,
            or another writer took the lease at the same moment; names the owner.
    """
    now = time.time()
    held = read_lease(store)
    # Read first, so a store that ignores conditional puts never loses a live lease.
    if held is None:
        if store.put_if_absent(LEASE_KEY, _document(run_id, now)):
            return  # the store was unleased, and the atomic create made it ours alone
        held = read_lease(store)  # another writer created it a moment ago
    if held is not None and held.get("run_id") != run_id and not held.get("released"):
        if now - float(held.get("renewed", 0.0)) < lease_s:
            raise StoreInUse(
                f"checkpoint.url {store.root} is in use by {_describe(held, now)}; this run "
                f"is {run_id!r}. A second writer would corrupt its checkpoints: use another "
                f"checkpoint.url, or, if that run is gone, wait checkpoint.lease_s = "
                f"{lease_s:.0f} s or delete {store.url_for(LEASE_KEY)}")
        log.warning("taking over the expired lease of %s on %s", _describe(held, now),
                    store.root)
    _write(store, run_id, now)
    back = read_lease(store)
    if back is None or back.get("run_id") != run_id:
        raise StoreInUse(f"checkpoint.url {store.root}: another writer took the lease at the "
                         f"same moment ({_describe(back or {}, time.time())})")


def renew(store: ObjectStore, run_id: str) -> str | None:
    """Renew the lease after a checkpoint; the problem if it now belongs to another run.

    Returns:
        None when the lease is (still) this run's, else a sentence naming the
        new owner (the caller must stop writing manifests).
    """
    held = read_lease(store)
    if held is not None and held.get("run_id") != run_id and not held.get("released"):
        return f"the lease of {store.root} was taken by {_describe(held, time.time())}"
    _write(store, run_id, float((held or {}).get("acquired", time.time())))
    return None


def release(store: ObjectStore, run_id: str) -> None:
    """Mark the lease released at the end of the run (errors are only logged)."""
    try:
        held = read_lease(store)
        if held is None or held.get("run_id") != run_id:
            return
        held["released"] = time.time()
        store.put_bytes(LEASE_KEY, json.dumps(held, indent=1).encode())
    except (StorageError, OSError) as exc:
        log.warning("could not release the lease of %s: %s", store.root, exc)


def collect_leftovers(store: ObjectStore) -> int:
    """Delete the ``.tmp-*`` files of killed writes in a local store; how many there were.

    Call it only while holding the store's lease (no other writer is at work);
    files not named ``.tmp-*`` are never touched. An S3 store has no partial
    objects, so it returns 0 there. A file that cannot be deleted is logged
    and not counted.

    Args:
        store: the checkpoint store whose lease this process holds.
    """
    if not isinstance(store, LocalStore) or not store.path.is_dir():
        return 0
    removed = 0
    for dirpath, _dirs, files in os.walk(store.path):
        for name in files:
            if not name.startswith(TMP_PREFIX):
                continue
            path = os.path.join(dirpath, name)
            try:
                os.unlink(path)
            except FileNotFoundError:
                continue
            except OSError as exc:
                log.warning("could not delete the leftover %s: %s", path, exc)
                continue
            removed += 1
    if removed:
        log.info("deleted %d leftover %s* file(s) of killed writes in %s", removed,
                 TMP_PREFIX, store.root)
    return removed
