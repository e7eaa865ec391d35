"""Native checkpoints: a directory with `model.safetensors` and `config.json` ({"model": NativeConfig fields, ...}).

Writes are atomic (temporary file + rename). Loading checks the weights against the config before using them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path

from safetensors.torch import load_file, save_file

from mechkit.errors import MechkitError
from mechkit.native.config import NativeConfig
from mechkit.native.model import NativeModel

WEIGHTS = "model.safetensors"
CONFIG = "config.json"


def _replace_atomically(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json(path: Path, data: dict) -> None:
    _replace_atomically(path, lambda tmp: tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8"))


def save_checkpoint(model: NativeModel, directory: str | Path, extra: dict | None = None) -> Path:
    """Write the model's weights and `{"model": config, **extra}`; return the directory."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    weights = {name: t.detach().contiguous().cpu() for name, t in model.state_dict().items()}
    _replace_atomically(directory / WEIGHTS, lambda tmp: save_file(weights, str(tmp)))
    write_json(directory / CONFIG, {"model": model.cfg.to_dict(), **(extra or {})})
    return directory


def read_config(directory: str | Path) -> dict:
    """The checkpoint's config.json; a directory without both files is refused."""
    directory = Path(directory)
    if not (directory / CONFIG).is_file() or not (directory / WEIGHTS).is_file():
        raise MechkitError(f"{directory} is not a native checkpoint (it needs {CONFIG} and {WEIGHTS}); pass a "
                           "directory written by mechkit.native.save_checkpoint or `mechkit train`")
    try:
        data = json.loads((directory / CONFIG).read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise MechkitError(f"{directory / CONFIG} is not valid JSON ({err}); restore or rewrite it") from None
    if not isinstance(data, dict) or not isinstance(data.get("model"), dict):
        raise MechkitError(f"{directory / CONFIG} has no \"model\" section; it was not written by mechkit")
    return data


def load_checkpoint(directory: str | Path, kernel: str | None = None) -> NativeModel:
    """The model saved in `directory` (in eval mode), optionally with another kernel implementation."""
    directory = Path(directory)
    config = NativeConfig.from_dict(read_config(directory)["model"])
    if kernel is not None:
        config = dataclasses.replace(config, kernel=kernel)
    model = NativeModel(config)
    weights = load_file(str(directory / WEIGHTS))
    expected = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    found = {name: tuple(t.shape) for name, t in weights.items()}
    if found != expected:
        missing = sorted(set(expected) - set(found))[:3]
        unexpected = sorted(set(found) - set(expected))[:3]
        shapes = [f"{n} {found[n]} vs {expected[n]}" for n in expected if n in found and found[n] != expected[n]][:3]
        raise MechkitError(f"the weights in {directory} do not match its {CONFIG} (missing {missing}, unexpected "
                           f"{unexpected}, shape mismatches {shapes}); restore the config the weights were trained "
                           "with")
    model.load_state_dict(weights)
    return model.eval()


def weights_sha256(directory: str | Path) -> str:
    return hashlib.sha256((Path(directory) / WEIGHTS).read_bytes()).hexdigest()
