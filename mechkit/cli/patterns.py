"""`mechkit find-induction-heads` and `find-ngram-heads`: thin commands over `mechkit.probes.pattern_io`
(every option is checked before the model is loaded)."""

from __future__ import annotations

from pathlib import Path

import typer

from mechkit.cli import options
from mechkit.cli.analysis import _info, read_texts
from mechkit.cli.retrieval import BACKEND, _check_common, _load
from mechkit.errors import MechkitError
from mechkit.probes import pattern_io
from mechkit.probes.induction import InductionConfig
from mechkit.probes.ngram import NgramConfig, parse_orders
from mechkit.results import ensure_writable_dir

OUT_HELP = ("Directory for one JSON per metric, scores.csv (every metric, long format), summary.json and "
            "dashboard.html.")


def _wrote(quiet: bool, out: Path) -> None:
    _info(quiet, f"wrote {out}/ ({', '.join(sorted(p.name for p in out.iterdir() if not p.name.startswith('.')))})")


def find_induction_heads(
    model: str = options.MODEL,
    seq_len: int = typer.Option(50, "--seq-len", help="Random tokens per sequence, repeated twice (ARENA: 50)."),
    n_sequences: int = typer.Option(10, "--sequences", help="Random sequences (ARENA: 10)."),
    prefix_len: int = typer.Option(25, "--prefix-len", help="Unique tokens per prefix-matching sequence (Olsson: "
                                   "25), repeated 4 times."),
    exclude_fraction: float = typer.Option(0.04, "--exclude-fraction", help="Share of the token pool dropped at "
                                           "each end for prefix matching (Olsson: 4%)."),
    copying: bool = typer.Option(True, "--copying/--no-copying", help="Also score copying through the OV circuit."),
    threshold: float = typer.Option(0.4, "--threshold", help="Heads with an induction score above this are "
                                    "induction heads (ARENA: 0.4)."),
    ablate: int | None = typer.Option(None, "--ablate", min=0, show_default=False, help="Mean-ablate the top K "
                                      "induction heads vs K random heads and report the loss on the repeated half "
                                      "(0: as many as score above --threshold)."),
    draws: int = typer.Option(5, "--draws", min=1, help="Random head sets drawn for --ablate."),
    seed: int = options.SEED,
    backend: str = BACKEND,
    device: str = options.DEVICE,
    dtype: str = options.DTYPE,
    out: Path = typer.Option(Path("results/induction"), "--out", "-o", help=OUT_HELP),
    quiet: bool = options.QUIET,
) -> None:
    """Score every head as previous-token, duplicate-token, induction, prefix-matching and copying head.

    One forward pass per data set; attention rows are computed one layer and one block of queries at a time.
    On gemma-3-270m the defaults take about a minute on a 2-core CPU; --ablate adds 2 + draws passes.
    """
    config = InductionConfig(seq_len=seq_len, n_sequences=n_sequences, prefix_len=prefix_len,
                             exclude_fraction=exclude_fraction, copying=copying, threshold=threshold, seed=seed)
    _check_common(backend, dtype)
    out = ensure_writable_dir(out)
    subject = _load(model, backend, device, dtype, quiet)
    scores, baselines, ablation = pattern_io.run_induction_scan(
        subject, config, out, ablate_k=ablate, n_draws=draws,
        run_info={"backend": subject.backend, "device": device, "dtype": dtype}, verbose=not quiet)
    lines = pattern_io.summary_lines(scores, baselines, threshold)
    for line in lines + (pattern_io.ablation_lines(ablation) if ablation else []):
        typer.echo(line)
    _wrote(quiet, out)


def find_ngram_heads(
    model: str = options.MODEL,
    orders: str = typer.Option("1,2,3", "--order", "--orders", help="n-gram orders to score, comma-separated."),
    data: str = typer.Option("regbench", "--data", help="regbench (strings of random automata written as "
                             "' a b | c ...') or a text file, one text per line."),
    n_sequences: int = typer.Option(16, "--sequences", help="REGBENCH instances (test automata)."),
    max_tokens: int = typer.Option(400, "--max-tokens", help="Symbols kept per REGBENCH instance."),
    seed: int = options.SEED,
    backend: str = BACKEND,
    device: str = options.DEVICE,
    dtype: str = options.DTYPE,
    out: Path = typer.Option(Path("results/ngram"), "--out", "-o", help=OUT_HELP),
    quiet: bool = options.QUIET,
) -> None:
    """Score every head as an order-n n-gram head (Akyurek et al. 2024), for each order.

    An order-n head attends to the tokens that followed earlier occurrences of the current n-token context;
    order 1 is the induction pattern. REGBENCH data take a few seconds on gemma-3-270m on a 2-core CPU.
    """
    parsed = parse_orders(orders)
    texts = None
    if data != "regbench":
        if not Path(data).is_file():
            raise MechkitError(f"--data {data!r} is neither regbench nor a text file")
        texts = [text for _, text in read_texts(Path(data))]
    if n_sequences < 1 or max_tokens < 2:
        raise MechkitError(f"--sequences must be at least 1 and --max-tokens at least 2 (got {n_sequences}, "
                           f"{max_tokens})")
    config = NgramConfig(orders=parsed, data="file" if texts is not None else "regbench", n_sequences=n_sequences,
                         max_tokens=max_tokens, seed=seed)
    _check_common(backend, dtype)
    out = ensure_writable_dir(out)
    subject = _load(model, backend, device, dtype, quiet)
    scores, baselines = pattern_io.run_ngram_scan(
        subject, config, out, texts=texts, run_info={"backend": subject.backend, "device": device, "dtype": dtype,
                                                     **({"data_file": str(Path(data).resolve())} if texts else {})},
        verbose=not quiet)
    for line in pattern_io.summary_lines(scores, baselines):
        typer.echo(line)
    _wrote(quiet, out)
