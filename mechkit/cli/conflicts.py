"""`mechkit conflict-heads`: a thin command over `mechkit.circuits.conflict_heads` (PH3: memory vs context heads on
knowledge-conflict prompts; every option is checked before the model is loaded)."""

from __future__ import annotations

from pathlib import Path

import typer

from mechkit.cli import options
from mechkit.cli.analysis import _info
from mechkit.cli.binding import _parse_counts
from mechkit.cli.retrieval import _check_common, _load
from mechkit.errors import MechkitError
from mechkit.results import ensure_writable_dir


def conflict_heads_command(
    model: str = options.MODEL,
    facts: Path | None = typer.Option(None, "--facts", show_default=False, help="JSONL file of conflict facts "
                                      "(the format of mechkit/data/conflict_facts.jsonl); default: the 71 built in."),
    n: int | None = typer.Option(None, "--n", "-n", show_default=False, help="Facts to use, a seeded sample of "
                                 "those the model knows (default: all it knows)."),
    k: int = typer.Option(4, "--k", help="Top heads of each kind reported as memory / context heads."),
    ks: str = typer.Option("1,2,4,8", "--ks", help="Numbers of heads to prune, e.g. 1,2,4,8 (none: no pruning)."),
    reference: str = typer.Option("mean", "--reference", help="What a head's output is patched with: mean (over the "
                                  "conflict prompts), aligned (the context agreeing with memory) or no_context."),
    modes: str = typer.Option("zero", "--modes", help="Pruning ablations, a comma list of zero and mean."),
    n_random: int = typer.Option(3, "--n-random", help="Random head sets pruned per k (the control)."),
    seed: int = options.SEED,
    batch_size: int = typer.Option(32, "--batch-size", min=1, help="Prompts per forward pass."),
    backend: str = options.BACKEND_AUTO,
    device: str = options.DEVICE,
    dtype: str = options.DTYPE,
    out: Path = typer.Option(Path("results/conflict-heads"), "--out", "-o", help="Directory for heads.csv, "
                             "pruning.csv, summary.json and dashboard.html (checked before any model is loaded)."),
    quiet: bool = options.QUIET,
) -> None:
    """Find memory heads and context heads on knowledge-conflict prompts (path patching on LD = logit(memory) -
    logit(context)) and prune the top k of each kind; write heads.csv, pruning.csv, summary.json, dashboard.html."""
    from mechkit.circuits import conflict_io
    from mechkit.circuits.conflict_heads import check_conflict_options, conflict_heads
    from mechkit.tasks.conflicts import conflict_set, load_facts

    prune = None if ks.strip().lower() == "none" else _parse_counts("--ks", ks)
    mode_list = tuple(part.strip() for part in modes.split(",") if part.strip())
    if n is not None and n < 1:
        raise MechkitError(f"--n {n} must be a positive number of facts (leave it out for every known fact)")
    check_conflict_options(k, prune, reference, mode_list, n_random, flags=True)
    _check_common(backend, dtype)
    fact_list = None if facts is None else load_facts(facts)
    out = ensure_writable_dir(out)
    subject = _load(model, backend, device, dtype, quiet)
    conflicts = conflict_set(subject, n, seed, facts=fact_list, known_only=True, batch_size=batch_size)
    result = conflict_heads(subject, seed=seed, k=k, ks=prune, reference=reference, modes=mode_list,
                            n_random=n_random, conflicts=conflicts, batch_size=batch_size, verbose=not quiet)
    run_info = {"backend": subject.backend, "device": device, "dtype": dtype, "facts": str(facts or "builtin")}
    paths = conflict_io.write_conflict_outputs(out, result, subject, run_info)
    for line in conflict_io.summary_lines(result):
        typer.echo(line)
    _info(quiet, f"wrote {out}/ ({', '.join(path.name for path in paths)})")
