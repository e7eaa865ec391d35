"""The native model zoo: checkpoints trained by `mechkit train` and shipped inside the package, one explicit dict.

Each model lives in `mechkit/native/zoo/<name>/` (model.safetensors + config.json with its training settings and
final metrics) and loads with `mechkit.load("native:<name>")`. `command` reproduces it exactly (same seed, same
numbers; timings depend on the machine).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mechkit.errors import UnknownModelError

ZOO_ROOT = Path(__file__).with_name("zoo")


@dataclass(frozen=True)
class ZooModel:
    name: str
    description: str
    command: str


_MQAR = "mechkit train --task mqar --layers 2 --d-model 64 --seq-len 128 --kv-pairs 8 --vocab 256 --seed 0"

ZOO: dict[str, ZooModel] = {
    m.name: m
    for m in (
        ZooModel("mqar-softmax", "2-layer softmax attention (rotary) trained on MQAR (T=128, 8 pairs, vocab 256)",
                 f"{_MQAR} --mixer softmax --out mqar-softmax"),
    )
}


def zoo_dir(name: str) -> Path:
    """The shipped checkpoint directory of zoo model `name`."""
    if name not in ZOO:
        raise UnknownModelError(f"unknown native zoo model {name!r}; use one of {', '.join(ZOO)}")
    return ZOO_ROOT / name


def list_zoo() -> list[dict]:
    """Every zoo model: id ("native:<name>"), description, the command that trains it, and its directory."""
    return [{"id": f"native:{m.name}", "description": m.description, "command": m.command,
             "path": str(zoo_dir(m.name)), "shipped": (zoo_dir(m.name) / "model.safetensors").is_file()}
            for m in ZOO.values()]
