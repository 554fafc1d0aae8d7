"""The route table, route flags, the TOML file and the balancing logic: pure, no sockets."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from portside.net.backends import Backend, BackendPool, Backends, Health
from portside.net.dashboard import dashboard_path, status_document
from portside.net.routes import (
    BackendAddress,
    Balance,
    ConfigError,
    HealthCheckSpec,
    Route,
    RouteSnapshot,
    RouteTable,
    normalise_host,
    parse_config,
    parse_route_spec,
    parse_status_range,
    path_matches,
)

A = BackendAddress(host="127.0.0.1", port=3000)
B = BackendAddress(host="127.0.0.1", port=3001)
C = BackendAddress(host="127.0.0.1", port=3002)


def route(host: str, path: str = "/", *backends: BackendAddress, source: str = "cli") -> Route:
    return Route(host=host, path=path, backends=backends or (A,), source=source)


TABLE = RouteSnapshot.build(
    [
        route("*", "/", A),
        route("app.localhost", "/", B),
        route("app.localhost", "/api", C),
        route("*.example", "/", B),
        route("*.b.example", "/", C),
        route("*", "/static/", C),
    ]
)


@pytest.mark.parametrize(
    ("host", "path", "expected"),
    [
        ("app.localhost", "/", ("app.localhost", "/")),
        ("APP.localhost:8080", "/x", ("app.localhost", "/")),
        ("app.localhost.", "/api", ("app.localhost", "/api")),
        ("app.localhost", "/api/v1?q=1", ("app.localhost", "/api")),
        ("app.localhost", "/api?q=1", ("app.localhost", "/api")),
        ("app.localhost", "/apis", ("app.localhost", "/")),
        ("x.example", "/", ("*.example", "/")),
        ("y.x.example", "/", ("*.example", "/")),
        ("y.b.example", "/", ("*.b.example", "/")),
        ("b.example", "/", ("*.example", "/")),  # *.b.example needs a label before b.example
        ("example", "/", ("*", "/")),  # *.example does not match example itself
        ("other.localhost", "/static/app.js", ("*", "/static/")),
        ("other.localhost", "/static", ("*", "/")),  # "/static/" needs the slash
        ("[::1]:8080", "/", ("*", "/")),
        ("", "/", ("*", "/")),
    ],
)
def test_the_most_specific_host_then_the_longest_prefix_wins(host, path, expected):
    found = TABLE.match(host, path)
    assert found is not None
    assert found.key == expected


def test_without_a_default_route_an_unknown_host_matches_nothing():
    snapshot = RouteSnapshot.build([route("app.localhost", "/api")])
    assert snapshot.match("other.localhost", "/api") is None
    assert snapshot.match("app.localhost", "/") is None
    assert snapshot.match("app.localhost", "/api/x") is not None


def test_a_more_specific_host_without_a_matching_path_falls_back_to_a_wider_one():
    snapshot = RouteSnapshot.build([route("app.localhost", "/api", B), route("*", "/", A)])
    found = snapshot.match("app.localhost", "/")
    assert found is not None
    assert found.backends == (A,)


@pytest.mark.parametrize(
    ("prefix", "path", "matches"),
    [
        ("/", "/anything", True),
        ("/api", "/api", True),
        ("/api", "/api/", True),
        ("/api", "/api#x", True),
        ("/api", "/apix", False),
        ("/api/", "/api", False),
        ("/api/", "/api/x", True),
        ("/a/b", "/a", False),
    ],
)
def test_path_prefixes_match_on_segment_boundaries(prefix, path, matches):
    assert path_matches(prefix, path) is matches


@pytest.mark.parametrize(
    ("raw", "normal"),
    [
        ("App.Localhost", "app.localhost"),
        ("app.localhost:8080", "app.localhost"),
        ("app.localhost.", "app.localhost"),
        ("[::1]:8080", "::1"),
        ("[::1]", "::1"),
        ("127.0.0.1:80", "127.0.0.1"),
        ("[broken", ""),
    ],
)
def test_host_headers_are_normalised(raw, normal):
    assert normalise_host(raw) == normal


def test_changes_publish_a_new_snapshot_and_old_snapshots_stay_intact():
    table = RouteTable([route("*", "/", A)])
    seen: list[int] = []
    table.subscribe(lambda snap: seen.append(snap.version))
    before = table.snapshot
    table.add(route("app.localhost", "/", B, source="registry"))
    assert table.match("app.localhost", "/").backends == (B,)  # type: ignore[union-attr]
    assert before.match("app.localhost", "/").backends == (A,)  # type: ignore[union-attr]
    assert table.remove("app.localhost", "/")
    assert not table.remove("app.localhost", "/")
    assert seen == [1, 2]


def test_replacing_one_source_leaves_the_others_alone():
    table = RouteTable([route("*", "/", A, source="cli")])
    table.replace_source("file", [route("a.localhost", "/", B, source="file")])
    table.replace_source("registry", [route("r.localhost", "/", C, source="registry")])
    table.replace_source("file", [route("b.localhost", "/", B, source="file")])
    assert {r.key[0] for r in table.snapshot.routes} == {"*", "b.localhost", "r.localhost"}
    with pytest.raises(ValueError, match="must have that source"):
        table.replace_source("file", [route("x.localhost", source="cli")])


def test_flags_beat_the_file_and_the_loser_returns_when_the_winner_goes():
    table = RouteTable([route("app.localhost", "/", A, source="cli")])
    table.replace_source("registry", [route("app.localhost", "/", C, source="registry")])
    table.replace_source("file", [route("app.localhost", "/", B, source="file")])
    assert table.match("app.localhost", "/").backends == (A,)  # type: ignore[union-attr]
    table.remove("app.localhost", "/", source="cli")
    assert table.match("app.localhost", "/").backends == (B,)  # type: ignore[union-attr]
    table.replace_source("file", [])
    assert table.match("app.localhost", "/").backends == (C,)  # type: ignore[union-attr]


def test_a_route_without_backends_is_refused():
    with pytest.raises(ValueError, match="no backends"):
        RouteTable([Route(host="*", backends=())])


@pytest.mark.parametrize(
    ("spec", "host", "path", "backends"),
    [
        ("app.localhost=127.0.0.1:3000", "app.localhost", "/", (A,)),
        ("*.test/api=127.0.0.1:3000,127.0.0.1:3001", "*.test", "/api", (A, B)),
        ("APP.localhost=http://127.0.0.1:3000", "app.localhost", "/", (A,)),
        ("*=[::1]:3000", "*", "/", (BackendAddress(host="::1", port=3000),)),
        (
            "127.0.0.1=localhost:3000",
            "127.0.0.1",
            "/",
            (BackendAddress(host="localhost", port=3000),),
        ),
    ],
)
def test_route_flags_parse(spec, host, path, backends):
    parsed = parse_route_spec(spec)
    assert (parsed.host, parsed.path, parsed.backends) == (host, path, backends)


@pytest.mark.parametrize(
    "spec",
    [
        "app.localhost",
        "=127.0.0.1:3000",
        "app.localhost=",
        "app.localhost=127.0.0.1",
        "app.localhost=https://127.0.0.1:3000",
        "a..b=127.0.0.1:3000",
        "*x.test=127.0.0.1:3000",
        "app.localhost/a b=127.0.0.1:3000",
        "app.localhost=127.0.0.1:0",
    ],
)
def test_bad_route_flags_say_how_to_write_them(spec):
    with pytest.raises(ConfigError):
        parse_route_spec(spec)


CONFIG = """
[proxy]
listen = "127.0.0.1:8080"
allow_hosts = ["dev.test", "*.dev.test"]
access_log = "json"

