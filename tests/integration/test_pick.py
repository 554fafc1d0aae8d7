"""``pick`` against real sockets: what it hands out binds on both loopbacks, what is held
is skipped, and the registry's ports are avoided."""

from __future__ import annotations

import json
import random
import socket

import pytest

from portside.cli import main as portside
from portside.kernel import port_settings
from portside.pick import NoFreePortError, Rejection, bind_check, explain_pick, pick_port
from portside.registry import GLOBAL_SCOPE, Registry


def _ipv6() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.fixture(autouse=True)
def private_registry(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("PORTSIDE_HOME", str(tmp_path / "home"))


def _binds(port: int, kind: int = socket.SOCK_STREAM) -> bool:
    families = [(socket.AF_INET, "127.0.0.1")]
    if _ipv6():
        families.append((socket.AF_INET6, "::1"))
    for family, host in families:
        with socket.socket(family, kind) as sock:
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind((host, port))
            except OSError:
                return False
    return True


def test_picked_ports_bind_on_both_loopbacks_outside_the_ephemeral_range():
    ports = pick_port(count=5)
    assert len(set(ports)) == 5
    low, high = port_settings().ephemeral_range or (49152, 65535)
    for port in ports:
        assert not low <= port <= high
        assert port >= 10000
        assert _binds(port)


def test_udp_ports_bind_for_udp():
    (port,) = pick_port(udp=True)
    assert _binds(port, socket.SOCK_DGRAM)


def _free_pair() -> tuple[int, int]:
    """Two consecutive ports, both free and usable, below the ephemeral range."""
    for _ in range(50):
        (first,) = pick_port(port_range=(20000, 32000))
        if explain_pick(port_range=(first, first + 1), count=2).ports == (first, first + 1):
            return first, first + 1
    pytest.skip("no two consecutive free ports found")


def test_a_port_in_use_on_ipv4_is_skipped_and_named():
    first, second = _free_pair()
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", first))
        holder.listen()
        seen: set[tuple[int, Rejection]] = set()
        for seed in range(20):  # some seeds start the walk at ``first``
            explanation = explain_pick(port_range=(first, second), rng=random.Random(seed))  # noqa: S311 -- a seeded start, not a secret
            assert explanation.ports == (second,)
            seen.update((r.port, r.reason) for r in explanation.tried)
        assert seen == {(first, Rejection.IN_USE_IPV4)}


def test_a_port_held_only_on_ipv6_loopback_is_skipped():
    if not _ipv6():
        pytest.skip("no IPv6 loopback on this machine")
    first, second = _free_pair()
    with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as holder:
        holder.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        holder.bind(("::1", first))
        holder.listen()
        with pytest.raises(NoFreePortError):
            pick_port(port_range=(first, first))
        result = bind_check(first)
        assert result.rejection is not None
        assert result.rejection.reason is Rejection.IN_USE_IPV6
        assert pick_port(port_range=(first, second)) == [second]


def test_a_wildcard_listener_blocks_the_loopback_port():
    first, second = _free_pair()
    with socket.socket() as holder:
        holder.bind(("0.0.0.0", first))
        holder.listen()
        assert pick_port(port_range=(first, second)) == [second]


def test_registry_ports_are_avoided(tmp_path):
    first, second = _free_pair()
    with Registry.open(tmp_path / "reg.sqlite3") as registry:
        registry.reserve("taken", scope=GLOBAL_SCOPE, port=first)
        for _ in range(10):
            assert pick_port(port_range=(first, second), registry=registry) == [second]


def test_the_default_registry_is_read_but_never_created(tmp_path):
    home = tmp_path / "home"
    pick_port()
    assert not home.exists()
    first, second = _free_pair()
    with Registry.open() as registry:
        registry.reserve("taken", scope=GLOBAL_SCOPE, port=first)
    for _ in range(10):
        assert pick_port(port_range=(first, second)) == [second]


def test_a_full_range_is_an_error_that_says_what_to_do():
    first, _ = _free_pair()
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", first))
        with pytest.raises(NoFreePortError, match="widen --range"):
            pick_port(port_range=(first, first))


# --------------------------------------------------------------------------- CLI


def test_cli_prints_one_port_per_line(capsys):
    assert portside(["pick", "--count", "3"]) == 0
    out = capsys.readouterr().out.split()
    assert len(out) == 3
    assert all(_binds(int(port)) for port in out)


def test_cli_why_explains_rules_and_skips(capsys):
    first, second = _free_pair()
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", first))
        assert portside(["pick", "--why", "--range", f"{first - 1}-{second}"]) == 0
    out = capsys.readouterr().out
    assert "rules, in order:" in out
    assert "ephemeral range" in out
    assert "browser bad port" in out


def test_cli_json(capsys):
    assert portside(["pick", "--json", "--udp"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["kind"] == "pick"
    assert document["explanation"]["transport"] == "udp"
    assert len(document["ports"]) == 1


@pytest.mark.parametrize(
    "argv",
    [["pick", "--range", "9-1"], ["pick", "--count", "0"], ["pick", "--range", "40000-40010"]],
)
def test_cli_bad_requests_exit_2_with_one_line(capsys, argv):
    assert portside(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("portside: ")
    assert captured.err.count("\n") == 1
