"""URL path -> file: the pure rules, a property (never outside the root), and the
traversal corpus (tests/data/traversal.txt) sent raw to a real server on loopback."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from portside.net import static
from portside.net.serve import StaticOptions
from tests.integration._servers import StaticServerThread

CORPUS = Path(__file__).resolve().parents[1] / "data" / "traversal.txt"
MARKER = b"PORTSIDE-SECRET-7f3a9c"


def corpus_lines() -> list[str]:
    return [
        line
        for line in CORPUS.read_text(encoding="utf-8").splitlines()
        if line and not line.startswith("#")
    ]


@pytest.fixture(scope="module")
def layout(tmp_path_factory):
    base = tmp_path_factory.mktemp("traversal")
    outside = base / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_bytes(MARKER + b"\n")
    root = base / "root"
    (root / "sub").mkdir(parents=True)
    (root / "public.txt").write_text("public\n")
    (root / "sub" / "public.txt").write_text("sub public\n")
    (root / "sub" / ".hidden").write_text("hidden\n")
    (root / ".env").write_bytes(MARKER + b" env\n")
    (root / ".git").mkdir()
    (root / ".git" / "config").write_bytes(MARKER + b" git\n")
    (root / "link_out").symlink_to("../outside/secret.txt")
    (root / "dir_out").symlink_to("../outside")
    (root / "abs_out").symlink_to(outside / "secret.txt")
    (root / "sub" / "link_up").symlink_to("../..")
    (root / "link_in").symlink_to("public.txt")
    return root


# -- pure rules ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("/", ()),
        ("/a/b.txt", ("a", "b.txt")),
        ("//a///b/", ("a", "b")),
        ("/a%20b/c%2Bd", ("a b", "c+d")),
        ("/caf%C3%A9", ("café",)),
        ("/100%25.txt", ("100%.txt",)),
        ("/.well-known/x", (".well-known", "x")),
        ("/a..b", ("a..b",)),
    ],
)
def test_segments_decode_once(raw, expected):
    assert static.url_path_segments(raw) == expected


@pytest.mark.parametrize(
    "raw",
    [
        "relative",
        "/..",
        "/a/../b",
        "/%2e%2e/x",
        "/a%2fb",
        "/a%5cb",
        "/a\\b",
        "/a%00",
        "/a%0a",
        "/%c0%ae",
        "/%zz",
        "/%",
        "/.env",
        "/.",
    ],
)
def test_doubtful_segments_refuse_the_path(raw):
    assert isinstance(static.url_path_segments(raw), static.Refused)


def test_dotfiles_are_served_only_when_allowed():
    assert static.url_path_segments("/.env", dotfiles=True) == (".env",)


def test_resolution_finds_files_and_directories(layout):
    root = os.path.realpath(layout)
    found = static.resolve_static_path(root, "/sub/public.txt")
    assert isinstance(found, static.Found)
    assert not found.is_dir
    assert found.path == f"{root}/sub/public.txt"
    assert isinstance(static.resolve_static_path(root, "/sub/"), static.Found)
    assert isinstance(static.resolve_static_path(root, "/nope"), static.NotFound)
    assert isinstance(static.resolve_static_path(root, "/public.txt/x"), static.NotFound)


def test_symlinks_inside_are_followed_outside_refused(layout):
    root = os.path.realpath(layout)
    inside = static.resolve_static_path(root, "/link_in")
    assert isinstance(inside, static.Found)
    assert inside.path == f"{root}/public.txt"
    for raw in ("/link_out", "/dir_out/secret.txt", "/abs_out", "/sub/link_up/outside"):
        assert isinstance(static.resolve_static_path(root, raw), static.Refused), raw
    followed = static.resolve_static_path(root, "/link_out", follow_symlinks=True)
    assert isinstance(followed, static.Found)


def test_special_files_are_refused(tmp_path):
    os.mkfifo(tmp_path / "fifo")
    root = os.path.realpath(tmp_path)
    assert isinstance(static.resolve_static_path(root, "/fifo"), static.Refused)


SEGMENT = st.one_of(
    st.sampled_from(
        [
            "..",
            ".",
            "%2e%2e",
            "%2E.",
            "%252e%252e",
            "%2f",
            "%5c",
            "\\",
            "%00",
            "%c0%ae",
            "sub",
            "public.txt",
            "link_out",
            "dir_out",
            "abs_out",
            "link_up",
            "link_in",
            "outside",
            "secret.txt",
            ".env",
            "",
        ]
    ),
    st.text(alphabet="abc.%2fe5C/\\", max_size=8),
)


@settings(max_examples=400, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(segments=st.lists(SEGMENT, max_size=8), trailing=st.booleans())
def test_resolution_never_leaves_the_root(layout, segments, trailing):
    root = os.path.realpath(layout)
    raw = "/" + "/".join(segments) + ("/" if trailing else "")
    found = static.resolve_static_path(root, raw)
    if isinstance(found, static.Found):
        real = os.path.realpath(found.path)
        assert real == root or real.startswith(root + "/")
        if not found.is_dir:
            assert MARKER not in Path(found.path).read_bytes()


# -- the corpus against a real server -----------------------------------------------


def exchange(port: int, request: bytes, *, deadline_s: float = 5.0) -> bytes:
    """Send *request*; read until the server closes (it must, within the deadline)."""
    received = bytearray()
    with socket.create_connection(("127.0.0.1", port), timeout=deadline_s) as sock:
        sock.sendall(request)
        end = time.monotonic() + deadline_s
        while time.monotonic() < end:
            data = sock.recv(65536)
            if not data:
                return bytes(received)
            received += data
    raise AssertionError(f"the server did not close within {deadline_s}s: {bytes(received)!r}")


@pytest.fixture(scope="module")
def server(layout):
    with StaticServerThread(layout, StaticOptions()) as running:
        yield running


def test_public_files_are_served(server):
    reply = exchange(
        server.port, b"GET /public.txt HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    assert reply.startswith(b"HTTP/1.1 200 ")
    assert reply.endswith(b"public\n")


@pytest.mark.parametrize("target", corpus_lines())
def test_traversal_corpus_is_404_and_leaks_nothing(server, target):
    request = (
        b"GET " + target.encode("latin-1") + b" HTTP/1.1\r\nHost: localhost\r\n"
        b"Connection: close\r\n\r\n"
    )
    reply = exchange(server.port, request)
    assert reply.startswith(b"HTTP/1.1 404 "), reply[:200]
    assert MARKER not in reply


def test_the_corpus_is_not_trivial():
    lines = corpus_lines()
    assert len(lines) >= 60
    assert any("%252e" in line for line in lines)
    assert any("\\" in line for line in lines)
    assert any("%00" in line for line in lines)
