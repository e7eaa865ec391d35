"""`mechkit train`: train a native model on MQAR, induction or REGBENCH (a thin command over
`mechkit.native.train.train`)."""

from __future__ import annotations

from pathlib import Path

import typer

from mechkit.cli import options
from mechkit.errors import MechkitError
from mechkit.native.checkpoint import read_config
from mechkit.native.train import TrainConfig
from mechkit.native.train import train as train_model


def _mixers(spec: str, layers: int | None) -> tuple[str, ...]:
    names = tuple(name.strip() for name in spec.split(","))
    if len(names) == 1:
        return names * (layers or 2)
    if layers is not None and layers != len(names):
        raise MechkitError(f"--mixer lists {len(names)} layers but --layers is {layers}; drop --layers or list one "
                           "mixer per layer")
    return names


def train(
    task: str = typer.Option("mqar", "--task", help="mqar, induction (repeated random tokens) or regbench."),
    mixer: str = typer.Option("softmax", "--mixer", help="One mixer for every layer (softmax, sliding_window, "
                              "linear, linear_normalized, based, delta_net, gated_delta_net, kaczmarz), or one per "
                              "layer separated by commas, e.g. based,sliding_window."),
    layers: int | None = typer.Option(None, "--layers", min=1, show_default=False, help="Layers (default 2, or "
                                      "the length of a --mixer list)."),
    d_model: int = typer.Option(64, "--d-model", min=1, help="Residual stream width."),
    heads: int = typer.Option(1, "--heads", min=1, help="Heads per layer."),
    d_mlp: int = typer.Option(0, "--d-mlp", min=0, help="MLP width (0: attention-only blocks, as Zoology's MQAR)."),
    feature_dim: int = typer.Option(16, "--feature-dim", min=1, help="Based q/k width per head."),
    window: int = typer.Option(64, "--window", min=1, help="Keys a sliding_window layer sees (its own "
                               "included)."),
    seq_len: int = typer.Option(128, "--seq-len", min=2, help="Tokens per training sequence (the context length)."),
    kv_pairs: int = typer.Option(8, "--kv-pairs", min=1, help="MQAR key-value pairs per sequence."),
    vocab: int = typer.Option(256, "--vocab", min=2, help="Vocabulary of mqar and induction (regbench has 20)."),
    n_train: int = typer.Option(20_000, "--n-train", min=1, help="Training examples (regbench: automata)."),
    n_test: int = typer.Option(1_000, "--n-test", min=1, help="Test examples (regbench: automata)."),
    steps: int = typer.Option(2_000, "--steps", min=1, help="Optimizer steps."),
    batch_size: int = typer.Option(64, "--batch-size", min=1, help="Sequences per step."),
    lr: float = typer.Option(1e-3, "--lr", help="Peak AdamW learning rate (warmup 100 steps, cosine to 0)."),
    eval_every: int = typer.Option(250, "--eval-every", min=1, help="Steps between test evaluations and checkpoints."),
    target_accuracy: float | None = typer.Option(None, "--target-accuracy", show_default=False,
                                                 help="Stop at the first evaluation reaching this test accuracy."),
    kernel: str = typer.Option("chunk", "--kernel", help="chunk (PyTorch), triton or naive."),
    seed: int = options.SEED,
    out: Path = typer.Option(..., "--out", "-o", help="Run directory (checkpoint + config.json); rerun the same "
                             "command to resume a killed run."),
    quiet: bool = options.QUIET,
) -> None:
    """Train a native model and print its run directory and final test accuracy."""
    config = TrainConfig(
        out=str(out), task=task, mixers=_mixers(mixer, layers), d_model=d_model, n_heads=heads, d_mlp=d_mlp,
        feature_dim=feature_dim, window=window, seq_len=seq_len, kv_pairs=kv_pairs, vocab_size=vocab,
        n_train=n_train, n_test=n_test, steps=steps, batch_size=batch_size, lr=lr, eval_every=eval_every,
        target_accuracy=target_accuracy, kernel=kernel, seed=seed)
    directory = train_model(config, verbose=not quiet)
    metrics = read_config(directory)["metrics"]
    typer.echo(f"{directory}  test accuracy {metrics['test_accuracy']:.4f} after {metrics['step']} steps")
