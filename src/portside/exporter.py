"""Prometheus metrics of listeners and findings (``portside exporter``).

Every scrape of ``/metrics`` looks again: the listening sockets (with their owners, and
the container behind a container's port forwarder), the findings (``portside.audit``
when it offers them, else the container findings of :mod:`portside.containers`), and how
long that took. The text exposition format (version 0.0.4) is written here: three
gauges need no client library.

Series (see docs/exporter.md):

* ``portside_listeners{exposure,process,port,proto,container}``: listening sockets;
* ``portside_findings{severity,code}``: findings, by severity and catalogue code;
* ``portside_findings_by_severity{severity}``: the same summed, every severity present
  (0 included), so that alert rules can compare against it;
* ``portside_published_ports{container,image,compose_project,host_ip,host_port,container_port,proto}``;
* ``portside_collector_up{collector}``: 1 when that part of the scrape succeeded;
* ``portside_scrape_duration_seconds``; ``portside_build_info{version}``.

:func:`families` and :func:`exposition` are pure; :func:`scrape` does the I/O;
:func:`serve` runs the HTTP server.
"""

from __future__ import annotations

import dataclasses
import math
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from typing import Protocol

from portside.models import Severity, SocketEntry

TYPE_CHECKING = False
if TYPE_CHECKING:
    from portside.containers import PublishedPort

__all__ = [
    "CONTENT_TYPE",
    "DEFAULT_PORT",
    "Family",
    "ScrapeFacts",
    "exposition",
    "families",
    "scrape",
    "serve",
]

#: The exporter's default port on 127.0.0.1.
DEFAULT_PORT = 9839
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

Labels = tuple[tuple[str, str], ...]


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Family:
    """One metric family: its name, help, type and samples (labels, value)."""

    name: str
    help: str
    type: str  # "gauge" (all portside's metrics are)
    samples: tuple[tuple[Labels, float], ...]


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ScrapeFacts:
    """What one scrape found. ``up``: collector -> whether it succeeded."""

    listeners: tuple[SocketEntry, ...]
    findings: tuple[Coded, ...]
    published: tuple[PublishedPort, ...]
    up: tuple[tuple[str, bool], ...]
    duration: float
    version: str


# --------------------------------------------------------------------------- pure


def _process(entry: SocketEntry) -> str:
    if entry.owners:
        return entry.owners[0].process.name
    return {"not-visible": "(not visible)", "kernel": "(kernel)"}.get(
        entry.owner_status.value, "(unknown)"
    )


def _container(entry: SocketEntry) -> str:
    for owner in entry.owners:
        if owner.container is not None:
            return owner.container.name
    return ""


