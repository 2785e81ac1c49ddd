"""The object store on a local directory and on a real S3 endpoint (moto on loopback)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from support.s3_server import FaultyProxy, MotoServer, needs_moto

from obs_dist.storage import LocalStore, S3Store, StorageError, open_store


def _roundtrip(store: object, tmp_path: Path) -> None:
    from obs_dist.storage import ObjectStore

    assert isinstance(store, ObjectStore)
    store.put_bytes("a/b/one.bin", b"hello")
    store.put_bytes("a/two.bin", b"x" * 3000)
    src = tmp_path / "src.bin"
    src.write_bytes(os.urandom(100_000))
    store.put_file("c/big.bin", src)
    assert store.get_bytes("a/b/one.bin") == b"hello"
    assert store.list() == ["a/b/one.bin", "a/two.bin", "c/big.bin"]
    assert store.list("a/") == ["a/b/one.bin", "a/two.bin"]
    assert store.exists("a/two.bin") and not store.exists("a/none.bin")
    with store.open_read("c/big.bin") as fh:
        assert fh.read() == src.read_bytes()
    with store.open_read("c/big.bin", start=99_000) as fh:
        assert fh.read() == src.read_bytes()[99_000:]
    out = tmp_path / "out" / "copy.bin"
    store.get_file("c/big.bin", out)
    assert out.read_bytes() == src.read_bytes()
    store.delete("a/two.bin")
    store.delete("a/two.bin")  # deleting a missing object is fine
    assert store.list("a") == ["a/b/one.bin"]
    with pytest.raises(FileNotFoundError):
        store.get_bytes("missing.bin")
    with pytest.raises(ValueError, match="relative"):
        store.put_bytes("../escape", b"")


def test_local_store_roundtrip_and_urls(tmp_path: Path) -> None:
    store = open_store(str(tmp_path / "root"))
    assert isinstance(store, LocalStore)
    _roundtrip(store, tmp_path)
    assert store.url_for("a/b/one.bin") == str(tmp_path / "root" / "a" / "b" / "one.bin")
    same = open_store(f"file://{tmp_path / 'root'}")
    assert same.get_bytes("a/b/one.bin") == b"hello"
    with pytest.raises(ValueError, match="unsupported"):
        open_store("gs://bucket/x")


def test_local_writes_are_atomic(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    store.put_bytes("k", b"old")
    # A temporary file left by an interrupted write is invisible to readers.
    (tmp_path / ".tmp-crashed").write_bytes(b"partial")
    store.put_bytes("k", b"new")
    assert store.get_bytes("k") == b"new"
    assert store.list() == ["k"]


@needs_moto
def test_s3_store_roundtrip(s3_endpoint: str, s3_bucket: str, tmp_path: Path) -> None:
    store = open_store(f"s3://{s3_bucket}/some/prefix", endpoint_url=s3_endpoint)
    assert isinstance(store, S3Store)
    _roundtrip(store, tmp_path)
    assert store.url_for("x/y") == f"s3://{s3_bucket}/some/prefix/x/y"


@needs_moto
def test_s3_endpoint_from_environment(s3_endpoint: str, s3_bucket: str,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OBS_S3_ENDPOINT_URL", s3_endpoint)
    store = open_store(f"s3://{s3_bucket}")
    store.put_bytes("k", b"v")
    assert store.list() == ["k"]


@needs_moto
def test_s3_transient_errors_are_retried(faulty_proxy: FaultyProxy, s3_bucket: str,
                                         tmp_path: Path) -> None:
    store = open_store(f"s3://{s3_bucket}/p", endpoint_url=faulty_proxy.url, retries=4,
                       backoff_s=0.01)
    payload = os.urandom(300_000)
    faulty_proxy.fail_next(2, "503", method="PUT")
    faulty_proxy.fail_next(1, "reset", method="PUT")
    store.put_bytes("obj", payload)
    faulty_proxy.fail_next(1, "500", method="GET")
    faulty_proxy.fail_next(1, "reset", method="GET")
    faulty_proxy.fail_next(2, "truncate", method="GET")
    assert store.get_bytes("obj") == payload
    assert faulty_proxy.injected == {"503": 2, "500": 1, "reset": 2, "truncate": 2}
    assert not faulty_proxy.pending


@needs_moto
def test_s3_retries_are_bounded(faulty_proxy: FaultyProxy, s3_bucket: str) -> None:
    store = open_store(f"s3://{s3_bucket}", endpoint_url=faulty_proxy.url, retries=2,
                       backoff_s=0.01)
    faulty_proxy.fail_next(3, "503", method="PUT")
    with pytest.raises(StorageError, match="after 3 attempts"):
        store.put_bytes("obj", b"data")


@needs_moto
def test_s3_missing_bucket_fails_fast(s3_endpoint: str) -> None:
    start = time.monotonic()
    with pytest.raises(StorageError) as info:
        open_store("s3://no-such-bucket-obs/prefix", endpoint_url=s3_endpoint, retries=5)
    assert time.monotonic() - start < 2.0
    message = str(info.value)
    assert "no-such-bucket-obs" in message and s3_endpoint in message
    assert "does not exist" in message


@needs_moto
def test_s3_wrong_credentials_fail_fast_without_leaking(
        moto_server: MotoServer, s3_bucket: str, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = "wrongSECRETvalue1234567890"
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAWRONGKEY00000000")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    moto_server.set_auth(enforced=True)
    try:
        start = time.monotonic()
        with pytest.raises(StorageError) as info:
            open_store(f"s3://{s3_bucket}", endpoint_url=moto_server.url, retries=5)
        assert time.monotonic() - start < 2.0
    finally:
        moto_server.set_auth(enforced=False)
    message = str(info.value)
    assert s3_bucket in message and moto_server.url in message and "refused" in message
    assert secret not in message and "AKIAWRONGKEY" not in message


@needs_moto
def test_s3_put_file_uses_multipart_for_large_files(s3_endpoint: str, s3_bucket: str,
                                                    tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    import obs_dist.storage as storage

    monkeypatch.setattr(storage, "_MULTIPART_THRESHOLD", 5 * 1024 * 1024)  # S3's minimum part
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(11 * 1024 * 1024))
    store = open_store(f"s3://{s3_bucket}/ckpt", endpoint_url=s3_endpoint)
    assert isinstance(store, S3Store)
    store.put_file("state/part-0.safetensors", big)
    head = store.client().head_object(Bucket=s3_bucket, Key="ckpt/state/part-0.safetensors")
    assert head["ETag"].strip('"').endswith("-3")  # a multipart upload of 3 parts
    store.get_file("state/part-0.safetensors", tmp_path / "back.bin")
    assert (tmp_path / "back.bin").read_bytes() == big.read_bytes()
