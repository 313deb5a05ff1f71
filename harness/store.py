"""Finished cells in an embedded SQLite file: each sweep cell (one variant of one axis, for one model,
dataset and setting) is written the moment it finishes, so a sweep that is interrupted, or whose process a
crashing native backend takes down, loses nothing already computed; `--resume` takes those rows back
instead of computing them again."""
from __future__ import annotations

import hashlib
import io
import json
import sqlite3
import time
import zipfile
from pathlib import Path

import numpy as np

from harness.cache import STORE_NAME, cache_root


def default_path() -> Path:
    return cache_root() / STORE_NAME


def cell_key(context: dict, axis: str, variant) -> str:
    """Content key of a cell: everything its result depends on."""
    payload = {**context, "axis": axis, "variant": variant.name, "profile": variant.profile,
               "target": variant.target.to_json() if variant.target else None, "graph": variant.graph,
               "baseline": variant.baseline}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


class BadPiece(ValueError):
    """A stored piece that is not what this harness writes (tampered, truncated, another version)."""


def encode_piece(task: str, ids: list[str], predictions: list, shapes: dict | None, input_digest: str | None,
                 failures: dict[str, str]) -> bytes:
    """A piece of a pass as NumPy arrays in an .npz (never a pickle: the store lives in a cache folder that
    CI caches restore, and unpickling runs whatever the file says). The task (a harness.tasks name) lays its
    predictions out as arrays (Task.encode_predictions) and reads them back."""
    from harness.tasks import get_task

    meta = {"ids": list(ids), "shapes": shapes, "input_digest": input_digest, "failures": dict(failures),
            "kind": task}
    arrays = get_task(task).encode_predictions(predictions)
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def checked_array(arrays, name: str, dtype, ndim: int, length: int | None = None, width: int | None = None
                  ) -> np.ndarray:
    """Array `name` of a stored piece, its dtype and shape checked before use (BadPiece otherwise)."""
    if name not in arrays.files:
        raise BadPiece(f"no array {name!r}")
    value = arrays[name]
    if value.dtype != dtype or value.ndim != ndim or (length is not None and len(value) != length) \
            or (width is not None and value.shape[1] != width):
        raise BadPiece(f"array {name!r} is {value.dtype}{value.shape}")
    return value


def decode_piece(data: bytes) -> tuple:
    """(task, ids, predictions, shapes, input_digest, failures) of a piece written by encode_piece; BadPiece
    when it is anything else (its dtypes, shapes and counts are checked before use)."""
    from harness.tasks import registry

    try:
        arrays = np.load(io.BytesIO(data), allow_pickle=False)
        meta = json.loads(checked_array(arrays, "meta", np.uint8, 1).tobytes().decode())
        ids, kind, failures = meta["ids"], meta["kind"], meta["failures"]
        if not (isinstance(ids, list) and all(isinstance(i, str) for i in ids) and isinstance(failures, dict)):
            raise BadPiece("ids or failures of the wrong type")
        tasks = registry()
        if kind not in tasks:
            raise BadPiece(f"unknown kind {kind!r}")
        predictions = tasks[kind].decode_predictions(arrays, len(ids))
        return kind, ids, predictions, meta["shapes"], meta["input_digest"], failures
    except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile) as err:  # BadPiece: ValueError
        raise BadPiece(f"{type(err).__name__}: {err}") from None


