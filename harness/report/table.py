"""Rich terminal tables for reports."""
from __future__ import annotations

from rich.markup import escape
from rich.table import Table


def _fmt(value, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}" if abs(value) >= 1e-3 or value == 0 else f"{value:.2e}"
    return escape(str(value))  # data, never markup: a path or name may hold [ and ]


def _points(value) -> str:
    return "-" if value is None else f"{value * 100:+.2f}"


def _metric_cell(metric: dict | None, delta: dict | None, name: str, in_points: bool = True) -> str:
    if not metric or metric.get(name) is None:
        return "-"
    if delta is None:
        return _fmt(metric[name])
    change = _points(delta.get(name)) if in_points else ("-" if delta.get(name) is None else f"{delta[name]:+.4f}")
    return f"{_fmt(metric[name])} ({change})"


def compare_table(report: dict) -> Table:
    """One row per candidate; metric cells read 'value (Δ in points)', or 'value (Δ)' for a metric that is not a
    fraction (a causal LM's perplexity)."""
    from harness.tasks import get_task

    ref = report["reference"]
    metric_names = list(ref["metric"])
    fractions = {name: get_task(report["model"]["task"]).is_fraction(name) for name in metric_names}
    title = escape(f"{report['model']['name']} on {report['dataset']['name']} "
                   f"({report['dataset']['samples']} samples, {report['dataset']['failed_samples']} failed); "
                   f"reference {ref['backend']}:{ref['device']}:{ref['precision']}")
    table = Table(title=title, title_justify="left")
    table.add_column("candidate")
    table.add_column("precision")
    table.add_column("status")
    for name in metric_names:
        table.add_column(f"{name} ({'Δpts' if fractions[name] else 'Δ'})", justify="right")
    for column in ("max abs", "cosine", "agree", "flips", "ms/batch p50/p90", "load s"):
        table.add_column(column, justify="right")

    def timing(t):
        if not t:
            return "-", "-"
        return f"{_fmt(t['batch_ms'], 1)}/{_fmt(t['batch_ms_p90'], 1)}", _fmt(t["load_s"], 2)

    table.add_row(escape(f"reference {ref['backend']}:{ref['device']}"), escape(str(ref["precision"])), "ok",
                  *[_metric_cell(ref["metric"], None, m) for m in metric_names], "", "", "", "",
                  *timing(ref["timing"]), style="dim")
    for row in report["results"]:
        candidate = escape(f"{row['backend']}:{row['device']}")
        if row["status"] != "ok":
            color = "red" if row["status"] == "failed" else "yellow"
            table.add_row(candidate, escape(str(row["precision"])), f"[{color}]{escape(str(row['status']))}[/]",
                          *["" for _ in range(len(metric_names) + 6)])
            continue
        out = row["outputs"]
        precision = row["precision"]
        if row["precision_effective"] and row["precision_effective"] != precision:
            precision = f"{precision}→{row['precision_effective']}"
        precision += execution_mark(row.get("execution"))
        table.add_row(candidate, escape(str(precision)), "[green]ok[/]",
                      *[_metric_cell(row["metric"], row["delta"], m, fractions[m]) for m in metric_names],
                      _fmt(out["max_abs"]), _fmt(out["cosine"], 6), _fmt(out["top1_agreement"]), str(out["flips"]),
                      *timing(row["timing"]))
    return table


def quantized_ops(execution: dict) -> dict[str, int]:
    """{int4/int8: compute ops that ran it} when a quantized build left some ops in another precision (an
    INT8 graph's float ops; NNCF's INT4 keeping embeddings in int8), else {}."""
    ran = execution.get("by_precision") or {}
    found = {precision: ran[precision] for precision in ("int4", "int8") if ran.get(precision)}
    partial = found and (sum(found.values()) < (execution.get("compute_ops") or 0) or len(found) > 1)
    return found if partial else {}


def execution_mark(execution: dict | None) -> str:
    """A precision cell's suffix: how much of a quantized request ran quantized, `!` when the backend ran
    other than asked (status_notes says what)."""
    if not execution or not execution.get("recorded"):
        return ""
    shares = quantized_ops(execution)
    total = execution.get("compute_ops") or 1
    mark = f" ({', '.join(f'{count / total:.0%} {p}' for p, count in shares.items())})" if shares else ""
    return mark + (" !" if execution.get("matches_request") is False else "")


def status_notes(report: dict) -> list[str]:
    """One line per row that did not run, with its reason, per row whose backend ran other than asked (its
    execution record's mismatch), and per default backend left out: printed under the table."""
    notes = [f"[{'red' if r['status'] == 'failed' else 'yellow'}]{escape(str(r['status']))}[/] "
             + escape(f"{r['backend']}:{r['device']} {r['precision']}: {r['reason']}")
             for r in report["results"] if r["status"] != "ok"]
    notes += ["[yellow]ran otherwise[/] " + escape(f"{r['backend']}:{r['device']} {r['precision']}: "
                                                   f"{r['execution']['mismatch']}")
              for r in report["results"] if (r.get("execution") or {}).get("mismatch")]
    return notes + ["[yellow]not run[/] " + escape(f"{r['backend']}:{r['device']} {r['precision']}: {r['reason']}")
                    for r in report.get("left_out", [])]


def backends_table(rows: list[dict]) -> Table:
    table = Table(title="backends", title_justify="left")
    for column in ("name", "aliases", "available", "version", "devices", "precisions", "reason"):
        table.add_column(column)
    for row in rows:
        precisions = "; ".join(f"{d}: {','.join(p)}" for d, p in row["precisions"].items())
        table.add_row(row["name"], ",".join(row["aliases"]), "[green]yes[/]" if row["available"] else "[red]no[/]",
                      escape(row["version"] or "-"), ",".join(row["devices"]) or "-", precisions or "-",
                      escape(row["reason"] or ""))
    return table
