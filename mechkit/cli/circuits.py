"""`mechkit find-circuit`: a thin command over `mechkit.circuits.find` (every option is checked before any model is
loaded or compiled)."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import typer

from mechkit.cli import options
from mechkit.cli.analysis import _info
from mechkit.cli.retrieval import _check_common, _load
from mechkit.errors import MechkitError
from mechkit.results import ensure_writable_dir

BUILTIN = ("ioi", "greater-than", "docstring")
REFERENCES = ("none", "patching")
DEFAULT_MODEL = "gemma-3-270m"
TASK_HELP = ("ioi, greater-than, docstring (real-model tasks, --model), tracr:<program> (a compiled RASP program: "
             "reverse, sort, hist, frac_prevs, pair_balance, shuffle_dyck2), planted (the induction circuit of "
             "native:induction-attn-only), or a JSONL file of {positive, negative, answer, wrong} lines. tracr and "
             "planted imply the model and know the true heads (ROC-AUC is reported).")


@dataclass(frozen=True)
class TaskSpec:
    """A parsed --task: kind is "builtin", "tracr", "planted" or "file"; rows: the file's checked lines."""

    kind: str
    name: str
    rows: list | None = None


def parse_task(task: str) -> TaskSpec:
    """Check --task without loading anything (tracr program names, task-file lines)."""
    if task in BUILTIN:
        return TaskSpec("builtin", task)
    if task == "planted":
        return TaskSpec("planted", task)
    if task.startswith("tracr:"):
        from mechkit.circuits.tracr_models import get_spec

        return TaskSpec("tracr", get_spec(task.removeprefix("tracr:")).name)
    if Path(task).is_file():
        from mechkit.circuits.find import load_task_file

        return TaskSpec("file", task, load_task_file(task))
    raise MechkitError(f"--task {task!r} is neither a built-in task ({', '.join(BUILTIN)}), tracr:<program>, planted, "
                       "nor an existing JSONL file")


def _check(spec: TaskSpec, model: str | None, method: str, n: int, sae_examples: int, min_accuracy: float,
           sae_pooling: str = "mean", reference: str = "none", threshold: float = 0.05) -> None:
    from mechkit.circuits.find import check_method
    from mechkit.circuits.sae_discovery import POOLINGS

    check_method(method)
    if sae_pooling not in POOLINGS:
        raise MechkitError(f"--sae-pooling {sae_pooling!r} is not one of {', '.join(POOLINGS)}")
    if reference not in REFERENCES:
        raise MechkitError(f"--reference {reference!r} is not one of {', '.join(REFERENCES)}")
    if reference == "patching" and (spec.kind in ("tracr", "planted") or method == "patching"):
        raise MechkitError("--reference patching scores a method against exhaustive patching on a task without a "
                           "known circuit; drop it for tracr / planted tasks (they have one) and for --method patching")
    if not threshold > 0:
        raise MechkitError(f"--reference-threshold {threshold} must be positive")
    if spec.kind in ("tracr", "planted") and model is not None:
        raise MechkitError(f"--task {spec.kind if spec.kind == 'planted' else 'tracr:' + spec.name} brings its own "
                           f"model; drop --model {model}")
    if n < 1:
        raise MechkitError(f"--n {n} must be a positive number of positive / negative pairs")
    if not 0.0 <= min_accuracy <= 1.0:
        raise MechkitError(f"--min-accuracy {min_accuracy} must lie in 0..1")
    pairs = min(n, len(spec.rows)) if spec.rows is not None else n
    if method == "sae" and 2 * pairs < max(sae_examples, 4):
        raise MechkitError(f"{pairs} pair(s) give {2 * pairs} prompts but the SAE trains on --sae-examples "
                           f"{sae_examples} (and needs at least 2 pairs); raise --n or lower --sae-examples")
    if sae_examples < 1:
        raise MechkitError(f"--sae-examples {sae_examples} must be at least 1")


