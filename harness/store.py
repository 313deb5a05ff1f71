"""Finished cells in an embedded SQLite file: each sweep cell (one variant of one axis, for one model,
dataset and setting) is written the moment it finishes, so a sweep that is interrupted, or whose process a
crashing native backend takes down, loses nothing already computed; `--resume` takes those rows back
instead of computing them again."""
from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from pathlib import Path

from harness.cache import cache_root


def default_path() -> Path:
    return cache_root() / "cells.sqlite"


def cell_key(context: dict, axis: str, variant) -> str:
    """Content key of a cell: everything its result depends on."""
    payload = {**context, "axis": axis, "variant": variant.name, "profile": variant.profile,
               "target": variant.target, "graph": variant.graph, "baseline": variant.baseline}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


class CellStore:
    def __init__(self, path: Path | None = None):
        self.path = Path(path or default_path())
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # one short transaction per cell: a concurrent sweep on the same store waits instead of failing
        self.connection = sqlite3.connect(str(self.path), timeout=60, isolation_level=None)
        self.connection.execute("PRAGMA journal_mode=WAL")
        self.connection.execute("CREATE TABLE IF NOT EXISTS cells (key TEXT PRIMARY KEY, axis TEXT, variant TEXT, "
                                "row TEXT NOT NULL, finished REAL NOT NULL)")
        # a sweep streams its data in chunks and finishes its cells only at the end of the pass: each
        # (request, chunk)'s predictions are kept here meanwhile, so a restarted worker or --resume carries
        # on from the last chunk done; dropped once the sweep is done
        self.connection.execute("CREATE TABLE IF NOT EXISTS pieces (key TEXT NOT NULL, run TEXT NOT NULL, "
                                "context TEXT NOT NULL, data BLOB NOT NULL, finished REAL NOT NULL, "
                                "PRIMARY KEY (key, run))")

    def get(self, key: str) -> dict | None:
        found = self.connection.execute("SELECT row FROM cells WHERE key = ?", (key,)).fetchone()
        return json.loads(found[0]) if found else None

    def put(self, key: str, axis: str, variant: str, row: dict) -> None:
        self.connection.execute("INSERT OR REPLACE INTO cells VALUES (?, ?, ?, ?, ?)",
                                (key, axis, variant, json.dumps(row, default=float), time.time()))

    def get_piece(self, key: str, run: str | None) -> bytes | None:
        """A stored piece of a pass: of run `run` only, or of any run (None: --resume)."""
        query, args = "SELECT data FROM pieces WHERE key = ?", (key,)
        if run is not None:
            query, args = query + " AND run = ?", (key, run)
        found = self.connection.execute(query, args).fetchone()
        return found[0] if found else None

    def put_piece(self, key: str, run: str, context: str, data: bytes) -> None:
        self.connection.execute("INSERT OR REPLACE INTO pieces VALUES (?, ?, ?, ?, ?)",
                                (key, run, context, data, time.time()))

    def drop_pieces(self, contexts) -> None:
        """A finished sweep's pieces (its rows hold the results now), of this run and of the runs it resumed."""
        self.connection.executemany("DELETE FROM pieces WHERE context = ?", [(c,) for c in contexts])

    def started(self, key: str, axis: str, variant: str, baseline: str) -> None:
        """Work for a cell begins (an executor's relay store reports it; nothing to keep here)."""

    def paused(self) -> None:
        """Work for no cell in particular runs (the reference, or between cells)."""

    def close(self) -> None:
        self.connection.close()
