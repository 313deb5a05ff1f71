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


_REPORT_STDOUT = None  # with `--json -`: the real standard output, kept for the report alone


def reserve_stdout_for_report() -> None:
    """`--json -`: nothing but the report may reach standard output. Libraries print there (NNCF's progress
    bars, native code's logs), so file descriptor 1 is pointed at standard error for the whole run, native
    code and worker processes included, and the report is written to a duplicate of the original."""
    import os

    global _REPORT_STDOUT
    if _REPORT_STDOUT is not None:
        return
    sys.stdout.flush()
    _REPORT_STDOUT = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)
    sys.stdout = sys.stderr


def write_json(report: dict, path: str | Path) -> None:
    """Writes the report to `path` atomically, or to stdout for '-'."""
    from harness.files import write_atomic

    text = json.dumps(_clean(report), indent=2)
    if str(path) == "-":
        out = _REPORT_STDOUT or sys.stdout
        out.write(text + "\n")
        out.flush()
        return
    write_atomic(Path(path), text + "\n")


def read_report(path: Path) -> dict:
    """A harness JSON report from `path`; a missing, unreadable or foreign file is an InputError."""
    from harness.files import read_json

    report = read_json(Path(path), "report")
    if not isinstance(report, dict) or not isinstance(report.get("schema"), str) \
            or not report["schema"].startswith("harness."):
        raise InputError(f"{path}: no harness `schema` key: not a harness report")
    return report
