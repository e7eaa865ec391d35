"""Writing results: atomic files, output-dir checks, provenance headers, JSON/CSV tables and resumable trial logs.

Every write goes to a temp file in the target's directory and is renamed over the target, so a reader never sees a
half-written file. Per-trial records go to an append-only JSONL file (`TrialLog`) so a killed run resumes where it
stopped.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from datetime import datetime, timezone
from pathlib import Path

from mechkit.errors import MechkitError, OutputPathError

SCHEMA_VERSION = 1
PROVENANCE_KEYS = (
    "schema_version", "mechkit_version", "model", "weights_sha256", "config", "seed", "git_commit", "created",
)


def _cannot_write(path: Path, reason: str) -> OutputPathError:
    return OutputPathError(f"cannot write to {path}: {reason}; choose another --out.")


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write `data` to `path` via a temp file in the same directory and `os.replace`; on failure nothing is left."""
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as err:
        raise _cannot_write(path, err.strerror or str(err)) from err
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o644)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        os.unlink(tmp)
        if isinstance(err, OSError):
            raise _cannot_write(path, err.strerror or str(err)) from err
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """`atomic_write_bytes` of `text` encoded as UTF-8."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def ensure_writable_dir(path: str | os.PathLike) -> Path:
    """Create directory `path` (and parents) and check a file can be created in it, else raise OutputPathError.

    Call this before heavy work so a bad `--out` fails in a second, not after an hour.
    """
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise _cannot_write(path, "it exists and is not a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".mechkit-write-check-"):
            pass
    except OSError as err:
        raise _cannot_write(path, err.strerror or str(err)) from err
    return path


def _git_commit() -> str | None:
    """HEAD of the git checkout holding the mechkit sources, or None (not a checkout, no commits, no git)."""
    package_dir = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "-C", str(package_dir), "rev-parse", "--show-toplevel", "HEAD"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout.splitlines()
    except (OSError, subprocess.SubprocessError):
        return None
    # A site-packages install inside some other repository must not report that repository's commit.
    if len(out) != 2 or Path(out[0]).resolve() != package_dir.parent:
        return None
    return out[1]


def _mechkit_version() -> str:
    try:
        from mechkit import __version__
    except ImportError:
        return "0.1.0+unknown"
    return __version__


def provenance(model_id: str, weights_sha256: str | None, config: dict, seed: int | None) -> dict:
    """The header every result file carries: keys `PROVENANCE_KEYS`; `created` is UTC ISO-8601 to the second."""
    return {
        "schema_version": SCHEMA_VERSION,
        "mechkit_version": _mechkit_version(),
        "model": model_id,
        "weights_sha256": weights_sha256,
        "config": config,
        "seed": seed,
        "git_commit": _git_commit(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def _nan_to_none(record: dict) -> dict:
    return {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in record.items()}


def write_records_json(path: str | os.PathLike, header: dict, records: list[dict]) -> Path:
    """Write `{**header, "records": records}` atomically; NaN values in records become JSON `null`."""
    document = {**header, "records": [_nan_to_none(r) for r in records]}
    return atomic_write_text(path, json.dumps(document, indent=2) + "\n")


def write_records_csv(path: str | os.PathLike, records: list[dict], fieldnames: Sequence[str]) -> Path:
    """Write records as CSV atomically; NaN and None become empty cells, floats are written round-trip exact."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(fieldnames), lineterminator="\n")
    writer.writeheader()
    writer.writerows(_nan_to_none(r) for r in records)
    return atomic_write_text(path, buffer.getvalue())


def config_hash(config: dict) -> str:
    """sha256 hex of the canonical JSON of `config` (sorted keys, tuples as lists)."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


class TrialLog:
    """Append-only JSONL of per-trial records; line 1 is `{"kind": "header", "config": ..., "config_hash": ...}`.

    Opening an existing log resumes it: the config must match, and a last line cut off by a kill is dropped so the
    resumed run neither loses nor repeats a complete trial.
    """

    def __init__(self, path: str | os.PathLike, config: dict):
        self.path = Path(path)
        self.config = config
        self.config_hash = config_hash(config)
        if not self.path.exists() or self.path.stat().st_size == 0:
            ensure_writable_dir(self.path.parent)
            header = {"kind": "header", "config": config, "config_hash": self.config_hash}
            atomic_write_text(self.path, json.dumps(header) + "\n")
            return
        data = self.path.read_bytes()
        self._check_header(data)
        complete = data.rfind(b"\n") + 1
        if complete < len(data):  # the last append was cut off by a kill: drop the partial line
            os.truncate(self.path, complete)

    @classmethod
    def open(cls, path: str | os.PathLike, config: dict) -> TrialLog:
        """Create the log at `path`, or resume it if it exists (same as the constructor)."""
        return cls(path, config)

    def _check_header(self, data: bytes) -> None:
        first, newline, _ = data.partition(b"\n")
        try:
            header = json.loads(first) if newline else None
        except ValueError:
            header = None
        if not isinstance(header, dict) or header.get("kind") != "header" or not isinstance(header.get("config"), dict):
            raise MechkitError(f"{self.path} is not a mechkit trial log; pass a fresh --out or delete the file.")
        if header.get("config_hash") != self.config_hash:
            stored, ours = header["config"], json.loads(json.dumps(self.config))
            differing = sorted(k for k in stored.keys() | ours.keys() if stored.get(k) != ours.get(k))
            raise MechkitError(
                f"{self.path} belongs to another configuration (differs in: {', '.join(differing) or 'config_hash'}); "
                "pass a fresh --out or delete the file to start over, or rerun with the same arguments to resume."
            )

    def records(self) -> Iterator[dict]:
        """Complete trial records in the order they were appended (header excluded)."""
        with self.path.open(encoding="utf-8") as f:
            next(f)
            for line in f:
                yield json.loads(line)

    def done_keys(self, key_fields: Sequence[str]) -> set[tuple]:
        """The `tuple(record[k] for k in key_fields)` of every recorded trial, to skip them on resume."""
        return {tuple(record[k] for k in key_fields) for record in self.records()}

    def append(self, record: dict) -> None:
        """Write one record as one line, then flush and fsync so a kill afterwards cannot lose it."""
        line = (json.dumps(record) + "\n").encode("utf-8")
        with self.path.open("ab") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())
