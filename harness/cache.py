"""Content-addressed artefact cache: exports, quantized graphs, compiled modules, engines.

An artefact is built once per key (a hash of everything that determines it) and re-used afterwards;
the build writes into a staging folder that is renamed into place, so a crashed or concurrent build
never leaves a half-written artefact behind.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable


def cache_root() -> Path:
    return Path(os.environ.get("HARNESS_CACHE", Path.home() / ".cache" / "harness"))


def key_of(*parts) -> str:
    """A stable hash of JSON-able parts (strings, numbers, lists, dicts)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def cached_folder(kind: str, key: str, build: Callable[[Path], None], root: Path | None = None) -> tuple[Path, bool]:
    """The folder for (kind, key), calling build(staging_folder) only when it does not exist yet.

    root overrides the cache location (default: $HARNESS_CACHE/kind). Returns (folder, cache_hit).
    """
    folder = (root or cache_root() / kind) / key[:24]
    if (folder / ".complete").is_file():
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
