"""Static files, decided without serving them: which file a URL names, its type, the
ranges asked for, validators and conditional requests, directory listings.

Everything here is pure (text and ``os.stat_result`` in, decisions out) except
:func:`resolve_static_path`, which looks at the filesystem with ``lstat``/``realpath``
(never ``open``) to decide whether a URL path names a file under the root.

The safety rule: a URL path maps to a file under *root*, or to nothing. Decoding is
done once, segment by segment, and a segment that is empty-after-decoding, ``.``,
``..``, or contains ``/``, ``\\``, NUL or another control character refuses the whole
path; so do invalid percent escapes and invalid UTF-8. Dotfiles are refused unless
allowed (``.well-known`` always is). A symbolic link is followed only if its target
stays under the root, unless *follow_symlinks*. Only regular files and directories are
ever found (no FIFOs, devices or sockets).
"""

from __future__ import annotations

import dataclasses
import html
import json
import os
import re
import stat
from collections.abc import Callable, Sequence
from email.utils import formatdate, parsedate_to_datetime
from typing import Final, NamedTuple
from urllib.parse import quote, unquote_to_bytes

__all__ = [
    "UNSATISFIABLE",
    "ByteRange",
    "Found",
    "Listing",
    "ListingEntry",
    "NotFound",
    "RangeResult",
    "Refused",
    "Unsatisfiable",
    "content_type",
    "etag_for",
    "evaluate_preconditions",
    "http_date",
    "if_range_allows",
    "listing_html",
    "listing_json",
    "multipart_layout",
    "parse_range",
    "resolve_static_path",
    "url_path_segments",
]


# -- URL path -> file ----------------------------------------------------------------


class Found(NamedTuple):
    """A regular file or a directory under the root; *path* is its real path.

    (A named tuple: one is made per request, and they are cheaper than a dataclass.)
    """

    path: str
    stat: os.stat_result
    is_dir: bool


@dataclasses.dataclass(frozen=True, slots=True)
class NotFound:
    """A well-formed path that names nothing (a SPA fallback may apply)."""


@dataclasses.dataclass(frozen=True, slots=True)
class Refused:
    """A path that may not be served, whatever exists (answered as 404)."""

    reason: str


_NOT_FOUND: Final = NotFound()
_PCT_ESCAPES: Final = re.compile(r"%(?![0-9A-Fa-f]{2})")
# Segments of unreserved and sub-delim characters that do not start with a dot.
_PLAIN_PATH: Final = re.compile(
    r"(?:/+[A-Za-z0-9_~!$&'()*+,;=:@\-][A-Za-z0-9_~!$&'()*+,;=:@.\-]*)*/*"
)
_FORBIDDEN_IN_SEGMENT: Final = re.compile(r"[\x00-\x1f\x7f/\\]")
ALWAYS_ALLOWED_DOTDIRS: Final = frozenset({".well-known"})


def url_path_segments(raw_path: str, *, dotfiles: bool = False) -> tuple[str, ...] | Refused:
    """Decoded segments of an origin-form path (``/a/b%20c/`` -> ``("a", "b c")``).

    Empty segments (``//``, a trailing ``/``) are skipped; anything doubtful refuses
    the whole path (see the module docstring).
    """
    if not raw_path.startswith("/"):
        return Refused("the path does not start with /")
    if _PLAIN_PATH.fullmatch(raw_path):  # the common case: nothing to decode or doubt
        return tuple([part for part in raw_path.split("/") if part])
    segments: list[str] = []
    for part in raw_path.split("/"):
        if not part:
            continue
        if "%" in part:
            if _PCT_ESCAPES.search(part):
                return Refused("invalid percent escape")
            try:
                segment = unquote_to_bytes(part).decode("utf-8")
            except UnicodeDecodeError:
                return Refused("not UTF-8 after decoding")
            if not segment:
                return Refused("empty segment")
        else:
            segment = part
        if segment in (".", "..") or _FORBIDDEN_IN_SEGMENT.search(segment):
            return Refused("dot segment, separator or control character")
        if segment[0] == "." and not dotfiles and segment not in ALWAYS_ALLOWED_DOTDIRS:
            return Refused("dotfile")
        segments.append(segment)
    return tuple(segments)


