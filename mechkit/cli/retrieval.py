"""`mechkit find-retrieval-heads`, `validate-heads`, `attention-influence`: thin commands over
`mechkit.probes.retrieval_io` (every input is checked before the model is loaded)."""

from __future__ import annotations

import math
from pathlib import Path

import typer

from mechkit import niah
from mechkit.cli import options
from mechkit.cli.analysis import _info, _library_output, read_texts
from mechkit.errors import MechkitError
from mechkit.loading import BACKENDS, load, parse_dtype
from mechkit.models.registry import REGISTRY
from mechkit.probes import retrieval_io as rio
from mechkit.probes.attention_influence import attention_influence as influence_of
from mechkit.probes.retrieval import RetrievalConfig
from mechkit.results import ensure_writable_dir

LENGTHS, DEPTHS, KS = "500:2000:3", "0:100:5", "2,4,8"
GRID = 'a grid "start:stop:count" (inclusive, evenly spaced) or a comma list'
BACKEND = typer.Option("nnsight", "--backend", help="auto, tl or nnsight (nnsight never materializes attention "
                       "matrices).")
NEEDLES_HELP = "Needle set a, b or all (built in: 3, 3, 6 needles), or a JSONL file of {needle, question, answer}."
HAYSTACK_HELP = ("builtin (prose of the Python Language Reference, PSF licence), passkey (repeated filler; its "
                 "own 5-digit pass-key needles), a UTF-8 .txt file, or a directory of .txt files.")
KS_OPT = typer.Option(KS, "--ks", help="Numbers of heads to mask, e.g. 2,4,8.")
DRAWS_OPT = typer.Option(3, "--draws", min=1, help="Random head sets drawn per k.")
TRIAL_BATCH = typer.Option(1, "--batch-size", min=1, help="Trials per forward pass (left-padded; results do not "
                           "depend on it).")
MAX_NEW = "Greedy decode steps per trial (stops at the first newline)."


def _grid(option: str, spec: str) -> tuple[int, ...]:
    try:
        values = niah.parse_grid(spec)
    except MechkitError as err:
        raise MechkitError(f"{option}: {err}") from None
    return tuple(values)


def _check_common(backend: str, dtype: str) -> None:
    parse_dtype(dtype)
    if backend not in BACKENDS:
        raise MechkitError(f"--backend {backend!r} is not one of {', '.join(BACKENDS)}")


def scan_config(model: str, lengths: str, depths: str, needles: str, haystack: str, max_new_tokens: int,
                threshold: float, seed: int) -> RetrievalConfig:
    """A RetrievalConfig from the command's options; needles and haystack files are read (checked) here."""
    grid_lengths, grid_depths = _grid("--lengths", lengths), _grid("--depths", depths)
    if min(grid_lengths) <= 0:
        raise MechkitError(f"--lengths {lengths!r} must be positive token counts; pass e.g. --lengths {LENGTHS}")
    if min(grid_depths) < 0 or max(grid_depths) > 100:
        raise MechkitError(f"--depths {depths!r} must be percentages in 0..100; pass e.g. --depths {DEPTHS}")
    if needles not in ("a", "b", "all"):
        if not Path(needles).is_file():
            raise MechkitError(f"--needles {needles!r} is neither a built-in set (a, b, all) nor a JSONL file")
        niah.load_needles(needles)
        needles = str(Path(needles).resolve())
    if haystack not in ("builtin", "passkey"):
        if not Path(haystack).exists():
            raise MechkitError(f"--haystack {haystack!r} is neither builtin, passkey, nor a text file or directory")
        niah.read_haystack(haystack)
        haystack = str(Path(haystack).resolve())
    config = RetrievalConfig(model, grid_lengths, grid_depths, needles, haystack, max_new_tokens, threshold, seed)
    if model in REGISTRY:
        rio.check_context(REGISTRY[model].context_length, config)
    return config


def _load(model: str, backend: str, device: str, dtype: str, quiet: bool):
    native = model.startswith("native:")
    backend = "auto" if native else backend  # a native model has one backend, its own: --backend does not apply
    _info(quiet, f"loading {model} on {device} ({dtype}, {'native' if native else backend} backend)")
    with _library_output(quiet):
        return load(model, backend=backend, device=device, dtype=dtype)


