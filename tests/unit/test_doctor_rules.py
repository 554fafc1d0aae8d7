"""doctor's reasoning, table-tested over hand-made facts: no sockets, no files."""

import dataclasses

import pytest

from portside.addresses import exposure_of, parse_target
from portside.diagnosis.facts import (
    AfterConnect,
    Attempt,
    Facts,
    FirewallFacts,
    FirewallRule,
    HostsEntry,
    LoopbackFacts,
    Outcome,
    Resolution,
    RuleVerdict,
)
from portside.diagnosis.rules import covers, diagnose
from portside.models import (
    Endpoint,
    Family,
    Identity,
    NetNamespace,
    Owner,
    OwnerStatus,
    ProcessInfo,
    ProcessState,
    Severity,
    SocketEntry,
    SocketState,
    Transport,
)
from portside.ports import KernelPortSettings

PORT = 62893
KERNEL = KernelPortSettings(
    ephemeral_range=(32768, 60999), reserved_ports=frozenset(), unprivileged_port_start=1024
)
HEALTHY_LO = LoopbackFacts(
    lo_up=True,
    has_ipv4=True,
    has_ipv6=True,
    ipv6_disabled=False,
    local_route=True,
    bindv6only=False,
)
OTHER_NS = NetNamespace(inode=2, name="ps-test", is_current=False)


def process(name="server", pid=100, state=ProcessState.SLEEPING, cmdline=None):
    return ProcessInfo(
        pid=pid,
        ppid=1,
        name=name,
        cmdline=cmdline or (name,),
        user="u",
        uid=1000,
        cwd="/srv",
        start_time=0.0,
        state=state,
    )


def owner(
    name="server", pid=100, state=ProcessState.SLEEPING, kind=None, target=None, cmdline=None
):
    identity = Identity(kind=kind, label=f"{kind} thing", target=target) if kind else None
    return Owner(process=process(name, pid, state, cmdline), identity=identity)


def sock(
    ip="127.0.0.1",
    port=PORT,
    state=SocketState.LISTEN,
    transport=Transport.TCP,
    owners=(),
    v6only=None,
    rq=0,
    wq=128,
    netns=None,
    remote=None,
):
    family = Family.IPV6 if ":" in ip and not ip.startswith("::ffff:") else Family.IPV4
    return SocketEntry(
        transport=transport,
        family=family,
        state=state,
        local=Endpoint(ip=ip, port=port),
        remote=remote,
        uid=1000,
        inode=7,
        exposure=exposure_of(ip),
        recv_queue=rq,
        send_queue=wq,
        v6only=v6only,
        netns=netns,
        owner_status=OwnerStatus.FOUND if owners else OwnerStatus.NOT_VISIBLE,
        owners=tuple(owners),
    )


def attempt(
    ip="127.0.0.1",
    outcome=Outcome.REFUSED,
    after=AfterConnect.NOT_TRIED,
    protocol=None,
    detail=None,
    errno_name=None,
    status=None,
):
    return Attempt(
        ip=ip,
        family="ipv6" if ":" in ip else "ipv4",
        outcome=outcome,
        errno_name=errno_name or ("ECONNREFUSED" if outcome is Outcome.REFUSED else None),
        elapsed_ms=0.1,
        after=after,
        protocol=protocol,
        detail=detail,
        http_status=status,
    )


def facts(
    target=f"127.0.0.1:{PORT}",
    sockets=(),
    attempts=(),
    loopback=HEALTHY_LO,
    firewall=None,
    proxy=None,
    resolution=None,
    kernel=KERNEL,
):
    return Facts(
        target=None if target is None else parse_target(target),
        resolution=resolution,
        loopback=loopback,
        sockets=tuple(sockets),
        attempts=tuple(attempts),
        firewall=firewall or FirewallFacts(looked=False),
        proxy_env=proxy or {},
        kernel=kernel,
    )


def verdict(f):
    return diagnose(f).verdict.code


CONNECTED = attempt(
    outcome=Outcome.CONNECTED,
    after=AfterConnect.ANSWERED,
    protocol="http",
    detail="HTTP/1.0 200 OK",
    status=200,
)

