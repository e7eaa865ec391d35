"""Training throughput of the native mixers: tokens per second of `mechkit train` on the zoo's MQAR setting.

For each mixer (2 layers, d_model 64, 4 heads, T = 128, batch 64, lr 1e-2, chunk kernels; Based with feature dim 4,
as in the zoo), `--steps` optimizer steps run through `mechkit.native.train.train` into a temporary directory, and
the run's recorded tokens/s (optimizer steps only: no data generation, no evaluation) is printed, with its ratio to
the first mixer. All mixers run in this one process, one after the other.

    OMP_NUM_THREADS=1 python benchmarks/training.py
    OMP_NUM_THREADS=1 python benchmarks/training.py --steps 20 --mixers softmax,delta_net
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile

import torch

from mechkit.native.mixers import MIXERS
from mechkit.native.train import TrainConfig, train

DEFAULT_MIXERS = "softmax,linear,based,delta_net,gated_delta_net,kaczmarz"


def tokens_per_second(mixer: str, steps: int) -> float:
    """tokens/s of `steps` training steps of a 2-layer `mixer` model on the zoo's MQAR setting."""
    options = {"feature_dim": 4} if mixer == "based" else {}
    with tempfile.TemporaryDirectory() as out:
        config = TrainConfig(out=out, task="mqar", mixers=(mixer, mixer), d_model=64, n_heads=4, seq_len=128,
                             kv_pairs=8, n_train=2_000, n_test=64, steps=steps, eval_every=steps, lr=1e-2, **options)
        run = train(config, verbose=False)
        return json.loads((run / "config.json").read_text())["metrics"]["tokens_per_second"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=100, help="optimizer steps per mixer")
    parser.add_argument("--mixers", default=DEFAULT_MIXERS, help=f"comma-separated, from {', '.join(MIXERS)}")
    args = parser.parse_args(argv)
    mixers = [m for m in args.mixers.split(",") if m]
    unknown = sorted(set(mixers) - set(MIXERS))
    if not mixers or unknown or args.steps < 1:
        parser.error(f"--mixers must name mixers from {', '.join(MIXERS)} (unknown: {unknown}); --steps >= 1")
    torch.set_num_threads(1)
    print(f"# machine: {platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}, "
          f"{torch.get_num_threads()} torch thread, load average {os.getloadavg()[0]:.2f}; {args.steps} steps each")
    print(f"\n| mixer | tokens/s | relative to {mixers[0]} |\n|---|---|---|")
    first = None
    for mixer in mixers:
        rate = tokens_per_second(mixer, args.steps)
        first = first or rate
        print(f"| {mixer} | {rate:,.0f} | {rate / first:.2f} |", flush=True)
    print(f"# load average at the end {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
