"""Item 8 of issue #15: no credential in any output, no traceback for a setup error.

An endpoint_url with user info is redacted in logs, config.json and
manifests; a CUDA device on a CPU build, a metrics port in use and an
unknown metrics.host end in ``obs: error: …``.
"""

from __future__ import annotations

import json
import logging
import socket
import time
from pathlib import Path

import pytest
import torch
from support.tiny_run import obs, tiny_args

from obs_dist.storage import RedactCredentials, redact, redact_tree

SECRET_URL = "http://alice:s3cr3t-key@127.0.0.1:9"


def test_redact_removes_user_info_only() -> None:
    assert redact(f"at {SECRET_URL}/b x") == "at http://***@127.0.0.1:9/b x"
    assert redact("s3://bucket/p and http://host:9000") == "s3://bucket/p and http://host:9000"
    assert redact_tree({"a": [SECRET_URL], "n": 1}) == {"a": ["http://***@127.0.0.1:9"], "n": 1}


def test_log_filter_redacts_formatted_messages() -> None:
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "endpoint %s", (SECRET_URL,),
                               None)
    assert RedactCredentials().filter(record) and "s3cr3t" not in record.getMessage()


def test_endpoint_credentials_are_redacted_in_logs_config_json_and_manifests(
        tmp_path: Path) -> None:
    ckpt = tmp_path / "ckpt"
    proc = obs(*tiny_args(tmp_path, 2, f"checkpoint.url={ckpt}", "checkpoint.every=1",
                          f"checkpoint.endpoint_url={SECRET_URL}",
                          f"data.endpoint_url={SECRET_URL}"), "--resume", "never")
    assert proc.returncode == 0, proc.stderr
    assert "http://***@127.0.0.1:9" in proc.stderr  # the resolved config, redacted
    written = [tmp_path / "out" / "config.json", *ckpt.glob("manifests/*.json")]
    assert len(written) == 3
    for text in [proc.stdout, proc.stderr, *(p.read_text() for p in written)]:
        assert "s3cr3t-key" not in text and "alice" not in text
    config = json.loads(written[0].read_text())
    assert config["checkpoint"]["endpoint_url"] == "http://***@127.0.0.1:9"


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_device_on_a_cpu_build_is_an_obs_error(tmp_path: Path) -> None:
    proc = obs(*tiny_args(tmp_path, 1, "train.device=cuda"))
    assert proc.returncode == 2, proc.stderr
    assert "obs: error: train.device is 'cuda' but " in proc.stderr
    assert "Traceback" not in proc.stderr


def test_metrics_port_in_use_is_an_obs_error(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        proc = obs(*tiny_args(tmp_path, 1, "metrics.enabled=true", f"metrics.base_port={port}"))
    assert proc.returncode == 1, proc.stderr
    assert f"obs: error: cannot serve metrics on 127.0.0.1:{port}" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_bad_metrics_host_is_an_obs_error(tmp_path: Path) -> None:
    proc = obs(*tiny_args(tmp_path, 1, "metrics.enabled=true", "metrics.host=no-such-host.invalid",
                          "metrics.base_port=0"))
    assert proc.returncode == 1, proc.stderr
    assert "obs: error: cannot serve metrics on no-such-host.invalid" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_bad_key_under_nproc_2_is_reported_once_before_any_rank_starts() -> None:
    proc = obs("train", "--nproc", "2", "--set", "trainer.steps=1")
    assert proc.returncode == 2
    assert proc.stderr.count("unknown config key trainer") == 1, proc.stderr
    assert "rank" not in proc.stderr.lower().replace("known keys", "")


def test_ckpt_list_with_no_endpoint_reachable_fails_fast_naming_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as sock:  # a loopback port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    endpoint = f"http://127.0.0.1:{port}"
    start = time.monotonic()
    proc = obs("ckpt", "list", "s3://bucket/run1", "--endpoint-url", endpoint, timeout=120)
    took = time.monotonic() - start
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert f"obs: error: head_bucket bucket: bucket 'bucket' at endpoint {endpoint} still " \
           "failing after 2 attempts" in proc.stderr
    assert "Traceback" not in proc.stderr and took < 60  # no 120 s of patience

