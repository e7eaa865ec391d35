"""Circuit discovery speed and agreement: the discrete-SAE method vs exhaustive head patching on a real model's task.

One process, one model, one set of positive / negative pairs. Exhaustive head activation patching (one patched run
per head and batch: the slow reference) runs first; its heads with |normalized effect| >= --threshold are the
reference circuit (`mechkit.circuits.metrics.reference_heads`). Then the SAE method (each --pooling and --epochs)
and node attribution patching (atp) run on the same pairs and are scored against that reference by ROC-AUC; with
--repeats > 1 the methods alternate and the table shows medians. Times are wall and CPU (user + system,
getrusage) seconds of `find_circuit`, each method's solvability check included, model loading and example building
excluded.

    OMP_NUM_THREADS=1 python benchmarks/circuits.py --model gemma-3-270m --task ioi --n 32 --epochs 500,100,25
    OMP_NUM_THREADS=1 python benchmarks/circuits.py --model smollm2-135m-instruct --task ioi --n 32 --out r.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys

import torch
from cpu_time import cpu_seconds
from mechkit.circuits.find import find_circuit
from mechkit.circuits.metrics import reference_heads
from mechkit.circuits.sae_discovery import POOLINGS, SAEDiscoveryConfig

import mechkit
from mechkit.errors import MechkitError
from mechkit.tasks.circuit_tasks import get_task


def timed(subject, examples, method: str, truth, sae: SAEDiscoveryConfig | None, batch_size: int):
    """(CircuitResult, cpu seconds) of one `find_circuit` call."""
    start = cpu_seconds()
    result = find_circuit(subject, examples, method, truth, sae, batch_size=batch_size, verbose=False)
    return result, cpu_seconds() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="gemma-3-270m")
    parser.add_argument("--backend", default="nnsight")
    parser.add_argument("--task", default="ioi", choices=("ioi", "greater-than", "docstring"))
    parser.add_argument("--n", type=int, default=32, help="positive / negative pairs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pooling", default="mean,last", help="SAE poolings to run, comma-separated")
    parser.add_argument("--epochs", default="500", help="SAE training epochs, comma-separated (500: the paper's)")
    parser.add_argument("--threshold", type=float, default=0.05, help="reference: |normalized patching effect| >= this")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--out", default=None, help="also write the rows as JSON here")
    args = parser.parse_args(argv)
    poolings = [p for p in args.pooling.split(",") if p]
    epochs = [int(e) for e in args.epochs.split(",") if e.strip().isdigit()]
    if (not poolings or any(p not in POOLINGS for p in poolings) or args.n < 5 or args.repeats < 1
            or len(epochs) != len(args.epochs.split(","))):
        print(f"bad input: --pooling must list {', '.join(POOLINGS)}, --epochs whole numbers, --n >= 5 (the SAE "
              "trains on 10 prompts), --repeats >= 1", file=sys.stderr)
        return 2
    try:
        subject = mechkit.load(args.model, backend=args.backend)
        examples = get_task(args.task)(subject, args.n, args.seed)
    except MechkitError as err:
        print(f"bad input: {err}", file=sys.stderr)
        return 2
    methods = [("patching", None)] + [(f"sae ({p}, {e} epochs)", SAEDiscoveryConfig(
        pooling=p, n_epochs=e, seed=args.seed, batch_size=args.batch_size)) for p in poolings for e in epochs]
    methods.append(("atp", None))
    runs: dict[str, list] = {name: [] for name, _ in methods}
    truth = None
    for _ in range(args.repeats):
        for name, sae in methods:
            result, cpu = timed(subject, examples, name.split(" ")[0], truth, sae, args.batch_size)
            if name == "patching" and truth is None:
                truth = reference_heads(result.scores, args.threshold)
                if not truth:
                    print(f"no head reaches |effect| >= {args.threshold} under patching; lower --threshold",
                          file=sys.stderr)
                    return 1
            runs[name].append((result, cpu))
    rows = []
    patch_wall = statistics.median(r.wall_s for r, _ in runs["patching"])
    for name, results in runs.items():
        result = results[-1][0]  # scores do not depend on the repeat (seeded)
        edge = result.extra.get("edge_metrics")
        wall = statistics.median(r.wall_s for r, _ in results)
        rows.append({"method": name, "wall_s": wall, "cpu_s": statistics.median(c for _, c in results),
                     "patching_over_method": patch_wall / wall, "accuracy": result.accuracy,
                     "roc_auc": None if result.metrics is None else result.metrics["roc_auc"],
                     "edge_roc_auc": None if edge is None else edge["roc_auc"],
                     "top_heads": [h.label for h, _ in result.scores.top(5)]})
    print(f"# {args.model} ({subject.n_layers} layers x {subject.n_heads} heads), task {args.task}, {args.n} pairs, "
          f"seed {args.seed}; reference: {len(truth)} heads with |patching effect| >= {args.threshold}: "
          f"{', '.join(h.label for h in truth)}")
    print(f"# machine: {platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}, "
          f"{torch.get_num_threads()} torch thread(s), load average {os.getloadavg()[0]:.2f}; accuracy on positives "
          f"{rows[0]['accuracy']:.3f}")
    print("\n| method | wall (s) | CPU (s) | patching / method wall | ROC-AUC vs patching reference (SAE: node, "
          "edge-derived) | top heads |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        auc = "reference" if row["method"] == "patching" else f"{row['roc_auc']:.3f}"
        if row["edge_roc_auc"] is not None:
            auc += f", {row['edge_roc_auc']:.3f}"
        print(f"| {row['method']} | {row['wall_s']:.2f} | {row['cpu_s']:.2f} | {row['patching_over_method']:.1f}x | "
              f"{auc} | {', '.join(row['top_heads'])} |")
    if args.out:
        with open(args.out, "w") as handle:
            json.dump({"args": vars(args), "reference": [h.label for h in truth], "rows": rows}, handle, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
