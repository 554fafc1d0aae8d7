"""portside's pytest plugin (portside.testing): the fixtures run by pytest itself
(pytester) against real processes, and the pieces behind them tested directly."""

from __future__ import annotations

import contextlib
import socket
import socketserver
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

import portside.testing
from portside.errors import UsageError
from portside.pick import ipv6_loopback_available
from portside.testing.link import FlakyLinks, start_flaky_link
from portside.testing.ready import NotReadyError, wait_ready
from portside.testing.service import LocalServices, ServiceExitedError, start_service

pytest_plugins = ["pytester"]

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "test_example_flaky_link.py"
DOC = REPO / "docs" / "testing.md"
WEB_SERVER = [sys.executable, "-m", "http.server", "{port}", "--bind", "{host}"]
#: asyncio timers may fire up to the clock's resolution early; a lower bound allows that.
TIMER_SLACK_S = 0.01
#: Inner pytest runs: no cache files, and no hypothesis plugin (it doubles the start-up).
QUIET = ("-p", "no:cacheprovider", "-p", "no:hypothesispytest")


def gone(pid: int) -> bool:
    """The process has exited (a zombie whose parent has not reaped it counts as gone)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def wait_gone(pids: list[int], timeout: float = 10.0) -> list[int]:
    """The pids still alive after polling for up to ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    alive = [p for p in pids if not gone(p)]
    while alive and time.monotonic() < deadline:
        time.sleep(0.01)  # polling for the exit, bounded
        alive = [p for p in alive if not gone(p)]
    return alive


# -- real servers for the link tests ---------------------------------------------------------


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        with contextlib.suppress(OSError):
            while data := self.request.recv(65536):
                self.request.sendall(data)


class _Sender(socketserver.BaseRequestHandler):
    """Sends PAYLOAD bytes at once, then closes."""

    def handle(self) -> None:
        with contextlib.suppress(OSError):
            self.request.sendall(b"x" * PAYLOAD)


PAYLOAD = 64 * 1024


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


