"""Content-addressed artefact cache: exports, quantized graphs, compiled modules, engines.

An artefact is built once per key (a hash of everything that determines it) and re-used afterwards;
the build writes into a staging folder that is renamed into place, so a crashed or concurrent build
never leaves a half-written artefact behind.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

STORE_NAME = "cells.sqlite"          # the sweep store's default file (harness.store)
UNFINISHED_GRACE_SECONDS = 3600      # a younger staging folder may be a build still running: never cleared


def cache_root() -> Path:
    return Path(os.environ.get("HARNESS_CACHE", Path.home() / ".cache" / "harness"))


def key_of(*parts) -> str:
    """A stable hash of JSON-able parts (strings, numbers, lists, dicts)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def tool_versions(*packages: str) -> dict[str, str | None]:
    """The installed versions of the packages that make an artefact (None: not installed), for its key: an
    upgraded converter or compiler builds anew instead of re-using what the old one made."""
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for package in packages:
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            found[package] = None
    return found


def cached_folder(kind: str, key: str, build: Callable[[Path], None], root: Path | None = None) -> tuple[Path, bool]:
    """The folder for (kind, key), calling build(staging_folder) only when it does not exist yet.

    root overrides the cache location (default: $HARNESS_CACHE/kind). Returns (folder, cache_hit).
    """
    folder = (root or cache_root() / kind) / key[:24]
    if (folder / ".complete").is_file():
        with contextlib.suppress(OSError):  # the marker's time is the last use (`harness cache clear --older-than`)
            os.utime(folder / ".complete")
        return folder, True
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".build-", dir=folder.parent))
    except OSError as err:
        from harness.errors import InputError

        raise InputError(f"{folder.parent}: the harness cache cannot be written ({err.strerror or err}); point "
                         "HARNESS_CACHE at a writable folder") from None
    try:
        build(staging)
        (staging / ".complete").write_text(key)
        try:
            staging.rename(folder)
        except OSError:  # another process finished first: keep theirs
            shutil.rmtree(staging, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return folder, False


@dataclass(frozen=True)
class CacheEntry:
    """One artefact under the cache root: kind (its folder: exports, tvm, int8-nncf, ..., logs, cells),
    its path, bytes on disk, last use (epoch seconds: its build or latest hit) and whether it is complete
    (False: a build's staging folder, still running or left by a killed process)."""

    kind: str
    path: Path
    bytes: int
    last_used: float
    complete: bool = True


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())


def cache_entries(root: Path | None = None) -> list[CacheEntry]:
    """Every artefact under the cache root, kind by kind; the sweep store (cells.sqlite with its SQLite
    journal files) is one entry of kind `cells`."""
    root = root or cache_root()
    if not root.is_dir():
        return []
    entries = []
    for kind in sorted(p for p in root.iterdir() if p.is_dir()):
        for item in sorted(kind.iterdir()):
            marker = item / ".complete"
            complete = marker.is_file() or (item.is_file() and not item.name.startswith(".build-"))
            stamp = (marker if marker.is_file() else item).stat().st_mtime
            entries.append(CacheEntry(kind.name, item, _size(item), stamp, complete))
    store = root / STORE_NAME
    if store.is_file():
        parts = [p for p in root.iterdir() if p.is_file() and p.name.startswith(STORE_NAME)]
        entries.append(CacheEntry("cells", store, sum(p.stat().st_size for p in parts),
                                  max(p.stat().st_mtime for p in parts)))
    return entries


def clear_cache(entries: list[CacheEntry], older_than_days: float | None = None,
                now: float | None = None) -> list[CacheEntry]:
    """Removes the entries unused for more than `older_than_days` (all of them when None) and returns what
    it removed. A staging folder younger than an hour is left alone whatever the age asked: it may be a
    build in progress, whose rename into place would then fail."""
    now = time.time() if now is None else now
    removed = []
    for entry in entries:
        age = now - entry.last_used
        if older_than_days is not None and age <= older_than_days * 86400:
            continue
        if not entry.complete and age < UNFINISHED_GRACE_SECONDS:
            continue
        if entry.kind == "cells":  # the database and its -wal/-shm/-journal companions
            for part in entry.path.parent.glob(f"{entry.path.name}*"):
                part.unlink(missing_ok=True)
        elif entry.path.is_dir():
            shutil.rmtree(entry.path, ignore_errors=True)
        else:
            entry.path.unlink(missing_ok=True)
        removed.append(entry)
    return removed
