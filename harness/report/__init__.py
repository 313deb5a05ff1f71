"""Reports: the JSON contract (DESIGN.md) and its terminal rendering."""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

from harness.errors import InputError


def _clean(value):
    """JSON has no NaN/inf: they become null, so every parser reads the report."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if hasattr(value, "item") and callable(value.item):  # numpy scalars
        return _clean(value.item())
    return value


def write_json(report: dict, path: str | Path) -> None:
    """Writes the report to `path`, or to stdout for '-'."""
    text = json.dumps(_clean(report), indent=2)
    if str(path) == "-":
        sys.stdout.write(text + "\n")
        return
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n")
    except OSError as err:
        raise InputError(f"{path}: cannot write the report ({err.strerror})") from None


def read_report(path: Path) -> dict:
    """A harness JSON report from `path`; a missing, unreadable or foreign file is an InputError."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: report not found")
    try:
        report = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as err:
        raise InputError(f"{path}: not a JSON report ({err})") from None
    if not isinstance(report, dict) or "schema" not in report:
        raise InputError(f"{path}: no `schema` key: not a harness report")
    return report
