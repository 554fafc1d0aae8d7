"""Small files in the user's cache directory (``$XDG_CACHE_HOME/portside``, else
``~/.cache/portside``): what portside works out once and reuses in every later run.

A cache file is read only when it and its directory belong to the user running portside
and nobody else may write them (its contents steer what runs: offsets of kernel
structures, compiled code). It is written whole (a temporary file, then renamed), only
into such a directory, which is made ``0700`` when missing. Every failure is silent: a
cache that cannot be read or written is worked out again. Imports only ``os``.
"""

from __future__ import annotations

import os

_LIMIT = 1 << 20  # a cache file is never larger; a larger one is not read


def cache_directory() -> str | None:
    """The directory (which may not exist yet), or None without an absolute home."""
    base = os.environ.get("XDG_CACHE_HOME", "")
    if not os.path.isabs(base):  # noqa: PTH117 -- the XDG spec: a relative path is ignored
        home = os.environ.get("HOME", "")
        if not os.path.isabs(home):  # noqa: PTH117
            return None
        base = f"{home}/.cache"
    return f"{base}/portside"


def _trusted(status: os.stat_result) -> bool:
    return status.st_uid == os.geteuid() and not status.st_mode & 0o022


def read(name: str) -> bytes | None:
    """The contents of cache file ``name``, or None when it is missing, too large, or
    not the user's own."""
    directory = cache_directory()
    if directory is None:
        return None
    try:
        fd = os.open(f"{directory}/{name}", os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        status = os.fstat(fd)
        if not _trusted(status) or status.st_size > _LIMIT:
            return None
        if not _trusted(os.stat(directory)):  # noqa: PTH116
            return None
        return os.read(fd, _LIMIT)
    except OSError:
        return None
    finally:
        os.close(fd)


def writable() -> bool:
    """Whether cache files can be written (the directory made if need be)."""
    directory = cache_directory()
    if directory is None:
        return False
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)  # noqa: PTH103
        return _trusted(os.stat(directory))  # noqa: PTH116
    except OSError:
        return False


def write(name: str, data: bytes) -> bool:
    """Replace cache file ``name`` by ``data``, whole; whether it was written."""
    if not writable():
        return False
    path = f"{cache_directory()}/{name}"
    temporary = f"{path}.{os.getpid()}.tmp"
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        finally:
            os.close(fd)
        os.replace(temporary, path)  # noqa: PTH105
    except OSError:
        import contextlib

        with contextlib.suppress(OSError):
            os.unlink(temporary)  # noqa: PTH108
        return False
    return True
