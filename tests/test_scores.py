"""HeadScores: lookup, ranking with NaN, tidy records, exact JSON/CSV round trips, shape validation."""

import csv
import json
import math

import pytest
import torch

from mechkit.errors import HeadSpecError, MechkitError
from mechkit.heads import HeadId
from mechkit.results import provenance
from mechkit.scores import HeadScores

NAN = math.nan

# 3 layers x 4 heads; NaN = not scored. Values chosen so float64 -> text -> float64 is a real test (1/3, 1e-17).
GRID = [
    [0.5, NAN, -0.25, 1 / 3],
    [NAN, 0.9, 0.125, NAN],
    [1e-17, 0.75, NAN, 0.9],
]


def make_scores(**overrides):
    kwargs = dict(
        scores=torch.tensor(GRID, dtype=torch.float64), metric="retrieval", model="tiny-gpt", n_items=12, seed=7,
        config={"n_items": 12, "seed": 7, "lengths": [128, 256]},
    )
    kwargs.update(overrides)
    kwargs.setdefault("provenance", provenance(kwargs["model"], "ab" * 32, kwargs["config"], kwargs["seed"]))
    return HeadScores(**kwargs)


def assert_same(a: HeadScores, b: HeadScores):
    assert torch.equal(torch.isnan(a.scores), torch.isnan(b.scores))
    mask = ~torch.isnan(a.scores)
    assert a.scores[mask].tolist() == b.scores[mask].tolist()  # bit-exact floats
    for name in ("metric", "model", "n_items", "seed", "head_kind", "config", "provenance"):
        assert getattr(a, name) == getattr(b, name), name


def test_shape_and_lookup():
    s = make_scores()
    assert (s.n_layers, s.n_heads) == (3, 4)
    assert s[HeadId(1, 2)] == 0.125
    assert s["L0H3"] == 1 / 3
    assert s["2-1"] == 0.75
    assert s[(0, 2)] == -0.25
    assert math.isnan(s["L0H1"])
    with pytest.raises(HeadSpecError):
        s["L3H0"]
    with pytest.raises(HeadSpecError):
        s["L0H4"]


def test_top_skips_nan_and_breaks_ties_layer_major():
    s = make_scores()
    # scored heads: L0H0 .5, L0H2 -.25, L0H3 .333, L1H1 .9, L1H2 .125, L2H0 1e-17, L2H1 .75, L2H3 .9
    assert s.top(3) == [(HeadId(1, 1), 0.9), (HeadId(2, 3), 0.9), (HeadId(2, 1), 0.75)]
    assert s.top(2, largest=False) == [(HeadId(0, 2), -0.25), (HeadId(2, 0), 1e-17)]
    assert len(s.top(100)) == 8
    assert s.top(0) == []
    with pytest.raises(MechkitError):
        s.top(-1)


def test_above_is_strict_and_skips_nan():
    s = make_scores()
    assert s.above(0.5) == [HeadId(1, 1), HeadId(2, 1), HeadId(2, 3)]
    assert s.above(0.9) == []
    assert s.above(-1.0) == [HeadId(0, 0), HeadId(0, 2), HeadId(0, 3), HeadId(1, 1), HeadId(1, 2), HeadId(2, 0),
                             HeadId(2, 1), HeadId(2, 3)]


def test_labels_layer_major():
    assert make_scores().labels() == ["L0H0", "L0H1", "L0H2", "L0H3", "L1H0", "L1H1", "L1H2", "L1H3",
                                      "L2H0", "L2H1", "L2H2", "L2H3"]


def test_records_tidy_long_format():
    records = make_scores().to_records()
    assert len(records) == 12
    assert all(list(r) == ["model", "layer", "head", "label", "metric", "score", "n_items", "seed"] for r in records)
    assert records[6] == {"model": "tiny-gpt", "layer": 1, "head": 2, "label": "L1H2", "metric": "retrieval",
                          "score": 0.125, "n_items": 12, "seed": 7}
    assert math.isnan(records[1]["score"]) and records[1]["label"] == "L0H1"


