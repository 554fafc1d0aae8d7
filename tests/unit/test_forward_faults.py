"""The pure parts of ``portside forward``: fault text forms, the mapping form, the
schedule (driven with made-up times), and the TOML configuration."""

from __future__ import annotations

import itertools
import random

import pytest

from portside.errors import UsageError
from portside.net.faults import (
    SLICE_GAP_S,
    Action,
    Direction,
    Faults,
    LinkFaults,
    Schedule,
    faults_from_mapping,
    faults_to_mapping,
    format_duration,
    format_rate,
    format_size,
    parse_duration,
    parse_rate,
    parse_size,
    parse_timeout_after,
    split_direction,
)
from portside.net.forward import load_config, parse_listen, parse_upstream


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("50ms", 0.05), ("1.5s", 1.5), ("250us", 250e-6), ("2min", 120.0), ("1h", 3600.0), ("0", 0)],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["50", "5 parsecs", "-1s", "", "2d", "25h"])
def test_parse_duration_refuses(text: str) -> None:
    with pytest.raises(UsageError):
        parse_duration(text)


@pytest.mark.parametrize(
    ("text", "size"),
    [("1500", 1500), ("64k", 64_000), ("64KiB", 65_536), ("1MB", 10**6), ("1mi", 1 << 20)],
)
def test_parse_size(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["1.5", "64 furlongs", "2PiB", "k"])
def test_parse_size_refuses(text: str) -> None:
    with pytest.raises(UsageError):
        parse_size(text)


@pytest.mark.parametrize(
    ("text", "rate"),
    [("1mbit", 125_000.0), ("500kbps", 500_000.0), ("8bit", 1.0), ("1kibit", 128.0)],
)
def test_parse_rate_bits_and_bytes_as_tc(text: str, rate: float) -> None:
    assert parse_rate(text) == rate


@pytest.mark.parametrize("text", ["100", "0mbit", "1 mph"])
def test_parse_rate_refuses(text: str) -> None:
    with pytest.raises(UsageError):
        parse_rate(text)


def test_timeout_after_is_a_time_or_a_size() -> None:
    assert parse_timeout_after("5s") == (5.0, None)
    assert parse_timeout_after("64KiB") == (None, 65_536)
    with pytest.raises(UsageError):
        parse_timeout_after("5")


@pytest.mark.parametrize("seconds", [0.0, 0.05, 1.5, 120.0, 250e-6, 0.0123])
def test_format_duration_reads_back(seconds: float) -> None:
    assert parse_duration(format_duration(seconds)) == seconds


@pytest.mark.parametrize("size", [1, 1500, 1024, 65_536, 3 << 30])
def test_format_size_reads_back(size: int) -> None:
    assert parse_size(format_size(size)) == size


@pytest.mark.parametrize("rate", [125_000.0, 1.0, 312.5, 1.25e9])
def test_format_rate_reads_back(rate: float) -> None:
    assert parse_rate(format_rate(rate)) == rate


def test_split_direction() -> None:
    assert split_direction("up:50ms") == ((Direction.UP,), "50ms")
    assert split_direction("DOWN:1mbit") == ((Direction.DOWN,), "1mbit")
    assert split_direction("50ms") == ((Direction.UP, Direction.DOWN), "50ms")
    with pytest.raises(UsageError):
        split_direction("sideways:50ms")


def test_mapping_round_trip_and_patch() -> None:
    faults = faults_from_mapping(
        {"latency": "50ms", "down": {"bandwidth": "1mbit", "slice": 100}, "refuse": False}
    )
    assert faults.up == LinkFaults(latency_s=0.05)
    assert faults.down == LinkFaults(latency_s=0.05, bandwidth_bytes_per_s=125_000, slice_bytes=100)
    assert faults_from_mapping(faults_to_mapping(faults)) == faults
    patched = faults_from_mapping({"up": {"latency": "off", "reset_after": "1KiB"}}, base=faults)
    assert patched.up == LinkFaults(reset_after_bytes=1024)
    assert patched.down == faults.down  # untouched by the PATCH
    assert faults_from_mapping({"timeout_after": "4KiB"}).up.timeout_after_bytes == 4096
    assert faults_from_mapping(faults_to_mapping(Faults(refuse=True))).refuse


@pytest.mark.parametrize(
    "mapping",
    [
        {"latncy": "50ms"},
        {"up": {"refuse": True}},
        {"bandwidth": 1000},
        {"slice": 0},
        {"latency": True},
        {"refuse": "yes"},
        {"up": "50ms"},
    ],
)
def test_mapping_refuses(mapping: dict[str, object]) -> None:
    with pytest.raises(UsageError):
        faults_from_mapping(mapping)


# -- the schedule -------------------------------------------------------------------------------


def _pieces(schedule: Schedule, ready: float, size: int) -> list[tuple[float, Action, int]]:
    steps = []
    left = size
    while left:
        step = schedule.next_piece(ready, left)
        steps.append((step.at, step.action, step.size))
        if step.action is not Action.DATA:
            break
        left -= step.size
        after = schedule.after_data()
        if after is not None:
            steps.append((after.at, after.action, 0))
            break
    return steps


def test_latency_delays_and_keeps_order() -> None:
    schedule = Schedule(LinkFaults(latency_s=0.1, jitter_s=0.05), start=0.0, rng=random.Random(1))  # noqa: S311
    readies = [schedule.arrive(t / 100) for t in range(50)]
    assert readies == sorted(readies)
    assert all(r >= t / 100 + 0.05 for t, r in enumerate(readies))
    assert len({round(r - t / 100, 6) for t, r in enumerate(readies)}) > 1  # jitter varies