CASES = [
    ("nothing listening", facts(attempts=[attempt()]), "FM-01"),
    (
        "other loopback address",
        facts(sockets=[sock("127.0.0.2", owners=[owner()])], attempts=[attempt()]),
        "FM-02",
    ),
    (
        "ipv6-only listener asked over ipv4",
        facts(sockets=[sock("::1", owners=[owner()])], attempts=[attempt()]),
        "FM-03",
    ),
    (
        "v6only wildcard asked over ipv4",
        facts(sockets=[sock("::", v6only=True, owners=[owner()])], attempts=[attempt()]),
        "FM-03",
    ),
    (
        "ipv4 listener asked over ipv6",
        facts(
            target=f"[::1]:{PORT}",
            sockets=[sock("127.0.0.1", owners=[owner()])],
            attempts=[attempt("::1")],
        ),
        "FM-03",
    ),
    (
        "listener in another namespace",
        facts(sockets=[sock(netns=OTHER_NS, owners=[owner()])], attempts=[attempt()]),
        "FM-29",
    ),
    (
        "bound, not listening",
        facts(sockets=[sock(state=SocketState.BOUND, owners=[owner()])], attempts=[attempt()]),
        "FM-10",
    ),
    (
        "refused with a matching listener",
        facts(sockets=[sock(owners=[owner()])], attempts=[attempt()]),
        "FM-26",
    ),
    (
        "timeout with a healthy listener",
        facts(sockets=[sock(owners=[owner()])], attempts=[attempt(outcome=Outcome.TIMEOUT)]),
        "FM-26",
    ),
    ("timeout without a listener", facts(attempts=[attempt(outcome=Outcome.TIMEOUT)]), "FM-26"),
    (
        "timeout with a full accept queue",
        facts(
            sockets=[sock(rq=129, wq=128, owners=[owner()])],
            attempts=[attempt(outcome=Outcome.TIMEOUT)],
        ),
        "FM-17",
    ),
    (
        "stopped owner, connect works",
        facts(
            target=f"http://127.0.0.1:{PORT}/",
            sockets=[sock(rq=3, owners=[owner(state=ProcessState.STOPPED)])],
            attempts=[attempt(outcome=Outcome.CONNECTED, after=AfterConnect.SILENT)],
        ),
        "FM-18",
    ),
    (
        "stopped owner, queue full",
        facts(
            sockets=[sock(rq=129, owners=[owner(state=ProcessState.STOPPED)])],
            attempts=[attempt(outcome=Outcome.TIMEOUT)],
        ),
        "FM-18",
    ),
    (
        "hung server",
        facts(
            target=f"http://127.0.0.1:{PORT}/",
            sockets=[sock(owners=[owner()])],
            attempts=[attempt(outcome=Outcome.CONNECTED, after=AfterConnect.SILENT)],
        ),
        "FM-19",
    ),
    (
        "inherited socket",
        facts(
            target=f"http://127.0.0.1:{PORT}/",
            sockets=[sock(owners=[owner("sleep")])],
            attempts=[attempt(outcome=Outcome.CONNECTED, after=AfterConnect.SILENT)],
        ),
        "FM-20",
    ),
    (
        "http to a tls server",
        facts(
            target=f"http://127.0.0.1:{PORT}/",
            sockets=[sock(owners=[owner()])],
            attempts=[
                attempt(outcome=Outcome.CONNECTED, after=AfterConnect.CLOSED, protocol="tls")
            ],
        ),
        "FM-22",
    ),
    (
        "https to a plain server",
        facts(
            target=f"https://127.0.0.1:{PORT}/",
            sockets=[sock(owners=[owner()])],
            attempts=[
                attempt(outcome=Outcome.CONNECTED, after=AfterConnect.ANSWERED, protocol="http")
            ],
        ),
        "FM-22",
    ),
    (
        "h2c only",
        facts(
            target=f"http://127.0.0.1:{PORT}/",
            attempts=[
                attempt(outcome=Outcome.CONNECTED, after=AfterConnect.ANSWERED, protocol="h2c")
            ],
        ),
        "FM-23",
    ),
    (
        "redis where http was expected",
        facts(
            target=f"http://127.0.0.1:{PORT}/",
            attempts=[
                attempt(outcome=Outcome.CONNECTED, after=AfterConnect.ANSWERED, protocol="redis")
            ],
        ),
        "FM-24",
    ),
    (
        "tcpwrapped",
        facts(
            target=f"http://127.0.0.1:{PORT}/",
            sockets=[sock(owners=[owner()])],
            attempts=[attempt(outcome=Outcome.CONNECTED, after=AfterConnect.CLOSED)],
        ),
        "FM-25",
    ),
    (
        "ssh -L with a dead target",
        facts(
            sockets=[sock(owners=[owner("ssh", kind="ssh-local-forward", target="127.0.0.1:80")])],
            attempts=[attempt(outcome=Outcome.CONNECTED, after=AfterConnect.CLOSED)],
        ),
        "FM-33",
    ),
    (
        "docker-proxy with a dead container",
        facts(
            sockets=[
                sock(
                    "0.0.0.0",
                    owners=[owner("docker-proxy", kind="docker-proxy", target="172.17.0.2:80")],
                )
            ],
            attempts=[attempt(outcome=Outcome.CONNECTED, after=AfterConnect.CLOSED)],
        ),
        "FM-30",
    ),
    (
        "qemu hostfwd with no guest",
        facts(
            sockets=[
                sock(owners=[owner("qemu-system-x86", kind="qemu-hostfwd", target="guest:22")])
            ],
            attempts=[attempt(outcome=Outcome.CONNECTED, after=AfterConnect.CLOSED)],
        ),
        "FM-32",
    ),
    (
        "loopback down",
        facts(
            loopback=dataclasses.replace(HEALTHY_LO, lo_up=False),
            attempts=[attempt(outcome=Outcome.NET_UNREACHABLE, errno_name="ENETUNREACH")],
        ),
        "FM-28",
    ),
    (
        "ipv6 disabled on lo",
        facts(
            target=f"[::1]:{PORT}",
            loopback=dataclasses.replace(HEALTHY_LO, ipv6_disabled=True, has_ipv6=False),
            attempts=[
                attempt("::1", outcome=Outcome.ADDRESS_UNAVAILABLE, errno_name="EADDRNOTAVAIL")
            ],
        ),
        "FM-08",
    ),
    (
        "icmp admin-prohibited",
        facts(
            sockets=[sock(owners=[owner()])],
            attempts=[attempt(outcome=Outcome.HOST_UNREACHABLE, errno_name="EHOSTUNREACH")],
        ),
        "FM-26",
    ),
    (
        "eperm without a reject rule",
        facts(attempts=[attempt(outcome=Outcome.PERMISSION, errno_name="EPERM")]),
        "FM-27",
    ),
    (
        "healthy http",
        facts(
            target=f"http://127.0.0.1:{PORT}/",
            sockets=[sock(owners=[owner()])],
            attempts=[CONNECTED],
        ),
        "OK",
    ),
    (
        "healthy tcp, silent banner",
        facts(
            sockets=[sock(owners=[owner()])],
            attempts=[attempt(outcome=Outcome.CONNECTED, after=AfterConnect.SILENT)],
        ),
        "OK",
    ),
]


