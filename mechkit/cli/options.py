"""Options shared by several commands, defined once so names, defaults and help read the same everywhere."""

from __future__ import annotations

import typer

MODEL = typer.Option(
    "gemma-3-270m", "--model", "-m",
    help="Registered model id (see `mechkit models list`), a local Hugging Face directory, or tiny:llama / "
    "tiny:gemma3.",
)
DEVICE = typer.Option("cpu", "--device", help="Torch device to run on, e.g. cpu, cuda, cuda:1.")
DTYPE = typer.Option("float32", "--dtype", help="Weights dtype: float32, float64, float16 or bfloat16.")
SEED = typer.Option(0, "--seed", help="Seed of every random choice (local generators; same seed, same numbers).")
BATCH_SIZE = typer.Option(8, "--batch-size", min=1, help="Texts per forward pass.")
OUT_DIR = typer.Option(
    None, "--out", "-o", show_default=False,
    help="Directory to write results into (created if missing; checked before any model is loaded).",
)
QUIET = typer.Option(False, "--quiet", "-q", help="No progress bars or info lines; results only.")
BACKEND_AUTO = typer.Option("auto", "--backend", help="auto, tl or nnsight (auto: TransformerLens when it converts "
                            "the model exactly, nnsight otherwise; native models need auto).")
