"""``portside serve`` end to end on loopback, with real clients (http.client, raw
sockets, the CLI in a subprocess): ranges, validators, index and listings, SPA
fallback, CORS, live reload, symlinks, the Host allowlist, sendfile, signals."""

from __future__ import annotations

import email.message
import email.parser
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from email.utils import formatdate

import pytest

from portside.models import Endpoint
from portside.net.serve import LIVE_RELOAD_PATH, StaticOptions
from tests.integration._servers import StaticServerThread

BIG = 3 * 1024 * 1024 + 17  # over the small-file threshold: goes out with sendfile


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    base = tmp_path_factory.mktemp("serve")
    (base / "outside.txt").write_text("outside the root\n")
    root = base / "site"
    (root / "docs").mkdir(parents=True)
    (root / "empty").mkdir()
    (root / "index.html").write_text("<html><body><h1>home</h1></body></html>\n")
    (root / "app.js").write_text("console.log('hi');\n")
    (root / "style.css").write_text("body{}\n")
    (root / "data.json").write_text('{"a": 1}\n')
    (root / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)))
    (root / "module.wasm").write_bytes(b"\x00asm\x01\x00\x00\x00")
    (root / "noext").write_bytes(b"raw")
    (root / "docs" / "a.txt").write_text("0123456789abcdefghij")
    (root / "docs" / "b & <c>.txt").write_text("odd name")
    (root / "docs" / "sub").mkdir()
    (root / "big.bin").write_bytes(os.urandom(BIG))
    (root / "link_out").symlink_to("../outside.txt")
    (root / "link_in").symlink_to("docs/a.txt")
    return root


@pytest.fixture(scope="module")
def server(site):
    with StaticServerThread(site) as running:
        yield running


# -- files, types, HEAD -------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "media"),
    [
        ("/index.html", "text/html; charset=utf-8"),
        ("/app.js", "text/javascript; charset=utf-8"),
        ("/style.css", "text/css; charset=utf-8"),
        ("/data.json", "application/json"),
        ("/image.png", "image/png"),
        ("/module.wasm", "application/wasm"),
        ("/noext", "application/octet-stream"),
        ("/docs/a.txt", "text/plain; charset=utf-8"),
    ],
)
def test_content_types(server, site, path, media):
    status, headers, body = server.get(path)
    assert status == 200
    assert headers["content-type"] == media
    assert body == (site / path.lstrip("/")).read_bytes()
    assert headers["x-content-type-options"] == "nosniff"


def test_head_has_headers_and_no_body(server, site):
    status, headers, body = server.get("/big.bin", method="HEAD")
    assert status == 200
    assert int(headers["content-length"]) == BIG
    assert body == b""


def test_big_files_go_out_with_sendfile(server, site):
    assert server.server is not None
    stats = server.server.http.stats
    before = stats.sendfile_bytes
    status, _, body = server.get("/big.bin")
    assert status == 200
    assert body == (site / "big.bin").read_bytes()
    assert stats.sendfile_bytes - before == BIG
    assert stats.sendfile_calls > 0


def test_index_html_and_directory_redirect(server):
    status, headers, body = server.get("/")
    assert status == 200
    assert b"<h1>home</h1>" in body
    status, headers, _ = server.get("/docs?x=1")
    assert status == 301
    assert headers["location"] == "/docs/?x=1"


def test_listing_html_escapes_names(server):
    status, headers, body = server.get("/docs/")
    assert status == 200
    assert headers["content-type"].startswith("text/html")
    text = body.decode()
    assert 'href="./a.txt"' in text
    assert 'href="./sub/"' in text
    assert "b &amp; &lt;c&gt;.txt" in text
    assert 'href="./b%20%26%20%3Cc%3E.txt"' in text
    assert text.index("sub/") < text.index("a.txt")  # directories first


def test_listing_json(server):
    status, headers, body = server.get("/docs/?format=json")
    assert status == 200
    assert headers["content-type"] == "application/json"
    document = json.loads(body)
    assert document["kind"] == "listing"
    assert document["path"] == "/docs/"
    entries = {e["name"]: e for e in document["entries"]}
    assert entries["a.txt"] == {
        "name": "a.txt",
        "type": "file",
        "size": 20,
        "modified": entries["a.txt"]["modified"],
    }
    assert entries["sub"]["type"] == "directory"
    assert entries["sub"]["size"] is None


