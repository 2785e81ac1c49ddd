"""Shards on a real S3 endpoint (moto on 127.0.0.1): write, read back, faults, resume."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from support.loader_keys import batch_keys, flat_keys
from support.s3_server import FaultyProxy, MotoServer, credentials_in_env, needs_moto

from obs_dist.storage import StorageError, open_store
from pipelines.loader import DataConfig, build_loader
from pipelines.synthetic import SyntheticConfig, write_synthetic

pytestmark = needs_moto

DATA = SyntheticConfig(streams=4, clips_per_stream=6, image_size=32, seed=21)
TOTAL = DATA.streams * DATA.clips_per_stream


@pytest.fixture(scope="module")
def s3_shards(moto_server: MotoServer) -> str:
    """A bucket holding synthetic shards, written through the S3 store."""
    with credentials_in_env():
        moto_server.client().create_bucket(Bucket="obs-shards")
        url = "s3://obs-shards/synthetic/v1"
        write_synthetic(url, DATA, target_bytes=150_000, endpoint_url=moto_server.url,
                        progress=False)
    return url


def _cfg(source: str, endpoint: str, **kw: Any) -> DataConfig:
    base: dict[str, Any] = {"source": source, "streams": 2, "window": 3, "workers": 2,
                            "image_size": 32, "n_mels": 32, "endpoint_url": endpoint}
    base.update(kw)
    return DataConfig(**base)


def test_shards_written_to_s3_read_back_and_resumed(s3_shards: str, s3_endpoint: str) -> None:
    store = open_store(s3_shards, endpoint_url=s3_endpoint)
    listed = store.list()
    assert "index.json" in listed and "classes.json" in listed
    # Streams bigger than a shard are split: chains keep their clips in order.
    index = json.loads(store.get_bytes("index.json"))
    assert sum(k.endswith(".tar") for k in listed) == len(index["shards"]) > DATA.streams
    assert any(entry["continues"] for entry in index["shards"])
    reference_loader = build_loader(_cfg(s3_shards, s3_endpoint))
    assert reference_loader.num_classes == 48
    reference = batch_keys(reference_loader)
    assert sorted(flat_keys(reference)) == sorted(set(flat_keys(reference)))
    assert len(flat_keys(reference)) == TOTAL and reference_loader.errors == {}
    for batch in reference:  # rows read each stream's clips in temporal order
        for row in batch:
            live = [k for k in row if k]
            assert live == sorted(live) and len({k.split("/")[0] for k in live}) <= 1
    # Restart in the middle: a new loader from the saved (JSON) cursor.
    first = build_loader(_cfg(s3_shards, s3_endpoint))
    head = batch_keys(first, batches=3)
    state = json.loads(json.dumps(first.state_dict()))
    del first
    resumed = build_loader(_cfg(s3_shards, s3_endpoint))
    resumed.load_state_dict(state)
    assert head + batch_keys(resumed) == reference


def test_transient_errors_are_retried_by_the_loader(s3_shards: str, s3_endpoint: str,
                                                    faulty_proxy: FaultyProxy) -> None:
    expected = flat_keys(batch_keys(build_loader(_cfg(s3_shards, s3_endpoint, workers=0))))
    faulty_proxy.fail_next(2, "503", method="GET")
    faulty_proxy.fail_next(1, "reset", method="GET")
    faulty_proxy.fail_next(2, "truncate", method="GET")
    faulty_proxy.fail_next(1, "500", method="*")
    loader = build_loader(_cfg(s3_shards, faulty_proxy.url))
    assert flat_keys(batch_keys(loader)) == expected
    assert loader.errors == {}  # nothing skipped: every failure was retried
    assert faulty_proxy.injected == {"503": 2, "reset": 1, "truncate": 2, "500": 1}


def test_missing_bucket_fails_fast_with_a_clear_message(s3_endpoint: str) -> None:
    start = time.monotonic()
    with pytest.raises(StorageError, match="no-such-bucket") as info:
        build_loader(_cfg("s3://no-such-bucket/shards", s3_endpoint))
    assert time.monotonic() - start < 3.0
    assert s3_endpoint in str(info.value)


def test_empty_prefix_is_a_clear_error(s3_bucket: str, s3_endpoint: str) -> None:
    with pytest.raises(ValueError, match="no .tar shards"):
        build_loader(_cfg(f"s3://{s3_bucket}/nothing", s3_endpoint))
