"""Head identifiers and parsing of every accepted head-spec form."""

import pytest

from mechkit.errors import HeadSpecError, MechkitError
from mechkit.heads import HeadId, all_heads, parse_head, parse_heads


def test_label_str_and_order():
    head = HeadId(3, 2)
    assert head.label == "L3H2"
    assert str(head) == "L3H2"
    assert sorted([HeadId(1, 0), HeadId(0, 5), HeadId(0, 1)]) == [HeadId(0, 1), HeadId(0, 5), HeadId(1, 0)]
    with pytest.raises(AttributeError):
        head.layer = 4  # frozen


@pytest.mark.parametrize(
    "spec", [HeadId(3, 2), (3, 2), [3, 2], "L3H2", "l3h2", " L3H2 ", "3-2", "L03H02"],
)
def test_parse_head_forms(spec):
    assert parse_head(spec) == HeadId(3, 2)


@pytest.mark.parametrize(
    "spec",
    ["", "L3", "H2", "3_2", "3-", "L3H2H1", "L-1H2", "1.5-2", (-1, 2), (3,), (3, 2, 1), (True, 1), 3, 3.0, None],
)
def test_parse_head_rejects_malformed(spec):
    with pytest.raises(HeadSpecError) as info:
        parse_head(spec)
    message = str(info.value)
    assert repr(spec) in message
    assert "'L3H2'" in message and "'3-2'" in message  # names the accepted forms
    assert isinstance(info.value, MechkitError) and isinstance(info.value, ValueError)


def test_parse_head_range_checks():
    assert parse_head("L2H7", n_layers=3, n_heads=8) == HeadId(2, 7)
    with pytest.raises(HeadSpecError, match=r"'L3H0'.*3 layers"):
        parse_head("L3H0", n_layers=3, n_heads=8)
    with pytest.raises(HeadSpecError, match=r"'0-8'.*8 heads"):
        parse_head("0-8", n_layers=3, n_heads=8)


def test_parse_heads_string_and_iterables():
    assert parse_heads("L3H2,4-1") == [HeadId(3, 2), HeadId(4, 1)]
    assert parse_heads(" l0h1 , 2-0 ") == [HeadId(0, 1), HeadId(2, 0)]
    mixed = ["L1H1", (0, 2), HeadId(5, 5), "7-3"]
    assert parse_heads(mixed) == [HeadId(1, 1), HeadId(0, 2), HeadId(5, 5), HeadId(7, 3)]
    assert parse_heads([HeadId(0, 1), HeadId(2, 3)]) == [HeadId(0, 1), HeadId(2, 3)]
    assert parse_heads((h for h in ["1-1"])) == [HeadId(1, 1)]
    assert parse_heads([]) == []


def test_parse_heads_single_head_specs():
    assert parse_heads((3, 2)) == [HeadId(3, 2)]
    assert parse_heads(HeadId(3, 2)) == [HeadId(3, 2)]
    assert parse_heads("L3H2") == [HeadId(3, 2)]


def test_parse_heads_layer_to_head_dict():
    assert parse_heads({0: [1, 2], 3: [0]}) == [HeadId(0, 1), HeadId(0, 2), HeadId(3, 0)]


@pytest.mark.parametrize("spec", ["L3H2,", "L3H2,,1-1", "L3H2;1-1", ["L3H2", "x"], {0: 3}, {"a": [1]}, 5])
def test_parse_heads_rejects_malformed(spec):
    with pytest.raises(HeadSpecError):
        parse_heads(spec)


def test_parse_heads_range_checks():
    with pytest.raises(HeadSpecError, match="'1-4'"):
        parse_heads("L0H0,1-4", n_layers=2, n_heads=4)


def test_all_heads_layer_major():
    assert all_heads(2, 3) == [HeadId(0, 0), HeadId(0, 1), HeadId(0, 2), HeadId(1, 0), HeadId(1, 1), HeadId(1, 2)]
    assert all_heads(0, 4) == []