def test_listing_hides_links_out_of_the_root(server, site):
    _, _, body = server.get("/?format=json")  # index.html wins for "/" ...
    assert b"<h1>home</h1>" in body
    with StaticServerThread(site, StaticOptions(index="none")) as other:  # ... unless there is none
        status, _, body = other.get("/?format=json")
    names = {e["name"] for e in json.loads(body)["entries"]}
    assert status == 200
    assert "link_in" in names
    assert "link_out" not in names


def test_missing_is_404_and_files_have_no_trailing_slash(server):
    assert server.get("/nope.txt")[0] == 404
    assert server.get("/docs/a.txt/")[0] == 404


def test_other_methods(server):
    status, headers, _ = server.get("/index.html", method="POST")
    assert status == 405
    assert headers["allow"] == "GET, HEAD, OPTIONS"
    status, headers, _ = server.get("/", method="OPTIONS")
    assert status == 204


# -- ranges ---------------------------------------------------------------------------


def test_single_range(server):
    status, headers, body = server.get("/docs/a.txt", {"Range": "bytes=2-5"})
    assert status == 206
    assert headers["content-range"] == "bytes 2-5/20"
    assert body == b"2345"
    assert server.get("/docs/a.txt", {"Range": "bytes=-3"})[2] == b"hij"
    assert server.get("/docs/a.txt", {"Range": "bytes=15-"})[2] == b"fghij"
    assert server.get("/docs/a.txt", {"Range": "bytes=18-99"})[2] == b"ij"


def _parts(headers: dict[str, str], body: bytes) -> list[tuple[str, bytes]]:
    message = email.parser.BytesParser().parsebytes(
        b"Content-Type: " + headers["content-type"].encode() + b"\r\n\r\n" + body
    )
    assert message.is_multipart()
    parts = message.get_payload()
    assert isinstance(parts, list)
    found = []
    for part in parts:
        assert isinstance(part, email.message.Message)
        payload = part.get_payload(decode=True)
        assert isinstance(payload, bytes)
        found.append((str(part["content-range"]), payload))
    return found


def test_multiple_ranges_are_multipart_byteranges(server):
    status, headers, body = server.get("/docs/a.txt", {"Range": "bytes=0-1, 5-6,-2"})
    assert status == 206
    assert headers["content-type"].startswith("multipart/byteranges; boundary=")
    assert int(headers["content-length"]) == len(body)
    assert _parts(headers, body) == [
        ("bytes 0-1/20", b"01"),
        ("bytes 5-6/20", b"56"),
        ("bytes 18-19/20", b"ij"),
    ]


def test_ranges_of_a_big_file_use_sendfile(server, site):
    data = (site / "big.bin").read_bytes()
    status, headers, body = server.get("/big.bin", {"Range": "bytes=100-199,-50"})
    assert status == 206
    assert int(headers["content-length"]) == len(body)
    assert _parts(headers, body) == [
        (f"bytes 100-199/{BIG}", data[100:200]),
        (f"bytes {BIG - 50}-{BIG - 1}/{BIG}", data[-50:]),
    ]
    status, headers, body = server.get("/big.bin", {"Range": f"bytes={BIG - 10}-"})
    assert status == 206
    assert body == data[-10:]


def test_unsatisfiable_and_ignored_ranges(server):
    status, headers, _ = server.get("/docs/a.txt", {"Range": "bytes=50-60"})
    assert status == 416
    assert headers["content-range"] == "bytes */20"
    assert server.get("/docs/a.txt", {"Range": "bytes=5-2"})[0] == 200  # invalid: ignored
    assert server.get("/docs/a.txt", {"Range": "lines=1-2"})[0] == 200
    assert server.get("/docs/a.txt", {"Range": "bytes=0-2"}, method="HEAD")[0] == 200