def test_slice_cuts_and_spaces_pieces() -> None:
    schedule = Schedule(LinkFaults(slice_bytes=100), start=0.0)
    steps = _pieces(schedule, 1.0, 350)
    assert [s[2] for s in steps] == [100, 100, 100, 50]
    times = [s[0] for s in steps]
    assert all(b - a >= SLICE_GAP_S - 1e-12 for a, b in itertools.pairwise(times))


def test_bandwidth_spreads_bytes_over_time() -> None:
    schedule = Schedule(LinkFaults(bandwidth_bytes_per_s=10_000), start=0.0)
    steps = _pieces(schedule, 0.0, 5000)
    assert sum(s[2] for s in steps) == 5000
    assert steps[-1][0] == pytest.approx(0.5)  # 5000 bytes at 10 kB/s
    for at, _, _ in steps:
        sent_by = sum(size for when, _, size in steps if when <= at)
        assert sent_by <= 10_000 * at + 1e-6


def test_reset_after_exactly_n_bytes_across_chunks() -> None:
    schedule = Schedule(LinkFaults(reset_after_bytes=150), start=0.0)
    first = _pieces(schedule, 0.0, 100)
    assert first == [(0.0, Action.DATA, 100)]
    second = _pieces(schedule, 0.0, 100)
    assert second == [(0.0, Action.DATA, 50), (0.0, Action.RESET, 0)]
    assert schedule.ended
    assert schedule.planned_bytes == 150


def test_timeout_after_bytes_then_silence() -> None:
    schedule = Schedule(LinkFaults(timeout_after_bytes=10), start=0.0)
    assert _pieces(schedule, 0.0, 30) == [(0.0, Action.DATA, 10), (0.0, Action.SILENCE, 0)]
    assert schedule.end(1.0) is None  # not even the end of the stream is passed on


def test_timeout_after_a_time() -> None:
    schedule = Schedule(LinkFaults(timeout_after_s=1.0), start=10.0)
    assert _pieces(schedule, schedule.arrive(10.5), 5) == [(10.5, Action.DATA, 5)]
    assert _pieces(schedule, schedule.arrive(11.5), 5) == [(11.0, Action.SILENCE, 0)]


def test_end_of_stream_waits_for_the_bytes_before_it() -> None:
    schedule = Schedule(LinkFaults(latency_s=0.2), start=0.0)
    ready = schedule.arrive(0.0)
    _pieces(schedule, ready, 10)
    step = schedule.end(0.05)
    assert step is not None
    assert step.action is Action.EOF
    assert step.at >= 0.25


def test_link_can_change_midway() -> None:
    schedule = Schedule(LinkFaults(), start=0.0)
    assert _pieces(schedule, 0.0, 100) == [(0.0, Action.DATA, 100)]
    schedule.link = LinkFaults(reset_after_bytes=120)  # counted from the start
    assert _pieces(schedule, 0.0, 100) == [(0.0, Action.DATA, 20), (0.0, Action.RESET, 0)]


# -- listen / target / config -----------------------------------------------------------------


def test_listen_and_upstream_forms() -> None:
    assert parse_listen("8080") == parse_listen("127.0.0.1:8080")
    assert parse_listen("8080").port == 8080
    assert parse_listen("[::1]:0").ip == "::1"
    assert parse_listen("localhost:1").ip == "127.0.0.1"
    with pytest.raises(UsageError):
        parse_listen("example.com:80")
    assert parse_upstream("5432") == ("127.0.0.1", 5432)
    assert parse_upstream("[::1]:5432") == ("::1", 5432)
    with pytest.raises(UsageError):
        parse_upstream("127.0.0.1:0")


CONFIG = """
control = "127.0.0.1:0"
[defaults]
idle_timeout = "30s"
[forward.db]
listen = "127.0.0.1:15432"
target = "127.0.0.1:5432"
max_connections = 50
[forward.db.down]
latency = "100ms"
[forward.web]
listen = "[::1]:0"
target = "localhost:8080"
latency = "10ms"
"""


def test_config_two_forwards() -> None:
    config = load_config(CONFIG)
    assert config.control is not None
    assert config.control.ip == "127.0.0.1"
    db, web = config.forwards
    assert (db.name, db.listen.port, db.target) == ("db", 15432, ("127.0.0.1", 5432))
    assert db.limits.max_connections == 50
    assert db.limits.idle_timeout_s == 30.0
    assert db.faults is not None
    assert db.faults.down.latency_s == 0.1
    assert db.faults.up.latency_s == 0.0
    assert web.faults is not None
    assert web.faults.up.latency_s == 0.01
    assert web.target == ("localhost", 8080)


def test_config_without_faults_or_control_keeps_zero_copy() -> None:
    config = load_config('[forward.a]\nlisten = "1"\ntarget = "2"\n')
    assert config.forwards[0].faults is None


@pytest.mark.parametrize(
    "text",
    [
        "not toml [",
        "[forward.a]\nlisten = '1'\n",
        "[forward.a]\nlisten = '1'\ntarget = '2'\nbogus = 1\n",
        "[forward.a]\nlisten = '1'\ntarget = '2'\nmax_connections = 0\n",
        "[forward.a]\nlisten = '1'\ntarget = '2'\nlatency = 'soon'\n",
        "extra = 1\n[forward.a]\nlisten = '1'\ntarget = '2'\n",
        "[defaults]\n",
    ],
)
def test_config_refuses(text: str) -> None:
    with pytest.raises(UsageError):
        load_config(text, source="test.toml")