def _inside(root: str, real: str) -> bool:
    if root == "/":
        return real.startswith("/")
    return real == root or real.startswith(root + "/")


def resolve_static_path(
    root: str,
    raw_path: str,
    *,
    follow_symlinks: bool = False,
    dotfiles: bool = False,
    lstat: Callable[[str], os.stat_result] = os.lstat,
) -> Found | NotFound | Refused:
    """The file or directory *raw_path* (percent-encoded, no query) names under *root*.

    *root* must be a real path (``os.path.realpath``). One ``lstat`` per segment; a
    symbolic link costs a ``realpath`` and is refused when it leads out of *root*
    (unless *follow_symlinks*). Never opens anything.
    """
    segments = url_path_segments(raw_path, dotfiles=dotfiles)
    if isinstance(segments, Refused):
        return segments
    current = root
    if not segments:
        try:
            info = os.stat(root)  # noqa: PTH116 - per request: no Path objects on the hot path
        except OSError:
            return _NOT_FOUND
    last = len(segments) - 1
    for index, segment in enumerate(segments):
        candidate = f"{current}/{segment}" if current != "/" else f"/{segment}"
        try:
            info = lstat(candidate)
        except (OSError, ValueError):
            return _NOT_FOUND
        if stat.S_ISLNK(info.st_mode):
            real = os.path.realpath(candidate)
            if not follow_symlinks and not _inside(root, real):
                return Refused("symbolic link out of the root")
            try:
                info = os.stat(real)  # noqa: PTH116 - per request: no Path objects on the hot path
            except OSError:
                return _NOT_FOUND
            candidate = real
        if index < last and not stat.S_ISDIR(info.st_mode):
            return _NOT_FOUND
        current = candidate
    if stat.S_ISREG(info.st_mode):
        return Found(current, info, is_dir=False)
    if stat.S_ISDIR(info.st_mode):
        return Found(current, info, is_dir=True)
    return Refused("not a regular file or directory")


# -- content types -------------------------------------------------------------------

_TEXT: Final = "; charset=utf-8"
CONTENT_TYPES: Final[dict[str, str]] = {
    "html": "text/html" + _TEXT,
    "htm": "text/html" + _TEXT,
    "css": "text/css" + _TEXT,
    "js": "text/javascript" + _TEXT,  # RFC 9239
    "mjs": "text/javascript" + _TEXT,
    "cjs": "text/javascript" + _TEXT,
    "json": "application/json",
    "map": "application/json",
    "webmanifest": "application/manifest+json",
    "txt": "text/plain" + _TEXT,
    "md": "text/markdown" + _TEXT,
    "csv": "text/csv" + _TEXT,
    "xml": "application/xml",
    "yaml": "application/yaml",
    "yml": "application/yaml",
    "toml": "application/toml",
    "wasm": "application/wasm",
    "svg": "image/svg+xml",
    "png": "image/png",
    "jpg": "image/jpeg",
    "jpeg": "image/jpeg",
    "gif": "image/gif",
    "webp": "image/webp",
    "avif": "image/avif",
    "ico": "image/vnd.microsoft.icon",
    "bmp": "image/bmp",
    "woff": "font/woff",
    "woff2": "font/woff2",
    "ttf": "font/ttf",
    "otf": "font/otf",
    "mp4": "video/mp4",
    "webm": "video/webm",
    "ogv": "video/ogg",
    "mp3": "audio/mpeg",
    "wav": "audio/wav",
    "ogg": "audio/ogg",
    "flac": "audio/flac",
    "pdf": "application/pdf",
    "zip": "application/zip",
    "gz": "application/gzip",
    "tar": "application/x-tar",
    "br": "application/octet-stream",
    "bin": "application/octet-stream",
}
DEFAULT_CONTENT_TYPE: Final = "application/octet-stream"


def content_type(name: str) -> str:
    """The media type for a file name, by extension; octet-stream when unknown."""
    dot = name.rfind(".")
    if dot <= 0 or dot == len(name) - 1:
        return DEFAULT_CONTENT_TYPE
    return CONTENT_TYPES.get(name[dot + 1 :].lower(), DEFAULT_CONTENT_TYPE)