def find_retrieval_heads(
    model: str = options.MODEL,
    lengths: str = typer.Option(LENGTHS, "--lengths", help=f"Prompt lengths in tokens: {GRID}."),
    depths: str = typer.Option(DEPTHS, "--depths", help=f"Needle depths in percent of the context: {GRID}."),
    haystack: str = typer.Option("builtin", "--haystack", help=HAYSTACK_HELP),
    needles: str = typer.Option("a", "--needles", help=NEEDLES_HELP),
    max_new_tokens: int = typer.Option(32, "--max-new-tokens", min=1, help=MAX_NEW),
    threshold: float = typer.Option(0.1, "--threshold", help="Heads scoring above this are retrieval heads."),
    batch_size: int = TRIAL_BATCH,
    seed: int = options.SEED,
    backend: str = BACKEND,
    device: str = options.DEVICE,
    dtype: str = options.DTYPE,
    out: Path = typer.Option(Path("results/retrieval"), "--out", "-o", help="Directory for scores.json, scores.csv, "
                             "trials.jsonl, dashboard.html (a killed run resumes from its trials.jsonl)."),
    quiet: bool = options.QUIET,
    validate: bool = typer.Option(False, "--validate", help="Also mask the top-k heads vs k random heads and plot "
                                  "NIAH recall (costs (1 + len(ks) x (1 + draws)) more passes over the trials)."),
    ks: str = KS_OPT,
    draws: int = DRAWS_OPT,
) -> None:
    """Score every head's retrieval (Wu et al. 2024) on a needle-in-a-haystack grid.

    The defaults (3 lengths x 5 depths x 3 needles = 45 trials of 500-2000 tokens) finish in a few minutes
    on gemma-3-270m on an idle 2-core CPU (2 min 14 s measured, about 3 s a trial). The time grows with the
    number of trials and their length; --validate multiplies it (see below).
    """
    config = scan_config(model, lengths, depths, needles, haystack, max_new_tokens, threshold, seed)
    mask_ks = _grid("--ks", ks) if validate else ()
    _check_common(backend, dtype)
    out = ensure_writable_dir(out)
    rio.check_trial_log(out, config)
    subject = _load(model, backend, device, dtype, quiet)
    result = rio.run_retrieval_scan(subject, config, out, batch_size=batch_size, validate=validate, ks=mask_ks,
                                    n_draws=draws, run_info={"backend": subject.backend, "device": device,
                                                             "dtype": dtype}, verbose=not quiet)
    for line in rio.summary_lines(result) + (rio.masking_lines(result.masking) if validate else []):
        typer.echo(line)
    _info(quiet, f"wrote {out}/ ({', '.join(sorted(p.name for p in out.iterdir() if not p.name.startswith('.')))})")


def validate_heads(
    scores_path: Path = typer.Option(..., "--scores", exists=True, dir_okay=False, show_default=False,
                                     help="scores.json written by find-retrieval-heads."),
    model: str | None = typer.Option(None, "--model", "-m", show_default=False,
                                     help="Model id (default: the model recorded in the scores file)."),
    out: Path = typer.Option(..., "--out", "-o", show_default=False, help="Directory for masking.json, masking.csv "
                             "and dashboard.html."),
    ks: str = KS_OPT,
    draws: int = DRAWS_OPT,
    lengths: str | None = typer.Option(None, "--lengths", show_default=False,
                                       help=f"{GRID} (default: the scan's, from the scores file)."),
    depths: str | None = typer.Option(None, "--depths", show_default=False, help="Default: the scan's."),
    haystack: str | None = typer.Option(None, "--haystack", show_default=False, help="Default: the scan's."),
    needles: str | None = typer.Option(None, "--needles", show_default=False, help="Default: the scan's."),
    max_new_tokens: int | None = typer.Option(None, "--max-new-tokens", min=1, show_default=False,
                                              help="Default: the scan's."),
    seed: int | None = typer.Option(None, "--seed", show_default=False, help="Default: the scan's."),
    batch_size: int = TRIAL_BATCH,
    backend: str = BACKEND,
    device: str = options.DEVICE,
    dtype: str = options.DTYPE,
    quiet: bool = options.QUIET,
) -> None:
    """Mask the top-k heads of a scores file vs k random heads and measure NIAH recall (the masking experiment)."""
    scores = rio.load_scores(scores_path)
    if all(math.isnan(v) for v in scores.scores.flatten().tolist()):
        raise MechkitError(f"no head in {scores_path} has a score (no trial was counted); rerun the scan with "
                           "other --lengths or --needles first")
    stored = rio.config_fields(scores.config)
    model = model or scores.model

    def pick(value, key, default):
        """The option when given, else the scan's value from the scores file, else the scan command's default."""
        if value is not None:
            return value
        if key not in stored:
            return default
        return ",".join(map(str, stored[key])) if key in ("lengths", "depths") else stored[key]

    config = scan_config(model, pick(lengths, "lengths", LENGTHS), pick(depths, "depths", DEPTHS),
                         pick(needles, "needles", "a"), pick(haystack, "haystack", "builtin"),
                         pick(max_new_tokens, "max_new_tokens", 32), stored.get("threshold", 0.1),
                         pick(seed, "seed", 0))
    mask_ks = _grid("--ks", ks)
    _check_common(backend, dtype)
    out = ensure_writable_dir(out)
    subject = _load(model, backend, device, dtype, quiet)
    records = rio.run_validation(subject, scores, config, out, ks=mask_ks, n_draws=draws, batch_size=batch_size,
                                 run_info={"backend": subject.backend, "device": device, "dtype": dtype,
                                           "scores": str(scores_path)}, verbose=not quiet)
    for line in rio.masking_lines(records):
        typer.echo(line)
    _info(quiet, f"wrote {out / rio.MASKING_JSON}, {out / rio.MASKING_CSV}, {out / rio.DASHBOARD}")