[health]
path = "/healthz"
interval = 0.5
rise = 1

[[route]]
host = "app.localhost"
backends = ["127.0.0.1:3000", "127.0.0.1:3001"]
balance = "least-connections"

[[route]]
host = "*.localhost"
path = "/api"
backends = "127.0.0.1:3002"
preserve_host = false
health = { expect = "2xx", fall = 5 }
"""


def test_the_toml_file_gives_routes_health_and_settings():
    config = parse_config(CONFIG)
    assert config.listen == "127.0.0.1:8080"
    assert config.allow_hosts == ("dev.test", "*.dev.test")
    assert config.access_log == "json"
    first, second = config.routes
    assert first.balance is Balance.LEAST_CONNECTIONS
    assert first.backends == (A, B)
    assert first.health == HealthCheckSpec(path="/healthz", interval_s=0.5, rise=1)
    assert first.source == "file"
    assert second.key == ("*.localhost", "/api")
    assert not second.preserve_host
    assert second.health == HealthCheckSpec(
        path="/healthz", interval_s=0.5, rise=1, expect=(200, 299), fall=5
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[[route]]\nhost = 'a.localhost'\n", "backends"),
        ("[[route]]\nbackends = ['127.0.0.1:1']\nbalance = 'random'\n", "balance"),
        ("[[route]]\nbackends = ['127.0.0.1:1']\ncolour = 1\n", "unknown key 'colour'"),
        (
            "[[route]]\nbackends = ['127.0.0.1:1']\n[[route]]\nbackends = ['127.0.0.1:2']\n",
            "second route",
        ),
        ("[health]\ninterval = 0\n", "interval"),
        ("[health]\nrise = true\n", "rise"),
        ("[health]\nexpect = '700'\n", "expect"),
        ("[proxy]\naccess_log = 'xml'\n", "access_log"),
        ("route = 1\n", "[[route]]"),
        ("not toml [", "not valid TOML"),
    ],
)
def test_a_bad_file_is_refused_with_the_place_named(text, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_config(text)


@pytest.mark.parametrize(
    ("value", "expected"),
    [(200, (200, 200)), ("204", (204, 204)), ("200-399", (200, 399)), ("3xx", (300, 399))],
)
def test_status_ranges(value, expected):
    assert parse_status_range(value) == expected


# --- balancing and health state ---------------------------------------------------------


def pool(balance: Balance, *addresses: BackendAddress) -> BackendPool:
    r = Route(host="*", backends=addresses, balance=balance)
    return BackendPool(r, [Backend(a) for a in addresses])


def test_round_robin_takes_turns():
    p = pool(Balance.ROUND_ROBIN, A, B, C)
    picks = [p.pick(0.0) for _ in range(6)]
    assert [b.address for b in picks if b] == [A, B, C, A, B, C]


def test_least_connections_prefers_the_idlest_and_takes_turns_on_ties():
    p = pool(Balance.LEAST_CONNECTIONS, A, B, C)
    a, b, c = p.backends
    a.counters.in_flight, b.counters.in_flight, c.counters.in_flight = 3, 1, 1
    assert {p.pick(0.0), p.pick(0.0)} == {b, c}
    c.counters.in_flight = 0
    assert p.pick(0.0) is c


def test_a_failed_connect_ejects_for_a_while_and_doubles_when_it_repeats():
    p = pool(Balance.ROUND_ROBIN, A, B)
    a, b = p.backends
    a.record_connect_failure("connection refused", now=100.0)
    assert a.health(100.0) is Health.EJECTED
    assert all(p.pick(100.5) is b for _ in range(4))
    assert a.health(103.0) is Health.UP  # first ejection: 2 s
    a.record_connect_failure("connection refused", now=103.0)
    assert a.health(106.0) is Health.EJECTED  # second in a row: 4 s
    a.record_connect_success()
    assert a.health(106.0) is Health.UP


def test_when_every_backend_is_out_the_least_recently_failed_is_still_tried():
    p = pool(Balance.ROUND_ROBIN, A, B)
    a, b = p.backends
    a.record_connect_failure("refused", now=10.0)
    b.record_connect_failure("refused", now=11.0)
    assert p.pick(11.5) is a
    assert p.pick(11.5, exclude={a}) is b
    assert p.pick(11.5, exclude={a, b}) is None


def test_active_checks_need_fall_failures_to_go_down_and_rise_successes_to_come_back():
    backend = Backend(A)
    backend.health_spec = HealthCheckSpec(rise=2, fall=3)
    changes = [backend.record_check(False, status=None, reason="refused", wall=0) for _ in range(3)]
    assert changes == [False, False, True]
    assert backend.health(0.0) is Health.DOWN
    changes = [backend.record_check(True, status=200, reason=None, wall=0) for _ in range(2)]
    assert changes == [False, True]
    assert backend.health(0.0) is Health.UP


def test_backends_follow_the_routes_and_keep_their_state_across_a_reload():
    created: list[Backend] = []
    backends = Backends(on_new=created.append)
    backends.sync([Route(host="*", backends=(A, B))])
    a = backends.by_address[A]
    a.counters.requests = 7
    gone = backends.sync([Route(host="*", backends=(A, C))])
    assert [g.address for g in gone] == [B]
    assert gone[0].is_closed()
    assert backends.by_address[A] is a
    assert a.counters.requests == 7
    assert [c.address for c in created] == [A, B, C]


class FakeConnection:
    def __init__(self) -> None:
        self.open = True

    def is_reusable(self) -> bool:
        return self.open

    def close(self) -> None:
        self.open = False


def test_idle_connections_are_reused_newest_first_and_expire():
    backend = Backend(A)
    old, new, dead = FakeConnection(), FakeConnection(), FakeConnection()
    backend.give_back(old, 0.0)
    backend.give_back(new, 10.0)
    backend.give_back(dead, 11.0)
    dead.open = False
    assert backend.take_idle(12.0) is new  # "dead" was skipped and closed
    assert backend.take_idle(1000.0) is None
    assert not old.open


# --- dashboard routing and status document ----------------------------------------------


@pytest.mark.parametrize(
    ("host", "target", "resource"),
    [
        ("portside.localhost:8080", "/", ""),
        ("portside.localhost", "/status.json", "status.json"),
        ("portside.localhost", "/_portside/dashboard.js", "dashboard.js"),
        ("portside.localhost", "/nope", "missing"),
        ("app.localhost", "/_portside/", ""),
        ("app.localhost", "/_portside", "redirect"),
        ("app.localhost", "/_portside/status.json?x=1", "status.json"),
        ("app.localhost", "/", None),
        ("app.localhost", "/_portsidex", None),
    ],
)
def test_dashboard_paths(host, target, resource):
    assert dashboard_path(host, target) == resource


def test_the_status_document_lists_routes_backends_and_totals():
    table = RouteTable([Route(host="*", backends=(A, B)), Route(host="x.localhost", backends=(A,))])
    backends = Backends()
    backends.sync(table.snapshot.routes)
    backends.pools[("*", "/")].counters.requests = 5
    backends.pools[("x.localhost", "/")].counters.requests = 2
    backends.by_address[B].record_connect_failure("connection refused", now=0.0)
    doc = status_document(table.snapshot, backends, listen="127.0.0.1:1", uptime_s=1.0, now=0.5)
    assert doc["kind"] == "proxy-status"
    assert doc["totals"]["requests"] == 7  # type: ignore[index]
    health = {b["address"]: b["health"] for b in doc["backends"]}  # type: ignore[attr-defined]
    assert health == {"127.0.0.1:3000": "up", "127.0.0.1:3001": "ejected"}


@given(
    host=st.text(alphabet="abc.-*:[]1", max_size=20),
    path=st.text(alphabet="/abc?#", max_size=20),
)
def test_matching_never_fails_on_odd_input(host, path):
    TABLE.match(host, path)
