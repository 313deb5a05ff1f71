"""`harness diff OLD.json NEW.json`: what changed between two runs of the same kind (a new backend version,
a new export, a new checkpoint), row by row. A metric that drops by more than `max_regression` (fraction:
0.01 = one point), or a gate check that passed and now fails, is a regression."""
from __future__ import annotations

from harness.errors import InputError
from harness.result import ResultRow


def _primary(report: dict) -> str:
    from harness.tasks import CLASSIFY, get_task

    return get_task(report.get("model", {}).get("task") or CLASSIFY).primary_metric


def _rows(report: dict) -> dict[tuple, dict]:
    """{row key: {"metric": primary metric or None, "error": an error measure or None, "passed": bool or None}}"""
    kind = str(report.get("schema", "")).split("/")[0]
    primary = _primary(report)
    if kind == "harness.compare":
        return {(r.identity["backend"], r.identity["device"], r.identity["precision"]):
                _entry(r, primary, (r.measures.get("outputs") or {}).get("max_abs"))
                for r in map(ResultRow.from_json, report["results"])}
    if kind == "harness.sysnoise":
        primary = report["primary_metric"]
        return {(a["axis"], v.identity["name"]): _entry(v, primary, v.measures.get("flip_rate"))
                for a in report["axes"] for v in map(ResultRow.from_json, a["variants"])}
    if kind == "harness.drift":
        return {(o["tensor"],): {"metric": None, "error": o.get("rel_l2"), "passed": o.get("diverged") is False
                                 if o.get("diverged") is not None else None} for o in report["ops"]}
    if kind == "harness.validate":
        return {(c["profile"], c["threshold"]): {"metric": None, "error": c["value"], "passed": c["passed"]}
                for c in report["checks"]}
    raise InputError(f"report schema {report.get('schema')!r} cannot be diffed "
                     "(known: harness.compare, harness.sysnoise, harness.drift, harness.validate)")


def _entry(row: ResultRow, primary: str, error) -> dict:
    return {"metric": (row.metric or {}).get(primary), "error": error, "passed": None}


def _checked_rows(report: dict, name) -> dict[tuple, dict]:
    """_rows, with a report that is not what its schema says (a hand-edited or foreign JSON) as one line."""
    try:
        rows = _rows(report)
        for row in rows.values():
            for key in ("metric", "error"):
                if row[key] is not None and (isinstance(row[key], bool) or not isinstance(row[key], (int, float))):
                    raise TypeError(f"{key} {row[key]!r} is not a number")
        return rows
    except (KeyError, TypeError, AttributeError, IndexError, ValueError) as err:
        raise InputError(f"{name}: not a valid {report.get('schema')} report ({type(err).__name__}: {err})") from None


def diff_reports(old: dict, new: dict, max_regression: float, names=("OLD", "NEW")) -> dict:
    if str(old.get("schema")).split("/")[0] != str(new.get("schema")).split("/")[0]:
        raise InputError(f"cannot diff a {old.get('schema')} report against a {new.get('schema')} report")
    before, after = _checked_rows(old, names[0]), _checked_rows(new, names[1])
    rows = []
    for key in [*before, *(k for k in after if k not in before)]:
        a, b = before.get(key), after.get(key)
        row = {"row": list(key), "status": "changed"}
        if a is None or b is None:
            row["status"] = "added" if a is None else "removed"
            if a is None and b["passed"] is False:  # a gate check added failing: a regression like any other
                row.update({"new_metric": b["metric"], "new_error": b["error"], "new_passed": False, "regressed": True})
            rows.append(row)
            continue
        metric_change = None if a["metric"] is None or b["metric"] is None else b["metric"] - a["metric"]
        error_change = None if a["error"] is None or b["error"] is None else b["error"] - a["error"]
        regressed = (metric_change is not None and metric_change < -max_regression) or \
            (a["passed"] is True and b["passed"] is False)
        row.update({"old_metric": a["metric"], "new_metric": b["metric"], "metric_change": metric_change,
                    "old_error": a["error"], "new_error": b["error"], "error_change": error_change,
                    "old_passed": a["passed"], "new_passed": b["passed"], "regressed": regressed})
        if not regressed and not metric_change and not error_change and a["passed"] == b["passed"]:
            row["status"] = "same"
        rows.append(row)
    return {"schema": "harness.diff/1", "kind": str(new.get("schema")), "max_regression": max_regression,
            "old_model_sha256": old.get("model", {}).get("onnx_sha256"),
            "new_model_sha256": new.get("model", {}).get("onnx_sha256"),
            "rows": rows, "regressions": sum(bool(r.get("regressed")) for r in rows)}


def diff_table(result: dict, old, new):
    from rich.table import Table

    from rich.markup import escape

    table = Table(title=escape(f"diff {old} -> {new} ({result['kind']})"), title_justify="left")
    for column in ("row", "metric", "Δ metric (pts)", "error", "Δ error", "status"):
        table.add_column(column)

    def fmt(value, signed=False):
        return "-" if value is None else (f"{value:+.4g}" if signed else f"{value:.4g}")

    def points(value):  # metrics are fractions in the JSON; a person reads points, as compare shows them
        return "-" if value is None else f"{value * 100:+.2f}"

    for row in result["rows"]:
        status = "[bold red]REGRESSED[/]" if row.get("regressed") else escape(str(row["status"]))
        table.add_row(escape(" / ".join(map(str, row["row"]))), fmt(row.get("new_metric")), points(row.get("metric_change")),
                      fmt(row.get("new_error")), fmt(row.get("error_change"), True), status)
    return table
