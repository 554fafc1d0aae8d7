"""The port registry: a persistent name -> port map, and leases that tie a port to a
running process. One SQLite file under the user's state directory.

Theory of operation:

* **The file.** ``$PORTSIDE_HOME/registry.sqlite3``, else platformdirs' user state
  directory (``~/.local/state/portside`` on Linux). SQLite in WAL mode, so readers never
  wait for the writer; ``synchronous=NORMAL``, which in WAL mode keeps the database
  consistent across a crash (a crash may lose the last commits, never corrupt).
* **Identity.** The file carries ``PRAGMA application_id`` = :data:`APPLICATION_ID` and
  its schema version in ``PRAGMA user_version``. A file that is not SQLite, or is
  another program's database, or comes from a newer portside, is refused with an
  error that names it; portside never deletes, truncates or rewrites such a file.
  A damaged file (SQLite reports it malformed) is reported the same way.
* **Writes.** Every write runs in one ``BEGIN IMMEDIATE`` transaction: the write lock is
  taken at the start, so the read-decide-write of a reservation cannot interleave with
  another process's. Waiting for the lock is bounded by :data:`BUSY_TIMEOUT`.
* **Stable ports.** A new reservation starts at a port derived from
  ``sha256(scope, name)`` spread over the usable range (:func:`portside.pick.hashed_start`)
  and probes upwards past ports that the pick policy rules out, that are reserved or
  leased, or that cannot be bound now. The same name in the same scope therefore gets
  the same port on another day or machine, unless that port is taken there.
* **Scopes.** A reservation belongs to a project (the root of the git worktree the
  command runs in, so two worktrees of one repository are two projects) or to
  ``global``. Ports are unique across all scopes: the machine has one port space.
* **Leases.** A lease binds a port to a process, identified by pid *and* start time
  (clock ticks since boot on Linux), so a recycled pid does not keep a lease alive.
  Leases whose process is gone are reclaimed at the start of every write.
* **Advice, not law.** A reservation does not hold the port; binding is the truth. Every
  call that hands out a port checks that it can be bound right now.
* **Routes.** ``portside run`` publishes ``NAME.localhost -> backend`` in the ``routes``
  table, owned like a lease by a process (pid + start time); routes of dead owners are
  reclaimed with the leases. A running proxy notices changes cheaply through
  ``PRAGMA data_version`` (:meth:`Registry.data_version`) and reads :meth:`Registry.routes`.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Iterator, Sequence

from portside._lean_dataclasses import dataclasses, methods_compiled_on_first_use
from portside.errors import BackendError, PortsideError, UsageError
from portside.pick import (
    HOME_ENV,
    MAX_ATTEMPTS,
    REGISTRY_APPLICATION_ID,
    NoFreePortError,
    PickPolicy,
    bind_check,
    hashed_start,
    ipv6_loopback_available,
    make_policy,
    registry_file,
    rule_out,
    walk,
)
from portside.ports import KernelPortSettings

TYPE_CHECKING = False
if TYPE_CHECKING:
    # Imported where used: ``pick`` reads this module on its fast path, and sqlite3,
    # pathlib and platformdirs would cost it ~30 ms of imports.
    import sqlite3
    from pathlib import Path
    from typing import Any

__all__ = [
    "APPLICATION_ID",
    "GLOBAL_SCOPE",
    "HOME_ENV",
    "ForeignFileError",
    "Lease",
    "LeaseConflictError",
    "ProxyRecord",
    "Registry",
    "RegistryBusyError",
    "RegistryDamagedError",
    "RegistryError",
    "RegistryVersionError",
    "Reservation",
    "ReservationConflictError",
    "ReserveResult",
    "RouteConflictError",
    "RouteRecord",
    "default_registry_ports",
    "process_start_token",
    "project_scope",
    "registry_file",
    "registry_path",
]

GLOBAL_SCOPE = "global"
#: ``PRAGMA application_id``: "PSRG" (portside registry) in ASCII.
APPLICATION_ID = REGISTRY_APPLICATION_ID
#: Seconds to wait for another process's write transaction.
BUSY_TIMEOUT = 30.0
_SQLITE_MAGIC = b"SQLite format 3\x00"
#: What a name may be (compiled where used: `pick` imports this module, and not re).
_NAME = r"^[a-z0-9](?:[a-z0-9_.-]{0,62})$"

#: Schema migrations: entry i takes user_version i to i + 1. Append only, never edit.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE reservations (
        scope   TEXT    NOT NULL,
        name    TEXT    NOT NULL,
        port    INTEGER NOT NULL UNIQUE CHECK (port BETWEEN 1 AND 65535),
        created REAL    NOT NULL,
        PRIMARY KEY (scope, name)
    );
    CREATE TABLE leases (
        port        INTEGER PRIMARY KEY CHECK (port BETWEEN 1 AND 65535),
        pid         INTEGER NOT NULL,
        start_token TEXT    NOT NULL,
        acquired    REAL    NOT NULL
    );
    """,
    """
    CREATE TABLE routes (
        host         TEXT    PRIMARY KEY,
        name         TEXT    NOT NULL,
        scope        TEXT    NOT NULL,
        backend_host TEXT    NOT NULL,
        backend_port INTEGER NOT NULL CHECK (backend_port BETWEEN 1 AND 65535),
        pid          INTEGER NOT NULL,
        start_token  TEXT    NOT NULL,
        created      REAL    NOT NULL
    );
    CREATE TABLE proxies (
        scheme      TEXT    NOT NULL,
        ip          TEXT    NOT NULL,
        port        INTEGER NOT NULL CHECK (port BETWEEN 1 AND 65535),
        pid         INTEGER NOT NULL,
        start_token TEXT    NOT NULL,
        started     REAL    NOT NULL,
        PRIMARY KEY (ip, port)
    );
    """,
)
#: Route host names are ``NAME`` + this suffix.
ROUTE_SUFFIX = ".localhost"


