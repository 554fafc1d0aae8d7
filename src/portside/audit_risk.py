"""What a listener is and how bad it is to expose it: pure tables for ``portside audit``.

:func:`classify` names the kind of service from the owner (process name, command line,
the identity :mod:`portside.identify` gave it), the protocol a probe saw, and the port
as a last resort. :func:`severity` grades a finding from that kind and the verdict;
:func:`fix` gives the one-line fix for an exposed listener.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
from collections.abc import Sequence

from portside.models import Identity, Severity


class Service(enum.StrEnum):
    """Kinds of service, by what an outsider could do with them."""

    DOCKER_API = "docker-api"  # root on the host
    DEBUGGER = "debugger"  # code execution (node --inspect, debugpy, JDWP, delve)
    DATABASE = "database"  # data (Redis, PostgreSQL, MySQL, MongoDB, …)
    JUPYTER = "jupyter"  # code execution behind a token
    ADMIN_CONSOLE = "admin-console"  # Grafana, Jenkins, Vault, Kubernetes API, …
    DEV_SERVER = "dev-server"  # vite, next, flask, http.server, …
    FORWARDER = "forwarder"  # socat, ssh -L, docker-proxy: whatever is behind it
    SSH = "ssh"
    WEB_SERVER = "web-server"  # nginx, Apache, Caddy: meant to face a network
    SYSTEM = "system"  # DNS, printing, time, mDNS, …
    UNKNOWN = "unknown"


class Verdict(enum.StrEnum):
    """Whether the network reaches the listener."""

    EXPOSED = "exposed"  # a packet from another host gets to it
    UNKNOWN = "unknown"  # the firewall's rules are too complex to tell: treated as exposed
    FILTERED = "filtered"  # the firewall drops or rejects it on every interface
    LOOPBACK_ONLY = "loopback-only"  # bound to loopback, or no other interface has an address


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ServiceGuess:
    """The kind of service, for people (``label``) and by name of program (``program``)."""

    service: Service
    label: str
    program: str | None = None  # "redis", "postgres", "node", "debugpy", "jupyter", …


SEVERITY_ORDER: tuple[Severity, ...] = (
    Severity.INFO,
    Severity.LOW,
    Severity.MEDIUM,
    Severity.HIGH,
    Severity.CRITICAL,
)


def rank(severity: Severity) -> int:
    """0 for info … 4 for critical."""
    return SEVERITY_ORDER.index(severity)


_EXPOSED_SEVERITY = {
    Service.DOCKER_API: Severity.CRITICAL,
    Service.DEBUGGER: Severity.CRITICAL,
    Service.DATABASE: Severity.HIGH,
    Service.JUPYTER: Severity.HIGH,
    Service.ADMIN_CONSOLE: Severity.HIGH,
    Service.DEV_SERVER: Severity.MEDIUM,
    Service.FORWARDER: Severity.MEDIUM,
    Service.UNKNOWN: Severity.MEDIUM,
    Service.SSH: Severity.LOW,
    Service.WEB_SERVER: Severity.LOW,
    Service.SYSTEM: Severity.LOW,
}

# program name -> (service, label, program key)
_PROGRAMS: dict[str, tuple[Service, str, str]] = {
    "dockerd": (Service.DOCKER_API, "Docker Engine API", "docker"),
    "redis-server": (Service.DATABASE, "Redis", "redis"),
    "valkey-server": (Service.DATABASE, "Valkey", "redis"),
    "keydb-server": (Service.DATABASE, "KeyDB", "redis"),
    "redis-sentinel": (Service.DATABASE, "Redis Sentinel", "redis"),
    "postgres": (Service.DATABASE, "PostgreSQL", "postgres"),
    "postmaster": (Service.DATABASE, "PostgreSQL", "postgres"),
    "mysqld": (Service.DATABASE, "MySQL", "mysql"),
    "mariadbd": (Service.DATABASE, "MariaDB", "mysql"),
    "mongod": (Service.DATABASE, "MongoDB", "mongo"),
    "mongos": (Service.DATABASE, "MongoDB router", "mongo"),
    "memcached": (Service.DATABASE, "memcached", "memcached"),
    "clickhouse-server": (Service.DATABASE, "ClickHouse", "clickhouse"),
    "influxd": (Service.DATABASE, "InfluxDB", "influxdb"),
    "etcd": (Service.DATABASE, "etcd", "etcd"),
    "debugpy": (Service.DEBUGGER, "debugpy debugger", "debugpy"),
    "dlv": (Service.DEBUGGER, "Delve debugger", "dlv"),
    "gdbserver": (Service.DEBUGGER, "gdbserver", "gdbserver"),
    "grafana": (Service.ADMIN_CONSOLE, "Grafana", "grafana"),
    "grafana-server": (Service.ADMIN_CONSOLE, "Grafana", "grafana"),
    "vault": (Service.ADMIN_CONSOLE, "Vault", "vault"),
    "consul": (Service.ADMIN_CONSOLE, "Consul", "consul"),
    "minio": (Service.ADMIN_CONSOLE, "MinIO", "minio"),
    "prometheus": (Service.ADMIN_CONSOLE, "Prometheus", "prometheus"),
    "kube-apiserver": (Service.ADMIN_CONSOLE, "Kubernetes API server", "kubernetes"),
    "kubelet": (Service.ADMIN_CONSOLE, "kubelet", "kubernetes"),
    "k3s": (Service.ADMIN_CONSOLE, "k3s", "kubernetes"),
    "cockpit-ws": (Service.ADMIN_CONSOLE, "Cockpit", "cockpit"),
    "portainer": (Service.ADMIN_CONSOLE, "Portainer", "portainer"),
    "sshd": (Service.SSH, "OpenSSH server", "sshd"),
    "nginx": (Service.WEB_SERVER, "nginx", "nginx"),
    "apache2": (Service.WEB_SERVER, "Apache", "apache"),
    "httpd": (Service.WEB_SERVER, "httpd", "apache"),
    "caddy": (Service.WEB_SERVER, "Caddy", "caddy"),
    "lighttpd": (Service.WEB_SERVER, "lighttpd", "lighttpd"),
    "haproxy": (Service.WEB_SERVER, "HAProxy", "haproxy"),
    "traefik": (Service.WEB_SERVER, "Traefik", "traefik"),
    "envoy": (Service.WEB_SERVER, "Envoy", "envoy"),
}

#: Words of a command line that name a kind, whatever the interpreter.
_ARGUMENT_HINTS: tuple[tuple[str, Service, str, str], ...] = (
    ("debugpy", Service.DEBUGGER, "debugpy debugger", "debugpy"),
    ("-agentlib:jdwp", Service.DEBUGGER, "Java debugger (JDWP)", "jdwp"),
    ("jupyter", Service.JUPYTER, "Jupyter", "jupyter"),
    ("jenkins.war", Service.ADMIN_CONSOLE, "Jenkins", "jenkins"),
    ("elasticsearch", Service.DATABASE, "Elasticsearch", "elasticsearch"),
    ("opensearch", Service.DATABASE, "OpenSearch", "elasticsearch"),
    ("rabbit", Service.ADMIN_CONSOLE, "RabbitMQ", "rabbitmq"),
    ("couchdb", Service.DATABASE, "CouchDB", "couchdb"),
    ("podman system service", Service.DOCKER_API, "Podman API", "podman"),
)

_FORWARDER_KINDS = frozenset(
    {"socat", "ssh-local-forward", "ssh-remote-forward", "ssh-socks", "docker-proxy",
     "podman-conmon", "podman-rootlessport", "podman-slirp4netns", "podman-pasta",
     "qemu-hostfwd", "kubectl-port-forward", "wsl-relay"}
)  # fmt: skip

_PORTS: dict[int, tuple[Service, str, str]] = {
    2375: (Service.DOCKER_API, "Docker Engine API (port 2375)", "docker"),
    2376: (Service.DOCKER_API, "Docker Engine API over TLS (port 2376)", "docker"),
    6379: (Service.DATABASE, "Redis (port 6379)", "redis"),
    5432: (Service.DATABASE, "PostgreSQL (port 5432)", "postgres"),
    3306: (Service.DATABASE, "MySQL (port 3306)", "mysql"),
    27017: (Service.DATABASE, "MongoDB (port 27017)", "mongo"),
    11211: (Service.DATABASE, "memcached (port 11211)", "memcached"),
    9200: (Service.DATABASE, "Elasticsearch (port 9200)", "elasticsearch"),
    9229: (Service.DEBUGGER, "Node inspector (port 9229)", "node-inspector"),
    5678: (Service.DEBUGGER, "debugpy (port 5678)", "debugpy"),
    8888: (Service.JUPYTER, "Jupyter (port 8888)", "jupyter"),
}

_PROTOCOLS: dict[str, tuple[Service, str, str | None]] = {
    "redis": (Service.DATABASE, "Redis", "redis"),
    "postgres": (Service.DATABASE, "PostgreSQL", "postgres"),
    "mysql": (Service.DATABASE, "MySQL", "mysql"),
    "ssh": (Service.SSH, "SSH server", "sshd"),
}


def _prog(word: str) -> str:
    return word.rsplit("/", 1)[-1]


def classify(
    name: str | None,
    cmdline: Sequence[str] = (),
    identity: Identity | None = None,
    *,
    port: int,
    protocol: str | None = None,
) -> ServiceGuess:
    """The kind of service behind a listener: owner first, then the protocol, then the port."""
    by_owner = classify_owner(name, tuple(cmdline), identity)
    if by_owner is not None:
        return by_owner
    if protocol in _PROTOCOLS:
        kind, name_, key = _PROTOCOLS[protocol]
        return ServiceGuess(service=kind, label=name_, program=key)
    if port in _PORTS:
        service, label, program = _PORTS[port]
        return ServiceGuess(service=service, label=label, program=program)
    label = name or "unknown process"
    if protocol and protocol not in ("silent", "unknown"):
        label = f"{label} ({protocol})"
    return ServiceGuess(service=Service.UNKNOWN, label=label)


@functools.lru_cache(maxsize=4096)
def classify_owner(
    name: str | None, cmdline: tuple[str, ...], identity: Identity | None
) -> ServiceGuess | None:
    """The kind of service from the owner alone; None when the owner does not tell."""
    if identity is not None:
        if identity.kind == "node-inspector":
            return ServiceGuess(service=Service.DEBUGGER, label=identity.label, program="node")
        if identity.kind in _FORWARDER_KINDS:
            return ServiceGuess(service=Service.FORWARDER, label=identity.label)
        if identity.kind == "ssh-server":
            return ServiceGuess(service=Service.SSH, label=identity.label, program="sshd")
    text = " ".join(cmdline).lower()
    for needle, service, label, program in _ARGUMENT_HINTS:
        if needle in text:
            return ServiceGuess(service=service, label=label, program=program)
    for word in (name or "", _prog(cmdline[0]) if cmdline else ""):
        known = _PROGRAMS.get(word)
        if known is not None:
            return ServiceGuess(service=known[0], label=known[1], program=known[2])
    if identity is not None:
        if identity.kind == "dev-server":
            return ServiceGuess(service=Service.DEV_SERVER, label=identity.label)
        if identity.kind == "service":
            return ServiceGuess(service=Service.SYSTEM, label=identity.label)
    return None


def needs_probe(guess: ServiceGuess) -> bool:
    """Whether a protocol probe could tell more: unknown services, and Redis (AUTH)."""
    return guess.service is Service.UNKNOWN or guess.program == "redis"


def redis_auth(reply: bytes) -> bool | None:
    """From Redis's answer to PING: False when it answered without AUTH, True when it
    asked for it (NOAUTH, protected mode), None when the answer is not Redis's."""
    if reply.startswith(b"+PONG"):
        return False
    if reply.startswith((b"-NOAUTH", b"-WRONGPASS", b"-DENIED", b"-ERR Client sent AUTH")):
        return True
    return None