# -- validators and preconditions (RFC 9110 §8.8, §13) --------------------------------


def etag_for(info: os.stat_result) -> str:
    """A strong entity tag from modification time (ns) and size: ``"<mtime>-<size>"``."""
    return f'"{info.st_mtime_ns:x}-{info.st_size:x}"'


def http_date(timestamp: float) -> str:
    """IMF-fixdate (``Sun, 06 Nov 1994 08:49:37 GMT``)."""
    return formatdate(timestamp, usegmt=True)


def _parse_http_date(text: str) -> float | None:
    try:
        return parsedate_to_datetime(text).timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


_ETAG_ITEM: Final = re.compile(r'\s*(W/)?("[\x21\x23-\x7e\x80-\xff]*")\s*(?:,|$)')


def _etag_list(value: str) -> list[tuple[bool, str]] | None:
    """``W/"a", "b"`` -> [(True, '"a"'), (False, '"b"')]; None when malformed."""
    items: list[tuple[bool, str]] = []
    position = 0
    value = value.strip()
    while position < len(value):
        match = _ETAG_ITEM.match(value, position)
        if match is None:
            return None
        items.append((match.group(1) is not None, match.group(2)))
        position = match.end()
    return items


def _strip_weak(tag: str) -> tuple[bool, str]:
    return (True, tag[2:]) if tag.startswith("W/") else (False, tag)


def evaluate_preconditions(
    method: str,
    get_header: Callable[[str], str | None],
    *,
    etag: str,
    last_modified: float,
) -> int | None:
    """304, 412 or None (go on), in the order of RFC 9110 §13.2.2."""
    weak_current, opaque = _strip_weak(etag)
    if_match = get_header("if-match")
    if if_match is not None:
        if if_match.strip() != "*":
            tags = _etag_list(if_match) or []
            if weak_current or not any(not weak and tag == opaque for weak, tag in tags):
                return 412
    else:
        since = get_header("if-unmodified-since")
        if since is not None:
            when = _parse_http_date(since)
            if when is not None and int(last_modified) > when:
                return 412
    if_none_match = get_header("if-none-match")
    if if_none_match is not None:
        if if_none_match.strip() == "*":
            matched = True
        else:
            tags = _etag_list(if_none_match) or []
            matched = any(tag == opaque for _, tag in tags)  # weak comparison
        if matched:
            return 304 if method in ("GET", "HEAD") else 412
        return None
    if method in ("GET", "HEAD"):
        since = get_header("if-modified-since")
        if since is not None:
            when = _parse_http_date(since)
            if when is not None and int(last_modified) <= when:
                return 304
    return None


def if_range_allows(value: str | None, *, etag: str, last_modified: float) -> bool:
    """Whether a ``Range`` may be honoured given ``If-Range`` (absent: yes)."""
    if value is None:
        return True
    value = value.strip()
    if value.startswith(('"', "W/")):
        return not value.startswith("W/") and not etag.startswith("W/") and value == etag
    when = _parse_http_date(value)
    return when is not None and int(last_modified) == when


# -- ranges (RFC 9110 §14) -----------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class ByteRange:
    start: int
    end: int  # inclusive

    @property
    def length(self) -> int:
        return self.end - self.start + 1