# --------------------------------------------------------------------------- errors


class RegistryError(BackendError):
    """The registry file cannot be used. ``path`` is the file."""

    def __init__(self, path: Path | str, message: str) -> None:
        super().__init__(message)
        self.path = path


class RegistryDamagedError(RegistryError):
    """The registry file is damaged; it is left as it is for the user to inspect."""

    def __init__(self, path: Path | str, detail: str) -> None:
        super().__init__(
            path,
            f"the registry {path} is damaged ({detail}); it was left untouched: move it aside"
            f" (or point {HOME_ENV} elsewhere) and portside starts a new one",
        )


class ForeignFileError(RegistryError):
    """The registry path holds a file that portside did not write."""

    def __init__(self, path: Path | str, what: str) -> None:
        super().__init__(
            path,
            f"{path} is {what}, not a portside registry; it was left untouched: move it"
            f" or set {HOME_ENV} to another directory",
        )


class RegistryVersionError(RegistryError):
    """The registry was written by a newer portside (a schema this one does not know)."""


class RegistryBusyError(RegistryError):
    """Another process held the registry's write lock for longer than BUSY_TIMEOUT."""


class ReservationConflictError(UsageError):
    """The name or port asked for is already reserved otherwise."""


class LeaseConflictError(PortsideError):
    """The port is leased by another live process."""


class RouteConflictError(PortsideError):
    """The route's host is published by another live process."""


# --------------------------------------------------------------------------- records


with methods_compiled_on_first_use():

    @dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
    class Lease:
        """A port held by a running process (pid + start time, so pid reuse cannot fool it)."""

        port: int
        pid: int
        start_token: str
        acquired: float

    @dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
    class Reservation:
        """A name's port in a scope (``"global"`` or a project directory)."""

        name: str
        scope: str
        port: int
        created: float
        lease: Lease | None = None

    @dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
    class RouteRecord:
        """``host`` (``NAME.localhost``) is served by ``backend_host:backend_port`` while the
        owner process (pid + start time) runs."""

        host: str
        name: str
        scope: str
        backend_host: str
        backend_port: int
        pid: int
        start_token: str
        created: float

    @dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
    class ProxyRecord:
        """A running ``portside proxy`` that follows the routes: where it listens."""

        scheme: str
        ip: str
        port: int
        pid: int
        start_token: str
        started: float

    @dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
    class ReserveResult:
        """The answer of ``reserve``: the reservation, whether it is new, and whether its port
        can be bound right now (an existing reservation's app may well be running on it)."""

        reservation: Reservation
        created: bool
        bindable: bool
        warnings: tuple[str, ...] = ()


