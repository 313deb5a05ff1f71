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

    def get(self, key: str) -> dict | None:
        found = self.connection.execute("SELECT row FROM cells WHERE key = ?", (key,)).fetchone()
        return json.loads(found[0]) if found else None

    def put(self, key: str, axis: str, variant: str, row: dict) -> None:
        self.connection.execute("INSERT OR REPLACE INTO cells VALUES (?, ?, ?, ?, ?)",
                                (key, axis, variant, json.dumps(row, default=float), time.time()))

    def started(self, key: str, axis: str, variant: str, baseline: str) -> None:
        """Work for a cell begins (an executor's relay store reports it; nothing to keep here)."""

    def paused(self) -> None:
        """Work for no cell in particular runs (the reference, or between cells)."""

    def close(self) -> None:
        self.connection.close()
