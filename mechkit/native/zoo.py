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


_MQAR = ("mechkit train --task mqar --layers 2 --d-model 64 --seq-len 128 --kv-pairs 8 --vocab 256 --heads 4 "
         "--steps 1000 --lr 1e-2 --eval-every 100 --target-accuracy 0.99 --seed 0")
_REGBENCH = ("mechkit train --task regbench --layers 2 --d-model 64 --heads 4 --d-mlp 256 --seq-len 192 "
             "--n-train 5000 --n-test 500 --steps 5000 --batch-size 32 --lr 3e-3 --eval-every 1000 --seed 0")
_MQAR_TASK = "MQAR (T=128, 8 key-value pairs, vocab 256)"
_REGBENCH_TASK = "REGBENCH (5000 training automata, strings under 12 symbols, T=192)"


def _model(name: str, what: str, task: str, base: str, options: str) -> ZooModel:
    return ZooModel(name, f"{what} trained on {task}", f"{base} {options} --out mechkit/native/zoo/{name}")


ZOO: dict[str, ZooModel] = {
    m.name: m
    for m in (
        _model("mqar-softmax", "2-layer softmax attention (rotary, 4 heads)", _MQAR_TASK, _MQAR, "--mixer softmax"),
        _model("mqar-linear", "2-layer linear attention (4 heads x 16)", _MQAR_TASK, _MQAR, "--mixer linear"),
        _model("mqar-delta-net", "2-layer DeltaNet (4 heads x 16)", _MQAR_TASK, _MQAR, "--mixer delta_net"),
        _model("mqar-gated-delta-net", "2-layer gated DeltaNet (4 heads x 16)", _MQAR_TASK, _MQAR,
               "--mixer gated_delta_net"),
        _model("mqar-kaczmarz", "2-layer Kaczmarz gated DeltaNet (4 heads x 16)", _MQAR_TASK, _MQAR,
               "--mixer kaczmarz"),
        _model("mqar-based", "2-layer Based (4 heads, feature dim 4)", _MQAR_TASK, _MQAR,
               "--mixer based --feature-dim 4"),
        _model("regbench-softmax", "2-layer softmax Transformer (4 heads, MLP 256)", _REGBENCH_TASK, _REGBENCH,
               "--mixer softmax"),
        _model("regbench-delta-net", "2-layer DeltaNet with MLPs (4 heads x 16, MLP 256)", _REGBENCH_TASK,
               _REGBENCH, "--mixer delta_net"),
        _model("induction-attn-only", "2-layer attention-only softmax (8 heads x 8) with a planted induction circuit",
               "MQAR (T=64, 8 key-value pairs, vocab 64)",
               "mechkit train --task mqar --layers 2 --d-model 64 --seq-len 64 --kv-pairs 8 --vocab 64 --heads 8 "
               "--steps 1000 --lr 1e-2 --eval-every 100 --target-accuracy 0.99 --seed 0", "--mixer softmax"),
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