# --------------------------------------------------------------------------- helpers


def registry_path() -> Path:
    """:func:`registry_file` as a Path."""
    from pathlib import Path

    return Path(registry_file())


def project_scope(start: Path | None = None) -> str:
    """The project a command belongs to: the nearest directory holding ``.git`` (a
    directory in a main worktree, a file in a linked worktree), else the directory
    itself. Absolute and resolved."""
    from pathlib import Path

    here = (start or Path.cwd()).resolve()
    for candidate in (here, *here.parents):
        if (candidate / ".git").exists():
            return str(candidate)
    return str(here)


def normalise_name(name: str) -> str:
    """Names are case-insensitive DNS-label-like words (they become ``NAME.localhost``)."""
    folded = name.strip().lower()
    import re

    if not re.match(_NAME, folded):
        raise UsageError(
            f"name {name!r}: use 1-63 letters, digits, '-', '_' or '.', starting with a letter or digit"
        )
    return folded


def process_start_token(pid: int) -> str | None:
    """A token that names one process for its whole life: pid + start time. None when
    the process is gone (or a zombie)."""
    if pid <= 0:
        return None
    if sys.platform == "linux":
        from portside.models import ProcessState
        from portside.processes import parse_stat

        try:
            with open(f"/proc/{pid}/stat", "rb") as handle:
                text = handle.read().decode("utf-8", "replace")
        except OSError:
            return None
        _, state, _, ticks = parse_stat(text)
        if state in (ProcessState.ZOMBIE, ProcessState.DEAD):
            return None
        return f"ticks:{ticks}"
    else:
        import psutil

        try:
            process = psutil.Process(pid)
            if process.status() == psutil.STATUS_ZOMBIE:
                return None
            return f"created:{process.create_time():.6f}"
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            return None


def _looks_like_sqlite(path: Path | str) -> bool:
    try:
        with open(path, "rb") as handle:
            return handle.read(len(_SQLITE_MAGIC)) == _SQLITE_MAGIC
    except OSError:
        return False


def _damage_error(path: Path | str, exc: sqlite3.DatabaseError) -> RegistryError:
    import sqlite3

    if isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc):
        return RegistryBusyError(
            path, f"the registry {path} stayed locked by another process for {BUSY_TIMEOUT:.0f} s"
        )
    if "not a database" in str(exc) and not _looks_like_sqlite(path):
        return ForeignFileError(path, "not an SQLite database")
    return RegistryDamagedError(path, str(exc))


# --------------------------------------------------------------------------- registry