def test_if_range(server):
    _, headers, _ = server.get("/docs/a.txt")
    etag = headers["etag"]
    assert server.get("/docs/a.txt", {"Range": "bytes=0-0", "If-Range": etag})[0] == 206
    assert server.get("/docs/a.txt", {"Range": "bytes=0-0", "If-Range": '"other"'})[0] == 200


# -- validators ---------------------------------------------------------------------


def test_etag_and_last_modified_give_304(server):
    status, headers, _ = server.get("/app.js")
    etag, modified = headers["etag"], headers["last-modified"]
    assert re.fullmatch(r'"[0-9a-f]+-[0-9a-f]+"', etag)
    status, headers304, body = server.get("/app.js", {"If-None-Match": etag})
    assert (status, body) == (304, b"")
    assert headers304["etag"] == etag
    assert server.get("/app.js", {"If-None-Match": f'W/"x", W/{etag}'})[0] == 304
    assert server.get("/app.js", {"If-None-Match": '"nope"'})[0] == 200
    assert server.get("/app.js", {"If-Modified-Since": modified})[0] == 304
    assert server.get("/app.js", {"If-Modified-Since": formatdate(0, usegmt=True)})[0] == 200
    # If-None-Match wins over If-Modified-Since
    assert (
        server.get("/app.js", {"If-None-Match": '"nope"', "If-Modified-Since": modified})[0] == 200
    )
    assert (
        server.get("/big.bin", {"If-None-Match": server.get("/big.bin", method="HEAD")[1]["etag"]})[
            0
        ]
        == 304
    )


def test_preconditions_412(server):
    _, headers, _ = server.get("/app.js")
    assert server.get("/app.js", {"If-Match": '"other"'})[0] == 412
    assert server.get("/app.js", {"If-Match": headers["etag"]})[0] == 200
    assert server.get("/app.js", {"If-Unmodified-Since": formatdate(0, usegmt=True)})[0] == 412


def test_a_changed_file_is_served_fresh(tmp_path):
    (tmp_path / "f.txt").write_text("one")
    with StaticServerThread(tmp_path) as running:
        first = running.get("/f.txt")
        (tmp_path / "f.txt").write_text("two, longer")
        second = running.get("/f.txt")
    assert first[2] == b"one"
    assert second[2] == b"two, longer"
    assert first[1]["etag"] != second[1]["etag"]


# -- safety -------------------------------------------------------------------------


def test_symlinks_out_are_404_unless_followed(server, site):
    assert server.get("/link_out")[0] == 404
    assert server.get("/link_in")[2] == b"0123456789abcdefghij"
    with StaticServerThread(site, StaticOptions(follow_symlinks=True)) as following:
        status, _, body = following.get("/link_out")
    assert (status, body) == (200, b"outside the root\n")


def test_host_allowlist_blocks_rebinding(server, site):
    for host in (
        "localhost",
        "LOCALHOST.",
        "app.localhost:8080",
        "127.0.0.1",
        "127.1.2.3:9",
        "[::1]",
    ):
        assert server.get("/docs/a.txt", {"Host": host})[0] == 200, host
    for host in ("evil.example", "localhost.evil.example", "127.0.0.1.nip.io", "10.0.0.1"):
        status, _, body = server.get("/docs/a.txt", {"Host": host})
        assert status == 403, host
        assert b"0123456789" not in body
    with StaticServerThread(
        site, StaticOptions(allow_hosts=("dev.test", "*.example.test"))
    ) as other:
        assert other.get("/docs/a.txt", {"Host": "dev.test:1"})[0] == 200
        assert other.get("/docs/a.txt", {"Host": "a.example.test"})[0] == 200
        assert other.get("/docs/a.txt", {"Host": "example.test"})[0] == 403


def test_absolute_form_authority_is_checked_too(server):
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(
            b"GET http://evil.example/docs/a.txt HTTP/1.1\r\nHost: localhost\r\n"
            b"Connection: close\r\n\r\n"
        )
        reply = b""
        while chunk := sock.recv(4096):
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 403 ")


# -- SPA, CORS, live reload ---------------------------------------------------------


