"""The in-context n-gram back-off baseline on REGBENCH test automata: accuracy and L1 to the true PFA per order.

Builds the REGBENCH DFA pools (reference sizes: 5000 train DFAs, `--n-test` test DFAs), draws one instance per test
DFA, predicts every position with `ngram_backoff_probs` and scores it against the true automaton:

  accuracy   greedy argmax keeps the current string accepted (positions whose next token is '|' skipped)
  L1 scored  mean full L1 (2 x TVD) to the uniform-PFA next-symbol distribution at the same positions
  L1 all     the same over every position, also those before a '|' (the reference's `dfa_ngram_diff`)

    python benchmarks/regbench_baseline.py --n-test 250 --seed 0
"""

from __future__ import annotations

import argparse
import time

from mechkit.tasks.ngram_lm import ngram_backoff_batch
from mechkit.tasks.regbench import RegBench, RegBenchConfig, accuracy, total_variation


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-test", type=int, default=250, help="test DFAs, one instance each")
    parser.add_argument("--n-train", type=int, default=5000, help="train DFAs (only kept disjoint from the test ones)")
    parser.add_argument("--seed", type=int, default=0, help="RegBenchConfig seed (DFA pools)")
    parser.add_argument("--instance-seed", type=int, default=1, help="seed of the sampled strings")
    parser.add_argument("--orders", default="1,2,3", help="comma-separated n-gram orders")
    args = parser.parse_args()

    start = time.perf_counter()
    bench = RegBench(RegBenchConfig(seed=args.seed, n_train_dfas=args.n_train, n_test_dfas=args.n_test))
    instances = bench.instances("test", args.n_test, seed=args.instance_seed)
    n_tokens = sum(len(x.tokens) for x in instances)
    print(f"{args.n_test} test instances, {n_tokens} tokens, built in {time.perf_counter() - start:.1f} s")
    print(f"{'order':>5}  {'accuracy':>8}  {'L1 scored':>9}  {'L1 all':>7}  {'time':>6}")
    for order in (int(o) for o in args.orders.split(",")):
        start = time.perf_counter()
        probs = ngram_backoff_batch([x.tokens for x in instances], order)
        acc = accuracy(probs.argmax(-1), instances)
        l1, l1_all = total_variation(probs, instances), total_variation(probs, instances, all_positions=True)
        print(f"{order:>5}  {acc:>8.4f}  {l1:>9.4f}  {l1_all:>7.4f}  {time.perf_counter() - start:>5.1f}s")


if __name__ == "__main__":
    main()
