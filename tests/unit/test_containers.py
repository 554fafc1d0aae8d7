"""Pure parts of portside.containers and portside.exporter: Engine API listings as
dockerd 20.10 and podman 4.3 gave them, matching forwarders to containers, the FM-30
judgement with firewall rules, and the Prometheus text exposition."""

from __future__ import annotations

from portside.containers import (
    PublishedPort,
    container_findings,
    match_container,
    parse_containers,
    published_exposures,
)
from portside.exporter import Family, ScrapeFacts, exposition, families
from portside.firewall import parse_iptables_save
from portside.models import (
    Endpoint,
    Exposure,
    Finding,
    Identity,
    Owner,
    OwnerStatus,
    ProcessInfo,
    ProcessState,
    Severity,
    SocketEntry,
    SocketState,
    Transport,
)
from portside.models import (
    Family as AddressFamily,
)

DOCKER_LISTING = [
    {
        "Id": "75353b66515c5d3c4da1a1262c33f482beb69b93905843e63959a7914f528270",
        "Names": ["/web"],
        "Image": "nginx:1.25",
        "Labels": {"com.docker.compose.project": "shop"},
        "Ports": [
            {"IP": "127.0.0.1", "PrivatePort": 80, "PublicPort": 8081, "Type": "tcp"},
            {"IP": "0.0.0.0", "PrivatePort": 80, "PublicPort": 8080, "Type": "tcp"},
            {"PrivatePort": 443, "Type": "tcp"},  # exposed, not published
        ],
        "NetworkSettings": {"Networks": {"bridge": {"IPAddress": "172.17.0.2"}}},
    }
]
PODMAN_LISTING = [
    {
        "Id": "cf5fd4528d00471fe4392448dc67c6baf42f052f6495da2854d47c59c0c3693c",
        "Names": ["/db"],
        "Image": "docker.io/library/postgres:16",
        "Labels": {"io.podman.compose.project": "shop"},
        "Ports": [{"PrivatePort": 5432, "PublicPort": 5432, "Type": "tcp"}],  # "" = all
        "NetworkSettings": {"Networks": {"podman": {"IPAddress": "10.88.0.8"}}},
    }
]


def _docker() -> list[PublishedPort]:
    return parse_containers(
        DOCKER_LISTING, engine="/d.sock", engine_kind="docker", engine_version="20.10.24"
    )


def _podman() -> list[PublishedPort]:
    return parse_containers(PODMAN_LISTING, engine="/p.sock", engine_kind="podman")


def _entry(ip: str, port: int, owner: Owner) -> SocketEntry:
    return SocketEntry(
        transport=Transport.TCP,
        family=AddressFamily.IPV4,
        state=SocketState.LISTEN,
        local=Endpoint(ip=ip, port=port),
        remote=None,
        uid=0,
        inode=1,
        exposure=Exposure.ALL if ip == "0.0.0.0" else Exposure.LOOPBACK,
        owner_status=OwnerStatus.FOUND,
        owners=(owner,),
    )


def _owner(name: str, identity: Identity | None) -> Owner:
    process = ProcessInfo(
        pid=42,
        ppid=1,
        name=name,
        cmdline=(name,),
        user="root",
        uid=0,
        cwd=None,
        start_time=1.0,
        state=ProcessState.SLEEPING,
    )
    return Owner(process=process, identity=identity)


def test_listings_become_published_ports():
    docker = _docker()
    assert [(p.host_ip, p.host_port, p.container_port) for p in docker] == [
        ("127.0.0.1", 8081, 80),
        ("0.0.0.0", 8080, 80),
    ]
    assert {p.compose_project for p in docker} == {"shop"}
    assert docker[0].container_ips == ("172.17.0.2",)
    [db] = _podman()
    assert (db.host_ip, db.name, db.compose_project) == ("0.0.0.0", "db", "shop")