def test_spa_fallback(site):
    with StaticServerThread(site, StaticOptions(spa="index.html")) as spa:
        status, _, body = spa.get("/app/route/42", {"Accept": "text/html"})
        assert status == 200
        assert b"<h1>home</h1>" in body
        assert spa.get("/missing.js", {"Accept": "*/*"})[0] == 404  # assets stay 404
        assert spa.get("/../outside.txt")[0] == 404  # refused paths never fall back


def test_cors(site):
    with StaticServerThread(site, StaticOptions(cors="*")) as cors:
        status, headers, _ = cors.get("/data.json", {"Origin": "http://other.localhost"})
        assert status == 200
        assert headers["access-control-allow-origin"] == "*"
        status, headers, _ = cors.get(
            "/data.json",
            {
                "Origin": "http://other.localhost",
                "Access-Control-Request-Method": "GET",
                "Access-Control-Request-Headers": "x-custom",
            },
            method="OPTIONS",
        )
        assert status == 204
        assert headers["access-control-allow-methods"] == "GET, HEAD, OPTIONS"
        assert headers["access-control-allow-headers"] == "x-custom"


def test_no_cors_headers_by_default(server):
    assert "access-control-allow-origin" not in server.get("/data.json")[1]


def read_events(sock: socket.socket, want: bytes, deadline_s: float) -> bytes:
    """Read the SSE stream until *want* appears (or fail at the deadline)."""
    received = b""
    end = time.monotonic() + deadline_s
    while want not in received:
        remaining = end - time.monotonic()
        assert remaining > 0, f"no {want!r} within {deadline_s}s: {received!r}"
        sock.settimeout(remaining)
        chunk = sock.recv(4096)
        assert chunk, f"stream closed: {received!r}"
        received += chunk
    return received


def test_live_reload_sends_an_event_after_a_file_write(tmp_path):
    (tmp_path / "index.html").write_text("<html><body>v1</body></html>")
    with StaticServerThread(tmp_path, StaticOptions(live_reload=True)) as live:
        status, headers, body = live.get("/index.html")
        assert status == 200
        assert LIVE_RELOAD_PATH.encode() in body
        assert body.index(b"<script>") < body.index(b"</body>")
        assert int(headers["content-length"]) == len(body)
        with socket.create_connection(("127.0.0.1", live.port), timeout=5) as sock:
            sock.sendall(f"GET {LIVE_RELOAD_PATH} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode())
            head = read_events(sock, b": connected\n\n", 5)
            assert b"content-type: text/event-stream" in head
            (tmp_path / "style.css").write_text("h1{}")
            events = read_events(sock, b'"changed": "style.css"}\n\n', 10)
            assert b"event: change\ndata: " in events


# -- the command --------------------------------------------------------------------


def test_cli_serves_and_stops_cleanly_on_sigterm(site):
    process = subprocess.Popen(
        [sys.executable, "-m", "portside.cli._serve", str(site), "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        started = json.loads(line)
        assert started["kind"] == "serve-started"
        assert started["listen"]["ip"] == "127.0.0.1"
        port = started["listen"]["port"]
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        connection.request("GET", "/docs/a.txt")
        assert connection.getresponse().read() == b"0123456789abcdefghij"
        connection.close()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)


def test_cli_bad_directory_is_a_usage_error(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "portside.cli._serve", str(tmp_path / "missing")],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 2
    assert "is not a directory" in done.stderr


def test_listen_parsing():
    from portside.cli._serve import _listen_endpoint
    from portside.errors import UsageError

    assert _listen_endpoint(None) == Endpoint(ip="127.0.0.1", port=0)
    assert _listen_endpoint("8080") == Endpoint(ip="127.0.0.1", port=8080)
    assert _listen_endpoint("localhost:8080") == Endpoint(ip="127.0.0.1", port=8080)
    assert _listen_endpoint("[::1]:9") == Endpoint(ip="::1", port=9)
    with pytest.raises(UsageError):
        _listen_endpoint("example.com:80")


def test_cli_address_in_use_is_a_usage_error(site):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        port = holder.getsockname()[1]
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "portside.cli._serve",
                str(site),
                "--listen",
                f"127.0.0.1:{port}",
            ],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    assert done.returncode == 2
    assert "cannot listen on 127.0.0.1" in done.stderr
    assert "Traceback" not in done.stderr
