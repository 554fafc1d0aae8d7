"""Containers behind published ports, through the Engine API.

One small client for the Docker Engine API over its unix socket; the same code talks to
podman's Docker-compatible socket (``podman system service``). It answers three needs:

* :func:`published_ports`: every port a running container publishes on the host (who
  holds it, which image, which Compose project, host address and port, container port);
* :func:`annotate`: ``ls``/``who`` sockets held by a container's port forwarder
  (docker-proxy, podman's conmon or rootlessport) get the container they lead to. The
  Engine API is asked only when such a forwarder is among the owners, so listing sockets
  costs nothing more on a machine without containers;
* :func:`published_exposures` and :func:`container_findings` (pure): a port published on
  a non-loopback address is DNAT-ed in the ``nat`` table and crosses the FORWARD chain,
  not INPUT, so host INPUT rules and ufw do not protect it (failure mode FM-30).

Heavy modules (http.client, json, socket) are imported when the API is asked.
"""

from __future__ import annotations

import dataclasses
import os
import sys

from portside.models import (
    Container,
    Finding,
    Owner,
    Severity,
    SocketEntry,
    assemble,
    methods_compiled_on_first_use,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    import http.client
    from collections.abc import Iterable, Mapping, Sequence

    from portside.audit import AuditFinding, AuditReport
    from portside.audit_risk import ServiceGuess
    from portside.firewall import Chain

__all__ = [
    "PORT_FORWARDER_KINDS",
    "EngineSurvey",
    "PublishedExposure",
    "PublishedPort",
    "annotate",
    "audit_published",
    "container_findings",
    "engine_request",
    "engine_sockets",
    "find_container",
    "host_chains",
    "parse_containers",
    "published_exposures",
    "published_ports",
    "survey",
]

#: Identity kinds (portside.identify) of the processes that hold a container's published
#: host port: the sockets :func:`annotate` looks up.
PORT_FORWARDER_KINDS = frozenset(
    {"docker-proxy", "podman-conmon", "podman-rootlessport", "podman-slirp4netns", "podman-pasta"}
)
ENGINE_TIMEOUT = 10.0
#: Bound on each Engine API request made only to annotate ``ls``/``who`` (a hung engine
#: must not hold up a listing for long).
ANNOTATE_TIMEOUT = 5.0
#: Compose labels naming the project (Docker Compose; podman-compose sets both).
_PROJECT_LABELS = ("com.docker.compose.project", "io.podman.compose.project")
_WILDCARDS = frozenset({"", "0.0.0.0", "::"})  # noqa: S104 -- compared, never bound


with methods_compiled_on_first_use():

    @dataclasses.dataclass(frozen=True, kw_only=True)
    class PublishedPort:
        """One host port a running container publishes.

        ``host_ip`` is what the engine reports (``"0.0.0.0"``, ``"::"``, ``"127.0.0.1"``; podman
        reports every address as ``""``, kept as ``"0.0.0.0"``). ``engine`` is the API socket,
        ``engine_kind`` ``"docker"`` or ``"podman"``, ``engine_version`` its version if told.
        ``container_ips``: the container's addresses on its networks.
        """

        engine: str
        container_id: str
        name: str
        image: str
        compose_project: str | None
        host_ip: str
        host_port: int
        container_port: int
        proto: str
        engine_kind: str = "docker"
        engine_version: str | None = None
        container_ips: tuple[str, ...] = ()

        def container(self) -> Container:
            """The :class:`~portside.models.Container` record for this port."""
            return Container(
                engine=self.engine,
                id=self.container_id,
                name=self.name,
                image=self.image,
                compose_project=self.compose_project,
                container_port=self.container_port,
            )


with methods_compiled_on_first_use():

    @dataclasses.dataclass(frozen=True, kw_only=True)
    class EngineSurvey:
        """Every published port of every engine asked, and why an engine could not tell."""

        ports: tuple[PublishedPort, ...]
        problems: tuple[str, ...] = ()


# --------------------------------------------------------------------------- the client


def _connection(path: str, timeout: float) -> http.client.HTTPConnection:
    import http.client
    import socket

    class UnixHTTPConnection(http.client.HTTPConnection):
        """HTTP/1.1 over a unix socket."""

        def connect(self) -> None:
            if sys.platform == "win32":
                raise OSError("the Engine API over a unix socket is not available on Windows")
            else:  # noqa: RET506 -- an explicit platform branch, for mypy --platform win32
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.settimeout(self.timeout)
                try:
                    sock.connect(path)
                except OSError:
                    sock.close()
                    raise
                self.sock = sock

    return UnixHTTPConnection("localhost", timeout=timeout)


def engine_request(
    engine: str, method: str, url: str, *, timeout: float = ENGINE_TIMEOUT
) -> tuple[int, bytes]:
    """One Engine API request on the unix socket ``engine``: (HTTP status, body).

    Raises OSError when the socket cannot be reached or the engine does not answer.
    """
    connection = _connection(engine, timeout)
    try:
        connection.request(method, url, headers={"Host": "docker"})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def engine_sockets(environ: Mapping[str, str] | None = None) -> list[str]:
    """Engine API sockets to ask, in order: ``$DOCKER_HOST`` (``unix://`` only) alone when
    set, else the usual Docker and podman sockets that exist."""
    env = os.environ if environ is None else environ
    host = env.get("DOCKER_HOST", "")
    if host:
        return [host.removeprefix("unix://")] if host.startswith("unix://") else []
    candidates = ["/var/run/docker.sock", "/run/podman/podman.sock"]
    runtime = env.get("XDG_RUNTIME_DIR")
    if runtime:
        candidates += [f"{runtime}/podman/podman.sock", f"{runtime}/docker.sock"]
    return [path for path in candidates if os.path.exists(path)]  # noqa: PTH110 -- cheap


def _get_json(engine: str, url: str, timeout: float = ENGINE_TIMEOUT) -> object:
    """The decoded JSON answer to GET ``url``; raises OSError/ValueError with the cause."""
    import json

    status, body = engine_request(engine, "GET", url, timeout=timeout)
    if status != 200:
        raise ValueError(f"HTTP {status}")
    return json.loads(body)


def _engine_kind(version: object) -> tuple[str, str | None]:
    """("docker" | "podman", version) from a ``GET /version`` answer."""
    if not isinstance(version, dict):
        return "docker", None
    text = str(version.get("Version")) if version.get("Version") else None
    names = [str(c.get("Name", "")) for c in version.get("Components") or [] if isinstance(c, dict)]
    platform = version.get("Platform")
    if isinstance(platform, dict):
        names.append(str(platform.get("Name", "")))
    kind = "podman" if any("podman" in name.lower() for name in names) else "docker"
    return kind, text


# --------------------------------------------------------------------------- listing


def parse_containers(
    listing: object, *, engine: str, engine_kind: str = "docker", engine_version: str | None = None
) -> list[PublishedPort]:
    """The published ports in a ``GET /containers/json`` answer (pure). Ports a container
    only exposes (no host port) are left out."""
    found: list[PublishedPort] = []
    for container in listing if isinstance(listing, list) else []:
        if not isinstance(container, dict):
            continue
        names = container.get("Names") or [""]
        name = str(names[0] if isinstance(names, list) and names else names).lstrip("/")
        labels = container.get("Labels")
        labels = labels if isinstance(labels, dict) else {}
        project = next((str(labels[k]) for k in _PROJECT_LABELS if labels.get(k)), None)
        networks = (container.get("NetworkSettings") or {}).get("Networks") or {}
        ips = tuple(
            str(net.get("IPAddress"))
            for net in (networks.values() if isinstance(networks, dict) else [])
            if isinstance(net, dict) and net.get("IPAddress")
        )
        seen: set[tuple[str, int, int, str]] = set()
        for binding in container.get("Ports") or []:
            if not isinstance(binding, dict):
                continue
            public, private = binding.get("PublicPort"), binding.get("PrivatePort")
            if not isinstance(public, int) or not isinstance(private, int) or public <= 0:
                continue
            host_ip = str(binding.get("IP") or "0.0.0.0")  # noqa: S104 -- podman's "" means every address
            proto = str(binding.get("Type") or "tcp")
            key = (host_ip, public, private, proto)
            if key in seen:
                continue
            seen.add(key)
            found.append(
                PublishedPort(
                    engine=engine,
                    container_id=str(container.get("Id", "")),
                    name=name,
                    image=str(container.get("Image", "")),
                    compose_project=project,
                    host_ip=host_ip,
                    host_port=public,
                    container_port=private,
                    proto=proto,
                    engine_kind=engine_kind,
                    engine_version=engine_version,
                    container_ips=ips,
                )
            )
    return found


def survey(
    engines: Sequence[str] | None = None,
    *,
    timeout: float = ENGINE_TIMEOUT,
    identify: bool = True,
) -> EngineSurvey:
    """Every port published by a running container of every engine (default
    :func:`engine_sockets`); an engine that cannot be asked is named in ``problems``.
    ``timeout`` bounds each request. ``identify``: also ask each engine what it is
    (``engine_kind``, ``engine_version``; podman answers ``/version`` by running conmon
    and runc, which is slow); without it they are ``"docker"`` and None."""
    ports: list[PublishedPort] = []
    problems: list[str] = []
    for engine in engine_sockets() if engines is None else engines:
        try:
            kind, version = (
                _engine_kind(_get_json(engine, "/version", timeout))
                if identify
                else ("docker", None)
            )
            listing = _get_json(engine, "/containers/json", timeout)
        except OSError as exc:
            problems.append(f"{engine}: {exc.strerror or exc}")
            continue
        except ValueError as exc:
            problems.append(f"{engine}: {exc}")
            continue
        ports.extend(
            parse_containers(listing, engine=engine, engine_kind=kind, engine_version=version)
        )
    return EngineSurvey(ports=tuple(ports), problems=tuple(problems))


def published_ports(
    engines: Sequence[str] | None = None,
    *,
    timeout: float = ENGINE_TIMEOUT,
    identify: bool = True,
) -> list[PublishedPort]:
    """Every port a running container publishes, from every engine that answers
    (``identify``: see :func:`survey`)."""
    return list(survey(engines, timeout=timeout, identify=identify).ports)


def _covers(host_ip: str, ip: str) -> bool:
    return host_ip in _WILDCARDS or host_ip == ip


def find_container(port: int, transport: str, ip: str, engines: Sequence[str]) -> Container | str:
    """The running container that publishes ``port``, asked of each engine in turn; or
    why none was found (a sentence)."""
    if not engines:
        return "no Engine API socket found (set DOCKER_HOST=unix://PATH)"
    problems: list[str] = []
    for engine in engines:
        found = survey([engine], identify=False)
        problems.extend(found.problems)
        for published in found.ports:
            if (
                published.host_port == port
                and published.proto == transport
                and _covers(published.host_ip, ip)
            ):
                return published.container()
        if not found.problems:
            problems.append(f"{engine}: no running container publishes {transport} port {port}")
    return "; ".join(problems)


# --------------------------------------------------------------------------- annotation


def _forwarders(entry: SocketEntry) -> bool:
    for owner in entry.owners:
        identity = owner.identity
        if identity is not None and identity.kind in PORT_FORWARDER_KINDS:
            return True
    return False


def match_container(
    entry: SocketEntry, owner: Owner, ports: Sequence[PublishedPort]
) -> Container | None:
    """The container behind ``owner``'s socket ``entry`` among ``ports`` (pure): same
    host port and transport on a covering address, narrowed by what the forwarder's
    command line names (docker-proxy's container address and port, conmon's container
    name or id). None unless exactly one container fits: never a guess."""
    local = entry.local
    candidates = [
        p
        for p in ports
        if p.host_port == local.port
        and p.proto == entry.transport.value
        and _covers(p.host_ip, local.ip)
    ]
    identity = owner.identity
    target = identity.target if identity is not None else None
    if target and identity is not None:
        if identity.kind == "docker-proxy":
            ip, _, port = target.rpartition(":")
            ip = ip.strip("[]")
            narrowed = [
                p
                for p in candidates
                if str(p.container_port) == port and (not p.container_ips or ip in p.container_ips)
            ]
        else:
            narrowed = [
                p for p in candidates if p.name == target or p.container_id.startswith(target)
            ]
        if narrowed:
            candidates = narrowed
    if len({(p.engine, p.container_id) for p in candidates}) != 1:
        return None
    ports_of_one = {p.container_port for p in candidates}
    found = candidates[0].container()
    if len(ports_of_one) != 1:  # one host port to several container ports: cannot happen
        found = dataclasses.replace(found, container_port=None)
    return found


def needs_engine(entries: Iterable[SocketEntry]) -> bool:
    """Whether any socket is held by a container's port forwarder (cheap: no I/O)."""
    return any(entry.owners and _forwarders(entry) for entry in entries)


def annotate(
    entries: Sequence[SocketEntry], *, ports: Sequence[PublishedPort] | None = None
) -> list[SocketEntry]:
    """``entries`` with ``Owner.container`` filled in for container port forwarders.

    The Engine API is asked (:func:`published_ports`, unless ``ports`` are given) only
    when a forwarder holds one of the sockets; otherwise the entries come back as they are.
    """
    if not needs_engine(entries):
        return list(entries)
    if ports is None:
        ports = published_ports(timeout=ANNOTATE_TIMEOUT, identify=False)
    result: list[SocketEntry] = []
    for entry in entries:
        if not entry.owners or not ports or not _forwarders(entry):
            result.append(entry)
            continue
        owners = []
        for owner in entry.owners:
            kind = owner.identity.kind if owner.identity else None
            container = (
                match_container(entry, owner, ports) if kind in PORT_FORWARDER_KINDS else None
            )
            owners.append(
                owner if container is None else dataclasses.replace(owner, container=container)
            )
        fields = entry.__dict__.copy()
        fields["owners"] = tuple(owners)
        result.append(assemble(SocketEntry, fields))
    return result


# --------------------------------------------------------------------------- exposure (pure)

#: Container ports and image names of services that should never face the network.
_DATABASE_PORTS = frozenset({5432, 3306, 6379, 27017, 9200, 11211, 5984, 9042, 8086, 2375})
_DATABASE_IMAGES = (
    "postgres",
    "mysql",
    "mariadb",
    "redis",
    "valkey",
    "mongo",
    "elasticsearch",
    "opensearch",
    "memcached",
    "couchdb",
    "cassandra",
    "influxdb",
    "clickhouse",
)


with methods_compiled_on_first_use():

    @dataclasses.dataclass(frozen=True, kw_only=True)
    class PublishedExposure:
        """How far one published port reaches.

        ``reach``: ``"loopback-only"`` (published on 127.0.0.1 or ::1), ``"filtered"`` (a
        DOCKER-USER rule drops it), ``"exposed"`` (published on a non-loopback address with
        nothing in its way that portside can see). ``input_drops``: the host's INPUT rules
        would drop this port (None: no firewall rules were given) -- they do not apply,
        which is the point of saying so. ``rule``: the DOCKER-USER rule that drops it, or
        the one portside could not judge.
        """

        port: PublishedPort
        reach: str
        input_drops: bool | None = None
        rule: str | None = None
        rule_unclear: bool = False


def _is_loopback(ip: str) -> bool:
    return ip == "::1" or ip.startswith("127.") or ip == "localhost"


def _input_drops(chains: Sequence[Chain], port: int, proto: str) -> bool:
    """Whether an INPUT base chain would drop ``proto`` ``port`` from a non-loopback
    interface: its first matching rule drops or rejects, or none matches and its policy
    is drop."""
    for chain in chains:
        if chain.hook != "input":
            continue
        verdict = chain.policy
        for rule in chain.rules:
            if rule.established or rule.unknown:
                continue
            if rule.in_interface and not rule.in_interface.startswith("!"):
                continue  # "iif lo accept" and the like: not the network's traffic
            if rule.protocol not in (None, proto):
                continue
            if rule.dport is not None and not rule.dport.matches(port):
                continue
            if rule.verdict in ("accept", "drop", "reject"):
                verdict = rule.verdict
                break
        if verdict in ("drop", "reject"):
            return True
    return False


def _docker_user_rule(chains: Sequence[Chain], port: PublishedPort) -> tuple[str | None, bool]:
    """The first DOCKER-USER rule that drops the published port's traffic after DNAT
    (it then carries the container port), and whether it has conditions portside does
    not judge (a source address, a conntrack match …)."""
    for chain in chains:
        if chain.name != "DOCKER-USER":
            continue
        for rule in chain.rules:
            if rule.established or rule.protocol not in (None, port.proto):
                continue
            if rule.dport is not None and not (
                rule.dport.matches(port.container_port) or rule.dport.matches(port.host_port)
            ):
                continue
            if rule.verdict in ("drop", "reject"):
                return rule.text, bool(rule.unknown or rule.in_interface)
            if rule.verdict == "accept" and not rule.unknown:
                return None, False
    return None, False


def published_exposures(
    ports: Iterable[PublishedPort], chains: Sequence[Chain] | None = None
) -> list[PublishedExposure]:
    """How far each published port reaches (pure). ``chains``: the host's firewall
    (:mod:`portside.firewall`), or None when it could not be read."""
    result: list[PublishedExposure] = []
    for port in ports:
        input_drops = None if chains is None else _input_drops(chains, port.host_port, port.proto)
        if _is_loopback(port.host_ip):
            result.append(
                PublishedExposure(port=port, reach="loopback-only", input_drops=input_drops)
            )
            continue
        rule, unclear = (None, False) if chains is None else _docker_user_rule(chains, port)
        reach = "filtered" if rule is not None and not unclear else "exposed"
        result.append(
            PublishedExposure(
                port=port, reach=reach, input_drops=input_drops, rule=rule, rule_unclear=unclear
            )
        )
    return result


def _run(argv: Sequence[str], timeout: float) -> str | None:
    import subprocess

    try:
        done = subprocess.run(
            list(argv), capture_output=True, text=True, timeout=max(timeout, 0.05), check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 else None


def host_chains(timeout: float = 5.0) -> list[Chain] | None:
    """This namespace's firewall: ``nft -j list ruleset`` (iptables-nft's rules included)
    and the legacy iptables tables; None when neither could be read (not root, no tools)."""
    import time

    from portside.firewall import parse_iptables_save, parse_nft_json

    deadline = time.monotonic() + timeout
    chains: list[Chain] = []
    looked = False
    text = _run(["nft", "-j", "list", "ruleset"], timeout)
    if text is not None:
        try:
            chains.extend(parse_nft_json(text))
            looked = True
        except ValueError:
            pass
    for tool, family in (("iptables-legacy-save", "ip"), ("ip6tables-legacy-save", "ip6")):
        text = _run([tool], deadline - time.monotonic())
        if text is not None:
            looked = True
            chains.extend(
                parse_iptables_save(text, source=tool.removesuffix("-save"), family=family)
            )
    return chains if looked else None


def _host(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def _is_database(port: PublishedPort) -> bool:
    image = port.image.rpartition("/")[2].partition(":")[0].partition("@")[0].lower()
    return port.container_port in _DATABASE_PORTS or any(
        image.startswith(name) for name in _DATABASE_IMAGES
    )


def _version_below(version: str | None, major: int) -> bool:
    head = (version or "").partition(".")[0]
    return head.isdigit() and int(head) < major


def _what(port: PublishedPort) -> str:
    project = f", compose project {port.compose_project}" if port.compose_project else ""
    return f"container {port.name} (image {port.image}{project})"


def _fixes(port: PublishedPort) -> tuple[str, ...]:
    publish = f"127.0.0.1:{port.host_port}:{port.container_port}"
    if port.proto != "tcp":
        publish += f"/{port.proto}"
    tool = "podman" if port.engine_kind == "podman" else "docker"
    fixes = [
        f"publish on loopback only: `{tool} run -p {publish} …`"
        f' (Compose: `ports: ["{publish}"]`), then recreate {port.name}',
    ]
    if port.engine_kind == "docker":
        fixes.append(
            f"or filter it where published ports pass, the DOCKER-USER chain: `iptables -I DOCKER-USER"
            f" -p {port.proto} -m conntrack --ctorigdstport {port.host_port} ! -s 127.0.0.0/8 -j DROP`"
            " (ufw and INPUT rules never see this traffic)"
        )
    else:
        fixes.append(
            "or drop it in a forward-hook chain of your own: `nft add table inet portfw; nft add"
            " chain inet portfw fwd '{ type filter hook forward priority -1; }'; nft add rule inet"
            f" portfw fwd ct original proto-dst {port.host_port} {port.proto} dport"
            f" {port.container_port} drop` (INPUT rules never see this traffic)"
        )
    return tuple(fixes)


def container_findings(exposures: Iterable[PublishedExposure]) -> list[Finding]:
    """Findings (code FM-30) for published ports that face the network, most severe first
    (pure). Loopback-only ports give none, except on Docker < 28, whose DNAT for a
    127.0.0.1 publish also answers packets from the local link (moby#45610)."""
    findings: list[Finding] = []
    for exposure in exposures:
        port = exposure.port
        where = _host(port.host_ip, port.host_port)
        mapping = f"{where} -> {port.container_port}/{port.proto}"
        evidence = [
            f"{_what(port)} publishes {mapping} through {port.engine_kind} ({port.engine})",
        ]
        if exposure.reach == "loopback-only":
            if port.engine_kind == "docker" and _version_below(port.engine_version, 28):
                findings.append(
                    Finding(
                        code="FM-30",
                        severity=Severity.LOW,
                        title=f"{port.name}: {where} is published on loopback, but Docker"
                        f" {port.engine_version} also forwards it for crafted packets from the local link",
                        evidence=(
                            *evidence,
                            "Docker before 28.0 DNATs a 127.0.0.1 publish on any interface",
                        ),
                        fix=("upgrade Docker to 28 or later",),
                    )
                )
            continue
        if exposure.input_drops:
            evidence.append(
                f"the host's INPUT rules drop {port.proto} port {port.host_port}, but a published"
                " port is DNAT-ed (nat table) and crosses FORWARD: INPUT rules and ufw never see it"
            )
        else:
            evidence.append(
                "published ports are DNAT-ed (nat table) and cross FORWARD, not INPUT:"
                " host INPUT rules and ufw do not protect them"
            )
        if exposure.reach == "filtered":
            findings.append(
                Finding(
                    code="FM-30",
                    severity=Severity.INFO,
                    title=f"{port.name}: {mapping} is published to the network, and DOCKER-USER drops it",
                    evidence=(*evidence, f"DOCKER-USER: {exposure.rule}"),
                )
            )
            continue
        if exposure.rule_unclear and exposure.rule:
            evidence.append(
                f"DOCKER-USER has a rule with conditions portside does not judge: {exposure.rule}"
            )
        database = _is_database(port)
        findings.append(
            Finding(
                code="FM-30",
                severity=Severity.CRITICAL if database else Severity.HIGH,
                title=(
                    f"{'database ' if database else ''}{_what(port)} is reachable from the network"
                    f" on {where} (published port; the host firewall's INPUT rules do not apply)"
                ),
                evidence=tuple(evidence),
                fix=_fixes(port),
            )
        )
    order = list(Severity)
    findings.sort(key=lambda f: order.index(f.severity))
    return findings


# --------------------------------------------------------------------------- portside audit


def _audit_guess(port: PublishedPort) -> ServiceGuess:
    from portside import audit_risk

    image = port.image.rpartition("/")[2].partition(":")[0].partition("@")[0].lower()
    guess = audit_risk.classify(image, (image,), None, port=port.container_port)
    label = f"container {port.name} ({port.image})"
    if guess.service is audit_risk.Service.UNKNOWN:
        return audit_risk.ServiceGuess(service=audit_risk.Service.FORWARDER, label=label)
    return dataclasses.replace(guess, label=f"{guess.label} in {label}")


def _audit_finding(
    exposure: PublishedExposure, listener: AuditFinding | None, finding: Finding | None
) -> AuditFinding:
    """The audit's record for one published port: the forwarder's listener re-judged
    (or a new record when no process holds the host port: userland-proxy off)."""
    from portside import audit
    from portside.audit_risk import Verdict, code, fix, severity

    port = exposure.port
    verdict = Verdict(exposure.reach)
    guess = _audit_guess(port)
    evidence = [f"{_what(port)} -> {port.container_port}/{port.proto} ({port.engine_kind})"]
    if finding is not None:
        evidence.extend(finding.evidence[1:])
    reach: tuple[str, ...] = ()
    if verdict is Verdict.LOOPBACK_ONLY:
        if listener is not None:
            return dataclasses.replace(
                listener, label=guess.label, evidence=(*listener.evidence, *evidence)
            )
        firewall, reason = "n/a", "published on loopback"
    elif verdict is Verdict.FILTERED:
        firewall, reason = "drop", f"DOCKER-USER: {exposure.rule}"
    else:
        firewall = "accept"
        reason = (
            "published container port: DNAT-ed in the nat table, it crosses FORWARD, which"
            " the engine's rules accept; INPUT rules and ufw never see it"
        )
        reach = listener.reachable_from if listener is not None and listener.reachable_from else ()
        if not reach:
            reach = ("every interface (DNAT)",)
    one_line = ("; or ".join(finding.fix) if finding is not None and finding.fix else None) or fix(
        guess, port=port.host_port, proto=port.proto, verdict=verdict
    )
    return audit.AuditFinding(
        code=code(guess, verdict, answers_without_auth=False),
        severity=severity(guess, verdict, answers_without_auth=False),
        address=port.host_ip,
        port=port.host_port,
        proto=port.proto,
        process=listener.process if listener is not None else None,
        reachable_from=reach,
        firewall=firewall,
        fix=one_line,
        verdict=verdict,
        scope="loopback"
        if _is_loopback(port.host_ip)
        else "all"
        if port.host_ip in _WILDCARDS
        else "address",
        service=guess.service,
        label=guess.label,
        pid=listener.pid if listener is not None else None,
        firewall_reason=reason,
        evidence=tuple(evidence),
    )


def audit_published(
    report: AuditReport,
    chains: Sequence[Chain],
    *,
    ports: Sequence[PublishedPort] | None = None,
) -> AuditReport:
    """``report`` (of ``portside audit``) with the ports containers publish judged as
    they are reached: through NAT and FORWARD, whatever INPUT says (FM-30). The
    forwarder's listener (docker-proxy, conmon) is re-judged; a published port that no
    process holds (Docker with userland-proxy off) is added. ``ports``: default
    :func:`published_ports` (nothing is asked when no Engine API socket exists)."""
    from portside import audit

    if ports is None:
        ports = published_ports()
    if not ports:
        return report
    exposures = published_exposures(ports, chains)
    by_key = {(e.port.host_ip, e.port.host_port, e.port.proto): e for e in exposures}
    findings = {id(e): _finding_of(e) for e in exposures}
    kept: list[AuditFinding] = []
    seen: set[tuple[str, int, str]] = set()
    for listener in report.findings:
        key = (listener.address, listener.port, listener.proto)
        exposure = by_key.get(key)
        if exposure is None:
            kept.append(listener)
            continue
        seen.add(key)
        kept.append(_audit_finding(exposure, listener, findings[id(exposure)]))
    for key, exposure in by_key.items():
        if key not in seen and exposure.reach != "loopback-only":
            kept.append(_audit_finding(exposure, None, findings[id(exposure)]))
    return dataclasses.replace(report, findings=tuple(audit.sort_findings(kept)))


def _finding_of(exposure: PublishedExposure) -> Finding | None:
    found = container_findings([exposure])
    return found[0] if found else None
