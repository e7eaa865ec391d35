"""Retrieval-head probe cost vs bare Hugging Face `generate` vs the TransformerLens route, on one NIAH trial.

For each prompt length, one needle-in-a-haystack trial (needle set "a", depth 50 %, built-in haystack) is built
once and every method runs in its OWN subprocess, so `ru_maxrss` (peak resident memory) is per method:

  mechkit   `subject.greedy_decode(ids, N)` on the nnsight backend with head tracking on: one prefill (last-position
            logits only) plus a cached decode, each head's attention row reduced to its argmax per step (the
            retrieval probe's cost).
  generate  bare `hf_model.generate(ids, max_new_tokens=N, do_sample=False)` on the same checkpoint loaded with
            transformers directly, sdpa attention (the physical limit: no hooks, no head tracking).
  tl        TransformerLens without a kv cache: per step `model.run_with_cache(tokens, names_filter=...hook_pattern)`
            over the whole sequence (every layer's pattern cached, as a TransformerLens user computing retrieval
            scores would), argmax of each head's last row, then the next token. Runs under an address-space limit
            (RLIMIT_AS: 20 GiB, or less when other processes leave less memory available) so that it fails with an
            allocation error instead of taking the machine down.

Fairness: both mechkit and generate produce exactly N tokens: NO stop ids are given to either (mechkit gets
stop_token_ids=(), generate gets a generation config whose eos_token_id is None), so both do the same number of
decode steps and their greedy tokens can be compared one for one. The generate worker loads the tokenizer too
(mechkit's Subject always holds one, about 0.3 GB resident for Gemma's 262K vocabulary). Each worker first runs
its method once on a short prefix of the prompt (warm-up, untimed), then times the work only (model loading
excluded). mechkit and generate run `--repeats` times each, interleaved, each time in a fresh worker.

Reported per worker: wall time and CPU time (user + system, all threads) of the work, ru_maxrss at the end (peak
RSS of the whole process, loading included, nothing subtracted), the current RSS right after the model was loaded
and again after the short warm-up (the weights are memory-mapped, so only the warm-up's forward makes them
resident: that second number is the loaded model's own footprint), and ru_maxrss right after loading (so one can
tell whether the work raised the peak above loading's). Workers use one torch thread by default (`--threads`):
the machine this was written for has 2 cores shared with other jobs, and there the CPU time of a 1-thread worker
is the stable measure of its work.

    python benchmarks/retrieval.py --lengths 2000,8000 --new-tokens 16
    python benchmarks/retrieval.py --lengths "" --long 32768       # only the 32K run (mechkit, and tl's failure)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from cpu_time import cpu_seconds

GIB = 1024**3
WORKER_TIMEOUT_S = 15 * 60


# -- measurements inside a worker --------------------------------------------------------------------------------

def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def _meminfo_kb(field: str) -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def rss_gb() -> float:
    """Current resident set size (GB, 10^9 bytes)."""
    return _status_kb("VmRSS") * 1024 / 1e9


def vm_size_gb() -> float:
    """Current virtual address space (GB): what RLIMIT_AS counts."""
    return _status_kb("VmSize") * 1024 / 1e9


def peak_rss_gb() -> float:
    """Peak resident set size of this process so far (ru_maxrss is in KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9


def _is_oom(err: BaseException) -> bool:
    text = str(err).lower()
    return isinstance(err, MemoryError) or "can't allocate memory" in text or "cannot allocate memory" in text or (
        "allocate" in text and "bytes" in text)


def _probe():
    """The retrieval probe module (imported lazily: workers import torch only where they need it)."""
    from mechkit.probes import retrieval

    return retrieval


def _load(method: str, model_id: str):
    import torch

    torch.manual_seed(0)
    if method == "generate":
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from mechkit.models.packaged import model_dir
        from mechkit.models.registry import REGISTRY

        directory = model_dir(model_id) if model_id in REGISTRY else Path(model_id)
        model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32, local_files_only=True,
                                                     attn_implementation="sdpa").eval()
        # Every real use of generate holds the tokenizer (mechkit's Subject does): load it too, so that the
        # memory comparison is of the decoding, not of a 0.3 GB tokenizer one side carries and the other not.
        model.bench_tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)
        return model
    import mechkit

    return mechkit.load(model_id, backend="nnsight" if method == "mechkit" else "tl")