@pytest.mark.parametrize(("name", "observed", "code"), CASES, ids=[c[0] for c in CASES])
def test_each_situation_gets_its_catalogue_verdict(name, observed, code):
    result = diagnose(observed)
    assert result.verdict.code == code, result.verdict
    if code != "OK":
        assert result.verdict.fix, "every problem comes with a fix"
        assert result.verdict.evidence


def test_the_verdict_names_the_holder_and_its_address():
    result = diagnose(
        facts(sockets=[sock("127.0.0.2", owners=[owner("vite", 4242)])], attempts=[attempt()])
    )
    text = " ".join(result.verdict.evidence)
    assert "127.0.0.2" in text
    assert "vite[4242]" in text
    assert any("127.0.0.2" in fix for fix in result.verdict.fix)


def test_the_stopped_owner_fix_is_the_exact_command():
    observed = facts(
        sockets=[sock(rq=129, owners=[owner(pid=777, state=ProcessState.STOPPED)])],
        attempts=[attempt(outcome=Outcome.TIMEOUT)],
    )
    assert diagnose(observed).verdict.fix[0] == "kill -CONT 777"


LOCALHOST = Resolution(
    name="localhost",
    glibc=("::1", "127.0.0.1"),
    glibc_error=None,
    builtin_loopback=("::1", "127.0.0.1"),
    hosts_entries=(HostsEntry(ip="127.0.0.1", names=("localhost",)),),
    nsswitch_hosts="files dns",
    gai_precedence=(),
)


