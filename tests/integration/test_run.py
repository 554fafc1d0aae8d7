"""``portside run`` as a user runs it, in a subprocess, with a real small HTTP app (a
Python script that reads PORT, serves, and starts a child of its own) and a real
``portside proxy`` that follows the registry: PORT injected, the named route live at
once, exit codes passed through, no orphans, drift, routes withdrawn, framework flags.
Every test points PORTSIDE_HOME at a temporary directory."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from portside.registry import Registry, process_start_token
from tests.integration.test_proxy_kit import ChildProxy, request, wait_for

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="process groups, /proc, PDEATHSIG")

DEADLINE_S = 20.0

APP = r"""
import http.server, json, os, signal, subprocess, sys, threading
args = sys.argv[1:]
port = int(args[args.index("--listen") + 1]) if "--listen" in args else int(os.environ["PORT"])
name = os.environ.get("APP_NAME", "app")
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
signals = []
def note(signum, frame):
    signals.append(signal.Signals(signum).name)
signal.signal(signal.SIGUSR1, note)

class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path.startswith("/exit/"):
            code = int(self.path.rsplit("/", 1)[1])
            self.answer({"exiting": code})
            child.kill()
            threading.Timer(0.05, os._exit, (code,)).start()
            return
        self.answer({"name": name, "port": port, "env_port": os.environ.get("PORT"),
                     "env_host": os.environ.get("HOST"), "host_header": self.headers["Host"],
                     "signals": signals})
    def answer(self, document):
        body = json.dumps(document).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass

server = http.server.HTTPServer(("127.0.0.1", port), Handler)
print(json.dumps({"pid": os.getpid(), "child": child.pid, "port": port}), flush=True)
server.serve_forever()
"""


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


@pytest.fixture
def app(tmp_path: Path) -> Path:
    path = tmp_path / "app.py"
    path.write_text(APP)
    return path


def environment(home: Path, **extra: str) -> dict[str, str]:
    env = {**os.environ, "PORTSIDE_HOME": str(home), **extra}
    env.pop("PORT", None)
    return env


class Run:
    """``portside run`` in a child process: the app's stdout and portside's stderr are
    read by threads, so the test can wait for lines without blocking."""

    def __init__(self, home: Path, cwd: Path, *args: str, **env: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "portside", "run", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=cwd,
            env=environment(home, **env),
            text=True,
        )
        self.out: list[str] = []
        self.err: list[str] = []
        self._threads = [
            threading.Thread(target=self._drain, args=(self.proc.stdout, self.out), daemon=True),
            threading.Thread(target=self._drain, args=(self.proc.stderr, self.err), daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    @staticmethod
    def _drain(stream: Any, into: list[str]) -> None:
        for line in stream:
            into.append(line.rstrip("\n"))

    def line(self, where: list[str], text: str) -> str:
        def found() -> bool:
            if self.proc.poll() is not None and not any(text in line for line in where):
                raise AssertionError(f"portside run exited {self.proc.returncode}: {self.err}")
            return any(text in line for line in where)

        wait_for(found, deadline_s=DEADLINE_S, what=f"{text!r} from portside run")
        return next(line for line in where if text in line)

    def app_info(self) -> dict[str, Any]:
        document: dict[str, Any] = json.loads(self.line(self.out, '"pid"'))
        return document

    def wait(self) -> int:
        code = self.proc.wait(DEADLINE_S)
        for thread in self._threads:
            thread.join(5)
        return code

    def close(self) -> None:
        """SIGTERM, so that portside stops the whole tree; SIGKILL only if it hangs."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(DEADLINE_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.proc.wait(10)


@pytest.fixture
def runs() -> Iterator[list[Run]]:
    started: list[Run] = []
    yield started
    for run in started:
        run.close()


@pytest.fixture
def proxy(home: Path) -> Iterator[ChildProxy]:
    """A running proxy following the (already existing) registry under ``home``."""
    Registry.open(home / "registry.sqlite3").close()
    with ChildProxy(env={"PORTSIDE_HOME": str(home)}) as child:
        yield child


def gone(pid: int) -> bool:
    return process_start_token(pid) is None


def reserved_port(home: Path, name: str, scope: Path) -> int:
    with Registry.open(home / "registry.sqlite3") as registry:
        found = registry.get(name, scope=str(scope.resolve()))
    assert found is not None
    return found.port


def via_proxy(proxy: ChildProxy, name: str, path: str = "/") -> Any:
    return request(proxy.port, path, host=f"{name}.localhost:{proxy.port}")


