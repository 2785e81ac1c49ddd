"""Item 6 of issue #15: an S3 outage is waited out, with bounded backoff.

Besides ``retries``, a failing request is retried until it has been failing
for ``patience_s`` (``checkpoint.patience_s``); no single sleep exceeds
``max_backoff_s``.
"""

from __future__ import annotations

import pytest
from support.s3_server import FaultyProxy, needs_moto

from obs_dist.checkpoint.manager import CheckpointConfig
from obs_dist.storage import S3Store, StorageError, open_store


def test_backoff_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    slept: list[float] = []
    monkeypatch.setattr("obs_dist.storage.time.sleep", slept.append)
    store = S3Store("b", backoff_s=1.0, max_backoff_s=2.0, check=False)
    for attempt in (0, 5, 50, 5000):
        store.backoff(attempt)
    assert max(slept) <= 2.0


def test_patience_is_configured_and_validated() -> None:
    assert CheckpointConfig().patience_s == 120.0
    with pytest.raises(ValueError, match="patience_s"):
        CheckpointConfig(patience_s=-1.0)


@needs_moto
def test_s3_outage_longer_than_the_retries_is_waited_out(faulty_proxy: FaultyProxy,
                                                         s3_bucket: str) -> None:
    store = open_store(f"s3://{s3_bucket}", endpoint_url=faulty_proxy.url, retries=1,
                       backoff_s=0.01, patience_s=30.0)
    faulty_proxy.fail_next(8, "503", method="PUT")  # 8 failures, far beyond 1 retry
    store.put_bytes("obj", b"data")
    assert store.get_bytes("obj") == b"data" and not faulty_proxy.pending


@needs_moto
def test_s3_outage_beyond_patience_fails_naming_the_time(faulty_proxy: FaultyProxy,
                                                         s3_bucket: str) -> None:
    store = open_store(f"s3://{s3_bucket}", endpoint_url=faulty_proxy.url, retries=1,
                       backoff_s=0.01, patience_s=0.2)
    faulty_proxy.fail_next(10_000, "503", method="PUT")
    with pytest.raises(StorageError, match=r"still failing after \d+ attempts over \d+\.\d s"):
        store.put_bytes("obj", b"data")