class CellStore:
    """The store is a cache of results: it must never cost the sweep. A file that is not a store (or cannot
    be opened) is one line before any work; a write that fails later (a full disk) is one warning, the
    sweep goes on without storing, and what was stored is kept."""

    def __init__(self, path: Path | None = None):
        from harness.errors import InputError

        self.path = Path(path or default_path())
        self.writable = True
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # one short transaction per cell: a concurrent sweep on the same store waits instead of failing
            self.connection = sqlite3.connect(str(self.path), timeout=60, isolation_level=None)
            self.connection.execute("PRAGMA journal_mode=WAL")
            self.connection.execute("CREATE TABLE IF NOT EXISTS cells (key TEXT PRIMARY KEY, axis TEXT, "
                                    "variant TEXT, row TEXT NOT NULL, finished REAL NOT NULL)")
            # a sweep streams its data in chunks and finishes its cells only at the end of the pass: each
            # (request, chunk)'s predictions are kept here meanwhile, so a restarted worker or --resume
            # carries on from the last chunk done; dropped once the sweep is done
            self.connection.execute("CREATE TABLE IF NOT EXISTS pieces (key TEXT NOT NULL, run TEXT NOT NULL, "
                                    "context TEXT NOT NULL, data BLOB NOT NULL, finished REAL NOT NULL, "
                                    "PRIMARY KEY (key, run))")
            for table, columns in (("cells", ["key", "axis", "variant", "row", "finished"]),
                                   ("pieces", ["key", "run", "context", "data", "finished"])):
                found = [row[1] for row in self.connection.execute(f"PRAGMA table_info({table})")]
                if found != columns:
                    raise sqlite3.DatabaseError(f"its table {table} has columns {found}, not {columns}")
        except (OSError, sqlite3.Error) as err:
            raise InputError(f"{self.path}: cannot be used as the cell store ({type(err).__name__}: {err}); "
                             "pass --store with another file or point HARNESS_CACHE at a writable folder") from None

    def _write(self, statement: str, args) -> None:
        if not self.writable:
            return
        try:
            if isinstance(args, list):
                self.connection.executemany(statement, args)
            else:
                self.connection.execute(statement, args)
        except sqlite3.Error as err:
            import sys

            self.writable = False
            print(f"harness: warning: {self.path}: cannot store more ({err}); the sweep goes on without storing, "
                  "and what was stored is kept", file=sys.stderr)

    def _read(self, statement: str, args):
        try:
            return self.connection.execute(statement, args).fetchone()
        except sqlite3.Error:  # an unreadable row is a row not stored: computed again
            return None

    def get(self, key: str) -> dict | None:
        found = self._read("SELECT row FROM cells WHERE key = ?", (key,))
        if not found:
            return None
        try:
            row = json.loads(found[0])
        except (TypeError, ValueError):
            return None
        return row if isinstance(row, dict) and isinstance(row.get("status"), str) else None

    def put(self, key: str, axis: str, variant: str, row: dict) -> None:
        self._write("INSERT OR REPLACE INTO cells VALUES (?, ?, ?, ?, ?)",
                    (key, axis, variant, json.dumps(row, default=float), time.time()))

    def get_piece(self, key: str, run: str | None) -> bytes | None:
        """A stored piece of a pass: of run `run` only, or of any run (None: --resume)."""
        query, args = "SELECT data FROM pieces WHERE key = ?", (key,)
        if run is not None:
            query, args = query + " AND run = ?", (key, run)
        found = self._read(query, args)
        return found[0] if found and isinstance(found[0], bytes) else None

    def put_piece(self, key: str, run: str, context: str, data: bytes) -> None:
        self._write("INSERT OR REPLACE INTO pieces VALUES (?, ?, ?, ?, ?)", (key, run, context, data, time.time()))

    def pieces_of(self, contexts) -> dict[str, bytes]:
        """Every stored piece of these sweeps (any run), by key: what a merging worker on another machine
        is sent (harness.noise.cells.SweepJob.merging)."""
        found = {}
        for context in contexts:
            try:
                found.update(self.connection.execute("SELECT key, data FROM pieces WHERE context = ?", (context,)))
            except sqlite3.Error:  # unreadable: the merging worker computes those chunks again
                continue
        return found

    def drop_pieces(self, contexts) -> None:
        """A finished sweep's pieces (its rows hold the results now), of this run and of the runs it resumed."""
        self._write("DELETE FROM pieces WHERE context = ?", [(c,) for c in contexts])

    def started(self, key: str, axis: str, variant: str, baseline: str) -> None:
        """Work for a cell begins (an executor's relay store reports it; nothing to keep here)."""

    def reference_work(self) -> None:
        """Work for the reference (no cell) runs (an executor's relay store reports it)."""

    def paused(self) -> None:
        """Work for no cell in particular runs (the reference, or between cells)."""

    def close(self) -> None:
        self.connection.close()