def test_localhost_with_an_ipv4_only_server_is_the_family_trap():
    observed = facts(
        target=f"localhost:{PORT}",
        resolution=LOCALHOST,
        sockets=[sock(owners=[owner()])],
        attempts=[attempt("::1"), attempt(outcome=Outcome.CONNECTED, after=AfterConnect.SILENT)],
    )
    result = diagnose(observed)
    assert result.verdict.code == "FM-04"
    assert result.verdict.severity is Severity.MEDIUM
    assert "::1" in result.verdict.title


def test_a_server_that_bound_localhost_is_fm05():
    observed = facts(
        target=f"localhost:{PORT}",
        resolution=LOCALHOST,
        sockets=[
            sock(
                "::1", owners=[owner("node", cmdline=("node", "server.js", "--host", "localhost"))]
            )
        ],
        attempts=[
            attempt("::1", outcome=Outcome.CONNECTED, after=AfterConnect.SILENT),
            attempt("127.0.0.1"),
        ],
    )
    assert verdict(observed) == "FM-05"


def test_a_name_that_does_not_resolve_is_fm07():
    broken = dataclasses.replace(
        LOCALHOST, name="app.localhost", glibc=(), glibc_error="Name or service not known (EAI -2)"
    )
    result = diagnose(facts(target=f"app.localhost:{PORT}", resolution=broken, attempts=[]))
    assert result.verdict.code == "FM-07"
    assert any("curl and browsers" in line for line in result.verdict.evidence)


@pytest.mark.parametrize(
    ("env", "reported"),
    [
        ({"http_proxy": "http://proxy:3128"}, True),
        ({"HTTP_PROXY": "http://proxy:3128", "no_proxy": "localhost"}, True),
        ({"http_proxy": "http://proxy:3128", "no_proxy": "localhost,127.0.0.1,::1"}, False),
        ({"http_proxy": "http://proxy:3128", "NO_PROXY": "*"}, False),
        ({}, False),
    ],
)
def test_proxy_variables_are_reported_when_they_would_catch_the_target(env, reported):
    result = diagnose(
        facts(
            target=f"http://127.0.0.1:{PORT}/",
            sockets=[sock(owners=[owner()])],
            attempts=[CONNECTED],
            proxy=env,
        )
    )
    assert result.verdict.code == "OK"
    assert ("FM-35" in [f.code for f in result.findings]) is reported


def test_secondary_findings_for_ports_and_exposure():
    ephemeral = 40000
    observed = facts(target=f"127.0.0.1:{ephemeral}", attempts=[attempt()], sockets=[])
    assert "FM-14" in [f.code for f in diagnose(observed).findings]
    privileged = facts(target="http://127.0.0.1:22/", attempts=[attempt()])
    codes = [f.code for f in diagnose(privileged).findings]
    assert "FM-13" in codes
    assert "FM-15" in codes
    exposed = facts(sockets=[sock("0.0.0.0", owners=[owner()])], attempts=[CONNECTED])
    assert "FM-36" in [f.code for f in diagnose(exposed).findings]


def test_reuseport_groups_and_two_servers_on_one_port():
    group = facts(
        sockets=[sock(owners=[owner(pid=1)]), sock(owners=[owner(pid=2)])], attempts=[CONNECTED]
    )
    assert "FM-12" in [f.code for f in diagnose(group).findings]
    two = facts(
        sockets=[sock("127.0.0.1", owners=[owner(pid=1)]), sock("::1", owners=[owner(pid=2)])],
        attempts=[CONNECTED],
    )
    assert "FM-06" in [f.code for f in diagnose(two).findings]