def families(facts: ScrapeFacts) -> list[Family]:
    """The metric families of one scrape (pure)."""
    listeners = Counter(
        (
            ("exposure", entry.exposure.value),
            ("process", _process(entry)),
            ("port", str(entry.local.port)),
            ("proto", entry.transport.value),
            ("container", _container(entry)),
        )
        for entry in facts.listeners
    )
    findings = Counter((("severity", f.severity.value), ("code", f.code)) for f in facts.findings)
    severities = Counter(f.severity.value for f in facts.findings)
    published = Counter(
        (
            ("container", p.name),
            ("image", p.image),
            ("compose_project", p.compose_project or ""),
            ("host_ip", p.host_ip),
            ("host_port", str(p.host_port)),
            ("container_port", str(p.container_port)),
            ("proto", p.proto),
        )
        for p in facts.published
    )
    return [
        Family(
            name="portside_listeners",
            help="Listening sockets by exposure (loopback, specific, all), owner process, port and transport.",
            type="gauge",
            samples=tuple(sorted((labels, float(n)) for labels, n in listeners.items())),
        ),
        Family(
            name="portside_findings",
            help="Findings of portside audit by severity and code (exposed-database, filtered, loopback-only, ...).",
            type="gauge",
            samples=tuple(sorted((labels, float(n)) for labels, n in findings.items())),
        ),
        Family(
            name="portside_findings_by_severity",
            help="Findings by severity, every severity present.",
            type="gauge",
            samples=tuple(
                ((("severity", s.value),), float(severities.get(s.value, 0))) for s in Severity
            ),
        ),
        Family(
            name="portside_published_ports",
            help="Ports that running containers publish on the host (Engine API).",
            type="gauge",
            samples=tuple(sorted((labels, float(n)) for labels, n in published.items())),
        ),
        Family(
            name="portside_collector_up",
            help="1 when this part of the scrape succeeded, 0 when it failed.",
            type="gauge",
            samples=tuple(((("collector", name),), 1.0 if ok else 0.0) for name, ok in facts.up),
        ),
        Family(
            name="portside_scrape_duration_seconds",
            help="Seconds the scrape took.",
            type="gauge",
            samples=(((), facts.duration),),
        ),
        Family(
            name="portside_build_info",
            help="portside's version.",
            type="gauge",
            samples=(((("version", facts.version),), 1.0),),
        ),
    ]


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _number(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return repr(value)


def exposition(found: Iterable[Family]) -> str:
    """The Prometheus text exposition (format 0.0.4) of ``found`` (pure)."""
    lines: list[str] = []
    for family in found:
        lines.append(f"# HELP {family.name} {_escape_help(family.help)}")
        lines.append(f"# TYPE {family.name} {family.type}")
        for labels, value in family.samples:
            text = ",".join(f'{key}="{_escape_label(val)}"' for key, val in labels)
            series = f"{family.name}{{{text}}}" if text else family.name
            lines.append(f"{series} {_number(value)}")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- I/O


class Coded(Protocol):
    """What the exporter counts of a finding: its catalogue code and severity
    (``portside.models.Finding`` and ``portside.audit.AuditFinding`` both have them)."""

    @property
    def code(self) -> str: ...

    @property
    def severity(self) -> Severity: ...


#: Findings for one scrape, given its listeners and the published ports.
FindingsSource = Callable[[Sequence[SocketEntry], Sequence["PublishedPort"]], Sequence[Coded]]


def default_findings(
    entries: Sequence[SocketEntry], published: Sequence[PublishedPort]
) -> Sequence[Coded]:
    """``portside audit``'s findings (without protocol probes: a scrape sends nothing to
    the services it counts) with the published container ports judged; without the
    audit module, the container findings alone."""
    try:
        from portside import audit
    except ImportError:  # pragma: no cover -- the audit ships with portside
        from portside.containers import container_findings, host_chains, published_exposures

        return container_findings(published_exposures(published, host_chains()))
    return audit.audit(probe=False).findings  # published ports judged there too


def scrape(*, namespaces: bool = False, findings: FindingsSource | None = None) -> ScrapeFacts:
    """Look once: listeners, published ports, findings (``findings``: default
    :func:`default_findings`). A part that fails is reported down, not raised."""
    from portside._version import __version__
    from portside.containers import ANNOTATE_TIMEOUT, annotate, survey
    from portside.inspect import SocketFilter, list_sockets

    start = time.perf_counter()
    up: list[tuple[str, bool]] = []
    entries: list[SocketEntry] = []
    try:
        entries = list_sockets(SocketFilter(), namespaces=namespaces)
        up.append(("listeners", True))
    except Exception:
        up.append(("listeners", False))
    engines = survey(timeout=ANNOTATE_TIMEOUT)
    up.append(("containers", not engines.problems))
    entries = annotate(entries, ports=engines.ports)
    found: Sequence[Coded] = ()
    try:
        found = (findings or default_findings)(entries, engines.ports)
        up.append(("findings", True))
    except Exception:
        up.append(("findings", False))
    return ScrapeFacts(
        listeners=tuple(entries),
        findings=tuple(found),
        published=engines.ports,
        up=tuple(up),
        duration=time.perf_counter() - start,
        version=__version__,
    )


def serve(
    host: str,
    port: int,
    *,
    namespaces: bool = False,
    findings: FindingsSource | None = None,
    ready: Callable[[str, int], object] | None = None,
    stop: threading.Event | None = None,
) -> None:
    """Serve ``/metrics`` on ``host``:``port`` until ``stop`` is set (or forever).
    Scrapes run one at a time; ``ready(host, port)`` is called once it listens (with
    the port bound, when 0 was asked)."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        server_version = "portside-exporter"

        def do_GET(self) -> None:
            path = self.path.partition("?")[0]
            if path == "/metrics":
                with lock:
                    body = exposition(
                        families(scrape(namespaces=namespaces, findings=findings))
                    ).encode()
                self._answer(200, CONTENT_TYPE, body)
            elif path == "/":
                page = (
                    "<html><head><title>portside exporter</title></head><body>"
                    '<h1>portside exporter</h1><p><a href="/metrics">Metrics</a></p>'
                    "</body></html>\n"
                )
                self._answer(200, "text/html; charset=utf-8", page.encode())
            else:
                self._answer(404, "text/plain; charset=utf-8", b"not found: try /metrics\n")

        def _answer(self, status: int, content_type: str, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            return  # quiet: one line per scrape would flood a terminal

    family = _family_of(host)

    class Server(ThreadingHTTPServer):
        address_family = family
        daemon_threads = True

    with Server((host, port), Handler) as server:
        bound = int(server.server_address[1])
        if ready is not None:
            ready(host, bound)
        if stop is None:
            server.serve_forever()
            return
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        stop.wait()
        server.shutdown()
        thread.join()


def _family_of(host: str) -> int:
    import socket

    return socket.AF_INET6 if ":" in host else socket.AF_INET
