"""The `mechkit` command line: a thin layer over the Python API (each command parses arguments, calls one function).

Bad input (a `MechkitError`) becomes one line `mechkit: error: <message>` on stderr and exit code 2; any other
exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import sys
from typing import Any

import typer
from typer.core import TyperGroup

from mechkit.cli import analysis, models, patterns, retrieval
from mechkit.cli import binding, rhythm
from mechkit.cli import train
from mechkit.cli import circuits, conflicts
from mechkit.errors import MechkitError


def _report(err: MechkitError) -> None:
    message = " ".join(str(err).split())  # always exactly one line
    typer.echo(f"mechkit: error: {message}", err=True)


class _MechkitGroup(TyperGroup):
    """Top-level group turning MechkitError from any subcommand into the one-line message and exit code 2."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except MechkitError as err:
            _report(err)
            raise typer.Exit(2) from None


app = typer.Typer(
    name="mechkit",
    cls=_MechkitGroup,
    help="Find the attention heads and mechanisms that do a job in a language model, offline.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)

app.add_typer(models.app, name="models")
app.command("loss")(analysis.loss)
app.command("dashboard")(analysis.dashboard)
app.command("find-retrieval-heads")(retrieval.find_retrieval_heads)
app.command("validate-heads")(retrieval.validate_heads)
app.command("attention-influence")(retrieval.attention_influence)
app.command("find-induction-heads")(patterns.find_induction_heads)
app.command("find-ngram-heads")(patterns.find_ngram_heads)
app.command("attention-rhythm")(rhythm.attention_rhythm)
app.command("find-binding")(binding.find_binding)
app.command("train")(train.train)
app.command("find-circuit")(circuits.find_circuit_command)
app.command("conflict-heads")(conflicts.conflict_heads_command)


def main() -> None:
    """Console entry point (`mechkit = "mechkit.cli:main"`)."""
    try:
        app(prog_name="mechkit")
    except MechkitError as err:  # raised outside a subcommand's invoke, e.g. while parsing
        _report(err)
        sys.exit(2)
