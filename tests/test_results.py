"""Atomic writes, output-dir checks, provenance and the resumable per-trial JSONL log."""

import json
import os
from datetime import datetime

import pytest

from mechkit import results
from mechkit.errors import MechkitError, OutputPathError
from mechkit.results import TrialLog, atomic_write_bytes, atomic_write_text, ensure_writable_dir, provenance


def test_atomic_write_text_writes_and_replaces(tmp_path):
    path = tmp_path / "out.txt"
    atomic_write_text(path, "first\n")
    atomic_write_text(path, "zweite ü\n")
    assert path.read_bytes() == "zweite ü\n".encode()
    assert os.listdir(tmp_path) == ["out.txt"]
    assert oct(path.stat().st_mode & 0o777) == oct(0o644)


def test_atomic_write_failure_leaves_no_temp_and_keeps_old_file(tmp_path, monkeypatch):
    path = tmp_path / "out.bin"
    path.write_bytes(b"old")

    def fail_replace(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(results.os, "replace", fail_replace)
    with pytest.raises(OutputPathError, match="No space left"):
        atomic_write_bytes(path, b"new")
    assert os.listdir(tmp_path) == ["out.bin"]
    assert path.read_bytes() == b"old"


def test_atomic_write_interrupted_leaves_no_temp(tmp_path, monkeypatch):
    def interrupted(fd):
        raise KeyboardInterrupt

    monkeypatch.setattr(results.os, "fsync", interrupted)
    with pytest.raises(KeyboardInterrupt):
        atomic_write_text(tmp_path / "out.txt", "x")
    assert os.listdir(tmp_path) == []


def test_atomic_write_onto_directory_fails_cleanly(tmp_path):
    (tmp_path / "taken").mkdir()
    with pytest.raises(OutputPathError, match="choose another --out"):
        atomic_write_text(tmp_path / "taken", "x")
    assert os.listdir(tmp_path) == ["taken"]


def test_atomic_write_into_missing_dir(tmp_path):
    with pytest.raises(OutputPathError):
        atomic_write_text(tmp_path / "nope" / "out.txt", "x")
    assert os.listdir(tmp_path) == []


def test_ensure_writable_dir_creates_nested(tmp_path):
    target = tmp_path / "a" / "b"
    assert ensure_writable_dir(target) == target
    assert target.is_dir() and os.listdir(target) == []  # the write check leaves nothing behind
    assert ensure_writable_dir(target) == target  # existing dir is fine


def test_ensure_writable_dir_parent_is_a_file(tmp_path):
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    with pytest.raises(OutputPathError, match=r"cannot write to .*file\.txt/out.*choose another --out"):
        ensure_writable_dir(blocker / "out")
    with pytest.raises(OutputPathError, match="not a directory"):
        ensure_writable_dir(blocker)


@pytest.mark.parametrize("path", ["/proc/mechkit-out", "/proc/self/mechkit-out", "/sys/mechkit-out"])
def test_ensure_writable_dir_unwritable_system_locations(path):
    with pytest.raises(OutputPathError, match="choose another --out") as info:
        ensure_writable_dir(path)
    assert path in str(info.value)
    assert isinstance(info.value, ValueError)


def test_provenance_fields():
    config = {"lengths": [128], "seed": 3}
    prov = provenance("tiny-gpt", "0f" * 32, config, 3)
    assert list(prov) == ["schema_version", "mechkit_version", "model", "weights_sha256", "config", "seed",
                          "git_commit", "created"]
    assert prov["schema_version"] == 1
    assert isinstance(prov["mechkit_version"], str) and prov["mechkit_version"]
    assert (prov["model"], prov["weights_sha256"], prov["config"], prov["seed"]) == ("tiny-gpt", "0f" * 32, config, 3)
    assert prov["git_commit"] is None or len(prov["git_commit"]) == 40
    created = datetime.fromisoformat(prov["created"])
    assert created.utcoffset().total_seconds() == 0
    json.dumps(prov)  # serialisable as-is


def test_provenance_without_git(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    assert provenance("m", None, {}, None)["git_commit"] is None


CONFIG = {"task": "retrieval", "lengths": [128, 256], "seed": 0}
KEYS = ("length", "item")


def trial(i):
    return {"length": 128, "item": i, "score": i / 4}


def test_trial_log_header_and_records(tmp_path):
    path = tmp_path / "sub" / "trials.jsonl"
    log = TrialLog(path, CONFIG)
    for i in range(3):
        log.append(trial(i))
    lines = path.read_text().splitlines()
    header = json.loads(lines[0])
    assert header["kind"] == "header" and header["config"] == CONFIG and len(header["config_hash"]) == 64
    assert [json.loads(line) for line in lines[1:]] == [trial(0), trial(1), trial(2)]
    assert list(log.records()) == [trial(0), trial(1), trial(2)]
    assert log.done_keys(KEYS) == {(128, 0), (128, 1), (128, 2)}


def test_trial_log_resume_after_kill_mid_write(tmp_path):
    path = tmp_path / "trials.jsonl"
    log = TrialLog.open(path, CONFIG)
    for i in range(3):
        log.append(trial(i))
    complete_size = path.stat().st_size
    with path.open("ab") as f:  # a kill in the middle of writing the 4th record
        f.write(json.dumps(trial(3)).encode()[:11])

    resumed = TrialLog.open(path, dict(reversed(list(CONFIG.items()))))  # same config, other key order
    assert path.stat().st_size == complete_size
    assert list(resumed.records()) == [trial(0), trial(1), trial(2)]
    assert resumed.done_keys(KEYS) == {(128, 0), (128, 1), (128, 2)}
    assert resumed.done_keys(("item",)) == {(0,), (1,), (2,)}

    resumed.append(trial(3))
    resumed.append(trial(4))
    again = TrialLog.open(path, CONFIG)
    assert [r["item"] for r in again.records()] == [0, 1, 2, 3, 4]
    assert len(path.read_text().splitlines()) == 6


def test_trial_log_reopen_without_damage_is_unchanged(tmp_path):
    path = tmp_path / "trials.jsonl"
    TrialLog(path, CONFIG).append(trial(0))
    before = path.read_bytes()
    TrialLog(path, CONFIG)
    assert path.read_bytes() == before


def test_trial_log_refuses_other_config(tmp_path):
    path = tmp_path / "trials.jsonl"
    TrialLog(path, CONFIG).append(trial(0))
    before = path.read_bytes()
    with pytest.raises(MechkitError, match=r"another configuration \(differs in: seed\).*fresh --out.*delete") as info:
        TrialLog.open(path, {**CONFIG, "seed": 1})
    assert str(path) in str(info.value)
    assert path.read_bytes() == before


def test_trial_log_refuses_foreign_file(tmp_path):
    path = tmp_path / "notes.jsonl"
    path.write_text("just some text without a newline")
    with pytest.raises(MechkitError, match="not a mechkit trial log"):
        TrialLog(path, CONFIG)
    assert path.read_text() == "just some text without a newline"  # never truncated