def _run_mechkit(subject, ids, new_tokens):
    decoded = subject.greedy_decode(ids, new_tokens, (), track_heads=True)
    return decoded.generated(0), decoded


def _run_generate(hf_model, ids, new_tokens):
    import copy

    import torch

    config = copy.deepcopy(hf_model.generation_config)
    config.eos_token_id = None  # no stop: exactly new_tokens tokens, as for mechkit
    config.do_sample = False
    with torch.no_grad():
        out = hf_model.generate(ids, attention_mask=torch.ones_like(ids), generation_config=config,
                                max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
    return out[0, ids.shape[1]:].tolist(), None


def _run_tl(subject, ids, new_tokens):
    """Greedy decoding without a kv cache, caching every layer's full attention pattern at each step."""
    import torch

    model = subject.model
    tokens = ids.to(model.cfg.device)
    generated, argmax = [], []
    with torch.no_grad():
        for _ in range(new_tokens):
            logits, cache = model.run_with_cache(tokens, names_filter=lambda name: name.endswith("hook_pattern"))
            argmax.append(torch.stack([cache[f"blocks.{layer}.attn.hook_pattern"][0, :, -1].argmax(-1)
                                       for layer in range(model.cfg.n_layers)]))
            chosen = int(logits[0, -1].argmax())
            del logits, cache  # a careful user frees the previous step's cache before the next step
            generated.append(chosen)
            tokens = torch.cat([tokens, torch.tensor([[chosen]], device=tokens.device)], dim=1)
    return generated, torch.stack(argmax)


RUNNERS = {"mechkit": _run_mechkit, "generate": _run_generate, "tl": _run_tl}


def worker(args) -> dict:
    import torch

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    trial = json.loads(Path(args.trial).read_text())
    ids = torch.tensor(trial["input_ids"], dtype=torch.long)[None]
    result = {"method": args.worker, "length": trial["length"], "n_prompt": ids.shape[1],
              "new_tokens": args.new_tokens, "threads": torch.get_num_threads()}
    t0 = time.perf_counter()
    model = _load(args.worker, args.model)
    result["load_s"] = time.perf_counter() - t0
    result["rss_after_load_gb"] = rss_gb()
    result["peak_after_load_gb"] = peak_rss_gb()
    run = RUNNERS[args.worker]
    run(model, ids[:, :64], 2)  # warm-up on a short prefix: first-call costs are not part of the comparison
    # The weights are memory-mapped and only become resident when a forward touches them: the RSS after the
    # warm-up is the loaded model's real footprint (weights + tokenizer + runtime).
    result["rss_after_warmup_gb"] = rss_gb()
    if args.worker == "tl" and args.tl_limit_gib > 0:
        # RLIMIT_AS caps the address space (VmSize), not the resident memory: never allow more growth than the
        # memory other processes leave available (minus a 2 GiB margin), so that hitting the limit is this
        # worker's allocation error and never the kernel's OOM killer picking a process.
        vm = _status_kb("VmSize") * 1024
        safe = vm + _meminfo_kb("MemAvailable") * 1024 - 2 * GIB
        limit = min(int(args.tl_limit_gib * GIB), safe)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        result.update(vm_size_at_limit_gb=vm / 1e9, address_space_limit_gib=round(limit / GIB, 1),
                      requested_limit_gib=args.tl_limit_gib)
    result["load_average_before"] = os.getloadavg()[0]
    t0, c0 = time.perf_counter(), cpu_seconds()
    try:
        tokens, extra = run(model, ids, args.new_tokens)
    except BaseException as err:  # noqa: BLE001 - an allocation failure is the measured outcome for tl
        result.update(time_s=time.perf_counter() - t0, cpu_s=cpu_seconds() - c0, peak_rss_gb=peak_rss_gb(),
                      status="oom" if _is_oom(err) else "error", error=f"{type(err).__name__}: {str(err)[:300]}",
                      load_average_after=os.getloadavg()[0])
        return result
    result.update(time_s=time.perf_counter() - t0, cpu_s=cpu_seconds() - c0, peak_rss_gb=peak_rss_gb(), status="ok",
                  load_average_after=os.getloadavg()[0])
    result["tokens"] = tokens
    if args.worker == "mechkit":
        retrieval_hits = _probe().retrieval_hits
        result["response"] = model.tokenizer.decode(tokens, skip_special_tokens=False)
        hits = retrieval_hits(extra.argmax[:, 0], tokens, trial["input_ids"], tuple(trial["answer_span"]))
        result["heads_with_hits"] = int((hits > 0).sum())
        result["argmax"] = extra.argmax[:, 0].tolist()
    elif args.worker == "tl":
        result["argmax"] = extra.tolist()
    return result


# -- the parent: trials, workers, table ----------------------------------------------------------------------------

def build_trial_files(model_id: str, lengths: list[int], new_tokens: int, directory: Path) -> dict[int, Path]:
    """One trial per length (needle set "a", depth 50, built-in haystack), with the probe's own builder."""
    import mechkit

    probe = _probe()
    subject = mechkit.load(model_id, backend="nnsight")
    files = {}
    for length in lengths:
        config = probe.RetrievalConfig(model_id, lengths=(length,), depths=(50,), needles="a", haystack="builtin",
                                 max_new_tokens=new_tokens)
        trial = probe.build_trials(subject, config)[0]
        path = directory / f"trial-{length}.json"
        path.write_text(json.dumps({"length": length, "trial_id": trial.trial_id, "input_ids": trial.input_ids,
                                    "answer_span": list(trial.answer_span), "answer": trial.needle.answer}))
        files[length] = path
    return files


def run_worker(method: str, trial: Path, args, timeout: float) -> dict:
    command = [sys.executable, __file__, "--worker", method, "--trial", str(trial), "--model", args.model,
               "--new-tokens", str(args.new_tokens), "--tl-limit-gib", str(args.tl_limit_gib),
               "--threads", str(args.threads)]
    out = Path(str(trial).replace(".json", f"-{method}-{time.monotonic_ns()}.out.json"))
    command += ["--out", str(out)]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"method": method, "status": "timeout", "time_s": time.perf_counter() - t0,
                "error": f"worker killed after {timeout:.0f} s"}
    if out.exists():
        return json.loads(out.read_text())
    tail = (proc.stderr or proc.stdout)[-600:]
    return {"method": method, "status": "crashed", "error": f"exit status {proc.returncode}: {tail}"}