def test_json_round_trip_exact(tmp_path):
    s = make_scores()
    path = s.to_json(tmp_path / "scores.json")
    assert_same(s, HeadScores.from_json(path))
    doc = json.loads(path.read_text())  # strict JSON: NaN written as null
    assert doc["schema_version"] == 1 and doc["shape"] == [3, 4] and doc["metric"] == "retrieval"
    assert doc["head_kind"] == "query" and doc["weights_sha256"] == "ab" * 32
    assert doc["records"][1]["score"] is None and doc["records"][3]["score"] == 1 / 3
    assert "NaN" not in path.read_text()


def test_json_round_trip_kv_heads_and_none_fields(tmp_path):
    s = make_scores(head_kind="kv", n_items=None, seed=None, config={}, provenance={"schema_version": 1,
                    "model": "tiny-gpt", "config": {}, "seed": None})
    assert_same(s, HeadScores.from_json(s.to_json(tmp_path / "kv.json")))


def test_json_rejects_other_schema_version(tmp_path):
    path = make_scores().to_json(tmp_path / "s.json")
    doc = json.loads(path.read_text())
    doc["schema_version"] = 2
    path.write_text(json.dumps(doc))
    with pytest.raises(MechkitError, match="schema_version 2"):
        HeadScores.from_json(path)


def test_csv_round_trip_exact(tmp_path):
    s = make_scores()
    path = s.to_csv(tmp_path / "scores.csv")
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["model", "layer", "head", "label", "metric", "score", "n_items", "seed"]
    assert rows[1]["score"] == "" and rows[1]["label"] == "L0H1"  # NaN is an empty cell
    assert float(rows[3]["score"]) == 1 / 3
    back = HeadScores.from_csv(path)
    assert torch.equal(torch.isnan(back.scores), torch.isnan(s.scores))
    assert back.scores.nan_to_num(-99).tolist() == s.scores.nan_to_num(-99).tolist()
    assert (back.metric, back.model, back.n_items, back.seed) == ("retrieval", "tiny-gpt", 12, 7)


def test_csv_shape_from_arguments_when_trailing_heads_unscored(tmp_path):
    grid = torch.full((2, 3), NAN, dtype=torch.float64)
    grid[0, 0] = 0.5
    path = tmp_path / "s.csv"
    # Only scored rows present, as a user-filtered CSV would be.
    path.write_text("model,layer,head,label,metric,score,n_items,seed\nm,0,0,L0H0,x,0.5,,\n")
    inferred = HeadScores.from_csv(path)
    assert inferred.scores.shape == (1, 1) and inferred.n_items is None and inferred.seed is None
    given = HeadScores.from_csv(path, n_layers=2, n_heads=3)
    assert given.scores.shape == (2, 3) and given["L0H0"] == 0.5 and torch.isnan(given.scores).sum() == 5


def test_csv_rejects_bad_files(tmp_path):
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(MechkitError):
        HeadScores.from_csv(empty)
    mixed = tmp_path / "mixed.csv"
    mixed.write_text("model,layer,head,label,metric,score,n_items,seed\nm,0,0,L0H0,a,1,,\nm,0,1,L0H1,b,2,,\n")
    with pytest.raises(MechkitError, match="metric"):
        HeadScores.from_csv(mixed)
    with pytest.raises(HeadSpecError):
        HeadScores.from_csv(mixed, n_layers=1, n_heads=1)  # (0, 1) lies outside 1x1


@pytest.mark.parametrize("bad", [torch.zeros(4), torch.zeros(2, 3, 4), torch.tensor(1.0), [[0.1, 0.2]]])
def test_bad_shape_rejected(bad):
    with pytest.raises(MechkitError, match="2-D"):
        HeadScores(bad, metric="m", model="x")


def test_bad_head_kind_rejected():
    with pytest.raises(MechkitError, match="head_kind"):
        make_scores(head_kind="key")


def test_scores_stored_as_cpu_float64():
    s = HeadScores(torch.tensor([[1, 2]], dtype=torch.int32), metric="m", model="x")
    assert s.scores.dtype == torch.float64 and s["L0H1"] == 2.0
