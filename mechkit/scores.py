"""`HeadScores`: one number per attention head, with the metric name and provenance, and its file formats."""

from __future__ import annotations

import csv
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from jaxtyping import Float

from mechkit.errors import MechkitError
from mechkit.heads import HeadId, all_heads, parse_head
from mechkit.results import PROVENANCE_KEYS, SCHEMA_VERSION, write_records_csv, write_records_json

RECORD_KEYS = ("model", "layer", "head", "label", "metric", "score", "n_items", "seed")
HEAD_KINDS = ("query", "kv")


@dataclass
class HeadScores:
    """Scores `[n_layers, n_heads]` (stored as float64 on CPU); NaN marks a head that was not scored.

    `head_kind` says whether the head axis counts query heads or key/value heads (grouped-query attention).
    `config` is the run config; `provenance` is the header from `mechkit.results.provenance`.
    """

    scores: Float[torch.Tensor, "n_layers n_heads"]
    metric: str
    model: str
    n_items: int | None = None
    seed: int | None = None
    head_kind: str = "query"
    config: dict = field(default_factory=dict)
    provenance: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.scores, torch.Tensor) or self.scores.ndim != 2:
            shape = tuple(self.scores.shape) if isinstance(self.scores, torch.Tensor) else type(self.scores).__name__
            raise MechkitError(f"head scores must be a 2-D tensor [n_layers, n_heads], got {shape}.")
        if self.head_kind not in HEAD_KINDS:
            raise MechkitError(f"head_kind {self.head_kind!r} is not one of {', '.join(HEAD_KINDS)}.")
        self.scores = self.scores.detach().to(device="cpu", dtype=torch.float64)

    @property
    def n_layers(self) -> int:
        return self.scores.shape[0]

    @property
    def n_heads(self) -> int:
        return self.scores.shape[1]

    def __getitem__(self, spec: object) -> float:
        """Score of one head given as a HeadId or any `parse_head` spec (`"L3H2"`, `"3-2"`, `(3, 2)`)."""
        head = parse_head(spec, self.n_layers, self.n_heads)
        return self.scores[head.layer, head.head].item()

    def _scored(self) -> list[tuple[HeadId, float]]:
        """(head, score) for every head that has a score, layer-major."""
        pairs = zip(all_heads(self.n_layers, self.n_heads), self.scores.flatten().tolist())
        return [(head, score) for head, score in pairs if not math.isnan(score)]

    def top(self, k: int, largest: bool = True) -> list[tuple[HeadId, float]]:
        """The `k` highest (or lowest) scored heads, best first, NaN skipped; ties go to the earlier head."""
        if k < 0:
            raise MechkitError(f"top(k) needs k >= 0, got {k}.")
        sign = -1.0 if largest else 1.0
        return sorted(self._scored(), key=lambda pair: (sign * pair[1], pair[0]))[:k]

    def above(self, threshold: float) -> list[HeadId]:
        """Heads scoring strictly above `threshold`, layer-major; NaN never qualifies."""
        return [head for head, score in self._scored() if score > threshold]

    def labels(self) -> list[str]:
        """`L{l}H{h}` of every head, layer-major (the order of `scores.flatten()`)."""
        return [head.label for head in all_heads(self.n_layers, self.n_heads)]

    def to_records(self) -> list[dict]:
        """One tidy dict per head, layer-major, keys `RECORD_KEYS`; unscored heads keep `score` NaN."""
        pairs = zip(all_heads(self.n_layers, self.n_heads), self.scores.flatten().tolist())
        return [
            {"model": self.model, "layer": head.layer, "head": head.head, "label": head.label, "metric": self.metric,
             "score": score, "n_items": self.n_items, "seed": self.seed}
            for head, score in pairs
        ]

    def to_json(self, path: str | os.PathLike) -> Path:
        """Write the provenance header, metric, head_kind, shape and n_items, then `records` (NaN as null)."""
        header = {
            **self.provenance, "schema_version": SCHEMA_VERSION, "model": self.model, "config": self.config,
            "seed": self.seed, "metric": self.metric, "head_kind": self.head_kind, "n_items": self.n_items,
            "shape": [self.n_layers, self.n_heads],
        }
        return write_records_json(path, header, self.to_records())

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> HeadScores:
        """Read a file written by `to_json`; heads without a record are NaN."""
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
        if doc.get("schema_version") != SCHEMA_VERSION:
            raise MechkitError(
                f"{path} has schema_version {doc.get('schema_version')!r}, this mechkit reads {SCHEMA_VERSION}; "
                "use the mechkit version that wrote it."
            )
        return cls(
            scores=_grid(doc["records"], *doc["shape"]), metric=doc["metric"], model=doc["model"],
            n_items=doc["n_items"], seed=doc["seed"], head_kind=doc["head_kind"], config=doc["config"],
            provenance={k: doc[k] for k in PROVENANCE_KEYS if k in doc},
        )

    def to_csv(self, path: str | os.PathLike) -> Path:
        """Write `to_records()` as CSV with columns `RECORD_KEYS`; NaN scores and None become empty cells."""
        return write_records_csv(path, self.to_records(), RECORD_KEYS)

    @classmethod
    def from_csv(cls, path: str | os.PathLike, n_layers: int | None = None, n_heads: int | None = None) -> HeadScores:
        """Read a file written by `to_csv`; the shape is inferred from the largest layer/head unless given."""
        with Path(path).open(newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        missing = set(RECORD_KEYS) - set(rows[0] if rows else {})
        if missing:
            raise MechkitError(f"{path} is not a head-scores CSV (no rows or missing {', '.join(sorted(missing))}).")
        records = [
            {"layer": int(r["layer"]), "head": int(r["head"]), "score": float(r["score"]) if r["score"] else math.nan}
            for r in rows
        ]
        n_layers = n_layers if n_layers is not None else 1 + max(r["layer"] for r in records)
        n_heads = n_heads if n_heads is not None else 1 + max(r["head"] for r in records)
        n_items, seed = (_single(rows, key, path) for key in ("n_items", "seed"))
        return cls(
            scores=_grid(records, n_layers, n_heads), metric=_single(rows, "metric", path),
            model=_single(rows, "model", path), n_items=int(n_items) if n_items else None,
            seed=int(seed) if seed else None,
        )


def _grid(records: list[dict], n_layers: int, n_heads: int) -> Float[torch.Tensor, "n_layers n_heads"]:
    """NaN-filled `[n_layers, n_heads]` float64 tensor with each record's score (None = NaN) at (layer, head)."""
    grid = torch.full((n_layers, n_heads), math.nan, dtype=torch.float64)
    for r in records:
        parse_head((r["layer"], r["head"]), n_layers, n_heads)
        grid[r["layer"], r["head"]] = math.nan if r["score"] is None else r["score"]
    return grid


def _single(rows: list[dict], key: str, path: str | os.PathLike) -> str:
    """The one value column `key` takes in every row of a CSV, else MechkitError."""
    values = {r[key] for r in rows}
    if len(values) != 1:
        raise MechkitError(f"{path} mixes several values of {key} ({', '.join(sorted(values))}); split it per {key}.")
    return values.pop()