def combine(runs: list[dict]) -> dict:
    """One row per (length, method) from its repeats: the fastest time and the smallest CPU time (the least
    disturbed by other load on the machine), the largest peak RSS, the first run's tokens (all repeats must
    agree); every time is kept."""
    ok = [r for r in runs if r["status"] == "ok"]
    if not ok:
        return runs[0]
    best = dict(min(ok, key=lambda r: r["time_s"]))
    best["times_s"] = [r["time_s"] for r in ok]
    best["cpu_s"] = min(r["cpu_s"] for r in ok)
    best["peak_rss_gb"] = max(r["peak_rss_gb"] for r in ok)
    best["tokens"] = ok[0]["tokens"]
    if any(r["tokens"] != ok[0]["tokens"] for r in ok):
        print(f"WARNING: {ok[0]['method']} at {ok[0]['length']} generated different tokens across repeats")
    return best


def _fmt(x, spec=".2f"):
    return "n/a" if x is None else format(x, spec)


def describe(r: dict) -> str:
    if r["status"] == "ok":
        return "ok"
    if r["status"] == "oom":
        return f"out of memory (limit {r.get('address_space_limit_gib', '?'):g} GiB) after {r['time_s']:.0f} s"
    if r["status"] == "timeout":
        return r["error"]
    return f"{r['status']}: {r.get('error', '')[:120]}"


