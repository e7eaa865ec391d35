"""Induction-family head scores: mechkit vs TransformerLens `detect_head`, same prompts, same heads, one run.

The prompts are random ordinary tokens repeated twice, written as text (so that `detect_head`, which takes
strings, sees exactly the tokens mechkit scores; the script checks both tokenizations agree), about `--length`
tokens each. Every method runs in its own subprocess so `ru_maxrss` (peak resident memory) is its own:

  mechkit     `pattern_scores` for previous-token, duplicate-token and induction on the nnsight backend: one
              batched forward pass, rows recomputed from captured q/k one layer and one 256-query block at a time.
  mechkit-tl  the same on the TransformerLens backend (isolates the backend's share of the difference).
  detect_head `transformer_lens.head_detector.detect_head` once per pattern and prompt, as a TransformerLens user
              calls it; each call's cache holds only the attention patterns (detect_head's own full cache fails
              on Gemma 3 in TransformerLens 3.x; a full cache would only cost it more).

Reported: wall and CPU time of the scoring (model loading excluded, one untimed warm-up on a short prompt); the
resident memory before the scoring and its peak while the scoring runs (sampled every 5 ms in a thread; "work" is
the difference: what the scoring itself needs; the process's ru_maxrss is dominated by model loading); and the
agreement of the scores (max |difference| with detect_head's row choice, and the
correlation of mechkit's default scores with detect_head's over all heads).

    python benchmarks/induction.py --model gemma-3-270m --length 2048 --prompts 2
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from retrieval import cpu_s, peak_rss_gb, rss_gb

NAMES = ("previous_token_head", "duplicate_token_head", "induction_head")
METHODS = ("mechkit", "mechkit-tl", "detect_head")


def _patterns():
    from mechkit.probes import attention_patterns as ap

    return {"previous_token_head": ap.previous_token_targets, "duplicate_token_head": ap.duplicate_token_targets,
            "induction_head": ap.context_match_targets(1)}


def _score(method: str, subject, texts: list[str], rows: str = "matched") -> dict:
    from mechkit.probes import attention_patterns as ap

    if method == "detect_head":
        return {name: ap.detect_head_reference(subject, texts, name).tolist() for name in NAMES}
    scores = ap.pattern_scores(subject, subject.tokenize(texts), _patterns(), ap.PatternOptions(rows=rows),
                               verbose=False)
    return {name: values.tolist() for name, values in scores.items()}


class PeakSampler:
    """Samples this process's resident memory every 5 ms in a thread: the peak while the work runs."""

    def __init__(self):
        self.peak, self._stop = rss_gb(), threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_gb())
            time.sleep(0.005)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_gb())


def worker(args) -> None:
    import torch

    import mechkit

    torch.set_num_threads(args.threads)
    texts = json.loads(Path(args.prompts_file).read_text())
    subject = mechkit.load(args.model, backend="nnsight" if args.worker == "mechkit" else "tl")
    _score(args.worker, subject, [texts[0][:200]])  # warm-up
    before = rss_gb()
    result = {"method": args.worker, "rss_before_gb": before, "threads": torch.get_num_threads()}
    t0, c0 = time.perf_counter(), cpu_s()
    with torch.no_grad(), PeakSampler() as sampler:
        result["scores"] = _score(args.worker, subject, texts)
    result.update(time_s=time.perf_counter() - t0, cpu_s=cpu_s() - c0, peak_rss_gb=sampler.peak,
                  work_memory_gb=sampler.peak - before, process_peak_rss_gb=peak_rss_gb())
    if args.worker != "detect_head":  # detect_head's row choice, for the equality check (not timed)
        with torch.no_grad():
            result["scores_all_rows"] = _score(args.worker, subject, texts, rows="all")
    Path(args.out).write_text(json.dumps(result))


def build_prompts(model_id: str, length: int, n_prompts: int, seed: int) -> tuple[list[str], list[int]]:
    """Texts of random ordinary tokens repeated twice, and their token counts (checked equal on both backends)."""
    import numpy as np

    import mechkit
    from mechkit.probes.induction import token_pool

    subject = mechkit.load(model_id, backend="tl")
    pool, rng = token_pool(subject.tokenizer, 0.04), np.random.default_rng(seed)
    texts = []
    for _ in range(n_prompts):
        half = subject.tokenizer.decode(rng.choice(pool, length // 2).tolist())
        texts.append(half + half)
    lengths = []
    for text in texts:
        ours = subject.tokenize(text).tokens
        theirs = subject.model.to_tokens(text, prepend_bos=subject.prepend_bos)
        assert ours.tolist() == theirs.tolist(), "mechkit and TransformerLens tokenize the prompt differently"
        lengths.append(ours.shape[1])
    return texts, lengths


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="gemma-3-270m")
    parser.add_argument("--length", type=int, default=2048, help="Tokens per prompt (about).")
    parser.add_argument("--prompts", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="Torch threads per worker.")
    parser.add_argument("--worker", choices=METHODS, help=argparse.SUPPRESS)
    parser.add_argument("--prompts-file", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args)
        return 0
    import numpy as np

    directory = Path(tempfile.mkdtemp(prefix="mechkit-bench-induction-"))
    texts, lengths = build_prompts(args.model, args.length, args.prompts, args.seed)
    prompts = directory / "prompts.json"
    prompts.write_text(json.dumps(texts))
    results = {}
    for method in METHODS:
        out = directory / f"{method}.json"
        command = [sys.executable, __file__, "--worker", method, "--prompts-file", str(prompts), "--model",
                   args.model, "--threads", str(args.threads), "--out", str(out)]
        proc = subprocess.run(command, capture_output=True, text=True)
        if not out.exists():
            print(f"{method} failed: {(proc.stderr or proc.stdout)[-800:]}")
            return 1
        results[method] = json.loads(out.read_text())
    print(f"model {args.model}, {len(texts)} prompts of {lengths} tokens, {args.threads} thread(s) per worker")
    print(f"{'method':<12} {'time s':>8} {'cpu s':>8} {'RSS before GB':>14} {'peak during GB':>15} "
          f"{'work GB':>8} {'process peak GB':>16}")
    for method, r in results.items():
        print(f"{method:<12} {r['time_s']:>8.1f} {r['cpu_s']:>8.1f} {r['rss_before_gb']:>14.2f} "
              f"{r['peak_rss_gb']:>15.2f} {r['work_memory_gb']:>8.2f} {r['process_peak_rss_gb']:>16.2f}")
    ref = results["detect_head"]
    for method in ("mechkit", "mechkit-tl"):
        r = results[method]
        print(f"detect_head / {method}: time {ref['time_s'] / r['time_s']:.1f}x, cpu {ref['cpu_s'] / r['cpu_s']:.1f}x, "
              f"work memory {ref['work_memory_gb'] / max(r['work_memory_gb'], 1e-3):.1f}x")
    for name in NAMES:
        theirs = np.array(ref["scores"][name]).ravel()
        same_rows = np.abs(np.array(results["mechkit"]["scores_all_rows"][name]).ravel() - theirs).max()
        default = np.array(results["mechkit"]["scores"][name]).ravel()
        print(f"{name}: max |mechkit - detect_head| (same rows) {same_rows:.2e}, correlation of mechkit's default "
              f"scores with detect_head {np.corrcoef(default, theirs)[0, 1]:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