def test_time_wait_after_a_stop_is_reported():
    waiting = sock(state=SocketState.TIME_WAIT, remote=Endpoint(ip="127.0.0.1", port=5))
    result = diagnose(facts(sockets=[waiting], attempts=[attempt()]))
    assert result.verdict.code == "FM-01"
    assert "FM-11" in [f.code for f in result.findings]


def test_firewall_rules_appear_in_the_evidence():
    rule = FirewallRule(
        source="nft",
        family="inet",
        chain="t/input",
        verdict=RuleVerdict.REJECT,
        ports=(PORT,),
        text="lt-reject",
    )
    observed = facts(
        sockets=[sock(owners=[owner()])],
        attempts=[attempt()],
        firewall=FirewallFacts(looked=True, rules=(rule,)),
    )
    assert any("lt-reject" in line for line in diagnose(observed).verdict.evidence)


def test_the_machine_check_is_ok_on_a_healthy_machine_and_flags_a_down_loopback():
    healthy = diagnose(facts(target=None, resolution=LOCALHOST))
    assert healthy.verdict.code == "OK"
    assert {f.code for f in healthy.findings} >= {"FM-04", "FM-14", "FM-13"}
    down = diagnose(
        facts(
            target=None, resolution=LOCALHOST, loopback=dataclasses.replace(HEALTHY_LO, lo_up=False)
        )
    )
    assert down.verdict.code == "FM-28"
    no_hosts = diagnose(
        facts(target=None, resolution=dataclasses.replace(LOCALHOST, hosts_entries=()))
    )
    assert no_hosts.verdict.code == "FM-07"


@pytest.mark.parametrize(
    ("bound", "v6only", "ip", "reached"),
    [
        ("127.0.0.1", None, "127.0.0.1", True),
        ("127.0.0.1", None, "127.0.0.2", False),
        ("127.0.0.1", None, "::ffff:127.0.0.1", True),
        ("127.0.0.1", None, "0.0.0.0", True),
        ("0.0.0.0", None, "127.0.0.2", True),
        ("0.0.0.0", None, "::1", False),
        ("::", False, "127.0.0.1", True),
        ("::", True, "127.0.0.1", False),
        ("::", True, "::1", True),
        ("::1", True, "127.0.0.1", False),
    ],
)
def test_covers_follows_the_kernel_matching_rules(bound, v6only, ip, reached):
    assert covers(sock(bound, v6only=v6only), ip) is reached


# --- forwarders, orphans, ``:PORT`` and what a healthy target says --------------------------

QEMU = owner("qemu-system-x86", kind="qemu-hostfwd", target="guest:22")
SSH = owner("ssh", kind="ssh-local-forward", target="127.0.0.1:5432")
SILENT = attempt(outcome=Outcome.CONNECTED, after=AfterConnect.SILENT)


def test_a_silent_forwarder_asked_a_client_first_protocol_names_its_dead_far_end():
    result = diagnose(
        facts(target=f"http://127.0.0.1:{PORT}/", sockets=[sock(owners=[QEMU])], attempts=[SILENT])
    )
    assert result.verdict.code == "FM-32"
    assert "guest:22" in result.verdict.title
    assert "far end" in result.verdict.title


def test_an_ssh_tunnel_that_closes_says_it_is_one_and_where_its_far_end_is():
    closed = attempt(outcome=Outcome.CONNECTED, after=AfterConnect.CLOSED)
    result = diagnose(facts(sockets=[sock(owners=[SSH])], attempts=[closed]))
    assert result.verdict.code == "FM-33"
    assert "ssh-local-forward thing" in result.verdict.title
    assert "127.0.0.1:5432" in result.verdict.title
    assert any("SSH server" in line for line in result.verdict.evidence)


def test_a_silent_forwarder_on_a_bare_target_is_ok_with_a_hint():
    result = diagnose(facts(sockets=[sock(owners=[QEMU])], attempts=[SILENT]))
    assert result.verdict.code == "OK"
    assert any("guest:22" in line for line in result.verdict.evidence)


