"""The port-list parser of ``portside scan -p``: examples, refusals, and properties."""

from __future__ import annotations

import ast
import contextlib
import itertools
from pathlib import Path

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from portside.errors import TargetError, UsageError
from portside.portrange import (
    ALL_PORTS,
    count_ports,
    format_ports,
    format_ranges,
    merge_ranges,
    parse_port_ranges,
    parse_ports,
    ranges_of,
)

MODULE = Path(__file__).resolve().parents[2] / "src" / "portside" / "portrange.py"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("22", [range(22, 23)]),
        ("1-1024", [range(1, 1025)]),
        ("1-1024,8080,9000-9100", [range(1, 1025), range(8080, 8081), range(9000, 9101)]),
        ("-", [ALL_PORTS]),
        ("-1024", [range(1, 1025)]),
        ("60000-", [range(60000, 65536)]),
        (" 80 , 443 ", [range(80, 81), range(443, 444)]),
        ("443,80", [range(80, 81), range(443, 444)]),
        ("1-10,5-20", [range(1, 21)]),
        ("1-10,11-20", [range(1, 21)]),  # adjacent ranges merge
        ("8080,8080", [range(8080, 8081)]),
        ("1-5,-", [ALL_PORTS]),
        ("65535", [range(65535, 65536)]),
        ("0080", [range(80, 81)]),
    ],
)
def test_examples(text, expected):
    assert parse_port_ranges(text) == tuple(expected)


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("", "no ports given"),
        ("   ", "no ports given"),
        ("http", "not a port number"),
        ("0", "port 0 cannot be scanned"),
        ("0-10", "port 0 cannot be scanned"),
        ("65536", "out of range"),
        ("99999999999999999999999", "out of range"),
        ("9" * 5000, "out of range"),
        ("100-1", "backwards; write 1-100"),
        ("1-2-3", "not a port or a range"),
        ("--", "not a port or a range"),
        ("1,,2", "empty item"),
        ("1,", "empty item"),
        ("80 443", "separate ports with commas"),
        ("٣", "not a port number"),  # a non-ASCII digit
        ("1-x", "not a port number"),
    ],
)
def test_refusals_name_the_problem_and_the_fix(text, says):
    with pytest.raises(TargetError) as caught:
        parse_port_ranges(text)
    message = str(caught.value)
    assert says in message
    assert "\n" not in message
    assert isinstance(caught.value, UsageError)  # exit code 2


def test_a_huge_text_is_refused_at_once():
    with pytest.raises(TargetError, match="too long"):
        parse_port_ranges("1," * 100_000)


def test_parse_ports_lists_each_port_once_in_order():
    assert parse_ports("5,1-3,2") == [1, 2, 3, 5]
    assert len(parse_ports("-")) == 65535


def test_format_is_the_shortest_text():
    assert format_ports([5, 1, 2, 3, 3]) == "1-3,5"
    assert format_ports(range(1, 65536)) == "-"
    assert format_ports([]) == ""
    assert format_ranges([range(80, 81), range(8000, 8101)]) == "80,8000-8100"


def test_ranges_of_refuses_non_ports():
    with pytest.raises(ValueError, match="1-65535"):
        ranges_of([0, 5])
    with pytest.raises(ValueError, match="1-65535"):
        ranges_of([65536])


def test_the_module_is_pure():
    """No I/O module is imported, so the parser can be fuzzed anywhere."""
    imported: set[str] = set()
    for node in ast.walk(ast.parse(MODULE.read_text())):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert imported <= {"__future__", "collections", "portside"}


# --------------------------------------------------------------------------- properties

ports = st.integers(min_value=1, max_value=65535)
port_sets = st.sets(ports, max_size=200)


@st.composite
def range_items(draw: st.DrawFn) -> tuple[str, set[int]]:
    """One item of a port list as text, and the ports it means."""
    kind = draw(st.sampled_from(["port", "range", "open-low", "open-high"]))
    low = draw(ports)
    high = draw(st.integers(min_value=low, max_value=min(65535, low + 3000)))
    if kind == "port":
        return str(low), {low}
    if kind == "range":
        return f"{low}-{high}", set(range(low, high + 1))
    if kind == "open-low":
        return f"-{high}", set(range(1, high + 1))
    return f"{low}-", set(range(low, 65536))


@given(st.lists(range_items(), min_size=1, max_size=8), st.sampled_from([",", ", ", " ,"]))
def test_a_list_means_the_union_of_its_items(items, separator):
    text = separator.join(item for item, _ in items)
    expected = set().union(*(ports for _, ports in items))
    ranges = parse_port_ranges(text)
    assert {p for r in ranges for p in r} == expected
    assert count_ports(ranges) == len(expected)


@given(port_sets)
def test_format_then_parse_is_the_identity(chosen):
    text = format_ports(chosen)
    if not chosen:
        assert text == ""
        return
    assert set(parse_ports(text)) == chosen


@given(port_sets)
def test_merged_ranges_are_sorted_disjoint_and_not_adjacent(chosen):
    ranges = ranges_of(chosen)
    for earlier, later in itertools.pairwise(ranges):
        assert earlier.stop < later.start  # a gap of at least one port between them
    assert all(r.step == 1 and len(r) > 0 for r in ranges)
    assert merge_ranges(ranges) == ranges


@given(st.lists(st.tuples(ports, ports), max_size=20))
def test_merge_ranges_keeps_every_port(pairs):
    ranges = [range(min(a, b), max(a, b) + 1) for a, b in pairs]
    merged = merge_ranges(ranges)
    assert {p for r in merged for p in r} == {p for r in ranges for p in r}


@given(st.text(max_size=60))
@example("1-")
@example("-0")
@example("65535-1")
@example("1,-")
@example("\x00")
def test_any_text_parses_or_is_a_target_error(text):
    try:
        ranges = parse_port_ranges(text)
    except TargetError as exc:
        message = str(exc)
    else:
        assert ranges
        assert all(r.start >= 1 and r.stop <= 65536 for r in ranges)
        return
    assert "\n" not in message


@given(st.text(alphabet="0123456789-, ", max_size=40))
def test_port_like_text_parses_or_is_a_target_error(text):
    with contextlib.suppress(TargetError):
        parse_port_ranges(text)
