"""SQLite store of minima and transition states (the role of pele's ``Database`` / PATHSAMPLE's files).

Arrays are stored as raw little-endian float64 bytes (never pickled). Every change is made inside one
``BEGIN IMMEDIATE`` transaction (:meth:`Database.transaction`), so a run killed part-way keeps everything
committed before it and nothing half-written, and the duplicate check that precedes an insert runs under
the same write lock as the insert.

A file database has one writer at a time: the first write (or :meth:`Database.acquire_writer`, which
``Landscape.explore``, ``connect`` and ``from_pathsample`` call before any work) takes an exclusive
advisory lock on ``<path>.lock`` (``flock``; released by ``close()`` or by the kernel when the process
dies), and a second writer, in this process or another, is refused with :class:`DatabaseInUseError`
naming the file. Readers (for example an explorer showing the database) are never refused.

Each file records the landscape it was made for (network shape, weight decay, seed and a SHA-256
fingerprint of the data): a file made for another landscape, a SQLite file that is not a hessview
landscape database, or a file that is not SQLite at all is refused with :class:`DatabaseError` naming
the path, and never modified.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

try:  # POSIX
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None
    import msvcrt

#: version of the schema below; a database with another version is refused.
FORMAT_VERSION = 2
_MARKER = "hessview.landscape"

_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE minima (
    id INTEGER PRIMARY KEY, loss REAL NOT NULL, coords BLOB NOT NULL, eigenvalues BLOB NOT NULL,
    log_product REAL NOT NULL, hits INTEGER NOT NULL DEFAULT 1);
CREATE TABLE transition_states (
    id INTEGER PRIMARY KEY, loss REAL NOT NULL, coords BLOB NOT NULL, eigenvalues BLOB NOT NULL,
    log_product REAL NOT NULL, minimum1 INTEGER NOT NULL REFERENCES minima(id),
    minimum2 INTEGER NOT NULL REFERENCES minima(id));
CREATE INDEX minima_loss ON minima(loss);
CREATE INDEX ts_loss ON transition_states(loss);
"""
_TABLES = {"meta", "minima", "transition_states"}


class DatabaseError(ValueError):
    """A landscape database that cannot be used: not SQLite, not hessview's, or made for another landscape."""


class DatabaseInUseError(RuntimeError):
    """The landscape database is open in another ``Landscape`` (this process or another one)."""


@dataclass(frozen=True)
class Minimum:
    """A stored local minimum: ``loss``, canonical ``coords``, ascending Hessian ``eigenvalues``.

    ``log_product`` is :math:`\\sum_i \\log\\lambda_i` over the positive eigenvalues (the harmonic
    vibrational factor of the superposition approximation), ``nan`` when only the lowest eigenvalues were
    computed (Hessian-vector-product mode: ``eigenvalues`` is then shorter than ``coords``); ``hits``
    counts how often basin-hopping quenched into it (descents from transition states are not counted).
    """

    id: int
    loss: float
    coords: np.ndarray
    eigenvalues: np.ndarray
    log_product: float
    hits: int = 1


@dataclass(frozen=True)
class TransitionState:
    """A stored first-order saddle joining ``minimum1`` and ``minimum2`` (ids of :class:`Minimum`).

    ``log_product`` is :math:`\\sum_i \\log\\lambda_i` over the positive eigenvalues only (PATHSAMPLE's
    convention for ``ts.data``); ``nan`` when only the lowest eigenvalues were computed.
    """

    id: int
    loss: float
    coords: np.ndarray
    eigenvalues: np.ndarray
    log_product: float
    minimum1: int
    minimum2: int


def _log_product_column(log_product) -> float:
    """The stored value: a log product not computed (``nan``, partial spectrum) is stored as 0.0."""
    value = float(log_product)
    return value if np.isfinite(value) else 0.0


def _log_product(value: float, eigenvalues: np.ndarray, coords: np.ndarray) -> float:
    """``nan`` for a point stored with only its lowest eigenvalues (no full spectrum, no log product)."""
    return float(value) if eigenvalues.size == coords.size else float("nan")


def _minimum(r) -> Minimum:
    coords, eigenvalues = _array(r[2]), _array(r[3])
    return Minimum(r[0], r[1], coords, eigenvalues, _log_product(r[4], eigenvalues, coords), r[5])


def _blob(array: np.ndarray) -> bytes:
    return np.ascontiguousarray(array, dtype="<f8").tobytes()


def _array(blob: bytes) -> np.ndarray:
    return np.frombuffer(blob, dtype="<f8").copy()