class Registry:
    """The registry file, open. Use :meth:`open`; close it (or use ``with``).

    Resource handling: one SQLite connection, closed by :meth:`close`. Error handling:
    every SQLite error is raised as a :class:`RegistryError` naming the file.
    """

    def __init__(self, path: Path | str, connection: sqlite3.Connection) -> None:
        self.path = path
        self._db = connection
        self._kernel: KernelPortSettings | None = None
        self._ipv6: bool | None = None

    # ---------------------------------------------------------------- opening

    @classmethod
    def open(
        cls,
        path: Path | str | None = None,
        *,
        migrations: Sequence[str] = MIGRATIONS,
    ) -> Registry:
        """Open (creating if absent) the registry at ``path`` (default :func:`registry_path`),
        check that it is ours and bring its schema up to date.

        Raises:
            ForeignFileError: the file is not SQLite, or another program's database.
            RegistryDamagedError: SQLite reports the file malformed.
            RegistryVersionError: a newer portside wrote it.
            RegistryBusyError: another process kept the write lock too long.
        """
        import sqlite3

        path = path or registry_path()
        # os.path, not Path methods: `pick` opens the registry by its text path, without
        # importing pathlib.
        if os.path.isdir(path):  # noqa: PTH112
            raise ForeignFileError(path, "a directory")
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)  # noqa: PTH103, PTH120
        try:
            connection = sqlite3.connect(
                str(path), timeout=BUSY_TIMEOUT, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as exc:
            raise RegistryError(path, f"cannot open the registry {path}: {exc}") from exc
        registry = cls(path, connection)
        try:
            registry._prepare(migrations)
        except BaseException:
            connection.close()
            raise
        return registry

    def _prepare(self, migrations: Sequence[str]) -> None:
        import sqlite3

        db = self._db
        try:
            db.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT * 1000)}")
            with self._read():
                # One snapshot: read separately, another process's first migration
                # could commit between two reads and look like a foreign database.
                version = self._check_identity(len(migrations))
            if version < len(migrations):
                with self._write():
                    self._migrate(migrations)
            self._ensure_wal()
            db.execute("PRAGMA synchronous = NORMAL")
        except sqlite3.DatabaseError as exc:
            raise _damage_error(self.path, exc) from exc

    def _ensure_wal(self) -> None:
        """Switch the file to WAL (a lasting property of the file, set once).

        The switch needs an exclusive lock, and SQLite answers SQLITE_BUSY at once, without
        the busy handler, while other processes hold the file (eight opening a new
        registry together): retry until another process has switched it or we can.
        """
        import sqlite3

        deadline = time.monotonic() + BUSY_TIMEOUT
        while True:
            try:
                if self._db.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                    self._db.execute("PRAGMA journal_mode = WAL")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
            time.sleep(0.002)  # another process holds the lock for a few microseconds

    def _check_identity(self, known_version: int) -> int:
        """Refuse a file that is not ours (run inside a transaction); its schema version."""
        db = self._db
        tables = db.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
        app_id = db.execute("PRAGMA application_id").fetchone()[0]
        version: int = db.execute("PRAGMA user_version").fetchone()[0]
        if app_id == 0:
            if tables or version:
                raise ForeignFileError(self.path, "another program's SQLite database")
        elif app_id != APPLICATION_ID:
            raise ForeignFileError(
                self.path, f"another program's SQLite database (application_id {app_id:#x})"
            )
        if version > known_version:
            raise RegistryVersionError(
                self.path,
                f"the registry {self.path} has schema version {version}, newer than this"
                f" portside knows ({known_version}); upgrade portside",
            )
        return version

    def _migrate(self, migrations: Sequence[str]) -> None:
        """Inside the write transaction: check again (another process may have migrated
        while we waited for the lock), then apply what is missing."""
        version = self._check_identity(len(migrations))
        for script in migrations[version:]:
            for statement in _statements(script):
                self._db.execute(statement)
        self._db.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        self._db.execute(f"PRAGMA user_version = {len(migrations)}")

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ---------------------------------------------------------------- plumbing

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One ``BEGIN IMMEDIATE`` transaction; committed on success, rolled back on error."""
        import sqlite3

        db = self._db
        try:
            db.execute("BEGIN IMMEDIATE")
        except sqlite3.DatabaseError as exc:
            raise _damage_error(self.path, exc) from exc
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        try:
            db.execute("COMMIT")
        except sqlite3.DatabaseError as exc:
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
            raise _damage_error(self.path, exc) from exc

    @contextlib.contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        """A read transaction: one consistent snapshot for several statements."""
        import sqlite3

        db = self._db
        try:
            db.execute("BEGIN")
            try:
                yield db
            finally:
                db.execute("COMMIT")
        except sqlite3.DatabaseError as exc:
            raise _damage_error(self.path, exc) from exc

    def _policy(self, *, whole_range: bool = False) -> PickPolicy:
        if self._kernel is None:
            from portside.kernel import port_settings

            self._kernel = port_settings()
        return make_policy(self._kernel, port_range=(1, 65535) if whole_range else None)

    def _ipv6_available(self) -> bool:
        if self._ipv6 is None:
            self._ipv6 = ipv6_loopback_available()
        return self._ipv6

    def _bindable(self, port: int) -> bool:
        result = bind_check(port, ipv6=self._ipv6_available())
        result.close()
        return result.rejection is None

    @staticmethod
    def _port_taken(db: sqlite3.Connection, port: int) -> bool:
        row = db.execute(
            "SELECT EXISTS(SELECT 1 FROM reservations WHERE port = ?)"
            " OR EXISTS(SELECT 1 FROM leases WHERE port = ?)",
            (port, port),
        ).fetchone()
        return bool(row[0])

    def _reclaim(self, db: sqlite3.Connection) -> list[Lease]:
        stale = [
            lease
            for lease in (_lease(row) for row in db.execute("SELECT * FROM leases"))
            if process_start_token(lease.pid) != lease.start_token
        ]
        for lease in stale:
            db.execute("DELETE FROM leases WHERE port = ?", (lease.port,))
        for route in map(_route, db.execute("SELECT * FROM routes").fetchall()):
            if not _owner_alive(route):
                db.execute("DELETE FROM routes WHERE host = ?", (route.host,))
        for proxy in map(_proxy, db.execute("SELECT * FROM proxies").fetchall()):
            if process_start_token(proxy.pid) != proxy.start_token:
                db.execute("DELETE FROM proxies WHERE ip = ? AND port = ?", (proxy.ip, proxy.port))
        return stale

    # ---------------------------------------------------------------- reservations

    def reserve(self, name: str, *, scope: str, port: int | None = None) -> ReserveResult:
        """The port of ``name`` in ``scope``: the existing one, ``port`` if given, else a
        new stable one (see the module docstring).

        Raises:
            UsageError: a malformed name or port.
            ReservationConflictError: ``name`` has another port, or ``port`` is another
                name's or leased.
            NoFreePortError: no usable port left in the range.
        """
        import sqlite3

        name = normalise_name(name)
        if port is not None and not 1 <= port <= 65535:
            raise UsageError(f"port {port} is out of range; ports are 1-65535")
        try:
            with self._write() as db:
                self._reclaim(db)
                row = db.execute(
                    "SELECT * FROM reservations WHERE scope = ? AND name = ?", (scope, name)
                ).fetchone()
                if row is not None:
                    existing = _reservation(row)
                    if port is not None and port != existing.port:
                        raise ReservationConflictError(
                            f"{name!r} already has port {existing.port} in {scope};"
                            f" `portside release {name}` first to move it to {port}"
                        )
                    created = False
                    chosen = existing.port
                elif port is not None:
                    self._check_free_in_registry(db, port)
                    created, chosen = True, port
                else:
                    created, chosen = True, self._choose(db, name, scope)
                if created:
                    db.execute(
                        "INSERT INTO reservations (scope, name, port, created) VALUES (?, ?, ?, ?)",
                        (scope, name, chosen, time.time()),
                    )
                reservation = self._get(db, name, scope)
        except sqlite3.DatabaseError as exc:
            raise _damage_error(self.path, exc) from exc
        assert reservation is not None  # noqa: S101 -- inserted or found in this transaction
        bindable = (created and port is None) or self._bindable(chosen)
        return ReserveResult(
            reservation=reservation,
            created=created,
            bindable=bindable,
            warnings=self._warnings(chosen, bindable=bindable, explicit=port is not None),
        )

    def _warnings(self, port: int, *, bindable: bool, explicit: bool) -> tuple[str, ...]:
        found: list[str] = []
        if explicit:
            reason = rule_out(port, self._policy(whole_range=True))
            if reason is not None:
                found.append(f"port {port} is {_REASON_TEXT.get(reason.value, reason.value)}")
        if not bindable:
            found.append(
                f"port {port} cannot be bound right now (`portside who {port}` shows what holds it)"
            )
        return tuple(found)

    def _check_free_in_registry(self, db: sqlite3.Connection, port: int) -> None:
        row = db.execute("SELECT scope, name FROM reservations WHERE port = ?", (port,)).fetchone()
        if row is not None:
            raise ReservationConflictError(
                f"port {port} is reserved for {row[1]!r} ({row[0]}); choose another port"
            )
        lease = db.execute("SELECT pid FROM leases WHERE port = ?", (port,)).fetchone()
        if lease is not None:
            raise ReservationConflictError(
                f"port {port} is leased by pid {lease[0]}; choose another port"
            )

    def _choose(self, db: sqlite3.Connection, name: str, scope: str) -> int:
        policy = self._policy()
        start = hashed_start(f"{scope}\0{name}", policy)
        for attempt, port in enumerate(walk(policy, start)):
            if attempt >= MAX_ATTEMPTS:
                break
            if rule_out(port, policy) is not None or self._port_taken(db, port):
                continue
            if self._bindable(port):
                return port
        low, high = policy.port_range
        raise NoFreePortError(
            f"no free port for {name!r} in {low}-{high} after {MAX_ATTEMPTS} candidates;"
            " release unused reservations (`portside reservations`)"
        )

    def release(self, name: str, *, scope: str) -> Reservation | None:
        """Forget ``name`` in ``scope`` (and any lease on its port); the reservation that
        was removed, or None when there was none."""
        name = normalise_name(name)
        with self._write() as db:
            found = self._get(db, name, scope)
            if found is None:
                return None
            db.execute("DELETE FROM reservations WHERE scope = ? AND name = ?", (scope, name))
            db.execute("DELETE FROM leases WHERE port = ?", (found.port,))
        return found

    def get(self, name: str, *, scope: str) -> Reservation | None:
        with self._read() as db:
            return self._get(db, normalise_name(name), scope)

    def _get(self, db: sqlite3.Connection, name: str, scope: str) -> Reservation | None:
        row = db.execute(
            "SELECT r.*, l.port AS l_port, l.pid, l.start_token, l.acquired"
            " FROM reservations r LEFT JOIN leases l ON l.port = r.port"
            " WHERE r.scope = ? AND r.name = ?",
            (scope, name),
        ).fetchone()
        return None if row is None else _reservation(row)

    def reservations(self, *, scope: str | None = None) -> list[Reservation]:
        """Every reservation (of ``scope`` if given), ordered by scope then name; leases of
        dead processes are not shown."""
        query = (
            "SELECT r.*, l.port AS l_port, l.pid, l.start_token, l.acquired"
            " FROM reservations r LEFT JOIN leases l ON l.port = r.port"
        )
        args: tuple[str, ...] = ()
        if scope is not None:
            query += " WHERE r.scope = ?"
            args = (scope,)
        with self._read() as db:
            rows = db.execute(query + " ORDER BY r.scope, r.name", args).fetchall()
        found = [_reservation(row) for row in rows]
        return [
            dataclasses.replace(r, lease=None) if r.lease and not _alive(r.lease) else r
            for r in found
        ]

    def taken_ports(self) -> frozenset[int]:
        """Ports that are reserved, or leased by a live process (read only)."""
        with self._read() as db:
            reserved = {row[0] for row in db.execute("SELECT port FROM reservations")}
            leased = [_lease(row) for row in db.execute("SELECT * FROM leases")]
        return frozenset(reserved | {lease.port for lease in leased if _alive(lease)})

    # ---------------------------------------------------------------- leases

    def lease(self, port: int, *, pid: int | None = None) -> Lease:
        """Tie ``port`` to the running process ``pid`` (default: this one) until it exits
        or :meth:`end_lease`. Renewing one's own lease is allowed.

        Raises:
            UsageError: the process does not exist.
            LeaseConflictError: another live process leases the port.
        """
        pid = os.getpid() if pid is None else pid
        token = process_start_token(pid)
        if token is None:
            raise UsageError(f"pid {pid} is not a running process")
        with self._write() as db:
            self._reclaim(db)
            row = db.execute("SELECT * FROM leases WHERE port = ?", (port,)).fetchone()
            if row is not None:
                current = _lease(row)
                if (current.pid, current.start_token) != (pid, token):
                    raise LeaseConflictError(
                        f"port {port} is leased by pid {current.pid}, which is still running"
                    )
            lease = Lease(port=port, pid=pid, start_token=token, acquired=time.time())
            db.execute(
                "INSERT OR REPLACE INTO leases (port, pid, start_token, acquired) VALUES (?, ?, ?, ?)",
                (lease.port, lease.pid, lease.start_token, lease.acquired),
            )
        return lease

    def end_lease(self, port: int, *, pid: int | None = None) -> bool:
        """Drop ``pid``'s lease on ``port``; whether there was one."""
        pid = os.getpid() if pid is None else pid
        with self._write() as db:
            cursor = db.execute("DELETE FROM leases WHERE port = ? AND pid = ?", (port, pid))
            return cursor.rowcount > 0

    def leases(self) -> list[Lease]:
        """Leases of live processes, by port."""
        with self._read() as db:
            rows = db.execute("SELECT * FROM leases ORDER BY port").fetchall()
        return [lease for lease in map(_lease, rows) if _alive(lease)]

    def reclaim(self) -> list[Lease]:
        """Delete the leases of processes that are gone; the leases removed."""
        with self._write() as db:
            return self._reclaim(db)

    # ---------------------------------------------------------------- routes

    def set_route(
        self,
        name: str,
        *,
        scope: str,
        backend_host: str,
        backend_port: int,
        pid: int | None = None,
    ) -> RouteRecord:
        """Publish ``NAME.localhost -> backend_host:backend_port``, owned by the running
        process ``pid`` (default: this one) until it exits or :meth:`remove_route`. The
        owner may change its own route (drift).

        Raises:
            UsageError: a malformed name or port, or ``pid`` is not running.
            RouteConflictError: another live process publishes that host.
        """
        name = normalise_name(name)
        if not 1 <= backend_port <= 65535:
            raise UsageError(f"port {backend_port} is out of range; ports are 1-65535")
        pid = os.getpid() if pid is None else pid
        token = process_start_token(pid)
        if token is None:
            raise UsageError(f"pid {pid} is not a running process")
        record = RouteRecord(
            host=name + ROUTE_SUFFIX,
            name=name,
            scope=scope,
            backend_host=backend_host,
            backend_port=backend_port,
            pid=pid,
            start_token=token,
            created=time.time(),
        )
        with self._write() as db:
            self._reclaim(db)
            row = db.execute("SELECT * FROM routes WHERE host = ?", (record.host,)).fetchone()
            if row is not None:
                current = _route(row)
                if (current.pid, current.start_token) != (pid, token):
                    raise RouteConflictError(_route_taken(current))
            db.execute(
                "INSERT OR REPLACE INTO routes (host, name, scope, backend_host, backend_port,"
                " pid, start_token, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                dataclasses.astuple(record),
            )
        return record

    def remove_route(self, name: str, *, pid: int | None = None) -> bool:
        """Withdraw ``NAME.localhost`` if ``pid`` (default: this process) owns it; whether
        it did."""
        host = normalise_name(name) + ROUTE_SUFFIX
        pid = os.getpid() if pid is None else pid
        with self._write() as db:
            cursor = db.execute("DELETE FROM routes WHERE host = ? AND pid = ?", (host, pid))
            return cursor.rowcount > 0

    def route(self, name: str) -> RouteRecord | None:
        """The live route of ``NAME.localhost``, if any (read only)."""
        host = normalise_name(name) + ROUTE_SUFFIX
        with self._read() as db:
            row = db.execute("SELECT * FROM routes WHERE host = ?", (host,)).fetchone()
        found = None if row is None else _route(row)
        return found if found is not None and _owner_alive(found) else None

    def routes(self) -> list[RouteRecord]:
        """Routes whose owner is alive, by host (read only: dead owners' rows are
        skipped here and deleted by the next write)."""
        with self._read() as db:
            rows = db.execute("SELECT * FROM routes ORDER BY host").fetchall()
        return [route for route in map(_route, rows) if _owner_alive(route)]

    def add_proxy(self, scheme: str, ip: str, port: int) -> ProxyRecord:
        """Announce that this process proxies the routes at ``scheme://ip:port`` (so
        ``portside run`` can print ``http://NAME.localhost:PORT/``) until it exits."""
        token = process_start_token(os.getpid())
        if token is None:  # pragma: no cover -- this process is running
            raise UsageError("this process has no start time")
        record = ProxyRecord(
            scheme=scheme, ip=ip, port=port, pid=os.getpid(), start_token=token, started=time.time()
        )
        with self._write() as db:
            self._reclaim(db)
            db.execute(
                "INSERT OR REPLACE INTO proxies (scheme, ip, port, pid, start_token, started)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                dataclasses.astuple(record),
            )
        return record

    def remove_proxies(self) -> int:
        """Withdraw this process's announcements; how many there were."""
        with self._write() as db:
            return db.execute("DELETE FROM proxies WHERE pid = ?", (os.getpid(),)).rowcount

    def proxies(self) -> list[ProxyRecord]:
        """Running proxies that follow the routes, oldest first (read only)."""
        with self._read() as db:
            rows = db.execute("SELECT * FROM proxies ORDER BY started").fetchall()
        return [
            proxy
            for proxy in map(_proxy, rows)
            if process_start_token(proxy.pid) == proxy.start_token
        ]

    def data_version(self) -> int:
        """SQLite's ``PRAGMA data_version``: changes whenever another connection commits,
        so a poller re-reads only after a change (one cheap call, no file read)."""
        import sqlite3

        try:
            version: int = self._db.execute("PRAGMA data_version").fetchone()[0]
        except sqlite3.DatabaseError as exc:
            raise _damage_error(self.path, exc) from exc
        return version

    def integrity_check(self) -> str:
        """SQLite's ``PRAGMA integrity_check``: ``"ok"`` or what is wrong."""
        import sqlite3

        try:
            rows = self._db.execute("PRAGMA integrity_check").fetchall()
        except sqlite3.DatabaseError as exc:
            raise _damage_error(self.path, exc) from exc
        return "; ".join(str(row[0]) for row in rows)