def find_circuit_command(
    task: str = typer.Option(..., "--task", "-t", show_default=False, help=TASK_HELP),
    model: str | None = typer.Option(None, "--model", "-m", show_default=False, help="Model id for ioi, "
                                     f"greater-than, docstring and task files (default {DEFAULT_MODEL}); not "
                                     "allowed with tracr:<program> or planted."),
    method: str = typer.Option("patching", "--method", help="sae (discrete-SAE node scores + head-pair edges), "
                               "patching (exhaustive head activation patching), eap (edge attribution patching, "
                               "AtP* node scores + edges; causal models only), atp (node attribution patching)."),
    n: int = typer.Option(32, "--n", "-n", help="Positive / negative pairs (task files: the first N lines)."),
    seed: int = options.SEED,
    min_accuracy: float = typer.Option(0.5, "--min-accuracy", help="Refuse when the model solves fewer positives "
                                       "(argmax) than this."),
    allow_unsolvable: bool = typer.Option(False, "--allow-unsolvable", help="Warn instead of refusing below "
                                          "--min-accuracy (the scores then mean little)."),
    sae_examples: int = typer.Option(10, "--sae-examples", help="Prompts the SAE trains on (method sae; needs 2 N "
                                     ">= this)."),
    sae_latents: int = typer.Option(200, "--sae-latents", help="SAE dictionary size (method sae)."),
    sae_epochs: int = typer.Option(500, "--sae-epochs", help="SAE training epochs, full batch (method sae)."),
    sae_pooling: str = typer.Option("mean", "--sae-pooling", help="How a head's output becomes one vector (method "
                                    "sae): mean over the prompt's tokens (the paper's) or last (the read position)."),
    reference: str = typer.Option("none", "--reference", help="none, or patching: run exhaustive head patching "
                                  "first and score the method against its heads (tasks without a known circuit)."),
    reference_threshold: float = typer.Option(0.05, "--reference-threshold", help="With --reference patching: the "
                                              "reference circuit is the heads carrying at least this share of the "
                                              "clean - corrupt gap (|normalized effect|)."),
    qk_fix: bool = typer.Option(True, "--qk-fix/--no-qk-fix", help="AtP* QK fix for saturated attention (method "
                                "eap)."),
    batch_size: int = typer.Option(32, "--batch-size", min=1, help="Pairs per forward pass."),
    backend: str = options.BACKEND_AUTO,
    device: str = options.DEVICE,
    dtype: str = options.DTYPE,
    out: Path = typer.Option(Path("results/circuit"), "--out", "-o", help="Directory for circuit.json, scores.csv "
                             "and dashboard.html (checked before any model is loaded)."),
    quiet: bool = options.QUIET,
) -> None:
    """Find the heads of a task's circuit and write circuit.json, scores.csv and dashboard.html."""
    from mechkit.circuits.find import file_examples, find_circuit, write_circuit_outputs
    from mechkit.circuits.sae_discovery import SAEDiscoveryConfig

    spec = parse_task(task)
    _check(spec, model, method, n, sae_examples, min_accuracy, sae_pooling, reference, reference_threshold)
    _check_common(backend, dtype)
    out = ensure_writable_dir(out)
    truth = None
    if spec.kind == "tracr":
        from mechkit.circuits.find import tracr_task

        _info(quiet, f"compiling tracr program {spec.name}")
        compiled = tracr_task(spec.name)
        subject, examples, truth = compiled.subject, compiled.examples(n, seed), compiled.true_heads
    elif spec.kind == "planted":
        from mechkit.circuits.planted import ZOO_MODEL, induction_examples, planted_induction_circuit

        subject = _load(ZOO_MODEL, "auto", device, dtype, quiet)
        truth = planted_induction_circuit(subject, seed=seed, verbose=not quiet).heads
        examples = induction_examples(subject, n, seed=seed)
    else:
        subject = _load(model or DEFAULT_MODEL, backend, device, dtype, quiet)
        if spec.kind == "file":
            examples = file_examples(subject, spec.rows[:n], spec.name)
        else:
            from mechkit.tasks.circuit_tasks import get_task

            examples = get_task(spec.name)(subject, n, seed)
    sae = SAEDiscoveryConfig(n_latents=sae_latents, n_epochs=sae_epochs, n_sae_examples=sae_examples,
                             pooling=sae_pooling, batch_size=batch_size, seed=seed)
    on_unsolvable = "warn" if allow_unsolvable else "raise"
    reference_info = None
    if reference == "patching":
        from mechkit.circuits.metrics import reference_heads

        _info(quiet, "exhaustive head patching for the reference circuit")
        patched = find_circuit(subject, examples, "patching", None, sae, qk_fix, batch_size, min_accuracy,
                               on_unsolvable, verbose=not quiet)
        truth = reference_heads(patched.scores, reference_threshold)
        reference_info = {"method": "patching", "threshold": reference_threshold, "wall_s": patched.wall_s,
                          "heads": [h.label for h in truth]}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = find_circuit(subject, examples, method, truth, sae, qk_fix, batch_size, min_accuracy,
                              on_unsolvable, verbose=not quiet)
    if reference_info is not None:
        result.extra["reference"] = reference_info
    notes = list(dict.fromkeys(str(w.message) for w in caught if issubclass(w.category, UserWarning)
                               and "solves only" in str(w.message)))  # each method checks again: keep one
    if notes:
        result.note = "; ".join([*notes, result.note] if result.note else notes)
    config = {"task": task, "method": method, "n": n, "min_accuracy": min_accuracy,
              "allow_unsolvable": allow_unsolvable, "batch_size": batch_size, "backend": getattr(subject, "backend",
                                                                                                  backend),
              "device": device, "dtype": dtype, "qk_fix": qk_fix,
              "sae": {"n_latents": sae_latents, "n_epochs": sae_epochs, "n_sae_examples": sae_examples,
                      "pooling": sae_pooling}, "reference": reference, "reference_threshold": reference_threshold}
    paths = write_circuit_outputs(out, result, subject, config, seed)
    for line in result.summary_lines():
        typer.echo(line)
    _info(quiet, f"wrote {out}/ ({', '.join(path.name for path in paths)})")