def test_the_app_gets_port_and_host_and_the_running_proxy_routes_it_at_once(
    home: Path, tmp_path: Path, app: Path, proxy: ChildProxy, runs: list[Run]
) -> None:
    assert via_proxy(proxy, "web").status == 404  # the proxy started with no routes at all
    run = Run(home, tmp_path, "web", "--", sys.executable, str(app))
    runs.append(run)
    info = run.app_info()
    assert info["port"] == reserved_port(home, "web", tmp_path)
    ready = run.line(run.err, "is ready at")
    assert f"http://web.localhost:{proxy.port}/ (app: http://127.0.0.1:{info['port']}/)" in ready
    # The same proxy process, never restarted, now answers for web.localhost.
    wait_for(lambda: via_proxy(proxy, "web").status == 200, what="the route in the proxy")
    answer = via_proxy(proxy, "web", "/hello").json()
    assert answer["env_port"] == str(info["port"])
    assert answer["env_host"] == "127.0.0.1"
    assert answer["host_header"] == f"web.localhost:{proxy.port}"
    # An unknown name gets a page listing the known routes, as links on this proxy.
    page = via_proxy(proxy, "nope")
    assert page.status == 404
    assert b"nope.localhost" in page.body
    assert f'href="//web.localhost:{proxy.port}/"'.encode() in page.body
    assert f"127.0.0.1:{info['port']}".encode() in page.body


def test_sigterm_to_portside_ends_the_app_and_its_child_and_withdraws_the_route(
    home: Path, tmp_path: Path, app: Path, proxy: ChildProxy, runs: list[Run]
) -> None:
    run = Run(home, tmp_path, "web", "--", sys.executable, str(app))
    runs.append(run)
    info = run.app_info()
    run.line(run.err, "is ready at")
    wait_for(lambda: via_proxy(proxy, "web").status == 200, what="the route in the proxy")
    assert not gone(info["pid"])
    assert not gone(info["child"])
    assert len(_guardians(info["pid"])) == 1
    run.proc.send_signal(signal.SIGTERM)
    assert run.wait() == 128 + signal.SIGTERM  # the app died of the forwarded SIGTERM
    assert gone(info["pid"])
    assert gone(info["child"])
    assert _guardians(info["pid"]) == []  # dismissed and waited for by portside
    wait_for(lambda: via_proxy(proxy, "web").status == 404, what="the route withdrawn")
    page = via_proxy(proxy, "web").body
    assert b"Known routes (0)" in page
    assert b'href="//web.localhost' not in page


def test_signals_are_forwarded_and_the_exit_code_passes_through(
    home: Path, tmp_path: Path, app: Path, proxy: ChildProxy, runs: list[Run]
) -> None:
    run = Run(home, tmp_path, "api", "--", sys.executable, str(app))
    runs.append(run)
    info = run.app_info()
    run.line(run.err, "is ready at")
    wait_for(lambda: via_proxy(proxy, "api").status == 200, what="the route in the proxy")
    run.proc.send_signal(signal.SIGUSR1)
    wait_for(
        lambda: "SIGUSR1" in via_proxy(proxy, "api").json()["signals"], what="SIGUSR1 forwarded"
    )
    assert via_proxy(proxy, "api", "/exit/7").json() == {"exiting": 7}
    assert run.wait() == 7
    assert _guardians(info["pid"]) == []
    assert "api exited with status 7" in "\n".join(run.err)
    assert gone(info["pid"])
    assert gone(info["child"])
    # The route went with the app: the proxy no longer knows api.localhost.
    wait_for(lambda: via_proxy(proxy, "api").status == 404, what="the route withdrawn")
    with Registry.open(home / "registry.sqlite3") as registry:
        assert registry.routes() == []
        assert registry.leases() == []


def test_a_command_that_fails_at_once_passes_its_status_and_never_routes(
    home: Path, tmp_path: Path, runs: list[Run]
) -> None:
    run = Run(home, tmp_path, "bad", "--", sys.executable, "-c", "import sys; sys.exit(3)")
    runs.append(run)
    assert run.wait() == 3
    killed = Run(
        home, tmp_path, "bad", "--", sys.executable, "-c", "import os; os.kill(os.getpid(), 9)"
    )
    runs.append(killed)
    assert killed.wait() == 128 + 9
    assert "by SIGKILL" in "\n".join(killed.err)
    missing = Run(home, tmp_path, "bad", "--", str(tmp_path / "no-such-program"))
    runs.append(missing)
    assert missing.wait() == 2
    assert "cannot run" in "\n".join(missing.err)
    with Registry.open(home / "registry.sqlite3") as registry:
        assert registry.routes() == []