class _FileLock:
    """An exclusive, non-blocking advisory lock on ``path`` (``flock`` on POSIX, ``msvcrt`` on Windows)."""

    def __init__(self, path: Path, database: str):
        self.handle = open(path, "a+b")  # noqa: SIM115 - held open for the lock's lifetime
        try:
            if fcntl is not None:
                fcntl.flock(self.handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            else:  # pragma: no cover - Windows
                msvcrt.locking(self.handle.fileno(), msvcrt.LK_NBLCK, 1)
        except OSError as error:
            self.handle.close()
            raise DatabaseInUseError(
                f"landscape database {database} is being written by another Landscape (lock {path} is "
                "held): one writer at a time; close the other Landscape (landscape.close()) or wait for "
                "its run to finish, then resume here"
            ) from error

    def release(self) -> None:
        if not self.handle.closed:
            if fcntl is not None:
                fcntl.flock(self.handle.fileno(), fcntl.LOCK_UN)
            self.handle.close()


class Database:
    """Minima, transition states and run state in one SQLite file (or in memory).

    Args:
        path: file path, or ``None`` / ``":memory:"`` for a database that lives as long as this object.
        meta: settings that define the landscape; an existing file made with other settings is refused.

    Raises:
        DatabaseError: the file is not SQLite, is a SQLite file that is not a hessview landscape
            database, has another format version, or was made for another landscape.
        DatabaseInUseError: creating a new file while another writer holds its lock.
    """

    def __init__(self, path: str | os.PathLike | None, meta: dict):
        memory = path is None or str(path) == ":memory:"
        self.path = ":memory:" if memory else str(Path(path).expanduser().resolve())
        self._lock: _FileLock | None = None
        self.connection: sqlite3.Connection | None = None
        try:
            if not memory:
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            self.connection = sqlite3.connect(self.path, isolation_level=None, timeout=30.0)
            self._open(json.dumps(meta, sort_keys=True))
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------------------ opening
    def _error(self, error: sqlite3.Error, doing: str) -> DatabaseError:
        return DatabaseError(f"landscape database {self.path}: {doing} failed: {error}")

    def _open(self, wanted: str) -> None:
        try:
            tables = {
                row[0]
                for row in self.connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
            }
        except sqlite3.DatabaseError as error:
            raise DatabaseError(
                f"{self.path} is not a SQLite database ({error}): pass another db= path or delete the file"
            ) from error
        if not tables:
            with self.transaction():
                # re-read under the write lock: another process may have created it meanwhile
                tables = {r[0] for r in self._execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
                if not tables:
                    for statement in _SCHEMA.strip().split(";"):
                        if statement.strip():
                            self._execute(statement)
                    self.set_meta("format", json.dumps({"name": _MARKER, "version": FORMAT_VERSION}))
                    self.set_meta("landscape", wanted)
                    return
        marker = None
        if "meta" in tables:
            with contextlib.suppress(sqlite3.Error):
                marker = self.get_meta("format")
        try:
            marker = json.loads(marker) if marker is not None else None
        except json.JSONDecodeError:
            marker = None
        if marker is None and tables >= _TABLES and "landscape" in self._meta_keys():
            raise DatabaseError(
                f"landscape database {self.path} was written by an older hessview (format version 1, before "
                "standardised inputs): its minima do not belong to this landscape; delete it (or rebuild "
                "the app's landscapes: hessview app landscape --rebuild) and explore again"
            )
        if not isinstance(marker, dict) or marker.get("name") != _MARKER or not tables >= _TABLES:
            raise DatabaseError(
                f"{self.path} is a SQLite file but not a hessview landscape database (tables: "
                f"{', '.join(sorted(tables))}); it was left untouched: pass another db= path"
            )
        if marker.get("version") != FORMAT_VERSION:
            raise DatabaseError(
                f"landscape database {self.path} has format version {marker.get('version')!r}; this "
                f"hessview reads version {FORMAT_VERSION}: start a new database (another db= path)"
            )
        stored = self.get_meta("landscape")
        if stored != wanted:
            raise DatabaseError(
                f"landscape database {self.path} was made for another landscape (other data, network, "
                f"weight decay, seed or Hessian mode): stored {stored}, asked {wanted}; pass another db= path"
            )

    def _meta_keys(self) -> set[str]:
        try:
            return {row[0] for row in self.connection.execute("SELECT key FROM meta")}
        except sqlite3.Error:
            return set()

    # --------------------------------------------------------------------------- statements
    def _execute(self, sql: str, args: tuple = ()) -> sqlite3.Cursor:
        if self.connection is None:
            raise DatabaseError(f"landscape database {self.path} is closed")
        try:
            return self.connection.execute(sql, args)
        except sqlite3.Error as error:
            raise self._error(error, sql.split()[0].lower()) from error

    def acquire_writer(self) -> None:
        """Become the database's one writer (no-op in memory or when already held); held until :meth:`close`.

        Raises:
            DatabaseInUseError: another ``Database`` (this process or another) is the writer.
        """
        if self.connection is None:
            raise DatabaseError(f"landscape database {self.path} is closed")
        if self._lock is None and self.path != ":memory:":
            self._lock = _FileLock(Path(self.path + ".lock"), self.path)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """One write transaction (``BEGIN IMMEDIATE``): committed if the block succeeds, else rolled back.

        Takes the writer lock first (:meth:`acquire_writer`). Reads inside the block (such as the
        duplicate check before an insert) see the database under SQLite's write lock, so no other
        connection can insert between the check and the write.
        """
        self.acquire_writer()
        self._execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                self.connection.execute("ROLLBACK")
            raise
        self._execute("COMMIT")

    def get_meta(self, key: str) -> str | None:
        """A stored run-state value, or ``None``."""
        row = self._execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else row[0]

    def set_meta(self, key: str, value: str) -> None:
        """Store a run-state value (call inside :meth:`transaction`)."""
        self._execute(
            "INSERT INTO meta(key, value) VALUES (?, ?) "
            "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    def add_minimum(self, loss, coords, eigenvalues, log_product, hits: int = 1) -> int:
        """Insert a minimum and return its id (call inside :meth:`transaction`)."""
        cursor = self._execute(
            "INSERT INTO minima(loss, coords, eigenvalues, log_product, hits) VALUES (?, ?, ?, ?, ?)",
            (float(loss), _blob(coords), _blob(eigenvalues), _log_product_column(log_product), int(hits)),
        )
        return int(cursor.lastrowid)

    def add_hit(self, minimum_id: int) -> None:
        """Count one more basin-hopping visit of a known minimum (call inside :meth:`transaction`)."""
        self._execute("UPDATE minima SET hits = hits + 1 WHERE id = ?", (minimum_id,))

    def add_transition_state(self, loss, coords, eigenvalues, log_product, minimum1, minimum2) -> int:
        """Insert a transition state and return its id (call inside :meth:`transaction`)."""
        cursor = self._execute(
            "INSERT INTO transition_states(loss, coords, eigenvalues, log_product, minimum1, minimum2) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (
                float(loss),
                _blob(coords),
                _blob(eigenvalues),
                _log_product_column(log_product),
                minimum1,
                minimum2,
            ),
        )
        return int(cursor.lastrowid)

    def minima(self, loss_range: tuple[float, float] | None = None) -> list[Minimum]:
        """Stored minima by increasing id, optionally only those with ``lo <= loss <= hi``."""
        query = "SELECT id, loss, coords, eigenvalues, log_product, hits FROM minima"
        args: tuple = ()
        if loss_range is not None:
            query += " WHERE loss BETWEEN ? AND ?"
            args = (float(loss_range[0]), float(loss_range[1]))
        rows = self._execute(query + " ORDER BY id", args).fetchall()
        return [_minimum(r) for r in rows]

    def minimum(self, minimum_id: int) -> Minimum:
        """One stored minimum by id."""
        row = self._execute(
            "SELECT id, loss, coords, eigenvalues, log_product, hits FROM minima WHERE id = ?",
            (int(minimum_id),),
        ).fetchone()
        if row is None:
            raise ValueError(f"no minimum with id {minimum_id} in landscape database {self.path}")
        return _minimum(row)

    def transition_states(self, loss_range: tuple[float, float] | None = None) -> list[TransitionState]:
        """Stored transition states by increasing id, optionally only those in a loss range."""
        query = "SELECT id, loss, coords, eigenvalues, log_product, minimum1, minimum2 FROM transition_states"
        args: tuple = ()
        if loss_range is not None:
            query += " WHERE loss BETWEEN ? AND ?"
            args = (float(loss_range[0]), float(loss_range[1]))
        rows = self._execute(query + " ORDER BY id", args).fetchall()
        out = []
        for r in rows:
            coords, eigenvalues = _array(r[2]), _array(r[3])
            log_product = _log_product(r[4], eigenvalues, coords)
            out.append(TransitionState(r[0], r[1], coords, eigenvalues, log_product, r[5], r[6]))
        return out

    def close(self) -> None:
        """Close the connection and release the file lock (idempotent)."""
        if self.connection is not None:
            self.connection.close()
            self.connection = None
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def __del__(self):
        with contextlib.suppress(Exception):
            self.close()
