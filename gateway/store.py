"""The SQLite lease store: every mapping of the table, persisted so a restart or a crash
loses nothing that was committed.

One file in WAL mode with ``synchronous=FULL``: a commit returns only after the WAL is on
disk, so a lease acknowledged to a client survives ``kill -9`` and power loss. The service
writes one transaction per change batch: ``stage()`` (one or more calls) then ``commit()`` or
``rollback()``.

Times: the table keeps monotonic seconds, which mean nothing after a reboot, so the store keeps
wall-clock seconds. Every call that converts takes both clocks read at the same moment
(``now`` monotonic, ``wall`` from ``time.time()``): ``wall_t = wall + (mono_t - now)`` on the
way in and ``mono_t = now + (wall_t - wall)`` on the way out.

The store does no locking of its own: one caller at a time (from any thread).
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from ipaddress import ip_address, ip_network
from pathlib import Path
from typing import Any

from gateway.errors import StoreError
from gateway.model import (
    Change,
    ChangeKind,
    Endpoint,
    IPAddress,
    Kind,
    Mapping,
    MappingKey,
    Origin,
    Owner,
    Proto,
    RemoteFilter,
)

#: ``PRAGMA application_id`` of a portgate store ("PGat"): tells our file from other SQLite files.
APPLICATION_ID = int.from_bytes(b"PGat", "big")
#: SQLite's page cache per connection, in KiB (its default is 2,000).
CACHE_KIB = 256
#: ``PRAGMA user_version`` written by this code. Bump it with a migration in ``_MIGRATIONS``.
SCHEMA_VERSION = 1

MEMORY = ":memory:"

_SCHEMA = (
    """
    CREATE TABLE mappings (
        uid          INTEGER PRIMARY KEY,
        kind         TEXT    NOT NULL,
        proto        TEXT    NOT NULL,
        ext_address  TEXT    NOT NULL,
        ext_port     INTEGER NOT NULL,
        int_address  TEXT    NOT NULL,
        int_port     INTEGER NOT NULL,
        origin       TEXT    NOT NULL,
        client       TEXT    NOT NULL,
        nonce        BLOB,
        third_party  INTEGER NOT NULL,
        description  TEXT    NOT NULL,
        filters      TEXT    NOT NULL,
        enabled      INTEGER NOT NULL,
        lifetime     INTEGER,
        created_wall REAL    NOT NULL,
        expires_wall REAL
    )
    """,
    "CREATE INDEX mappings_expires ON mappings (expires_wall) WHERE expires_wall IS NOT NULL",
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
)

_COLUMNS = (
    "uid, kind, proto, ext_address, ext_port, int_address, int_port, origin, client, nonce,"
    " third_party, description, filters, enabled, lifetime, created_wall, expires_wall"
)
_UPSERT = (
    f"INSERT INTO mappings ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    " ON CONFLICT (uid) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in _COLUMNS.replace(" ", "").split(",")[1:])
)
_DELETE = "DELETE FROM mappings WHERE uid = ?"
_SELECT = f"SELECT {_COLUMNS} FROM mappings ORDER BY uid"
_OWN_TABLES = frozenset({"mappings", "meta"})

#: Migrations from version ``v`` to ``v + 1``, keyed by ``v`` (none yet).
_MIGRATIONS: dict[int, tuple[str, ...]] = {}


class LeaseStore:
    """Persistent leases: the table's mappings by uid, plus a small key/value ``meta`` table."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self._path = os.fspath(path)
        self._conn: sqlite3.Connection | None = None
        if self._path != MEMORY:
            self._prepare_file()
        try:
            conn = sqlite3.connect(
                self._path, isolation_level=None, check_same_thread=False, timeout=5.0
            )
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open store {self._path}: {exc}") from exc
        try:
            self._open(conn)
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        #: the open batch was staged with durable=False (synchronous=NORMAL until it ends)
        self._relaxed = False

    # -- leases ------------------------------------------------------------------------------

    def load(self, now: float, wall: float) -> list[Mapping]:
        """Every unexpired lease by uid, times converted to monotonic; expired rows are deleted.

        Runs in its own committed transaction, or inside the open batch if there is one.
        """
        with self._transaction("load leases") as conn:
            conn.execute(
                "DELETE FROM mappings WHERE expires_wall IS NOT NULL AND expires_wall <= ?",
                (wall,),
            )
            shared = _Shared()
            # row by row: each row's tuple is freed before the next is read, so the leases
            # do not end up scattered among the holes of a list of 10,000 freed rows
            return [self._mapping(row, now, wall, shared) for row in conn.execute(_SELECT)]

    def stage(
        self, changes: Sequence[Change], now: float, wall: float, *, durable: bool = True
    ) -> None:
        """Write ``changes`` into the open batch, opening one (BEGIN IMMEDIATE) if none is.

        On any failure the whole batch (earlier stages included) is rolled back and
        StoreError is raised: nothing is half-written.

        ``durable=False`` (when it opens the batch): its commit does not wait for the disk (no
        fsync of the WAL). For a batch that only moves lease expiry times (refreshes): it
        survives a crash of the daemon like any other, as the WAL write itself is done; only
        a power loss before the next checkpoint can undo it, and the lease then comes back
        with its previous expiry, which the client's next refresh extends again. NAT-PMP and
        PCP clients refresh constantly, and the fsync was most of what each request cost.
        """
        conn = self._connection()
        try:
            if not conn.in_transaction:
                if not durable:
                    conn.execute("PRAGMA synchronous = NORMAL")  # outside a transaction only
                    self._relaxed = True
                conn.execute("BEGIN IMMEDIATE")
            for change in changes:
                self._write(conn, change, now, wall)
        except (sqlite3.Error, ValueError, TypeError, OverflowError) as exc:
            self._abort(conn)
            raise StoreError(f"store {self._path}: cannot stage changes: {exc}") from exc
        except BaseException:
            self._abort(conn)
            raise

    def commit(self) -> None:
        """Commit the open batch (no-op if none); on failure it is rolled back."""
        conn = self._connection()
        if not conn.in_transaction:
            return
        try:
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            self._abort(conn)
            raise StoreError(f"store {self._path}: cannot commit: {exc}") from exc
        finally:
            self._durable_again(conn)

    def rollback(self) -> None:
        """Discard the open batch (no-op if none)."""
        conn = self._connection()
        if not conn.in_transaction:
            return
        try:
            conn.execute("ROLLBACK")
        except sqlite3.Error as exc:
            raise StoreError(f"store {self._path}: cannot roll back: {exc}") from exc
        self._durable_again(conn)

    def replace_all(self, mappings: Iterable[Mapping], now: float, wall: float) -> None:
        """Make the store hold exactly ``mappings`` (meta is kept).

        Its own committed transaction, or part of the open batch if there is one.
        """
        with self._transaction("replace leases") as conn:
            conn.execute("DELETE FROM mappings")
            conn.executemany(_UPSERT, (_row(m, now, wall) for m in mappings))

    def count(self) -> int:
        """Rows held, including leases that expired since the last ``load()``."""
        with self._errors("count leases"):
            (n,) = self._connection().execute("SELECT count(*) FROM mappings").fetchone()
        return int(n)

    # -- meta --------------------------------------------------------------------------------

    def get_meta(self, key: str) -> str | None:
        with self._errors(f"read meta {key!r}"):
            row = self._connection().execute("SELECT value FROM meta WHERE key = ?", (key,))
            found = row.fetchone()
        return None if found is None else str(found[0])

    def set_meta(self, key: str, value: str) -> None:
        """Its own committed transaction, or part of the open batch if there is one."""
        with self._transaction(f"write meta {key!r}") as conn:
            conn.execute(
                "INSERT INTO meta (key, value) VALUES (?, ?)"
                " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (key, value),
            )

    # -- lifetime ----------------------------------------------------------------------------

    def close(self) -> None:
        """Roll back an open batch and close; calling it again does nothing."""
        conn, self._conn = self._conn, None
        if conn is None:
            return
        try:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
        except sqlite3.Error as exc:
            raise StoreError(f"store {self._path}: cannot roll back on close: {exc}") from exc
        finally:
            conn.close()

    def __enter__(self) -> LeaseStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"LeaseStore({self._path!r})"

    # -- internals ---------------------------------------------------------------------------

    def _prepare_file(self) -> None:
        """Create the directory (0700) and the file (0600); check both are writable."""
        path = Path(self._path)
        directory = path.parent
        if not directory.exists():
            try:
                directory.mkdir(mode=0o700, parents=True)
                directory.chmod(0o700)
            except OSError as exc:
                raise StoreError(f"cannot create store directory {directory}: {exc}") from exc
        if not directory.is_dir():
            raise StoreError(f"cannot use store directory {directory}: not a directory")
        if not os.access(directory, os.W_OK | os.X_OK):
            raise StoreError(f"cannot write to store directory {directory}: permission denied")
        if path.exists():
            if not path.is_file():
                raise StoreError(f"{path} is not a portgate store: not a regular file")
            if not os.access(path, os.R_OK | os.W_OK):
                raise StoreError(f"cannot write to store {path}: permission denied")
            return
        try:
            # SQLite treats an empty file as an empty database; its WAL inherits this mode.
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
            fd = os.open(directory, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        except FileExistsError:
            pass
        except OSError as exc:
            raise StoreError(f"cannot create store {path}: {exc}") from exc

    def _open(self, conn: sqlite3.Connection) -> None:
        try:
            application_id = _pragma(conn, "application_id")
        except sqlite3.DatabaseError as exc:
            if exc.sqlite_errorcode == sqlite3.SQLITE_NOTADB:
                raise StoreError(f"{self._path} is not a portgate store: {exc}") from exc
            raise StoreError(f"cannot open store {self._path}: {exc}") from exc
        with self._errors("open"):
            version = _pragma(conn, "user_version")
            tables = {
                str(name)
                for (name,) in conn.execute(
                    "SELECT name FROM sqlite_master WHERE type = 'table'"
                ).fetchall()
            }
        if application_id != APPLICATION_ID and (application_id or version or tables):
            raise StoreError(
                f"{self._path} is not a portgate store"
                f" (application_id {application_id:#x}, tables {sorted(tables)})"
            )
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"store {self._path} has schema version {version}, newer than this"
                f" portgate's {SCHEMA_VERSION}; upgrade portgate or move the file away"
            )
        with self._errors("set journal mode"):
            if self._path != MEMORY:
                (mode,) = conn.execute("PRAGMA journal_mode = WAL").fetchone()
                if str(mode).lower() != "wal":
                    raise StoreError(f"store {self._path}: WAL journal mode refused ({mode})")
            conn.execute("PRAGMA synchronous = FULL")
            # the whole table is read once, at start; later work touches a few pages per batch,
            # so SQLite's default 2 MB page cache would mostly hold start-up's pages
            conn.execute(f"PRAGMA cache_size = -{CACHE_KIB}")
        if version < SCHEMA_VERSION:
            self._upgrade(conn)
        elif missing := sorted(_OWN_TABLES - tables):
            raise StoreError(f"store {self._path} is damaged: missing tables {missing}")

    def _upgrade(self, conn: sqlite3.Connection) -> None:
        """Create the schema (version 0) or migrate, in one transaction."""
        with self._errors("create schema"):
            conn.execute("BEGIN IMMEDIATE")
            try:
                # Someone else may have created it while we waited for the lock.
                current = _pragma(conn, "user_version")
                if current == 0:
                    for statement in _SCHEMA:
                        conn.execute(statement)
                    conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
                    current = SCHEMA_VERSION
                while current < SCHEMA_VERSION:
                    for statement in _MIGRATIONS[current]:
                        conn.execute(statement)
                    current += 1
                conn.execute(f"PRAGMA user_version = {current}")
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreError(f"store {self._path} is closed")
        return self._conn

    @contextlib.contextmanager
    def _errors(self, action: str) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as exc:
            raise StoreError(f"store {self._path}: cannot {action}: {exc}") from exc

    @contextlib.contextmanager
    def _transaction(self, action: str) -> Iterator[sqlite3.Connection]:
        """Join the open batch, or run in a transaction of our own committed at the end."""
        conn = self._connection()
        own = not conn.in_transaction
        try:
            if own:
                conn.execute("BEGIN IMMEDIATE")
            yield conn
            if own:
                conn.execute("COMMIT")
        except (sqlite3.Error, ValueError, TypeError, OverflowError) as exc:
            self._abort(conn)
            raise StoreError(f"store {self._path}: cannot {action}: {exc}") from exc
        except BaseException:
            self._abort(conn)
            raise

    def _abort(self, conn: sqlite3.Connection) -> None:
        if conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
        self._durable_again(conn)

    def _durable_again(self, conn: sqlite3.Connection) -> None:
        """Back to fsync at every commit after a batch staged with ``durable=False``."""
        if self._relaxed and not conn.in_transaction:
            with self._errors("restore synchronous commits"):
                conn.execute("PRAGMA synchronous = FULL")
            self._relaxed = False

    def _write(self, conn: sqlite3.Connection, change: Change, now: float, wall: float) -> None:
        before, after = change.before, change.after
        if change.kind in (ChangeKind.REMOVED, ChangeKind.EXPIRED):
            if before is None:
                raise ValueError(f"{change.kind.name} change without a 'before' mapping")
            conn.execute(_DELETE, (before.uid,))
            return
        if after is None:
            raise ValueError(f"{change.kind.name} change without an 'after' mapping")
        if before is not None and before.uid != after.uid:
            conn.execute(_DELETE, (before.uid,))
        conn.execute(_UPSERT, _row(after, now, wall))

    def _mapping(self, row: Sequence[Any], now: float, wall: float, shared: _Shared) -> Mapping:
        try:
            return _mapping(row, now, wall, shared)
        except (ValueError, TypeError, KeyError) as exc:
            raise StoreError(f"store {self._path}: lease uid {row[0]} is invalid: {exc}") from exc


