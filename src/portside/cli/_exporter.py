"""``portside exporter``: Prometheus metrics of listeners and findings on a loopback port.

``add_arguments`` defines the options (only argparse at module level); ``run_exporter``
serves ``/metrics`` until Ctrl-C or SIGTERM (exit 0; 130 after Ctrl-C), or with
``--once`` prints one scrape and exits.
"""

from __future__ import annotations

import argparse

DESCRIPTION = (
    "Serve Prometheus metrics on http://127.0.0.1:9839/metrics (or --listen ADDR:PORT):"
    " listening sockets by exposure, process and port; findings by severity and code;"
    " ports published by containers; scrape duration. Each scrape looks again."
    " --once prints the metrics once (for node_exporter's textfile collector)."
    " Alert rules for fleets: contrib/prometheus/alerts.yml; series: docs/exporter.md."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``portside exporter`` (called by ``cli._parser``)."""
    parser.add_argument(
        "--listen",
        metavar="ADDR:PORT",
        default=None,
        help="where to listen (default 127.0.0.1:9839; port 0 picks a free one);"
        " a non-loopback address is your explicit choice and is warned about",
    )
    parser.add_argument(
        "--netns",
        action="store_true",
        help="also count listeners in other network namespaces (default: this one only)",
    )
    parser.add_argument(
        "--once", action="store_true", help="print the metrics of one scrape and exit"
    )


def _listen(text: str | None) -> tuple[str, int]:
    from portside.addresses import HostKind, parse_target
    from portside.errors import UsageError
    from portside.exporter import DEFAULT_PORT

    if text is None:
        return "127.0.0.1", DEFAULT_PORT
    target = parse_target(text)
    port = DEFAULT_PORT if target.port is None else target.port
    if target.host_kind is HostKind.NONE or target.host == "localhost":
        return "127.0.0.1", port
    if target.host_kind is HostKind.NAME:
        raise UsageError(
            f"--listen {text!r}: give an IP address (127.0.0.1:9839, [::1]:9839), not a name"
        )
    return target.host or "127.0.0.1", port


def run_exporter(options: argparse.Namespace) -> int:
    """Serve until interrupted (0; 130 after Ctrl-C), or print one scrape (``--once``)."""
    import json
    import signal
    import sys
    import threading

    from portside.errors import ExitCode, UsageError
    from portside.exporter import exposition, families, scrape, serve

    host, port = _listen(options.listen)
    if options.once:
        sys.stdout.write(exposition(families(scrape(namespaces=options.netns))))
        return ExitCode.OK

    def started(bound_host: str, bound_port: int) -> None:
        shown = f"[{bound_host}]" if ":" in bound_host else bound_host
        url = f"http://{shown}:{bound_port}/metrics"
        if options.json:
            document = {
                "schema": 1,
                "kind": "exporter-started",
                "listen": {"ip": bound_host, "port": bound_port},
                "url": url,
            }
            sys.stdout.write(json.dumps(document) + "\n")
        else:
            sys.stdout.write(f"portside exporter: metrics at {url}\n")
        sys.stdout.flush()
        if not (bound_host.startswith("127.") or bound_host == "::1"):
            sys.stderr.write(
                f"portside: warning: the exporter listens on {shown}:{bound_port}, beyond"
                " loopback: anyone who reaches it sees this machine's listeners and findings\n"
            )

    stop = threading.Event()
    received: list[int] = []

    def on_signal(signum: int, _frame: object) -> None:
        received.append(signum)
        stop.set()

    previous = {
        signum: signal.signal(signum, on_signal) for signum in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        serve(host, port, namespaces=options.netns, ready=started, stop=stop)
    except OSError as exc:
        raise UsageError(
            f"cannot listen on {host}:{port}: {exc.strerror or exc}; pick another --listen"
        ) from None
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return ExitCode.INTERRUPTED if signal.SIGINT in received else ExitCode.OK