def attention_influence(
    heads: str = typer.Option(..., "--heads", show_default=False,
                              help="A scores.json (with --top or --threshold) or a head list such as 'L5H1,L11H2'."),
    texts_file: Path = typer.Option(..., "--texts", exists=True, dir_okay=False, show_default=False,
                                    help="Text file, one text per line; blank lines are skipped."),
    out: Path = typer.Option(..., "--out", "-o", show_default=False,
                             help="Directory for influence.jsonl, influence.csv and influence.json."),
    model: str | None = typer.Option(None, "--model", "-m", show_default=False, help="Model id (default: the "
                                     "scores file's model, else gemma-3-270m)."),
    top: int | None = typer.Option(None, "--top", min=1, show_default=False, help="Mask the K best heads of the "
                                   "scores file."),
    threshold: float | None = typer.Option(None, "--threshold", show_default=False, help="Mask the scores file's "
                                           "heads above this (default 0.1)."),
    batch_size: int = options.BATCH_SIZE,
    backend: str = BACKEND,
    device: str = options.DEVICE,
    dtype: str = options.DTYPE,
    quiet: bool = options.QUIET,
) -> None:
    """Rank texts by AttentionInfluence: relative loss increase when the heads are masked to uniform attention."""
    if top is not None and threshold is not None:
        raise MechkitError("pass either --top or --threshold, not both")
    if (top is not None or threshold is not None) and not Path(heads).is_file():
        raise MechkitError(f"--top and --threshold select heads from a scores file, but --heads {heads!r} is not a "
                           "file; drop them or pass a scores.json")
    chosen = rio.select_heads(heads, top, threshold)
    if model is None:
        model = rio.load_scores(heads).model if Path(heads).is_file() else "gemma-3-270m"
    lines = read_texts(texts_file)
    _check_common(backend, dtype)
    out = ensure_writable_dir(out)
    subject = _load(model, backend, device, dtype, quiet)
    texts = [text for _, text in lines]
    ranked = influence_of(subject, texts, chosen, batch_size=batch_size, verbose=not quiet)
    config = {"command": "attention-influence", "heads": ",".join(h.label for h in chosen), "heads_source": heads,
              "top": top, "threshold": threshold, "texts_file": str(texts_file), "n_texts": len(texts),
              "batch_size": batch_size, "backend": subject.backend, "device": device, "dtype": dtype}
    rio.write_influence_outputs(out, ranked, subject, config)
    typer.echo(f"heads masked: {config['heads']}")
    for item in ranked[:10]:
        typer.echo(f"{item.rank:>3}  {item.influence:+.4f}  {item.text[:70]}")
    _info(quiet, f"wrote {out}/influence.jsonl, influence.csv, influence.json")
