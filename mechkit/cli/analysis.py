"""`mechkit loss` and `mechkit dashboard`: thin commands over `mechkit.evaluation` and `mechkit.viz`."""

from __future__ import annotations

import contextlib
import io
import sys
from enum import Enum
from pathlib import Path

import typer

from mechkit.cli import options
from mechkit.errors import MechkitError
from mechkit.evaluation import mean_losses
from mechkit.heads import parse_heads
from mechkit.interventions import HeadAblation, UniformAttention
from mechkit.loading import load, parse_dtype
from mechkit.results import ensure_writable_dir, provenance, write_records_json
from mechkit.scores import HeadScores
from mechkit.viz import dashboard_html, head_heatmap, top_heads_table, write_dashboard

HEAD_SPEC = "comma-separated heads such as 'L3H2,4-1' (0-based layer and query head)"


class AblateMode(str, Enum):
    zero = "zero"
    mean = "mean"


def _labels(heads) -> str:
    return ",".join(head.label for head in heads)


def _info(quiet: bool, message: str) -> None:
    if not quiet:
        typer.echo(f"mechkit: {message}", err=True)


@contextlib.contextmanager
def _library_output(quiet: bool):
    """Libraries' prints go to stderr, never into the results on stdout; --quiet drops them and their bars."""
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    if quiet:
        hf_logging.disable_progress_bar()
    try:
        with contextlib.redirect_stdout(io.StringIO() if quiet else sys.stderr):
            yield
    finally:
        if bars:
            hf_logging.enable_progress_bar()


def read_texts(path: Path) -> list[tuple[int, str]]:
    """(1-based line number, text) for each non-blank line of `path`; an empty file is an error."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise MechkitError(f"cannot read texts file {path}: {err}; pass a UTF-8 text file, one text per line")
    texts = [(number, line) for number, line in enumerate(lines, start=1) if line.strip()]
    if not texts:
        raise MechkitError(f"texts file {path} has no non-blank lines; put one text per line")
    return texts


def _check_spec(option: str, spec: str | None) -> None:
    """Fail on a malformed head spec before any model is loaded (ranges are checked once the model is known)."""
    if spec is not None:
        try:
            parse_heads(spec)
        except MechkitError as err:
            raise MechkitError(f"{option}: {err}") from None


def loss(
    model: str = options.MODEL,
    texts_file: Path = typer.Option(..., "--texts", exists=True, dir_okay=False, show_default=False,
                                    help="Text file, one text per line; blank lines are skipped."),
    ablate: str | None = typer.Option(None, "--ablate", show_default=False, help=f"Heads to ablate: {HEAD_SPEC}."),
    ablate_mode: AblateMode = typer.Option(AblateMode.zero, "--ablate-mode",
                                           help="Replace ablated heads' outputs by zero, or by their mean over the "
                                           "batch's real tokens."),
    mask_uniform: str | None = typer.Option(None, "--mask-uniform", show_default=False,
                                            help=f"Heads masked to uniform attention over their visible keys: "
                                            f"{HEAD_SPEC}."),
    batch_size: int = options.BATCH_SIZE,
    device: str = options.DEVICE,
    dtype: str = options.DTYPE,
    out: Path | None = options.OUT_DIR,
    quiet: bool = options.QUIET,
) -> None:
    """Mean next-token loss (nats) of each text, clean and under the given head interventions."""
    lines = read_texts(texts_file)
    parse_dtype(dtype)
    _check_spec("--ablate", ablate)
    _check_spec("--mask-uniform", mask_uniform)
    if out is not None:
        out = ensure_writable_dir(out)

    _info(quiet, f"loading {model} on {device} ({dtype})")
    with _library_output(quiet):
        subject = load(model, device=device, dtype=dtype)
    ablated = subject.heads(ablate) if ablate is not None else []
    masked = subject.heads(mask_uniform) if mask_uniform is not None else []
    interventions, described = [], []
    if ablated:
        interventions.append(HeadAblation(ablated, mode=ablate_mode.value))
        described.append(f"ablate ({ablate_mode.value}) {_labels(ablated)}")
    if masked:
        interventions.append(UniformAttention(masked))
        described.append(f"mask-uniform {_labels(masked)}")

    texts = [text for _, text in lines]
    clean = mean_losses(subject, texts, batch_size=batch_size, verbose=not quiet)
    intervened = mean_losses(subject, texts, interventions, batch_size, verbose=not quiet) if interventions else clean

    mean_clean, mean_intervened = sum(clean) / len(clean), sum(intervened) / len(intervened)
    typer.echo(f"model: {model} ({subject.backend} backend)")
    typer.echo(f"texts: {len(texts)}")
    typer.echo(f"clean loss: {mean_clean:.4f} nats (mean over texts)")
    if interventions:
        typer.echo(f"intervened loss: {mean_intervened:.4f} nats ({'; '.join(described)})")
        typer.echo(f"change: {mean_intervened - mean_clean:+.4f} nats")
    if out is None:
        return
    config = {
        "command": "loss", "texts_file": str(texts_file), "n_texts": len(texts), "batch_size": batch_size,
        "device": device, "dtype": dtype, "backend": subject.backend, "ablate": _labels(ablated),
        "ablate_mode": ablate_mode.value, "mask_uniform": _labels(masked),
    }
    records = [
        {"model": model, "line": number, "text": text, "clean_loss": c, "loss": i, "delta": i - c}
        for (number, text), c, i in zip(lines, clean, intervened)
    ]
    path = write_records_json(out / "losses.json", provenance(model, subject.weights_sha256, config, None), records)
    _info(quiet, f"wrote {path}")


def dashboard(
    scores_json: Path = typer.Argument(..., exists=True, dir_okay=False, show_default=False,
                                       help="Head scores written by HeadScores.to_json."),
    out: Path = typer.Option(..., "--out", "-o", show_default=False, help="HTML file to write (self-contained)."),
    top: int = typer.Option(20, "--top", min=1, help="Rows in the top-heads table."),
) -> None:
    """Self-contained HTML dashboard of a head-scores file: heatmap, top-heads table, provenance."""
    if out.is_dir():
        raise MechkitError(f"--out {out} is a directory; pass an HTML file path such as {out / 'dashboard.html'}")
    ensure_writable_dir(out.parent)
    try:
        scores = HeadScores.from_json(scores_json)
    except MechkitError:
        raise
    except (ValueError, KeyError, TypeError) as err:
        raise MechkitError(f"{scores_json} is not a head-scores JSON ({type(err).__name__}: {err}); "
                           "pass a file written by HeadScores.to_json") from None
    notes = f"metric: {scores.metric}; heads: {scores.head_kind}; items: {scores.n_items}; seed: {scores.seed}"
    page = dashboard_html(
        f"{scores.metric}: {scores.model}",
        [head_heatmap(scores), top_heads_table(scores, top)],
        notes=notes,
        provenance={"model": scores.model, "config": scores.config, **scores.provenance},
    )
    typer.echo(write_dashboard(out, page))