def _pragma(conn: sqlite3.Connection, name: str) -> int:
    (value,) = conn.execute(f"PRAGMA {name}").fetchone()
    return int(value)


def _to_wall(t: float, now: float, wall: float) -> float:
    return wall + (t - now)


def _row(m: Mapping, now: float, wall: float) -> tuple[object, ...]:
    filters = json.dumps([[str(f.prefix), f.port] for f in m.filters])
    return (
        m.uid,
        m.kind.value,
        m.key.proto.value,
        str(m.key.external.address),
        m.key.external.port,
        str(m.internal.address),
        m.internal.port,
        m.owner.origin.value,
        str(m.owner.client),
        None if m.owner.nonce is None else bytes(m.owner.nonce),
        int(m.owner.third_party),
        m.description,
        filters,
        int(m.enabled),
        m.lifetime,
        _to_wall(m.created, now, wall),
        None if m.expires is None else _to_wall(m.expires, now, wall),
    )


class _Shared:
    """Equal values that many rows repeat, made once per load: 10,000 leases of 100 hosts then
    hold 102 address objects rather than 30,000 (2.3 MB) and one ``Owner`` per client and
    protocol. Everything shared is immutable."""

    def __init__(self) -> None:
        self._addresses: dict[str, IPAddress] = {}
        self._owners: dict[tuple[Origin, IPAddress, bool], Owner] = {}
        self._ints: dict[int, int] = {}

    def address(self, text: str) -> IPAddress:
        address = self._addresses.get(text)
        if address is None:
            address = self._addresses[text] = ip_address(text)
        return address

    def owner(self, origin: Origin, client: IPAddress, nonce: bytes | None, third: bool) -> Owner:
        if nonce is not None:  # a PCP nonce is per mapping
            return Owner(origin, client, nonce, third)
        key = (origin, client, third)
        owner = self._owners.get(key)
        if owner is None:
            owner = self._owners[key] = Owner(origin, client, None, third)
        return owner

    def lifetime(self, value: int) -> int:
        """Lifetimes repeat (a client asks for the same one each time)."""
        return self._ints.setdefault(value, value)


def _mapping(row: Sequence[Any], now: float, wall: float, shared: _Shared) -> Mapping:
    (
        uid,
        kind,
        proto,
        ext_address,
        ext_port,
        int_address,
        int_port,
        origin,
        client,
        nonce,
        third_party,
        description,
        filters,
        enabled,
        lifetime,
        created_wall,
        expires_wall,
    ) = row
    if nonce is not None and not isinstance(nonce, bytes):
        raise TypeError(f"nonce is {type(nonce).__name__}, not bytes")
    return Mapping(
        uid=int(uid),
        kind=Kind(kind),
        key=MappingKey(Proto(proto), Endpoint(shared.address(ext_address), int(ext_port))),
        internal=Endpoint(shared.address(int_address), int(int_port)),
        owner=shared.owner(Origin(origin), shared.address(client), nonce, bool(third_party)),
        description=str(description),
        filters=tuple(RemoteFilter(ip_network(p), int(port)) for p, port in json.loads(filters)),
        enabled=bool(enabled),
        expires=None if expires_wall is None else now + (float(expires_wall) - wall),
        created=now + (float(created_wall) - wall),
        lifetime=None if lifetime is None else shared.lifetime(int(lifetime)),
    )