def severity(guess: ServiceGuess, verdict: Verdict, *, answers_without_auth: bool) -> Severity:
    """How bad it is: the kind of service for exposed listeners, one step less when the
    firewall's verdict is unknown; info for filtered and loopback-only ones."""
    if verdict in (Verdict.FILTERED, Verdict.LOOPBACK_ONLY):
        return Severity.INFO
    base = _EXPOSED_SEVERITY[guess.service]
    if answers_without_auth:
        base = Severity.CRITICAL
    if verdict is Verdict.UNKNOWN:
        return SEVERITY_ORDER[max(rank(base) - 1, rank(Severity.LOW))]
    return base


def code(guess: ServiceGuess, verdict: Verdict, *, answers_without_auth: bool) -> str:
    """A stable machine name: ``exposed-database``, ``exposed-redis-noauth``, ``filtered``…"""
    if verdict is Verdict.LOOPBACK_ONLY:
        return "loopback-only"
    if verdict is Verdict.FILTERED:
        return "filtered"
    prefix = "exposed" if verdict is Verdict.EXPOSED else "maybe-exposed"
    if answers_without_auth:
        return f"{prefix}-{guess.program or guess.service.value}-noauth"
    return f"{prefix}-{guess.service.value}"


_BIND_FIXES = {
    "redis": "bind 127.0.0.1 -::1 in redis.conf (or --bind 127.0.0.1) and set requirepass",
    "postgres": "set listen_addresses = 'localhost' in postgresql.conf and restart",
    "mysql": "set bind-address = 127.0.0.1 in the [mysqld] section of my.cnf",
    "mongo": "set net.bindIp: 127.0.0.1 in mongod.conf",
    "memcached": "start memcached with -l 127.0.0.1",
    "docker": "remove -H tcp://… from dockerd (use the unix socket, or TLS with --tlsverify)",
    "podman": "serve the Podman API on a unix socket, not tcp://",
    "node": "use --inspect=127.0.0.1:PORT (never --inspect=0.0.0.0)",
    "node-inspector": "use --inspect=127.0.0.1:PORT (never --inspect=0.0.0.0)",
    "debugpy": "use debugpy --listen 127.0.0.1:PORT",
    "jdwp": "use -agentlib:jdwp=…,address=127.0.0.1:PORT",
    "jupyter": "start Jupyter with --ip=127.0.0.1 (and keep its token)",
    "sshd": "if SSH need not face this network: ListenAddress 127.0.0.1 in sshd_config",
}


def fix(guess: ServiceGuess, *, port: int, proto: str, verdict: Verdict) -> str | None:
    """The one-line fix for an exposed listener (None for filtered and loopback-only)."""
    if verdict in (Verdict.FILTERED, Verdict.LOOPBACK_ONLY):
        return None
    block = f"nft add rule inet filter input {proto} dport {port} drop"
    specific = _BIND_FIXES.get(guess.program or "")
    if specific is not None:
        return f"{specific.replace('PORT', str(port))}; or block it: {block}"
    if guess.service is Service.DEV_SERVER:
        return f"bind the dev server to 127.0.0.1 (drop --host/0.0.0.0); or block it: {block}"
    if guess.service is Service.FORWARDER:
        return f"make the forward listen on 127.0.0.1 only; or block it: {block}"
    return f"bind it to 127.0.0.1 (or ::1); or block it: {block}"
