"""SQLite store of minima and transition states (the role of pele's ``Database`` / PATHSAMPLE's files).

Arrays are stored as raw little-endian float64 bytes (never pickled). Every change is made inside a
transaction, so a run killed part-way keeps everything committed before it and nothing half-written.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path

import numpy as np

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS minima (
    id INTEGER PRIMARY KEY, loss REAL NOT NULL, coords BLOB NOT NULL, eigenvalues BLOB NOT NULL,
    log_product REAL NOT NULL, hits INTEGER NOT NULL DEFAULT 1);
CREATE TABLE IF NOT EXISTS transition_states (
    id INTEGER PRIMARY KEY, loss REAL NOT NULL, coords BLOB NOT NULL, eigenvalues BLOB NOT NULL,
    log_product REAL NOT NULL, minimum1 INTEGER NOT NULL REFERENCES minima(id),
    minimum2 INTEGER NOT NULL REFERENCES minima(id));
CREATE INDEX IF NOT EXISTS minima_loss ON minima(loss);
CREATE INDEX IF NOT EXISTS ts_loss ON transition_states(loss);
"""


@dataclass(frozen=True)
class Minimum:
    """A stored local minimum: ``loss``, canonical ``coords``, ascending Hessian ``eigenvalues``.

    ``log_product`` is :math:`\\sum_i \\log\\lambda_i` over the positive eigenvalues (the harmonic
    vibrational factor of the superposition approximation); ``hits`` counts how often it was found.
    """

    id: int
    loss: float
    coords: np.ndarray
    eigenvalues: np.ndarray
    log_product: float
    hits: int = 1


@dataclass(frozen=True)
class TransitionState:
    """A stored first-order saddle joining ``minimum1`` and ``minimum2`` (ids of :class:`Minimum`)."""

    id: int
    loss: float
    coords: np.ndarray
    eigenvalues: np.ndarray
    log_product: float
    minimum1: int
    minimum2: int


def _blob(array: np.ndarray) -> bytes:
    return np.ascontiguousarray(array, dtype="<f8").tobytes()


def _array(blob: bytes) -> np.ndarray:
    return np.frombuffer(blob, dtype="<f8").copy()


class Database:
    """Minima, transition states and run state in one SQLite file (``":memory:"`` by default).

    Args:
        path: file path, or ``None`` / ``":memory:"`` for a database that lives as long as this object.
        meta: settings that define the landscape; an existing file made with other settings is refused.
    """

    def __init__(self, path: str | Path | None, meta: dict):
        location = ":memory:" if path is None or str(path) == ":memory:" else str(path)
        if location != ":memory:":
            Path(location).parent.mkdir(parents=True, exist_ok=True)
        self.path = location
        self.connection = sqlite3.connect(location)
        with self.connection:
            self.connection.executescript(_SCHEMA)
        stored = self.get_meta("landscape")
        wanted = json.dumps(meta, sort_keys=True)
        if stored is None:
            with self.connection:
                self.set_meta("landscape", wanted)
        elif stored != wanted:
            raise ValueError(
                f"database {location} was made for another landscape: stored {stored}, asked {wanted}"
            )

    def get_meta(self, key: str) -> str | None:
        """A stored run-state value, or ``None``."""
        row = self.connection.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else row[0]

    def set_meta(self, key: str, value: str) -> None:
        """Store a run-state value (call inside a transaction: ``with db.connection:``)."""
        self.connection.execute(
            "INSERT INTO meta(key, value) VALUES (?, ?) "
            "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    def add_minimum(self, loss, coords, eigenvalues, log_product) -> int:
        """Insert a minimum and return its id (call inside a transaction)."""
        cursor = self.connection.execute(
            "INSERT INTO minima(loss, coords, eigenvalues, log_product) VALUES (?, ?, ?, ?)",
            (float(loss), _blob(coords), _blob(eigenvalues), float(log_product)),
        )
        return int(cursor.lastrowid)

    def add_hit(self, minimum_id: int) -> None:
        """Count one more visit of a known minimum (call inside a transaction)."""
        self.connection.execute("UPDATE minima SET hits = hits + 1 WHERE id = ?", (minimum_id,))

    def add_transition_state(self, loss, coords, eigenvalues, log_product, minimum1, minimum2) -> int:
        """Insert a transition state and return its id (call inside a transaction)."""
        cursor = self.connection.execute(
            "INSERT INTO transition_states(loss, coords, eigenvalues, log_product, minimum1, minimum2) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (float(loss), _blob(coords), _blob(eigenvalues), float(log_product), minimum1, minimum2),
        )
        return int(cursor.lastrowid)

    def minima(self, loss_range: tuple[float, float] | None = None) -> list[Minimum]:
        """Stored minima by increasing id, optionally only those with ``lo <= loss <= hi``."""
        query = "SELECT id, loss, coords, eigenvalues, log_product, hits FROM minima"
        args: tuple = ()
        if loss_range is not None:
            query += " WHERE loss BETWEEN ? AND ?"
            args = (float(loss_range[0]), float(loss_range[1]))
        rows = self.connection.execute(query + " ORDER BY id", args).fetchall()
        return [Minimum(r[0], r[1], _array(r[2]), _array(r[3]), r[4], r[5]) for r in rows]

    def minimum(self, minimum_id: int) -> Minimum:
        """One stored minimum by id."""
        row = self.connection.execute(
            "SELECT id, loss, coords, eigenvalues, log_product, hits FROM minima WHERE id = ?",
            (int(minimum_id),),
        ).fetchone()
        if row is None:
            raise ValueError(f"no minimum with id {minimum_id}")
        return Minimum(row[0], row[1], _array(row[2]), _array(row[3]), row[4], row[5])

    def transition_states(self, loss_range: tuple[float, float] | None = None) -> list[TransitionState]:
        """Stored transition states by increasing id, optionally only those in a loss range."""
        query = "SELECT id, loss, coords, eigenvalues, log_product, minimum1, minimum2 FROM transition_states"
        args: tuple = ()
        if loss_range is not None:
            query += " WHERE loss BETWEEN ? AND ?"
            args = (float(loss_range[0]), float(loss_range[1]))
        rows = self.connection.execute(query + " ORDER BY id", args).fetchall()
        return [TransitionState(r[0], r[1], _array(r[2]), _array(r[3]), r[4], r[5], r[6]) for r in rows]

    def close(self) -> None:
        """Close the connection."""
        self.connection.close()