def test_drift_is_reported_with_both_numbers_and_the_route_follows_the_real_port(
    home: Path, tmp_path: Path, app: Path, proxy: ChildProxy, runs: list[Run]
) -> None:
    from portside.pick import pick_port

    elsewhere = pick_port()[0]
    run = Run(home, tmp_path, "drift", "--", sys.executable, str(app), "--listen", str(elsewhere))
    runs.append(run)
    info = run.app_info()
    assigned = reserved_port(home, "drift", tmp_path)
    assert info["port"] == elsewhere != assigned
    warning = run.line(run.err, "listens on")
    assert f"assigned port {assigned}" in warning
    assert f"listens on {elsewhere}" in warning
    assert f"http://127.0.0.1:{elsewhere}/" in run.line(run.err, "is ready at")
    wait_for(lambda: via_proxy(proxy, "drift").status == 200, what="the route in the proxy")
    assert via_proxy(proxy, "drift").json()["port"] == elsewhere


def test_sigkill_of_portside_still_ends_the_app_and_the_proxy_drops_the_route(
    home: Path, tmp_path: Path, app: Path, proxy: ChildProxy, runs: list[Run]
) -> None:
    run = Run(home, tmp_path, "web", "--", sys.executable, str(app))
    runs.append(run)
    info = run.app_info()
    run.line(run.err, "is ready at")
    wait_for(lambda: via_proxy(proxy, "web").status == 200, what="the route in the proxy")
    guardians = _guardians(info["pid"])
    assert len(guardians) == 1  # watching the app's process group
    run.proc.kill()  # no chance to clean up: PR_SET_PDEATHSIG and the owner check must do it
    wait_for(lambda: gone(info["pid"]), what="the app ended by PDEATHSIG")
    wait_for(lambda: via_proxy(proxy, "web").status == 404, what="the dead owner's route dropped")
    # The app's own child is out of PDEATHSIG's reach: the guardian ends it, then itself.
    wait_for(lambda: gone(info["child"]), what="the app's child ended by the guardian")
    wait_for(lambda: not _guardians(info["pid"]), what="the guardian to leave")
    assert run.wait() == -signal.SIGKILL


def _guardians(group: int) -> list[int]:
    """Live guardian processes watching process group *group*."""
    from portside.run import GUARDIAN_MARK

    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/cmdline", "rb") as handle:
                argv = handle.read().split(b"\0")
            with open(f"/proc/{name}/stat", "rb") as handle:
                state = handle.read().rsplit(b")", 1)[1].split()[0]
        except OSError:
            continue
        if state != b"Z" and GUARDIAN_MARK.encode() in argv and str(group).encode() in argv:
            found.append(int(name))
    return found


def test_a_server_that_ignores_port_gets_its_flags(
    home: Path, tmp_path: Path, proxy: ChildProxy, runs: list[Run]
) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "index.html").write_text("<p>static site</p>")
    run = Run(home, site, "files", "--", sys.executable, "-m", "http.server")
    runs.append(run)
    added = run.line(run.err, "added")
    port = reserved_port(home, "files", site)
    assert f"http.server: added --bind 127.0.0.1 {port}" in added
    run.line(run.err, "is ready at")
    wait_for(lambda: via_proxy(proxy, "files").status == 200, what="the route in the proxy")
    assert via_proxy(proxy, "files").body == b"<p>static site</p>"
    run.proc.send_signal(signal.SIGINT)
    assert run.wait() in (0, 1, 128 + signal.SIGINT)  # http.server exits on KeyboardInterrupt


def test_a_port_already_in_use_is_refused_before_the_command_starts(
    home: Path, tmp_path: Path, runs: list[Run]
) -> None:
    marker = tmp_path / "started"
    first = Run(home, tmp_path, "busy", "--", sys.executable, "-c", "pass")
    runs.append(first)
    assert first.wait() == 0
    port = reserved_port(home, "busy", tmp_path)
    with socket.create_server(("127.0.0.1", port)):
        second = Run(
            home, tmp_path, "busy", "--", sys.executable, "-c", f"open({str(marker)!r}, 'w')"
        )
        runs.append(second)
        assert second.wait() == 2
    assert f"port {port} of 'busy' is in use" in "\n".join(second.err)
    assert not marker.exists()


def test_a_name_routed_by_another_live_run_is_refused(
    home: Path, tmp_path: Path, app: Path, runs: list[Run]
) -> None:
    first = Run(home, tmp_path, "dup", "--", sys.executable, str(app))
    runs.append(first)
    first.line(first.err, "is ready at")
    other = tmp_path / "other-project"
    other.mkdir()
    second = Run(home, other, "dup", "--", sys.executable, "-c", "pass")
    runs.append(second)
    assert second.wait() == 2
    assert "dup.localhost is routed to 127.0.0.1" in "\n".join(second.err)
    assert f"pid {first.proc.pid}" in "\n".join(second.err)
    third = Run(home, other, "dup", "--no-route", "--", sys.executable, "-c", "pass")
    runs.append(third)
    assert third.wait() == 0


