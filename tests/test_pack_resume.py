"""``obs make-shards --from DIR --resume``: a pack that stopped goes on where it was.

Packing a long-recording corpus takes hours; a job killed part-way (preemption,
a full disk) must not start again from the first recording, and what it writes
must be the bytes an uninterrupted pack writes.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import pipelines.pack as pack
from launch.cli import main as obs_main
from obs_dist.storage import open_store
from pipelines.cutter_probe import write_test_recording
from pipelines.pack import pack_folder
from pipelines.pack_journal import JOURNAL_FILE

SMALL = {"width": 64, "height": 48, "fps": 10}
TARGET = 8 << 10  # a few clips a shard: every recording spans several


def _pack(src: Path, out: Path | str, **kwargs: Any) -> dict[str, Any]:
    return pack_folder(src, str(out), target_bytes=TARGET, progress=False, **kwargs)


def _files(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir())}


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Pre-cut clips with a label, three recordings (one with a transcript), a broken file."""
    src = tmp_path_factory.mktemp("resume") / "src"
    (src / "clips").mkdir(parents=True)
    write_test_recording(src / "clips" / "a.mp4", 3.0, **SMALL)
    (src / "clips" / "a.json").write_text(json.dumps({"labels": {"object": "cup"}}))
    for name, seconds in (("r1", 4.0), ("r2", 5.0), ("r3", 6.0)):
        write_test_recording(src / f"{name}.mp4", seconds, **SMALL)
    (src / "r3.srt").write_text("1\n00:00:01,000 --> 00:00:02,500\nLook, a ball!\n", "utf-8")
    (src / "broken.mkv").write_bytes(b"not a video")
    return src


def _crash_in(monkeypatch: pytest.MonkeyPatch, stream: str, after: int) -> None:
    """The pack dies after ``after`` clips of recording ``stream`` (as if killed)."""
    real = pack._recording_samples

    def dying(rec: Any, *args: Any) -> Iterator[Any]:
        for i, sample in enumerate(real(rec, *args)):
            if rec.stream == stream and i == after:
                raise RuntimeError("killed")
            yield sample

    monkeypatch.setattr(pack, "_recording_samples", dying)


def _stopped(folder: Path, out: Path | str, monkeypatch: pytest.MonkeyPatch, stream: str,
             after: int, **kwargs: Any) -> None:
    """Pack ``folder`` to ``out`` and die after ``after`` clips of ``stream``."""
    with monkeypatch.context() as patch:
        _crash_in(patch, stream, after)
        with pytest.raises(RuntimeError, match="killed"):
            _pack(folder, out, **kwargs)


def test_a_resumed_pack_writes_the_bytes_of_one_that_never_stopped(
        folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    whole = _pack(folder, tmp_path / "whole")
    assert whole["recordings"] == 3 and whole["skipped"] == {"video_decode": 1}
    assert not (tmp_path / "whole" / JOURNAL_FILE).exists()

    out = tmp_path / "stopped"
    _stopped(folder, out, monkeypatch, "r3", after=4)
    journal = json.loads((out / JOURNAL_FILE).read_text())
    # In the packer's order: broken.mkv (nothing decodable, counted), r1, r2.
    assert journal["clips_done"] and journal["recordings_done"] == 3
    listed = {s["name"] for s in journal["writer"]["shards"]}
    # r3's first shard reached the store before the crash: not in the journal.
    assert set(p.name for p in out.glob("*.tar")) - listed
    with pytest.raises(ValueError, match="unfinished pack.*--resume"):
        _pack(folder, out)

    cut: list[str] = []
    real = pack._recording_samples

    def counting(rec: Any, *args: Any) -> Iterator[Any]:
        cut.append(rec.stream)
        yield from real(rec, *args)

    monkeypatch.setattr(pack, "_recording_samples", counting)
    resumed = _pack(folder, out, resume=True)
    assert cut == ["r3"]  # r1 and r2 are not cut again
    assert resumed == whole
    assert _files(out) == _files(tmp_path / "whole")  # shards, index.json, classes.json


def test_a_pack_stopped_in_its_first_recording_resumes_with_workers(
        folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "early"
    _stopped(folder, out, monkeypatch, "r1", after=1)
    assert json.loads((out / JOURNAL_FILE).read_text())["recordings_done"] == 1  # broken.mkv
    _pack(folder, out, resume=True, workers=2)
    _pack(folder, tmp_path / "whole")
    assert _files(out) == _files(tmp_path / "whole")


def test_resume_refuses_other_settings_a_changed_folder_and_a_finished_pack(
        folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "stopped"
    _stopped(folder, out, monkeypatch, "r2", after=0)
    before = _files(out)
    with pytest.raises(ValueError, match="clip_seconds: 1.0 then, 2.0 now"):
        _pack(folder, out, resume=True, clip_seconds=2.0)
    with pytest.raises(ValueError, match="max_fps: None then, 4 now"):
        _pack(folder, out, resume=True, max_fps=4)
    extra = folder / "r4.wav"
    extra.write_bytes(b"RIFF")
    try:
        with pytest.raises(ValueError, match="source folder changed"):
            _pack(folder, out, resume=True)
    finally:
        extra.unlink()
    assert _files(out) == before  # a refused resume deletes nothing
    with pytest.raises(ValueError, match="choose one"):
        _pack(folder, out, resume=True, overwrite=True)
    _pack(folder, out, resume=True)
    with pytest.raises(ValueError, match="finished pack"):
        _pack(folder, out, resume=True)
    with pytest.raises(ValueError, match="no pack_journal.json"):
        _pack(folder, tmp_path / "never", resume=True)


def test_the_command_line_resumes_and_refuses_resume_for_synthetic_shards(
        folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli"
    with monkeypatch.context() as patch:
        _crash_in(patch, "r1", after=2)
        with pytest.raises(RuntimeError, match="killed"):
            obs_main(["make-shards", "--from", str(folder), "--out", str(out),
                      "--shard-size", str(TARGET)])
    assert obs_main(["make-shards", "--from", str(folder), "--out", str(out),
                     "--shard-size", str(TARGET), "--resume", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["recordings"] == 3 and not (out / JOURNAL_FILE).exists()
    assert obs_main(["make-shards", "--synthetic", "--out", str(tmp_path / "syn"),
                     "--resume"]) == 2
    assert "--resume continues a pack of a folder" in capsys.readouterr().err
    assert not (tmp_path / "syn").exists()


def test_a_pack_to_s3_resumes_there(folder: Path, tmp_path: Path, s3_bucket: str,
                                    s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"s3://{s3_bucket}/recs"
    _stopped(folder, url, monkeypatch, "r2", after=3, endpoint_url=s3_endpoint)
    store = open_store(url, endpoint_url=s3_endpoint)
    assert store.exists(JOURNAL_FILE)
    _pack(folder, url, endpoint_url=s3_endpoint, resume=True)
    _pack(folder, tmp_path / "whole")
    local = _files(tmp_path / "whole")
    assert sorted(store.list()) == sorted(local)  # no journal, no stray shard left
    assert all(store.get_bytes(name) == data for name, data in local.items())
