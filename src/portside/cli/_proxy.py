"""``portside proxy``: the HTTP reverse proxy.

``add_arguments`` defines the options (the parser calls it; only argparse is imported at
module level so building the parser stays cheap); ``run_proxy`` runs the proxy until
Ctrl-C or SIGTERM, reloading the TOML file on SIGHUP.
"""

from __future__ import annotations

import argparse

DESCRIPTION = (
    "HTTP/1.1 reverse proxy on loopback: routes by Host (app.localhost, *.example) and path"
    " prefix, several backends per route (round-robin or least-connections), active health"
    " checks and passive ejection, keep-alive pools, streaming bodies, WebSocket, access log"
    " and a dashboard at http://portside.localhost:PORT/. Simplest form:"
    " `portside proxy --to 127.0.0.1:3000`. Routes from --route and --config (TOML, reloaded"
    " on SIGHUP; format in docs/proxy.md), and, live, the NAME.localhost routes of"
    " `portside run` (docs/run.md)."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``portside proxy`` (called by ``cli._parser``)."""
    parser.add_argument(
        "--listen",
        metavar="ADDR",
        default=None,
        help="address to listen on (default: 127.0.0.1 on a free port, printed on start)",
    )
    parser.add_argument(
        "--to",
        metavar="BACKEND",
        action="append",
        default=[],
        help="a backend of the default route (any host, any path); repeat for more",
    )
    parser.add_argument(
        "--route",
        metavar="HOST[/PATH]=BACKEND[,BACKEND...]",
        action="append",
        default=[],
        help="a route, e.g. app.localhost=127.0.0.1:3000 or *.test/api=127.0.0.1:4000,127.0.0.1:4001",
    )
    parser.add_argument(
        "-c",
        "--config",
        metavar="FILE",
        default=None,
        help="TOML file of routes (reloaded on SIGHUP without dropping connections)",
    )
    parser.add_argument(
        "--balance",
        choices=("round-robin", "least-connections"),
        default="round-robin",
        help="how routes from flags share requests among backends (default round-robin)",
    )
    parser.add_argument(
        "--health-path",
        metavar="PATH",
        default=None,
        help="turn on active health checks of flag routes: GET PATH on each backend",
    )
    parser.add_argument(
        "--health-interval", metavar="S", type=float, default=2.0, help="seconds between checks (2)"
    )
    parser.add_argument(
        "--health-timeout", metavar="S", type=float, default=1.0, help="seconds per check (1)"
    )
    parser.add_argument(
        "--health-expect",
        metavar="STATUS",
        default="200-399",
        help="healthy statuses: 200, 200-399 or 2xx (200-399)",
    )
    parser.add_argument(
        "--rise", type=int, default=2, help="successes in a row to mark a backend up (2)"
    )
    parser.add_argument(
        "--fall", type=int, default=3, help="failures in a row to mark a backend down (3)"
    )
    parser.add_argument(
        "--allow-host",
        metavar="HOST",
        action="append",
        default=[],
        help="also accept this Host (name or *.suffix); loopback names, *.localhost and route hosts are always accepted",
    )
    parser.add_argument(
        "--no-preserve-host",
        dest="preserve_host",
        action="store_false",
        help="send the backend's address as Host instead of the client's",
    )
    parser.add_argument(
        "--access-log",
        choices=("common", "json", "off"),
        default=None,
        help="access log on stdout: common (default), json or off",
    )
    parser.add_argument(
        "--connect-timeout",
        metavar="S",
        type=float,
        default=5.0,
        help="seconds to connect to a backend (5)",
    )
    parser.add_argument(
        "--timeout",
        metavar="S",
        type=float,
        default=60.0,
        help="seconds a backend may take to start answering, or stay silent mid-body; then 504 (60)",
    )
    parser.add_argument(
        "--allow-remote-clients",
        action="store_true",
        help="answer clients that are not on loopback (only matters with a non-loopback --listen)",
    )
    parser.add_argument(
        "--https",
        action="store_true",
        help="also serve https://NAME.localhost:PORT/ with certificates from the local CA"
        " (`portside ca` shows it and how to trust it); on a free port unless --tls-listen",
    )
    parser.add_argument(
        "--tls-listen",
        metavar="ADDR",
        default=None,
        help="address of the HTTPS listener (implies --https; default 127.0.0.1 on a free port)",
    )
    parser.add_argument(
        "--no-registry",
        dest="registry",
        action="store_false",
        help="do not serve the NAME.localhost routes that `portside run` publishes (read live by default)",
    )


def run_proxy(options: argparse.Namespace) -> int:
    """Run until interrupted; exit 0 after a clean shutdown, 2 for bad options."""
    import asyncio
    import json
    import sys

    from portside.errors import ExitCode, UsageError
    from portside.net import proxy as proxy_module
    from portside.net.routes import (
        ANY_HOST,
        Balance,
        HealthCheckSpec,
        Route,
        parse_backend,
        parse_route_spec,
        parse_status_range,
    )

    health: HealthCheckSpec | None = None
    if options.health_path is not None:
        if not options.health_path.startswith("/"):
            raise UsageError(f"--health-path {options.health_path!r}: a path starts with /")
        if options.health_interval <= 0 or options.health_timeout <= 0:
            raise UsageError("--health-interval and --health-timeout must be positive")
        if not (1 <= options.rise <= 100 and 1 <= options.fall <= 100):
            raise UsageError("--rise and --fall are whole numbers from 1 to 100")
        health = HealthCheckSpec(
            path=options.health_path,
            interval_s=options.health_interval,
            timeout_s=options.health_timeout,
            expect=parse_status_range(options.health_expect, "--health-expect"),
            rise=options.rise,
            fall=options.fall,
        )
    settings = {
        "balance": Balance(options.balance),
        "preserve_host": options.preserve_host,
        "health": health,
    }
    routes: list[Route] = []
    if options.to:
        routes.append(
            Route(
                host=ANY_HOST,
                backends=tuple(parse_backend(b) for b in options.to),
                **settings,
            )
        )
    routes.extend(parse_route_spec(spec, **settings) for spec in options.route)
    if not routes and options.config is None and not options.registry:
        raise UsageError(
            "nothing to proxy to: give --to BACKEND, --route HOST=BACKEND or --config FILE"
            " (or drop --no-registry to serve `portside run` routes)"
        )
    if options.connect_timeout <= 0 or options.timeout <= 0:
        raise UsageError("--connect-timeout and --timeout must be positive")

    proxy_options = proxy_module.ProxyOptions(
        config_path=options.config,
        allow_hosts=tuple(options.allow_host),
        access_log=options.access_log,
        access_log_default="common",
        connect_timeout_s=options.connect_timeout,
        response_timeout_s=options.timeout,
        allow_remote_clients=options.allow_remote_clients,
        registry_routes=options.registry,
    )
    listen = proxy_module.parse_listen(options.listen)
    ca_path: str | None = None
    if options.https or options.tls_listen is not None:
        import dataclasses

        from portside.ca import CertificateAuthority

        try:
            tls_listen = proxy_module.parse_listen(options.tls_listen)
        except UsageError as exc:
            message = str(exc).replace("--listen", "--tls-listen", 1)
            raise UsageError(
                message if "--tls-listen" in message else f"--tls-listen: {message}"
            ) from None
        authority = CertificateAuthority.load_or_create()
        ca_path = str(authority.cert_path)
        proxy_options = dataclasses.replace(
            proxy_options, tls_listen=tls_listen, tls_context=authority.server_context()
        )

    def started(proxy: proxy_module.Proxy) -> None:
        address = proxy.url
        if options.json:
            sys.stdout.write(
                json.dumps(
                    {
                        "schema": 1,
                        "kind": "proxy-started",
                        "listen": proxy.listen_text,
                        "url": address,
                        "dashboard": proxy.dashboard_url,
                        "https_url": proxy.https_url,
                        "ca": ca_path,
                    }
                )
                + "\n"
            )
        else:
            sys.stdout.write(
                f"portside proxy listening on {address} (dashboard: {proxy.dashboard_url})\n"
            )
            if proxy.https_url is not None:
                sys.stdout.write(
                    f"  and on {proxy.https_url} with certificates of the local CA {ca_path}"
                    " (trust it: portside ca)\n"
                )
            for route in proxy.routes.snapshot.routes:
                backends = ", ".join(str(b) for b in route.backends)
                sys.stdout.write(f"  {route.name} -> {backends}\n")
        sys.stdout.flush()
        if proxy.exposed:
            sys.stderr.write(
                f"portside: warning: listening on {proxy.listen_text}, beyond loopback; other machines can reach it\n"
            )

    try:
        proxy_module.run(listen, routes, options=proxy_options, on_started=started)
    except KeyboardInterrupt:
        return ExitCode.INTERRUPTED
    except asyncio.CancelledError:
        return ExitCode.OK
    return ExitCode.OK