@contextlib.contextmanager
def tcp_server(handler: type[socketserver.BaseRequestHandler]) -> Iterator[int]:
    server = _Server(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@pytest.fixture
def echo_port() -> Iterator[int]:
    with tcp_server(_Echo) as port:
        yield port


@pytest.fixture
def links() -> Iterator[FlakyLinks]:
    made = FlakyLinks()
    try:
        yield made
    finally:
        made.close()


def round_trip(sock: socket.socket, data: bytes = b"ping") -> tuple[bytes, float]:
    """Send ``data``, read the echo of all of it; the bytes and the seconds it took."""
    started = time.monotonic()
    sock.sendall(data)
    received = b""
    while len(received) < len(data):
        chunk = sock.recv(65536)
        if not chunk:
            break
        received += chunk
    return received, time.monotonic() - started


def read_until_error(sock: socket.socket) -> tuple[int, BaseException | None]:
    """Read until EOF or an error: (bytes read, the error or None for EOF)."""
    total = 0
    try:
        while chunk := sock.recv(65536):
            total += len(chunk)
    except OSError as exc:
        return total, exc
    return total, None


# -- the plugin as pytest sees it ----------------------------------------------------------


def test_the_entry_point_registers_the_plugin(pytestconfig):
    plugin = pytestconfig.pluginmanager.get_plugin("portside")
    assert plugin is portside.testing, (
        "the pytest11 entry point 'portside' is not installed: pip install -e ."
    )


def test_the_plugin_imports_nothing_but_itself():
    probe = (
        "import sys, pytest\n"
        "before = set(sys.modules)\n"
        "import portside.testing\n"
        "print(' '.join(sorted(set(sys.modules) - before)))\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    added = set(done.stdout.split())
    assert added <= {
        "portside",
        "portside._version",
        "portside.testing",
        "portside.testing.fixtures",
    }


INNER = """
import socket
import sys
import urllib.request
from pathlib import Path

import pytest

from portside.testing.ready import NotReadyError

WEB_SERVER = [sys.executable, "-m", "http.server", "{port}", "--bind", "{host}"]


def test_free_port_binds(free_port):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", free_port))


def test_local_service_answers(local_service, wait_ready):
    web = local_service(WEB_SERVER, ready="http://{host}:{port}/")
    Path("pids.txt").open("a").write(f"{web.pid}\\n")
    assert wait_ready(web.url + "/", timeout=5).ready
    with urllib.request.urlopen(web.url + "/", timeout=5) as answer:
        assert answer.status == 200


def test_flaky_link_resets_then_recovers(local_service, flaky_link):
    web = local_service(WEB_SERVER, ready="http://{host}:{port}/")
    Path("pids.txt").open("a").write(f"{web.pid}\\n")
    link = flaky_link(web, reset_after=0)
    with pytest.raises(OSError):
        urllib.request.urlopen(link.url + "/", timeout=5)
    link.clear()
    with urllib.request.urlopen(link.url + "/", timeout=5) as answer:
        assert answer.status == 200


def test_wait_ready_raises(free_port, wait_ready):
    with pytest.raises(NotReadyError, match=str(free_port)):
        wait_ready(free_port, timeout=0.2)


def test_not_ready_fails_the_test(free_port, wait_ready):
    wait_ready(f"http://127.0.0.1:{free_port}/health", timeout=0.2)
"""


def test_pytest_runs_the_fixtures_against_real_processes(pytester):
    pytester.makepyfile(test_inner=INNER)
    result = pytester.runpytest(*QUIET)
    result.assert_outcomes(passed=4, failed=1)
    result.stdout.fnmatch_lines(
        ["*NotReadyError: not ready after 0.2 s: http://127.0.0.1:*/health (*ECONNREFUSED*"]
    )
    pids = [int(line) for line in (pytester.path / "pids.txt").read_text().split()]
    assert len(pids) == 2
    assert wait_gone(pids) == []


def test_a_fresh_interpreter_finds_the_fixtures_by_the_entry_point(pytester):
    pytester.makepyfile(
        test_fresh="""
        def test_all_four(free_port, wait_ready, local_service, flaky_link):
            assert 0 < free_port < 65536
            assert callable(wait_ready) and callable(local_service) and callable(flaky_link)
        """
    )
    result = pytester.runpytest_subprocess(*QUIET)
    result.assert_outcomes(passed=1)


def test_the_documented_example_runs_and_is_the_one_in_the_docs(pytester):
    example = EXAMPLE.read_text()
    body = example.split('"""', 2)[2].strip()  # the code after the module docstring
    assert body in DOC.read_text()
    pytester.makepyfile(test_example=example)
    result = pytester.runpytest(*QUIET)
    result.assert_outcomes(passed=2)


# -- free_port and wait_ready --------------------------------------------------------------


def test_free_port_is_bindable_on_both_loopbacks(free_port):
    assert free_port >= 1024
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", free_port))  # no SO_REUSEADDR: really free
    if ipv6_loopback_available():
        with socket.socket(socket.AF_INET6) as sock6:
            sock6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock6.bind(("::1", free_port))


def test_wait_ready_on_a_closed_port_names_it_within_its_timeout(free_port):
    started = time.monotonic()
    with pytest.raises(NotReadyError) as caught:
        wait_ready(f"127.0.0.1:{free_port}", timeout=0.5)
    elapsed = time.monotonic() - started
    message = str(caught.value)
    assert f"127.0.0.1:{free_port}" in message
    assert "ECONNREFUSED" in message
    assert "not ready after 0.5 s" in message
    assert caught.value.result is not None
    assert not caught.value.result.ready
    assert elapsed < 0.5 + 5.0  # it gives up: bounded by the timeout, not hanging


def test_wait_ready_returns_for_a_listening_port():
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        result = wait_ready(port, timeout=5)
    assert result.ready
    assert result.targets[0].target == f"127.0.0.1:{port}"


def test_wait_ready_reports_an_unwanted_http_status(tmp_path):
    with start_service(WEB_SERVER, ready="http://{host}:{port}/", cwd=tmp_path) as web:
        with pytest.raises(NotReadyError, match=r"/missing .*HTTP 404"):
            wait_ready(web.url + "/missing", timeout=0.3)
        assert wait_ready(web.url + "/missing", status="404", timeout=5).ready


def test_wait_ready_needs_a_target():
    with pytest.raises(TypeError, match="at least one target"):
        wait_ready()


# -- local_service -------------------------------------------------------------------------

FAMILY = """
import http.server, os, signal, subprocess, sys
port, pid_file = int(sys.argv[1]), sys.argv[2]
sleeper = [sys.executable, "-c", "import time; time.sleep(300)"]
stubborn = [sys.executable, "-c",
            "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(300)"]
children = [
    subprocess.Popen(sleeper),                           # in the group
    subprocess.Popen(stubborn),                          # ignores SIGTERM
    subprocess.Popen(sleeper, start_new_session=True),   # left the group
]
with open(pid_file + ".tmp", "w") as out:
    out.write(" ".join(str(child.pid) for child in children))
os.replace(pid_file + ".tmp", pid_file)
http.server.ThreadingHTTPServer(("127.0.0.1", port), http.server.SimpleHTTPRequestHandler).serve_forever()
"""


def test_local_service_waits_and_teardown_kills_it_and_its_children(tmp_path, free_port):
    script = tmp_path / "family.py"
    script.write_text(FAMILY)
    pid_file = tmp_path / "children.pids"
    services = LocalServices(log_dir=tmp_path)
    service = services(
        [sys.executable, str(script), "{port}", str(pid_file)],
        port=free_port,
        ready="http://{host}:{port}/",
        cwd=tmp_path,
    )
    assert service.port == free_port
    assert service.url == f"http://127.0.0.1:{free_port}"
    running_before = service.running
    assert running_before
    # It was ready when the factory returned: connect at once, no retry.
    with socket.create_connection(service.address, timeout=5):
        pass
    children = [int(pid) for pid in pid_file.read_text().split()]
    family = [service.pid, *children]
    assert all(not gone(pid) for pid in family)
    service.stop(grace=0.5)  # the stubborn child needs the SIGKILL after the grace
    services.close()  # the fixture's teardown: a second stop does nothing
    assert wait_gone(family) == []
    assert service.returncode == -15  # SIGTERM ended the leader
    assert not service.running
    assert service.log_path.exists()  # kept in log_dir


def test_local_service_picks_a_port_and_passes_it(tmp_path):
    script = tmp_path / "show.py"
    script.write_text(
        "import os, socket, sys, time\n"
        "print('argv', sys.argv[1], 'env', os.environ['PORT'], os.environ['WHERE'], flush=True)\n"
        "s = socket.socket(); s.bind(('127.0.0.1', int(sys.argv[1]))); s.listen()\n"
        "time.sleep(300)\n"
    )
    with start_service(
        [sys.executable, str(script), "{port}"], env={"WHERE": "{host}:{port}"}
    ) as service:
        port = service.port
        assert service.ready == f"127.0.0.1:{port}"  # the default: a TCP connect
        assert f"argv {port} env {port} 127.0.0.1:{port}" in service.output()
        log = service.log_path
    assert wait_gone([service.pid]) == []
    assert not log.exists()  # a temporary log goes with the service


def test_local_service_that_exits_says_so_with_its_output():
    command = [sys.executable, "-c", "import sys; print('cannot bind, giving up'); sys.exit(3)"]
    with pytest.raises(ServiceExitedError, match=r"exited with status 3 .*cannot bind") as caught:
        start_service(command, timeout=10)
    assert caught.value.returncode == 3


def test_local_service_that_never_listens_times_out_and_is_stopped(tmp_path):
    pid_file = tmp_path / "pid"
    command = [
        sys.executable,
        "-c",
        f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(300)",
    ]
    with pytest.raises(NotReadyError, match=r"\(pid \d+\): not ready after 0.5 s: 127.0.0.1:\d+"):
        start_service(command, timeout=0.5)
    assert wait_gone([int(pid_file.read_text())]) == []


def test_local_service_refuses_an_empty_command():
    with pytest.raises(UsageError, match="empty"):
        start_service([])


# -- flaky_link ----------------------------------------------------------------------------


def test_flaky_link_passes_bytes_and_describes_itself(links, echo_port):
    link = links(echo_port)
    assert link.target == ("127.0.0.1", echo_port)
    assert link.address == ("127.0.0.1", link.port)
    assert link.url == f"http://127.0.0.1:{link.port}"
    with socket.create_connection(link.address, timeout=5) as sock:
        assert round_trip(sock, b"hello")[0] == b"hello"


def test_flaky_link_latency_delays_the_first_byte(links, echo_port):
    link = links(echo_port, latency="100ms")
    with socket.create_connection(link.address, timeout=5) as sock:
        data, elapsed = round_trip(sock)
    assert data == b"ping"
    # 100 ms on the way up and 100 ms on the way down: a lower bound, not a benchmark.
    assert elapsed >= 0.2 - TIMER_SLACK_S


def test_flaky_link_resets_after_n_bytes(links):
    with tcp_server(_Sender) as port:
        link = links(port, reset_after=1000)
        with socket.create_connection(link.address, timeout=5) as sock:
            received, error = read_until_error(sock)
    assert isinstance(error, ConnectionResetError)
    assert received <= 1000
    ended = link.stats().connections[-1]
    assert ended.end == "fault-reset"
    assert ended.bytes_down == 1000


def test_flaky_link_faults_changed_at_run_time_take_effect(links, echo_port):
    link = links(echo_port)
    with socket.create_connection(link.address, timeout=5) as sock:
        assert round_trip(sock)[0] == b"ping"  # clean
        link.set_faults(reset_after=0)  # on this open connection, from its next byte
        sock.sendall(b"more")
        assert isinstance(read_until_error(sock)[1], ConnectionResetError)
    link.clear()
    with socket.create_connection(link.address, timeout=5) as sock:
        assert round_trip(sock)[0] == b"ping"
        link.update_faults(up={"latency": "150ms"})
        data, elapsed = round_trip(sock)
    assert data == b"ping"
    assert elapsed >= 0.15 - TIMER_SLACK_S


def test_flaky_link_update_keeps_the_other_faults(links, echo_port):
    link = links(echo_port, latency="10ms")
    link.update_faults(down={"bandwidth": "1mbit"})
    assert link.faults == {
        "refuse": False,
        "up": {"latency": "10ms"},
        "down": {"latency": "10ms", "bandwidth": "1mbit"},
    }
    link.set_faults(refuse=True)  # replaces: latency and bandwidth are gone
    assert link.faults == {"refuse": True, "up": {}, "down": {}}
    with socket.create_connection(link.address, timeout=5) as sock:
        assert read_until_error(sock)[0] == 0  # accepted, then closed at once
    assert link.stats().refused == 1


def test_flaky_link_in_front_of_a_local_service(tmp_path, links):
    with start_service(WEB_SERVER, ready="http://{host}:{port}/", cwd=tmp_path) as web:
        link = links(web)
        assert link.target == web.address
        assert wait_ready(link.url + "/", timeout=5).ready


def test_flaky_link_bad_fault_is_refused_before_anything_starts(echo_port):
    threads = threading.active_count()
    with pytest.raises(UsageError, match="needs a unit"):
        start_flaky_link(echo_port, latency="50")
    assert threading.active_count() == threads


def test_flaky_link_close_stops_listening_and_its_thread(echo_port):
    link = start_flaky_link(echo_port)
    address = link.address
    link.close()
    link.close()  # twice is fine
    assert not any(t.name == "portside-flaky-link" and t.is_alive() for t in threading.enumerate())
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(address, timeout=5).close()
    with pytest.raises(RuntimeError, match="closed"):
        link.clear()