def test_a_listener_held_only_by_a_non_server_is_fm20_even_for_a_bare_target():
    result = diagnose(facts(sockets=[sock(owners=[owner("sleep", pid=55)])], attempts=[SILENT]))
    assert result.verdict.code == "FM-20"
    assert "kill 55" in result.verdict.fix


def test_a_bare_port_answering_on_one_family_is_ok_with_the_other_as_a_note():
    result = diagnose(
        facts(
            target=f":{PORT}",
            sockets=[sock(owners=[owner()])],
            attempts=[SILENT, attempt("::1")],
        )
    )
    assert result.verdict.code == "OK"
    assert "127.0.0.1" in result.verdict.evidence[0]
    noted = [f for f in result.findings if f.code == "FM-03"]
    assert noted
    assert noted[0].severity is Severity.LOW


def test_a_healthy_target_names_the_protocol_it_identified():
    redis = attempt(
        outcome=Outcome.CONNECTED, after=AfterConnect.ANSWERED, protocol="redis", detail="+PONG"
    )
    result = diagnose(facts(sockets=[sock(owners=[owner("redis-server")])], attempts=[redis]))
    assert result.verdict.code == "OK"
    assert "Redis (+PONG)" in result.verdict.title


def test_localhost_mapped_outside_loopback_is_fm07_with_the_failed_connect_as_evidence():
    outside = dataclasses.replace(LOCALHOST, glibc=("10.9.9.9",))
    result = diagnose(
        facts(
            target=f"localhost:{PORT}",
            resolution=outside,
            attempts=[
                attempt("10.9.9.9", outcome=Outcome.NET_UNREACHABLE, errno_name="ENETUNREACH")
            ],
        )
    )
    assert result.verdict.code == "FM-07"
    assert "non-loopback" in result.verdict.title
    assert any("no route to 10.9.9.9" in line for line in result.verdict.evidence)


def test_an_unresolved_dot_localhost_name_gets_its_own_hosts_line_and_the_next_problem():
    broken = dataclasses.replace(
        LOCALHOST, name="app.localhost", glibc=(), glibc_error="Name or service not known (EAI -2)"
    )
    result = diagnose(
        facts(
            target=f"http://app.localhost:{PORT}/health",
            resolution=broken,
            attempts=[attempt("::1"), attempt("127.0.0.1")],
        )
    )
    assert result.verdict.code == "FM-07"
    assert any("127.0.0.1 app.localhost" in fix for fix in result.verdict.fix)
    assert [f.code for f in result.findings].count("FM-01") == 1, "one cause, said once"


_OK = {"outcome": Outcome.CONNECTED, "after": AfterConnect.SILENT}


def test_on_wsl_a_listener_the_localhost_relay_does_not_forward_is_fm31():
    v6_only = dataclasses.replace(
        facts(
            target=f"[::1]:{PORT}",
            sockets=[sock("::1", owners=[owner()])],
            attempts=[attempt("::1", **_OK)],
        ),
        is_wsl=True,
    )
    assert "FM-31" in [f.code for f in diagnose(v6_only).findings]
    v4 = dataclasses.replace(
        facts(sockets=[sock(owners=[owner()])], attempts=[attempt(**_OK)]), is_wsl=True
    )
    assert "FM-31" not in [f.code for f in diagnose(v4).findings]
    not_wsl = facts(sockets=[sock("::1", owners=[owner()])], attempts=[attempt("::1", **_OK)])
    assert "FM-31" not in [f.code for f in diagnose(not_wsl).findings]


@pytest.mark.parametrize(
    ("name", "cmdline", "expected"),
    [
        ("systemd", ["/sbin/init"], "systemd"),
        ("xinetd", ["/usr/sbin/xinetd", "-stayalive"], "xinetd"),
        # The kernel's comm holds 15 characters: the program comes from the command line.
        (
            "systemd-socket-",
            ["/usr/bin/systemd-socket-activate", "-l", "8080", "app"],
            "systemd-socket-activate",
        ),
        ("python3", ["python3", "-m", "http.server"], None),
        ("cat", [], None),
    ],
)
def test_socket_activators_by_name_or_program(name, cmdline, expected):
    from portside.diagnosis.rules import _socket_activator

    assert _socket_activator(name, cmdline) == expected
