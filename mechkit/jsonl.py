"""Reading JSONL input files (one JSON value per line), with one-sentence errors naming the file and the line."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from mechkit.errors import MechkitError


def read_jsonl(path: str | os.PathLike, what: str, hint: str) -> list[tuple[int, str, Any]]:
    """(line number, where, parsed value) for each non-blank line of a UTF-8 JSONL file; `where` is
    "{what} {path}, line {n}", for the caller's own field errors. A file that cannot be read, or a line that is not
    JSON, raises MechkitError ending in `hint` (what to write instead)."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise MechkitError(f"cannot read {what} {path} ({err}); {hint}") from None
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{what} {path}, line {number}"
        try:
            records.append((number, where, json.loads(line)))
        except json.JSONDecodeError as err:
            raise MechkitError(f"{where} is not valid JSON ({err.msg} at column {err.colno}); {hint}") from None
    return records