def test_a_forwarder_is_matched_to_its_container_and_never_guessed():
    ports = _docker() + _podman()
    proxy = _owner("docker-proxy", Identity(kind="docker-proxy", label="", target="172.17.0.2:80"))
    found = match_container(_entry("0.0.0.0", 8080, proxy), proxy, ports)
    assert found is not None
    assert (found.name, found.container_port, found.compose_project) == ("web", 80, "shop")
    conmon = _owner("conmon", Identity(kind="podman-conmon", label="", target="db"))
    found = match_container(_entry("0.0.0.0", 5432, conmon), conmon, ports)
    assert found is not None
    assert found.image == "docker.io/library/postgres:16"
    assert match_container(_entry("0.0.0.0", 9999, proxy), proxy, ports) is None
    twin = PublishedPort(**{**_docker()[1].__dict__, "container_id": "other", "name": "twin"})
    bare = _owner("rootlessport", Identity(kind="podman-rootlessport", label=""))
    assert match_container(_entry("0.0.0.0", 8080, bare), bare, [*ports, twin]) is None


IPTABLES = """\
*filter
:INPUT DROP [0:0]
:FORWARD DROP [0:0]
:DOCKER-USER - [0:0]
-A INPUT -i lo -j ACCEPT
-A DOCKER-USER -p tcp --dport 5432 -j DROP
-A DOCKER-USER -j RETURN
COMMIT
"""


def test_published_ports_pass_input_and_docker_user_filters_them():
    chains = parse_iptables_save(IPTABLES)
    exposures = {e.port.host_port: e for e in published_exposures(_docker() + _podman(), chains)}
    assert exposures[8081].reach == "loopback-only"
    assert exposures[8080].reach == "exposed"
    assert exposures[8080].input_drops is True
    assert exposures[5432].reach == "filtered"
    assert "5432" in (exposures[5432].rule or "")
    findings = container_findings(exposures.values())
    web = next(f for f in findings if "web" in f.title and f.severity is Severity.HIGH)
    assert any("INPUT rules drop" in line for line in web.evidence)
    assert "127.0.0.1:8080:80" in web.fix[0]
    assert "DOCKER-USER" in web.fix[1]
    assert any(f.severity is Severity.INFO and "db" in f.title for f in findings)
    # Docker 20.10: the 127.0.0.1 publish is also reachable from the link (moby#45610).
    assert any(f.severity is Severity.LOW and "8081" in f.title for f in findings)


def test_an_exposed_database_container_is_critical_with_the_podman_fix():
    [finding] = container_findings(published_exposures(_podman(), None))
    assert finding.severity is Severity.CRITICAL
    assert finding.title.startswith("database container db")
    assert "podman run -p 127.0.0.1:5432:5432" in finding.fix[0]
    assert "forward" in finding.fix[1]


def test_the_exposition_counts_and_escapes():
    proxy = _owner("docker-proxy", Identity(kind="docker-proxy", label=""))
    facts = ScrapeFacts(
        listeners=(_entry("0.0.0.0", 8080, proxy), _entry("0.0.0.0", 8080, proxy)),
        findings=(Finding(code="exposed-database", severity=Severity.HIGH, title="t"),),
        published=tuple(_docker()),
        up=(("listeners", True), ("containers", False)),
        duration=0.25,
        version='1.0"x',
    )
    text = exposition(families(facts))
    assert (
        'portside_listeners{exposure="all",process="docker-proxy",port="8080",proto="tcp",container=""} 2'
        in text
    )
    assert 'portside_findings{severity="high",code="exposed-database"} 1' in text
    assert 'portside_findings_by_severity{severity="critical"} 0' in text
    assert 'portside_collector_up{collector="containers"} 0' in text
    assert "portside_scrape_duration_seconds 0.25" in text
    assert 'portside_build_info{version="1.0\\"x"} 1' in text
    assert text.count("# TYPE portside_listeners gauge") == 1
    empty = Family(name="m", help="a\nb\\c", type="gauge", samples=())
    assert exposition([empty]) == "# HELP m a\\nb\\\\c\n# TYPE m gauge\n"