_REASON_TEXT = {
    "privileged": "privileged (binding needs root or CAP_NET_BIND_SERVICE)",
    "ephemeral": "inside the kernel's ephemeral range: an outgoing connection may take it",
    "kernel-reserved": "in net.ipv4.ip_local_reserved_ports",
    "browser-bad-port": "a browser bad port: browsers refuse it (ERR_UNSAFE_PORT)",
    "dev-default": "a common development default: likely to collide",
}


def _statements(script: str) -> list[str]:
    return [part.strip() for part in script.split(";") if part.strip()]


def _lease(row: Sequence[Any]) -> Lease:
    port, pid, token, acquired = row[:4]
    return Lease(port=int(port), pid=int(pid), start_token=str(token), acquired=float(acquired))


def _reservation(row: Sequence[Any]) -> Reservation:
    scope, name, port, created = row[:4]
    lease = None
    if len(row) > 4 and row[4] is not None:
        lease = _lease(row[4:8])
    return Reservation(
        name=str(name),
        scope=str(scope),
        port=int(port),
        created=float(created),
        lease=lease,
    )


def _route(row: Sequence[Any]) -> RouteRecord:
    host, name, scope, backend_host, backend_port, pid, token, created = row[:8]
    return RouteRecord(
        host=str(host),
        name=str(name),
        scope=str(scope),
        backend_host=str(backend_host),
        backend_port=int(backend_port),
        pid=int(pid),
        start_token=str(token),
        created=float(created),
    )


def _proxy(row: Sequence[Any]) -> ProxyRecord:
    scheme, ip, port, pid, token, started = row[:6]
    return ProxyRecord(
        scheme=str(scheme),
        ip=str(ip),
        port=int(port),
        pid=int(pid),
        start_token=str(token),
        started=float(started),
    )


def _owner_alive(route: RouteRecord) -> bool:
    return process_start_token(route.pid) == route.start_token


def _route_taken(route: RouteRecord) -> str:
    return (
        f"{route.host} is routed to {route.backend_host}:{route.backend_port} by pid"
        f" {route.pid} ({route.scope}), which is still running; stop it, or use another"
        " name (or --no-route)"
    )


def _alive(lease: Lease) -> bool:
    return process_start_token(lease.pid) == lease.start_token


def default_registry_ports() -> frozenset[int]:
    """Ports reserved or leased in the default registry; empty when it does not exist
    (looking never creates it)."""
    path = registry_file()
    try:
        if os.path.getsize(path) == 0:  # noqa: PTH202 -- see registry_file
            return frozenset()
    except OSError:
        return frozenset()  # no registry yet
    with Registry.open(path) as registry:
        return registry.taken_ports()
