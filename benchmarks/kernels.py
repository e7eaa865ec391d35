"""Kernel speed: chunk_* vs the naive token recurrence on CPU, and triton_* vs chunk_* (and fla) on a GPU.

CPU section: for each family, batch 1, 4 heads, d_k = d_v = 64, the same float32 inputs go to `chunk_*` (computes in
float32) and to `naive_*`, which casts them to float64 itself and runs its token-by-token recurrence in float64 (the
cast is inside the timed call). Each call is run once untimed (warm-up), then `--repeats` times; the table shows the
median wall time and the median CPU time (user + system, from getrusage) per call, their naive/chunk ratios, and the
largest relative RMS error of chunk against naive over the output and the final state (the output alone for
softmax attention). A family fails, and the script exits 1, if a call raises or that error exceeds 1e-4.

GPU section (only when CUDA is available): `triton_*` vs `chunk_*`, and vs fla's `chunk_linear_attn`,
`chunk_delta_rule` and `chunk_gated_delta_rule` when the `fla` package is importable, on the same float32 CUDA
inputs; errors are of the output against chunk's.

Run with one thread: the intended machine has 2 cores shared with other jobs.

    OMP_NUM_THREADS=1 python benchmarks/kernels.py
    OMP_NUM_THREADS=1 python benchmarks/kernels.py --lengths 1024 --repeats 5 --families delta,gated-delta
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

import torch
import torch.nn.functional as F
from cpu_time import cpu_seconds

from mechkit.kernels.based import chunk_based, naive_based, triton_based
from mechkit.kernels.delta_net import chunk_delta_net, naive_delta_net, triton_delta_net
from mechkit.kernels.linear_attn import chunk_linear_attn, naive_linear_attn, triton_linear_attn
from mechkit.kernels.sliding_window import (
    chunk_sliding_window_attn,
    naive_sliding_window_attn,
    triton_sliding_window_attn,
)

B, H, D = 1, 4, 64
WINDOW, MOMENTUM = 512, 0.5
TOLERANCE = 1e-4
LINEAR = (naive_linear_attn, chunk_linear_attn, triton_linear_attn)
DELTA = (naive_delta_net, chunk_delta_net, triton_delta_net)
SOFTMAX = (naive_sliding_window_attn, chunk_sliding_window_attn, triton_sliding_window_attn)
FAMILIES = {  # name -> (naive, chunk, triton); the options of each come from make_inputs
    "linear": LINEAR,
    "linear-normalized": LINEAR,
    "delta": DELTA,
    "gated-delta": DELTA,
    "kaczmarz": DELTA,
    "write-scale": DELTA,
    "based": (naive_based, chunk_based, triton_based),
    "sliding-window": SOFTMAX,
    "momentum": SOFTMAX,
}


def make_inputs(family: str, T: int):
    """float32 (q, k, v) and options for one family, as in tests/test_kernels.py."""
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(B, T, H, D, generator=gen) for _ in range(3))
    rand = torch.rand(B, T, H, generator=gen)
    opts = {}
    if family == "linear-normalized":  # positive features keep the normalizer away from zero
        q, k, opts["normalize"] = F.elu(q) + 1, F.elu(k) + 1, True
    elif family == "kaczmarz":  # unnormalized keys, norms spread over a factor ~20
        k, opts["eta"] = k * torch.randn(B, T, H, 1, generator=gen).exp(), 2 * rand
    elif family in ("delta", "gated-delta", "write-scale"):
        k, opts["beta"] = F.normalize(k, dim=-1), rand
        if family == "gated-delta":
            opts["g"] = F.logsigmoid(torch.randn(B, T, H, generator=gen) + 2)
        if family == "write-scale":
            opts["write_scale"] = torch.rand(H, D, generator=gen)
    elif family in ("sliding-window", "momentum"):
        opts["window"] = WINDOW
        opts["momentum"] = MOMENTUM if family == "momentum" else 0.0
    return (q, k, v), opts


def fla_kernels() -> dict:
    """fla's kernels for the families it has, called on mechkit's inputs; {} when fla is not installed."""
    try:
        from fla.ops.delta_rule import chunk_delta_rule
        from fla.ops.gated_delta_rule import chunk_gated_delta_rule
        from fla.ops.linear_attn import chunk_linear_attn as fla_linear_attn
    except ImportError:
        return {}
    return {
        "linear": lambda q, k, v, o: fla_linear_attn(q, k, v, normalize=False, output_final_state=True),
        "linear-normalized": lambda q, k, v, o: fla_linear_attn(q, k, v, normalize=True, output_final_state=True),
        "delta": lambda q, k, v, o: chunk_delta_rule(q=q, k=k, v=v, beta=o["beta"], output_final_state=True),
        "gated-delta": lambda q, k, v, o: chunk_gated_delta_rule(q=q, k=k, v=v, g=o["g"], beta=o["beta"],
                                                                 output_final_state=True),
    }


def outputs(result) -> list[torch.Tensor]:
    """[o, final_state] for state-carrying families, [o] for softmax attention."""
    return [result] if isinstance(result, torch.Tensor) else list(result[:2])


def rel_rms(ref: torch.Tensor, got: torch.Tensor) -> float:
    ref, got = ref.double(), got.double()
    return float((got - ref).pow(2).mean().sqrt() / ref.pow(2).mean().sqrt().clamp_min(1e-30))


def measure(call, repeats: int, sync=lambda: None):
    """One warm-up call, then `repeats` timed ones: (result, median wall s, median CPU s)."""
    result = call()
    walls, cpus = [], []
    for _ in range(repeats):
        sync()
        t0, c0 = time.perf_counter(), cpu_seconds()
        result = call()
        sync()
        walls.append(time.perf_counter() - t0)
        cpus.append(cpu_seconds() - c0)
    return result, statistics.median(walls), statistics.median(cpus)


def cpu_section(families, lengths, repeats) -> list[str]:
    """Print the chunk-vs-naive table; return the failed families."""
    print("| family | T | naive wall (ms) | naive CPU (ms) | chunk wall (ms) | chunk CPU (ms) | naive/chunk wall "
          "| naive/chunk CPU | max rel-RMS err |")
    print("|---|---|---|---|---|---|---|---|---|")
    failed = []
    for family in families:
        naive, chunk, _ = FAMILIES[family]
        for T in lengths:
            qkv, opts = make_inputs(family, T)
            try:
                ref, n_wall, n_cpu = measure(lambda: naive(*qkv, **opts), repeats)
                got, c_wall, c_cpu = measure(lambda: chunk(*qkv, **opts), repeats)
            except Exception as err:  # noqa: BLE001 - reported as this family's failure
                print(f"| {family} | {T} | failed: {type(err).__name__}: {err} |||||||")
                failed.append(family)
                continue
            err = max(rel_rms(r, g) for r, g in zip(outputs(ref), outputs(got)))
            if err > TOLERANCE:
                failed.append(family)
            print(f"| {family} | {T} | {n_wall * 1e3:.1f} | {n_cpu * 1e3:.1f} | {c_wall * 1e3:.1f} | "
                  f"{c_cpu * 1e3:.1f} | {n_wall / c_wall:.1f}× | {n_cpu / c_cpu:.1f}× | {err:.1e}"
                  + (" (over tolerance)" if err > TOLERANCE else "") + " |", flush=True)
    return failed


def gpu_section(families, lengths, repeats) -> list[str]:
    """Print triton vs chunk (and fla) on CUDA; return the failed families."""
    fla = fla_kernels()
    print(f"# GPU: {torch.cuda.get_device_name()}; fla {'found' if fla else 'not installed, not compared'}")
    print("| family | T | chunk (ms) | triton (ms) | fla (ms) | chunk/triton | fla/triton | triton err | fla err |")
    print("|---|---|---|---|---|---|---|---|---|")
    failed = []
    for family in families:
        _, chunk, triton = FAMILIES[family]
        for T in lengths:
            qkv, opts = make_inputs(family, T)
            qkv = tuple(x.cuda() for x in qkv)
            opts = {name: x.cuda() if isinstance(x, torch.Tensor) else x for name, x in opts.items()}
            try:
                ref, c_wall, _ = measure(lambda: chunk(*qkv, **opts), repeats, torch.cuda.synchronize)
                got, t_wall, _ = measure(lambda: triton(*qkv, **opts), repeats, torch.cuda.synchronize)
                t_err = rel_rms(outputs(ref)[0], outputs(got)[0])
                fla_cells = ["—"] * 3
                if family in fla:
                    f_out, f_wall, _ = measure(lambda: fla[family](*qkv, opts), repeats, torch.cuda.synchronize)
                    f_err = rel_rms(outputs(ref)[0], f_out[0])
                    fla_cells = [f"{f_wall * 1e3:.2f}", f"{f_wall / t_wall:.2f}×", f"{f_err:.1e}"]
            except Exception as err:  # noqa: BLE001 - reported as this family's failure
                print(f"| {family} | {T} | failed: {type(err).__name__}: {err} |||||||")
                failed.append(family)
                continue
            if t_err > TOLERANCE:
                failed.append(family)
            print(f"| {family} | {T} | {c_wall * 1e3:.2f} | {t_wall * 1e3:.2f} | {fla_cells[0]} | "
                  f"{c_wall / t_wall:.2f}× | {fla_cells[1]} | {t_err:.1e} | {fla_cells[2]} |", flush=True)
    return failed


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", default="1024,4096", help="comma-separated sequence lengths")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per measurement (median shown)")
    parser.add_argument("--families", default=",".join(FAMILIES), help=f"comma-separated, from {', '.join(FAMILIES)}")
    args = parser.parse_args(argv)
    families = [f for f in args.families.split(",") if f]
    unknown = sorted(set(families) - set(FAMILIES))
    if unknown:
        parser.error(f"unknown families {unknown}; choose from {', '.join(FAMILIES)}")
    lengths = [int(x) for x in args.lengths.split(",") if x]

    torch.set_num_threads(1)
    print(f"# machine: {platform.machine()}, {os.cpu_count()} CPU cores, python {platform.python_version()}, torch "
          f"{torch.__version__}, {torch.get_num_threads()} torch thread, OMP_NUM_THREADS="
          f"{os.environ.get('OMP_NUM_THREADS', 'unset')}, load average {os.getloadavg()[0]:.2f}")
    print(f"# batch {B}, {H} heads, d_k = d_v = {D}; chunk in float32, naive casts the float32 inputs to float64; "
          f"window {WINDOW}, momentum {MOMENTUM}; median of {args.repeats} calls after one warm-up\n", flush=True)
    failed = cpu_section(families, lengths, args.repeats)
    print()
    if torch.cuda.is_available():
        failed += gpu_section(families, lengths, args.repeats)
    else:
        print("# GPU section skipped: no CUDA GPU available, so triton_* and fla were not timed.")
    print(f"# load average at the end {os.getloadavg()[0]:.2f}")
    if failed:
        print(f"FAILED: {', '.join(sorted(set(failed)))}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