def times(r: dict) -> str:
    others = [t for t in r.get("times_s", []) if t != r["time_s"]]
    return _fmt(r["time_s"]) + (f" (others {', '.join(_fmt(t) for t in others)})" if others else "")


def table(results: list[dict]) -> str:
    lines = ["| length (prompt tokens) | method | time (s) | CPU time (s) | peak RSS (GB) | "
             "RSS after load / after warm-up (GB) | peak RSS after load (GB) | outcome |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results:
        ok = r["status"] == "ok"
        lines.append(f"| {r['length']} ({r.get('n_prompt', '?')}) | {r['method']} | "
                     f"{times(r) if ok else '—'} | {_fmt(r.get('cpu_s')) if ok else '—'} | "
                     f"{_fmt(r.get('peak_rss_gb'))} | "
                     f"{_fmt(r.get('rss_after_load_gb'))} / {_fmt(r.get('rss_after_warmup_gb'))} | "
                     f"{_fmt(r.get('peak_after_load_gb'))} | {describe(r)} |")
    return "\n".join(lines)


def ratios(results: list[dict]) -> str:
    lines = ["| length | mechkit/generate time | mechkit/generate CPU time | mechkit/generate peak RSS | "
             "tl/mechkit time | tl/mechkit peak RSS | tokens mechkit = generate |", "|---|---|---|---|---|---|---|"]
    for length in sorted({r["length"] for r in results}):
        by = {r["method"]: r for r in results if r["length"] == length}
        m, g, t = by.get("mechkit"), by.get("generate"), by.get("tl")
        ok = lambda r: r is not None and r["status"] == "ok"  # noqa: E731
        mg_t = _fmt(m["time_s"] / g["time_s"]) + "×" if ok(m) and ok(g) else "—"
        mg_c = _fmt(m["cpu_s"] / g["cpu_s"]) + "×" if ok(m) and ok(g) else "—"
        mg_m = _fmt(m["peak_rss_gb"] / g["peak_rss_gb"]) + "×" if ok(m) and ok(g) else "—"
        tm_t = (_fmt(t["time_s"] / m["time_s"], ".1f") + "×" if ok(t) and ok(m)
                else "—" if t is None else describe(t))
        tm_m = _fmt(t["peak_rss_gb"] / m["peak_rss_gb"]) + "×" if ok(t) and ok(m) else "—"
        same = ("yes" if m["tokens"] == g["tokens"] else "NO") if ok(m) and ok(g) else "—"
        lines.append(f"| {length} | {mg_t} | {mg_c} | {mg_m} | {tm_t} | {tm_m} | {same} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="gemma-3-270m")
    parser.add_argument("--lengths", default="2000,8000", help="comma-separated prompt lengths in tokens")
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--methods", default="mechkit,generate,tl")
    parser.add_argument("--long", type=int, default=None,
                        help="also run mechkit (and tl, which must fail) at this length, capped at the model's "
                        "context minus --new-tokens so the whole context is used")
    parser.add_argument("--long-methods", default="mechkit,tl")
    parser.add_argument("--repeats", type=int, default=3,
                        help="fresh workers per method and length for mechkit and generate, interleaved; the table "
                        "shows the fastest time and the largest peak RSS (tl runs once)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads per worker (0: torch's default, one per core). Default 1: on "
                        "a shared 2-core machine, a 2-thread worker's OpenMP threads spin-wait for each other "
                        "whenever another process takes a core, so its wall and CPU times swing by 2-3x between "
                        "identical runs; a 1-thread worker's CPU time is its own work's")
    parser.add_argument("--tl-limit-gib", type=float, default=20.0, help="RLIMIT_AS of the tl worker (0: none)")
    parser.add_argument("--timeout", type=float, default=WORKER_TIMEOUT_S, help="per-worker time limit (s)")
    parser.add_argument("--long-timeout", type=float, default=3 * WORKER_TIMEOUT_S,
                        help="per-worker time limit (s) at the --long length (a 1-thread 32K prefill of Gemma 3 "
                        "270M took 877 s on a shared 2-core machine)")
    parser.add_argument("--json", default=None, help="write all worker results to this file")
    parser.add_argument("--worker", choices=sorted(RUNNERS), help=argparse.SUPPRESS)
    parser.add_argument("--trial", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        Path(args.out).write_text(json.dumps(worker(args)))
        return 0

    import torch

    lengths = [int(x) for x in args.lengths.split(",") if x.strip()]
    methods = [m for m in args.methods.split(",") if m]
    plan = [(length, methods, args.repeats, args.timeout) for length in lengths]
    if args.long:
        from mechkit.models.registry import REGISTRY

        spec = REGISTRY.get(args.model)
        context = spec.context_length if spec else args.long
        # once: no ratio is taken at this length, it shows that the whole context is scanned
        plan.append((min(args.long, context - args.new_tokens), [m for m in args.long_methods.split(",") if m], 1,
                     args.long_timeout))
    print(f"# machine: {platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}, python "
          f"{platform.python_version()}; workers use {args.threads or torch.get_num_threads()} torch thread(s); "
          f"load average {os.getloadavg()[0]:.2f}", flush=True)
    print(f"# model {args.model}, {args.new_tokens} new tokens, no stop ids for any method, {args.repeats} "
          f"repeat(s) of mechkit and generate (fastest shown)", flush=True)
    results = []
    with tempfile.TemporaryDirectory(prefix="mechkit-bench-") as tmp:
        trials = build_trial_files(args.model, [length for length, *_ in plan], args.new_tokens, Path(tmp))
        for length, which, repeats, timeout in plan:
            runs: dict[str, list[dict]] = {}
            for repeat in range(repeats):
                for method in which:
                    if repeat and method not in ("mechkit", "generate"):
                        continue  # tl runs once: it is either out of memory or an order of magnitude slower
                    r = run_worker(method, trials[length], args, timeout)
                    r.setdefault("length", length)
                    runs.setdefault(method, []).append(r)
                    print(f"# {length} {method} run {repeat + 1}: {describe(r)}, time {_fmt(r.get('time_s'))} s "
                          f"(CPU {_fmt(r.get('cpu_s'))} s, load average {_fmt(r.get('load_average_before'))}), "
                          f"peak RSS {_fmt(r.get('peak_rss_gb'))} GB, RSS after load/warm-up "
                          f"{_fmt(r.get('rss_after_load_gb'))}/{_fmt(r.get('rss_after_warmup_gb'))} GB"
                          + (f", response {r['response']!r}" if "response" in r else ""), flush=True)
            results += [combine(method_runs) for method_runs in runs.values()]
    print()
    print(table(results))
    print()
    print(ratios(results))
    for length in sorted({r["length"] for r in results}):
        by = {r["method"]: r for r in results if r["length"] == length and r["status"] == "ok"}
        if "mechkit" in by and "generate" in by and by["mechkit"]["tokens"] != by["generate"]["tokens"]:
            print(f"WARNING: at {length} tokens mechkit generated {by['mechkit']['tokens']} but generate "
                  f"{by['generate']['tokens']}")
        if "mechkit" in by and "tl" in by:
            same_tokens = by["mechkit"]["tokens"] == by["tl"]["tokens"]
            same_heads = by["mechkit"]["argmax"] == by["tl"]["argmax"]
            print(f"# {length}: tl tokens {'=' if same_tokens else '!='} mechkit tokens; tl per-head argmax "
                  f"{'=' if same_heads else '!='} mechkit's")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