class Unsatisfiable:
    """No range of the header overlaps the representation: answer 416."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "UNSATISFIABLE"


UNSATISFIABLE: Final = Unsatisfiable()
#: What :func:`parse_range` decides: ranges to send, 416, or None (send everything).
RangeResult = tuple[ByteRange, ...] | Unsatisfiable | None
MAX_RANGES: Final = 32
_RANGE_SPEC: Final = re.compile(r"\s*(?:(\d{1,19})-(\d{0,19})|-(\d{1,19}))\s*")


def parse_range(value: str, size: int, *, max_ranges: int = MAX_RANGES) -> RangeResult:
    """The satisfiable byte ranges of a ``Range`` header for a representation of *size*.

    None means "ignore the header and send everything": another unit, bad syntax, more
    than *max_ranges* ranges, or ranges that add up to more than the whole (a cheap
    amplification). ``UNSATISFIABLE`` means 416.
    """
    unit, sep, specs = value.partition("=")
    if not sep or unit.strip().lower() != "bytes":
        return None
    ranges: list[ByteRange] = []
    count = 0
    for spec in specs.split(","):
        if not spec.strip():
            continue  # empty list elements are allowed (RFC 9110 §5.6.1)
        count += 1
        if count > max_ranges:
            return None
        match = _RANGE_SPEC.fullmatch(spec)
        if match is None:
            return None
        first, last, suffix = match.groups()
        if suffix is not None:
            length = int(suffix)
            if length == 0 or size == 0:
                continue
            ranges.append(ByteRange(max(0, size - length), size - 1))
            continue
        start = int(first)
        if last:
            end = int(last)
            if end < start:
                return None
        else:
            end = size - 1
        if start >= size:
            continue
        ranges.append(ByteRange(start, min(end, size - 1)))
    if count == 0:
        return None
    if not ranges:
        return UNSATISFIABLE
    if len(ranges) > 1 and sum(r.length for r in ranges) > size:
        return None
    return tuple(ranges)


def multipart_layout(
    ranges: Sequence[ByteRange], size: int, media_type: str, boundary: str
) -> tuple[list[tuple[bytes, ByteRange]], bytes, int]:
    """The parts of a ``multipart/byteranges`` body: (preamble, range) pairs, the closing
    delimiter, and the total length, so that ``Content-Length`` is exact."""
    parts: list[tuple[bytes, ByteRange]] = []
    total = 0
    for index, byte_range in enumerate(ranges):
        preamble = (
            f"{'' if index == 0 else chr(13) + chr(10)}--{boundary}\r\n"
            f"content-type: {media_type}\r\n"
            f"content-range: bytes {byte_range.start}-{byte_range.end}/{size}\r\n\r\n"
        ).encode("latin-1")
        parts.append((preamble, byte_range))
        total += len(preamble) + byte_range.length
    closing = f"\r\n--{boundary}--\r\n".encode("latin-1")
    return parts, closing, total + len(closing)


# -- directory listings --------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ListingEntry:
    name: str
    is_dir: bool
    size: int | None  # None for directories
    modified: float  # seconds since the epoch


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Listing:
    path: str  # the decoded URL path of the directory, ending in "/"
    entries: tuple[ListingEntry, ...]


def sorted_entries(entries: Sequence[ListingEntry]) -> tuple[ListingEntry, ...]:
    """Directories first, then files; each by name (case-insensitive, then exact)."""
    return tuple(sorted(entries, key=lambda e: (not e.is_dir, e.name.lower(), e.name)))


def _size_text(size: int | None) -> str:
    if size is None:
        return "-"
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"


def listing_html(listing: Listing) -> str:
    """A small, escaped HTML page; every link is percent-encoded and relative."""
    title = html.escape(f"Index of {listing.path}")
    rows = []
    if listing.path != "/":
        rows.append('<tr><td><a href="../">../</a></td><td></td><td></td></tr>')
    for entry in listing.entries:
        label = entry.name + ("/" if entry.is_dir else "")
        href = "./" + quote(entry.name, safe="") + ("/" if entry.is_dir else "")
        rows.append(
            f'<tr><td><a href="{html.escape(href)}">{html.escape(label)}</a></td>'
            f"<td>{_size_text(entry.size)}</td><td>{http_date(entry.modified)}</td></tr>"
        )
    body = "\n".join(rows)
    return (
        "<!doctype html>\n<html><head><meta charset=utf-8>"
        f"<title>{title}</title>"
        "<style>body{font-family:system-ui,sans-serif;margin:2em}"
        "td{padding:.15em 1.5em .15em 0}</style></head>\n"
        f"<body><h1>{title}</h1>\n<table>\n{body}\n</table></body></html>\n"
    )


def listing_json(listing: Listing, *, schema: int = 1) -> str:
    """``{"schema", "kind": "listing", "path", "entries": [{name, type, size, modified}]}``."""
    document = {
        "schema": schema,
        "kind": "listing",
        "path": listing.path,
        "entries": [
            {
                "name": entry.name,
                "type": "directory" if entry.is_dir else "file",
                "size": entry.size,
                "modified": entry.modified,
            }
            for entry in listing.entries
        ],
    }
    return json.dumps(document, indent=2) + "\n"
