"""``portside exporter`` scraped by a real Prometheus (Debian package prometheus).

Everything runs inside a private network namespace (a veth pair gives it a "LAN"
address): a real redis-server listening on every address, a plain listener on loopback,
the exporter, and Prometheus (scrape and rule evaluation every second, temporary
storage, the example alert rules of contrib/prometheus/alerts.yml). The test asks
Prometheus's HTTP API, from a thread inside the namespace, until the series appear, with
a deadline. Every process is ended by pid; the namespace and directories are removed.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from portside.models import NetNamespace
from portside.sockets._namespaces import run_in_namespace

pytestmark = pytest.mark.root

ROOT = Path(__file__).resolve().parents[2]
ALERTS = ROOT / "contrib" / "prometheus" / "alerts.yml"
DEADLINE = 60.0
LAN_IP = "198.51.100.1"  # TEST-NET-2, on a veth inside the namespace only

T = TypeVar("T")


def _require(binary: str, package: str) -> str:
    found = shutil.which(binary, path=f"{os.environ.get('PATH', '')}:/usr/sbin:/usr/bin")
    if found is None:
        pytest.skip(f"`{binary}` is not installed (Debian package {package})")
    return found


class Netns:
    def __init__(self) -> None:
        self.name = f"ps-prom-{uuid.uuid4().hex[:8]}"
        subprocess.run(["ip", "netns", "add", self.name], check=True)
        self.namespace = NetNamespace(
            inode=os.stat(f"/run/netns/{self.name}").st_ino, name=self.name, is_current=False
        )
        self.procs: list[subprocess.Popen[str]] = []

    def inside(self, function: Callable[[], T]) -> T:
        return run_in_namespace(self.namespace, None, function)

    def start(self, argv: list[str], **options: Any) -> subprocess.Popen[str]:
        """``argv`` in the namespace (``ip netns exec`` execs it: the pid is its own)."""
        proc: subprocess.Popen[str] = subprocess.Popen(
            ["ip", "netns", "exec", self.name, *argv], text=True, **options
        )
        self.procs.append(proc)
        return proc

    def free_port(self) -> int:
        def bind() -> int:
            with socket.socket() as probe:
                probe.bind(("127.0.0.1", 0))
                return int(probe.getsockname()[1])

        return self.inside(bind)

    def get(self, port: int, path: str) -> tuple[int, bytes]:
        def request() -> tuple[int, bytes]:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            try:
                connection.request("GET", path)
                response = connection.getresponse()
                return response.status, response.read()
            finally:
                connection.close()

        return self.inside(request)

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            for stream in (proc.stdin, proc.stdout, proc.stderr):
                if stream is not None:
                    stream.close()
        subprocess.run(["ip", "netns", "del", self.name], check=False)


@pytest.fixture(scope="module")
def netns(workdir: Path) -> Iterator[Netns]:
    """The namespace; its processes end before ``workdir`` (their files) is removed."""
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces)")
    _require("ip", "iproute2")
    made = Netns()
    try:
        subprocess.run(["ip", "-n", made.name, "link", "set", "lo", "up"], check=True)
        subprocess.run(
            ["ip", "-n", made.name, "link", "add", "lan0", "type", "veth", "peer", "name", "lan1"],
            check=True,
        )
        subprocess.run(
            ["ip", "-n", made.name, "addr", "add", f"{LAN_IP}/24", "dev", "lan0"], check=True
        )
        for link in ("lan0", "lan1"):
            subprocess.run(["ip", "-n", made.name, "link", "set", link, "up"], check=True)
        yield made
    finally:
        made.close()


def _poll(what: str, check: Callable[[], T | None]) -> T:
    deadline = time.monotonic() + DEADLINE
    while True:
        found = check()
        if found is not None:
            return found
        assert time.monotonic() < deadline, f"{what} within {DEADLINE} s"
        time.sleep(0.2)  # polling interval, not a wait standing in for readiness


@pytest.fixture(scope="module")
def workdir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="ps-prom-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def stack(netns: Netns, workdir: Path) -> dict[str, int]:
    """redis on every address, a loopback listener, the exporter and Prometheus."""
    redis = _require("redis-server", "redis-server")
    prometheus = _require("prometheus", "prometheus")
    redis_port = netns.free_port()
    netns.start(
        [redis, "--port", str(redis_port), "--bind", "0.0.0.0", "--save", "",
         "--appendonly", "no", "--dir", str(workdir), "--daemonize", "no"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    local = netns.start(
        [sys.executable, "-c",
         "import socket,sys\ns=socket.socket(); s.bind(('127.0.0.1',0)); s.listen()\n"
         "print(s.getsockname()[1], flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE,
    )  # fmt: skip
    assert local.stdout is not None
    local_port = int(local.stdout.readline())
    exporter = netns.start(
        [sys.executable, "-m", "portside", "exporter", "--listen", "127.0.0.1:0", "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT,
    )  # fmt: skip
    assert exporter.stdout is not None
    started = json.loads(exporter.stdout.readline() or "{}")
    assert started.get("kind") == "exporter-started", exporter.stderr
    exporter_port = started["listen"]["port"]
    prometheus_port = netns.free_port()
    config = workdir / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        f"rule_files: [{json.dumps(str(ALERTS))}]\n"
        "scrape_configs:\n  - job_name: portside\n"
        f"    static_configs: [{{targets: ['127.0.0.1:{exporter_port}']}}]\n"
    )
    with (workdir / "prometheus.log").open("w") as log:
        netns.start(
            [prometheus, f"--config.file={config}", f"--storage.tsdb.path={workdir / 'data'}",
             f"--web.listen-address=127.0.0.1:{prometheus_port}"],
            stdout=subprocess.DEVNULL, stderr=log,
        )  # fmt: skip

    def ready() -> bool | None:
        with contextlib.suppress(OSError):
            return True if netns.get(prometheus_port, "/-/ready")[0] == 200 else None
        return None

    _poll("Prometheus is ready", ready)
    return {  # the processes end with the namespace fixture
        "redis": redis_port,
        "local": local_port,
        "exporter": exporter_port,
        "prometheus": prometheus_port,
        "exporter_pid": exporter.pid,
    }


def _query(netns: Netns, port: int, expr: str) -> list[dict[str, Any]]:
    from urllib.parse import quote

    status, body = netns.get(port, f"/api/v1/query?query={quote(expr)}")
    assert status == 200, body
    document = json.loads(body)
    assert document["status"] == "success", document
    result: list[dict[str, Any]] = document["data"]["result"]
    return result


def _series(netns: Netns, stack: dict[str, int], expr: str) -> list[dict[str, Any]]:
    return _poll(f"Prometheus has {expr}", lambda: _query(netns, stack["prometheus"], expr) or None)


def test_prometheus_scrapes_the_listeners(netns, stack):
    [redis] = _series(netns, stack, f'portside_listeners{{port="{stack["redis"]}"}}')
    assert redis["metric"]["exposure"] == "all"
    assert redis["metric"]["process"] == "redis-server"
    assert redis["metric"]["proto"] == "tcp"
    assert redis["value"][1] == "1"
    [local] = _series(netns, stack, f'portside_listeners{{port="{stack["local"]}"}}')
    assert local["metric"]["exposure"] == "loopback"
    [up] = _series(netns, stack, 'up{job="portside"}')
    assert up["value"][1] == "1"


def test_prometheus_scrapes_the_findings_and_the_scrape_duration(netns, stack):
    [database] = _series(netns, stack, 'portside_findings{code="exposed-database"}')
    assert database["metric"]["severity"] in ("high", "critical")
    severities = _series(netns, stack, "portside_findings_by_severity")
    assert {s["metric"]["severity"] for s in severities} == {
        "critical", "high", "medium", "low", "info"
    }  # fmt: skip
    [duration] = _series(netns, stack, "portside_scrape_duration_seconds")
    assert float(duration["value"][1]) > 0
    collectors = _series(netns, stack, "portside_collector_up")
    assert {c["metric"]["collector"]: c["value"][1] for c in collectors} == {
        "listeners": "1",
        "containers": "1",
        "findings": "1",
    }


def test_the_example_alert_for_a_reachable_database_goes_off(netns, stack):
    def alert() -> dict[str, Any] | None:
        status, body = netns.get(stack["prometheus"], "/api/v1/alerts")
        assert status == 200
        for found in json.loads(body)["data"]["alerts"]:
            if found["labels"]["alertname"] == "PortsideDatabaseReachableFromNetwork":
                return dict(found)
        return None

    found = _poll("the database alert is pending or firing", alert)
    assert found["state"] in ("pending", "firing")
    assert found["labels"]["code"] == "exposed-database"


def test_the_exposition_passes_promtool_and_the_rules_load(netns, stack):
    promtool = _require("promtool", "prometheus")
    status, body = netns.get(stack["exporter"], "/metrics")
    assert status == 200
    lint = subprocess.run(
        [promtool, "check", "metrics"], input=body, capture_output=True, check=False
    )
    assert lint.returncode == 0, lint.stdout + lint.stderr
    rules = subprocess.run(
        [promtool, "check", "rules", str(ALERTS)], capture_output=True, text=True, check=False
    )
    assert rules.returncode == 0, rules.stdout + rules.stderr
    assert netns.get(stack["exporter"], "/nothing")[0] == 404


def test_sigterm_stops_the_exporter_cleanly(netns, stack):
    [exporter] = [p for p in netns.procs if p.pid == stack["exporter_pid"]]
    exporter.send_signal(signal.SIGTERM)
    assert exporter.wait(timeout=30) == 0
