"""Running the `mechkit` CLI in-process and checking one-line errors, from the CLI and from the API (shared by tests)."""

from __future__ import annotations

import re

from typer.testing import CliRunner

from mechkit.cli import app

ANSI = re.compile(r"\x1b\[[0-9;]*m")


def run(*args: str):
    """Invoke `mechkit ARGS`; the result gets `.out` / `.err` without ANSI colours."""
    result = CliRunner().invoke(app, list(args), env={"COLUMNS": "200"})
    result.out, result.err = ANSI.sub("", result.stdout), ANSI.sub("", result.stderr)
    return result


def assert_one_line_error(result, *fragments: str) -> str:
    """Exit code 2 and exactly one `mechkit: error: ...` line, last on stderr, containing every fragment."""
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    errors = [line for line in result.err.splitlines() if line.startswith("mechkit: error: ")]
    assert len(errors) == 1 and result.err.rstrip().endswith(errors[0]), result.err
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


def assert_one_sentence(err, *parts: str) -> str:
    """A MechkitError (from `pytest.raises`) whose message is one line containing every part."""
    from mechkit.errors import MechkitError

    message = str(err.value)
    assert isinstance(err.value, MechkitError) and "\n" not in message, message
    for part in parts:
        assert part in message, message
    return message