def test_json_events(home: Path, tmp_path: Path, app: Path, runs: list[Run]) -> None:
    run = Run(home, tmp_path, "ev", "--json", "--", sys.executable, str(app))
    runs.append(run)
    ready = json.loads(run.line(run.err, '"run-ready"'))
    assert ready["schema"] == 1
    assert ready["route"] == "ev.localhost"
    assert ready["proxy_urls"] == []  # no proxy runs in this test
    started = json.loads(next(line for line in run.err if '"run-started"' in line))
    assert started["port"] == ready["port"] == run.app_info()["port"]
    run.proc.send_signal(signal.SIGTERM)
    run.wait()
    exited = json.loads(next(line for line in run.err if '"run-exited"' in line))
    assert exited["exit_code"] == 128 + signal.SIGTERM
    assert exited["signal"] == "SIGTERM"


def test_on_a_terminal_ctrl_z_stops_both_and_ctrl_c_reaches_the_app(
    home: Path, tmp_path: Path, app: Path
) -> None:
    import pty
    import select

    argv = [sys.executable, "-m", "portside", "run", "tty", "--", sys.executable, str(app)]
    pid, master = pty.fork()
    if pid == 0:  # the child: portside run on the pseudo-terminal, as from a shell
        try:
            os.chdir(tmp_path)
            os.environ["PORTSIDE_HOME"] = str(home)
            os.execv(sys.executable, argv)  # noqa: S606 -- our own interpreter
        finally:
            os._exit(127)
    seen = bytearray()
    reaped = False

    def shows(text: bytes) -> bool:
        if select.select([master], [], [], 0.05)[0]:
            with contextlib.suppress(OSError):
                seen.extend(os.read(master, 65536))
        return text in seen

    try:
        wait_for(lambda: shows(b"is ready at"), what="ready on the terminal")
        first = next(text for text in seen.decode().splitlines() if text.startswith("{"))
        info = json.loads(first)
        port = info["port"]
        os.write(master, b"\x1a")  # Ctrl-Z: the terminal stops the app's group
        stopped: list[int] = []

        def portside_stopped() -> bool:
            waited, status = os.waitpid(pid, os.WUNTRACED | os.WNOHANG)
            if waited and os.WIFSTOPPED(status):
                stopped.append(status)
            return bool(stopped)

        wait_for(portside_stopped, what="portside stopped with its app")
        os.kill(pid, signal.SIGCONT)  # what `fg` does: portside resumes the app
        wait_for(lambda: _answers(port), what="the app resumed")
        os.write(master, b"\x03")  # Ctrl-C: the app (in the foreground) gets SIGINT
        wait_for(lambda: shows(b"exited with status"), what="the exit line")
        _, status = os.waitpid(pid, 0)
        reaped = True
        assert os.waitstatus_to_exitcode(status) == 128 + signal.SIGINT
        assert b"KeyboardInterrupt" in seen  # the app itself saw the Ctrl-C
        wait_for(lambda: gone(info["pid"]) and gone(info["child"]), what="the tree gone")
    finally:
        if not reaped:  # a failure above: portside's SIGTERM handling stops the tree
            with contextlib.suppress(ChildProcessError, ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
                os.kill(pid, signal.SIGTERM)
                os.waitpid(pid, 0)
        os.close(master)


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
            sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
            return sock.recv(16).startswith(b"HTTP/")
    except OSError:
        return False


def test_the_library_reports_events_and_returns_the_status(home: Path, tmp_path: Path) -> None:
    from portside.run import RunEvent, RunExited, RunReady, RunStarted, run_command

    seen: list[RunEvent] = []
    script = (
        "import os, socket, sys\n"
        "s = socket.create_server(('127.0.0.1', int(os.environ['PORT'])))\n"
        "s.accept()[0].close()\n"  # the readiness check's connection
        "sys.exit(5)\n"
    )
    result = run_command(
        "lib",
        [sys.executable, "-c", script],
        scope=str(tmp_path),
        registry_path=home / "registry.sqlite3",
        env=environment(home),
        on_event=seen.append,
    )
    assert result.exit_code == 5
    assert result.actual_port == result.port
    assert result.routed is True
    assert [type(e) for e in seen] == [RunStarted, RunReady, RunExited]
    ready = seen[1]
    assert isinstance(ready, RunReady)
    assert ready.url == f"http://127.0.0.1:{result.port}/"
    assert ready.route == "lib.localhost"
    with Registry.open(home / "registry.sqlite3") as registry:
        assert registry.routes() == []
        found = registry.get("lib", scope=str(tmp_path))
        assert found is not None
        assert found.port == result.port
        assert found.lease is None
