"""wait_for and ``portside wait`` against real servers on loopback."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from portside.cli import main as cli
from portside.errors import UsageError
from portside.models import Family
from portside.wait import Condition, Readiness, check, parse_statuses, wait_for
from tests.integration import _servers
from tests.integration._components import LOOPBACK, STOP_GRACE, temp_dir

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def workdir():
    with temp_dir("portside-wait-test-") as path:
        yield path


@pytest.fixture
def site(workdir):
    root = workdir / "site"
    root.mkdir()
    (root / "index.html").write_text("<h1>home</h1>\n")
    (root / "health").write_text("status: ready\n")
    return root


def start_when(event: threading.Event, start) -> threading.Thread:
    """Run ``start()`` in a thread as soon as ``event`` is set (by a failed attempt)."""

    def run() -> None:
        if event.wait(timeout=60):
            start()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def first_failure_sets(event: threading.Event):
    def on_progress(snapshot) -> None:
        if any(t.attempts and not t.ready for t in snapshot.targets):
            event.set()

    return on_progress


# --------------------------------------------------------------------------- the library


def test_waits_for_a_listener_that_starts_after_the_wait_began():
    failed_once = threading.Event()
    stop = threading.Event()
    with _servers.bound_port() as sock:
        port = sock.getsockname()[1]

        def serve() -> None:
            sock.listen()  # the port was ours all along; from now on it accepts
            while not stop.is_set():
                sock.settimeout(0.1)
                try:
                    conn, _ = sock.accept()
                except TimeoutError:
                    continue
                conn.close()

        server = start_when(failed_once, serve)
        result = wait_for(
            [f"{LOOPBACK}:{port}"],
            timeout=30,
            interval=0.05,
            on_progress=first_failure_sets(failed_once),
        )
        stop.set()
        server.join(timeout=STOP_GRACE)
    (state,) = result.targets
    assert result.ready
    assert state.ready
    assert state.attempts >= 2  # at least one refused attempt before the listener came
    assert (state.ip, state.family, state.detail) == (LOOPBACK, Family.IPV4, "connected")


def test_waits_for_an_http_server_that_starts_later(site):
    failed_once = threading.Event()
    ready = threading.Event()
    done = threading.Event()
    with _servers.bound_port() as sock:
        port = sock.getsockname()[1]

        def serve() -> None:
            with _servers.http_server(site, sock=sock):
                ready.set()
                done.wait(timeout=60)

        server = start_when(failed_once, serve)
        result = wait_for(
            [f"http://{LOOPBACK}:{port}/health"],
            timeout=30,
            interval=0.05,
            condition=Condition(body="ready"),
            on_progress=first_failure_sets(failed_once),
        )
        done.set()
        server.join(timeout=STOP_GRACE)
    (state,) = result.targets
    assert result.ready, state.last_error
    assert ready.is_set()
    assert state.readiness is Readiness.HTTP
    assert state.detail == "HTTP 200 OK"
    assert "ECONNREFUSED" in (state.last_error or "")  # what the first attempts saw


def test_http_status_and_body_conditions(site):
    with _servers.http_server(site) as port:
        base = f"http://{LOOPBACK}:{port}"
        assert check(parse(f"{base}/health"), Condition(body="ready")).ready
        missing = check(parse(f"{base}/nothing-here"))
        assert not missing.ready
        assert "HTTP 404 File not found: status not in 200-399" in missing.detail
        assert check(parse(f"{base}/nothing-here"), Condition(statuses=((404, 404),))).ready
        wrong_body = check(parse(f"{base}/health"), Condition(body="healthy"))
        assert not wrong_body.ready
        assert "the body does not contain 'healthy'" in wrong_body.detail


def parse(text: str):
    from portside.addresses import parse_target

    return parse_target(text, require_port=True)


def test_redis_is_ready_when_ping_is_answered():
    with _servers.redis_server() as (port, log):
        result = wait_for([f"redis://{LOOPBACK}:{port}"], timeout=10, interval=0.05)
        log_text = log.read_text()
    (state,) = result.targets
    assert result.ready
    assert state.detail == "Redis answered +PONG"
    assert "SECURITY ATTACK" not in log_text


def test_redis_asking_for_a_password_counts_as_answering():
    with _servers.redis_server(auth=True) as (port, _log):
        result = wait_for([f"redis://{LOOPBACK}:{port}"], timeout=10, interval=0.05)
    assert result.ready
    assert result.targets[0].detail == "Redis answered -NOAUTH Authentication required."


def test_redis_target_is_not_ready_when_something_else_answers(site):
    with _servers.http_server(site) as port:
        found = check(parse(f"redis://{LOOPBACK}:{port}"))
    assert not found.ready
    assert "no Redis answer to PING (http" in found.detail


def test_postgres_is_ready_when_the_ssl_request_is_answered():
    with _servers.postgres_server() as (port, _log):
        result = wait_for([f"postgres://{LOOPBACK}:{port}/app"], timeout=10, interval=0.05)
    assert result.ready
    assert result.targets[0].detail == "PostgreSQL: SSL not supported (N)"


def test_postgres_with_ssl_answers_s_and_is_ready(workdir):
    with _servers.postgres_server(ssl_files=_servers.make_certificate(workdir)) as (port, _log):
        result = wait_for([f"postgresql://{LOOPBACK}:{port}"], timeout=10, interval=0.05)
    assert result.ready
    assert result.targets[0].detail == "PostgreSQL: SSL supported (S)"


def test_tls_target_is_ready_when_the_handshake_completes(workdir, site):
    with _servers.tls_server(workdir) as tls_port, _servers.http_server(site) as plain_port:
        tls = check(parse(f"tcp+tls://{LOOPBACK}:{tls_port}"))
        https = check(parse(f"https://{LOOPBACK}:{tls_port}/"))
        plain = check(parse(f"tcp+tls://{LOOPBACK}:{plain_port}"), timeout=2)
    assert tls.ready
    assert tls.detail.startswith("TLSv1.")
    assert tls.detail.endswith(": TLS handshake completed")
    assert https.ready
    assert https.detail.endswith(": HTTP 200 OK")
    assert not plain.ready
    assert "TLS handshake failed" in plain.detail


def test_a_name_is_tried_on_every_family_and_says_which_answered(site):
    addresses = {
        info[4][0] for info in socket.getaddrinfo("localhost", 80, type=socket.SOCK_STREAM)
    }
    if "127.0.0.1" not in addresses:
        pytest.skip(f"localhost does not resolve to 127.0.0.1 here: {addresses}")
    with _servers.http_server(site, host=LOOPBACK) as port, held(("::1", port)):
        result = wait_for([f"localhost:{port}"], timeout=10, interval=0.05)
    (state,) = result.targets
    assert result.ready
    assert (state.ip, state.family) == ("127.0.0.1", Family.IPV4)


def test_a_port_alone_means_both_loopbacks_and_an_ipv6_only_server_is_found(site):
    if not _servers.has_ipv6_loopback():
        pytest.skip("no IPv6 on loopback here")
    with same_port_on_both_loopbacks() as (ipv4, ipv6):
        port = ipv4.getsockname()[1]
        with _servers.http_server(site, host="::1", sock=ipv6):  # 127.0.0.1:port stays shut
            result = wait_for([f"http://[::1]:{port}/", f":{port}"], timeout=10, interval=0.05)
    assert result.ready
    for state in result.targets:
        assert (state.ip, state.family) == ("::1", Family.IPV6), state


@contextlib.contextmanager
def same_port_on_both_loopbacks() -> Iterator[tuple[socket.socket, socket.socket]]:
    """Two bound, not listening sockets: 127.0.0.1:P (from the kernel) and [::1]:P."""
    for _attempt in range(20):
        with _servers.bound_port(LOOPBACK) as ipv4, held(("::1", ipv4.getsockname()[1])) as ipv6:
            if ipv6 is not None:
                yield ipv4, ipv6
                return
    pytest.skip("no port was free on both 127.0.0.1 and ::1 in 20 tries")


@contextlib.contextmanager
def held(address: tuple[str, int]) -> Iterator[socket.socket | None]:
    """Bind ``address`` without listening, so nothing else can answer there (None when the
    family is missing or the port is taken: then it cannot be guaranteed)."""
    family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
    try:
        sock = socket.socket(family, socket.SOCK_STREAM)
    except OSError:
        yield None
        return
    with sock:
        try:
            sock.bind(address)
        except OSError:
            yield None
            return
        yield sock


def test_an_ipv6_only_server_is_found_through_localhost(site, tmp_path):
    """`localhost` naming both loopbacks (a private /etc/hosts in a private mount
    namespace, so this machine's own file does not decide), the server only on ::1."""
    if not _servers.has_ipv6_loopback():
        pytest.skip("no IPv6 on loopback here")
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare (util-linux) for a private /etc/hosts")
    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.1 localhost\n::1 localhost\n")
    with _servers.http_server(site, host="::1") as port, held((LOOPBACK, port)):
        script = (
            f"mount --bind {hosts} /etc/hosts && exec {sys.executable} -m portside wait"
            f" --json --timeout 10 --interval 0.05 http://localhost:{port}/"
        )
        child = subprocess.run(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
            capture_output=True,
            text=True,
            cwd=REPO,
            timeout=60,
            check=False,
        )
    assert child.returncode == 0, child.stdout + child.stderr
    (state,) = json.loads(child.stdout)["targets"]
    assert (state["ip"], state["family"]) == ("::1", "ipv6")


def test_timing_out_names_what_was_not_ready_and_why(site):
    with _servers.bound_port() as sock, _servers.http_server(site) as ready_port:
        refused = f"{LOOPBACK}:{sock.getsockname()[1]}"
        result = wait_for([refused, f"{LOOPBACK}:{ready_port}"], timeout=0.3, interval=0.05)
    assert not result.ready
    waiting, answered = result.targets
    assert (waiting.ready, answered.ready) == (False, True)
    assert waiting.last_error == f"{refused} ECONNREFUSED"
    assert waiting.attempts >= 1


def test_status_lists_are_parsed_and_checked():
    assert parse_statuses("200-299,401") == ((200, 299), (401, 401))
    for bad in ("", "abc", "200-", "99", "300-200", "200-600"):
        with pytest.raises(UsageError):
            parse_statuses(bad)


# --------------------------------------------------------------------------- the command


def test_wait_command_exit_1_says_what_was_not_ready(capsys):
    with _servers.bound_port() as sock:
        target = f"{LOOPBACK}:{sock.getsockname()[1]}"
        code = cli(["wait", target, "--timeout", "0.3", "--interval", "0.05"])
    err = capsys.readouterr().err
    assert code == 1
    assert "timed out after 0.3 s; not ready:" in err
    assert f"{target}: {target} ECONNREFUSED" in err


def test_wait_command_json(site, capsys):
    with _servers.http_server(site) as port:
        code = cli(["wait", "--json", f"http://{LOOPBACK}:{port}/health", "--body", "ready"])
    document = json.loads(capsys.readouterr().out)
    assert code == 0
    assert (document["schema"], document["kind"], document["ready"]) == (1, "wait", True)
    (target,) = document["targets"]
    assert (target["readiness"], target["family"], target["detail"]) == (
        "http",
        "ipv4",
        "HTTP 200 OK",
    )


@pytest.mark.parametrize(
    "argv",
    [
        ["wait"],
        ["wait", "localhost"],
        ["wait", "http://127.0.0.1:1/", "--status", "99"],
        ["wait", "127.0.0.1:1", "--bogus"],
        ["wait", "--", "true"],
    ],
)
def test_wait_command_exit_2_for_bad_input(argv, capsys):
    assert cli(argv) == 2
    assert "portside" in capsys.readouterr().err


def run_portside(*argv: str) -> subprocess.CompletedProcess[str]:
    """``python -m portside ARGV`` in a child process."""
    head = ["-m", "portside"]
    return subprocess.run(
        [sys.executable, *head, *argv],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
        check=False,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )


def test_wait_then_exec_runs_the_command_in_place(site):
    with _servers.http_server(site) as port:
        done = run_portside(
            "wait",
            f"http://{LOOPBACK}:{port}/health",
            "--timeout",
            "20",
            "--",
            sys.executable,
            "-c",
            "import os, sys; print(123); sys.exit(7)",
        )
    assert (done.returncode, done.stdout) == (7, "123\n"), done.stderr


def test_wait_does_not_run_the_command_when_it_times_out():
    with _servers.bound_port() as sock:
        target = f"{LOOPBACK}:{sock.getsockname()[1]}"
        done = run_portside(
            "wait", target, "--timeout", "0.2", "--", sys.executable, "-c", "print(123)"
        )
    assert done.returncode == 1
    assert done.stdout == ""
    assert "not ready" in done.stderr


def test_an_unknown_command_after_the_wait_exits_127():
    with _servers.tcpwrapped_server() as port:
        done = run_portside("wait", f"{LOOPBACK}:{port}", "--", "/nonexistent/portside-test-cmd")
    assert done.returncode == 127
    assert "cannot run '/nonexistent/portside-test-cmd'" in done.stderr


def test_the_status_line_is_drawn_on_a_terminal_only():
    import io

    from portside.cli._probe import _StatusLine
    from portside.wait import TargetStatus, WaitResult

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    snapshot = WaitResult(
        ready=False,
        elapsed_s=1.25,
        timeout_s=30,
        targets=(
            TargetStatus(
                target="localhost:8080",
                readiness=Readiness.TCP,
                ready=False,
                attempts=3,
                ip=None,
                family=None,
                ready_after_s=None,
                detail=None,
                last_error="127.0.0.1:8080 ECONNREFUSED",
            ),
        ),
    )
    terminal, pipe = Terminal(), io.StringIO()
    for stream in (terminal, pipe):
        line = _StatusLine(stream)
        line.update(snapshot)
        line.close()
    assert pipe.getvalue() == ""
    assert terminal.getvalue().startswith(
        "\rwaiting 1.2/30 s: localhost:8080 127.0.0.1:8080 ECONNREFUSED\x1b[K"
    )
    assert terminal.getvalue().endswith("\r\x1b[K")  # erased before the final report
