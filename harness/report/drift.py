"""Drift report renderings: the terminal table, its summary lines and the error-growth plot (matplotlib
PNG; harness/report/html.py puts it in the HTML page)."""
from __future__ import annotations

import io
import math

from rich.markup import escape
from rich.table import Table


def _db(value) -> str:
    if value is None:
        return "-"
    return "exact" if math.isinf(value) and value > 0 else f"{value:.1f}"


def _err(value) -> str:
    return "-" if value is None else f"{value:.2e}"


def drift_table(report: dict, limit: int = 60) -> Table:
    """Ops in topological order: total SNR, the error the op introduces alone, the error it inherits."""
    first = (report.get("first_divergence") or {}).get("tensor")
    candidate = report["candidate"]
    table = Table(title=escape(f"drift {report['model']['name']}: {candidate['backend']}:{candidate['device']} "
                               f"{candidate['precision']} (effective {candidate['precision_effective']}) vs "
                               f"{report['reference']['note']}; taps: {report['tap_method']}, "
                               f"{_observed(report)}"), title_justify="left")
    for column, justify in (("op", "left"), ("type", "left"), ("torch module", "left"), ("SNR dB", "right"),
                            ("max abs", "right"), ("introduced (rel L2)", "right"), ("introduced SNR", "right"),
                            ("inherited (rel L2)", "right"), ("", "left")):
        table.add_column(column, justify=justify)
    for row in report["ops"][:limit]:
        mark = "first divergence" if row["tensor"] == first else ("diverged" if row["diverged"] else "")
        if not row["observable"]:
            mark = "not observable"
        table.add_row(escape(row["tensor"]), escape(row["op_type"]), escape(row["module"] or ""), _db(row["snr_db"]),
                      _err(row["max_abs"]),
                      _err(row["introduced"]), _db(row["introduced_snr_db"]), _err(row["inherited"]), mark,
                      style="bold red" if row["tensor"] == first else None)
    if len(report["ops"]) > limit:
        table.caption = f"first {limit} of {len(report['ops'])} tensors; all are in the JSON report"
    return table


def introducers_table(report: dict, limit: int = 10) -> Table:
    """Ops ranked by the error they introduce when run alone on the candidate with the reference's inputs."""
    rows = {row["tensor"]: row for row in report["ops"]}
    table = Table(title=f"top {limit} introducers (op run alone on the candidate, reference inputs)",
                  title_justify="left")
    for column, justify in (("rank", "right"), ("op", "left"), ("type", "left"), ("torch module", "left"),
                            ("introduced (rel L2)", "right"), ("introduced SNR", "right"),
                            ("inherited (rel L2)", "right"), ("total SNR", "right")):
        table.add_column(column, justify=justify)
    for rank, top in enumerate(report["top_introducers"][:limit], 1):
        row = rows[top["tensor"]]
        table.add_row(str(rank), escape(row["tensor"]), escape(row["op_type"]), escape(row["module"] or ""),
                      _err(row["introduced"]),
                      _db(row["introduced_snr_db"]), _err(row["inherited"]), _db(row["snr_db"]))
    return table


def _observed(report: dict) -> str:
    return f"{len(report['ops']) - len(report['unobservable'])} of {len(report['ops'])} tensors observed"


def drift_summary(report: dict, markup: bool = True) -> str:
    """The summary lines: rich markup for the terminal (names escaped), or plain text (markup=False)."""
    lines = []
    esc = escape if markup else str
    warn, end = ("[bold yellow]", "[/]") if markup else ("", "")
    if report.get("status") == "failed":
        candidate = report["candidate"]
        return (("[bold red]" if markup else "") + "FAILED" + end + esc(
            f": {candidate['backend']}:{candidate['device']} {candidate['precision']}: {report['reason']}; "
            "no tensor was measured"))

    def op(row: dict) -> str:
        return esc(f"{row['tensor']} ({row['op_type']}, {row['module'] or 'no module'})")

    perturb = report["taps_perturb"]
    if perturb.get("fallback_from"):
        was = perturb["fallback_from"]
        lines.append(f"{warn}TAPS PERTURB: marking every tensor changed the candidate's outputs by "
                     f"{was['max_abs']:.3g} ({esc(str(was['method']))}); fell back to "
                     f"{esc(str(report['tap_method']))} taps{end}")
    if perturb.get("ok") is False:
        lines.append(f"{warn}TAPS PERTURB: the tapped candidate's outputs differ from the untapped ones by "
                     f"{perturb['max_abs']:.3g} (its error vs the reference: {perturb['candidate_error_max_abs']:.3g})"
                     f"{end}")
    first = report.get("first_divergence")
    threshold = report["thresholds"]
    rule = (f"SNR < {threshold['snr_floor']} dB" if threshold["atol"] is None and threshold["rtol"] is None
            else f"max abs > {threshold['atol'] or 0} + {threshold['rtol'] or 0} x max|ref|")
    lines.append(f"first divergence ({rule}): "
                 + (f"{op(first)}, SNR {_db(first['snr_db'])} dB" if first else "none"))
    if report["top_introducers"]:
        top = report["top_introducers"][0]
        lines.append(f"top introducer: {op(top)}, alone it introduces rel L2 {top['introduced']:.3g} "
                     f"(SNR {_db(top['introduced_snr_db'])} dB)")
    if report["unobservable"]:
        few = 2 * len(report["unobservable"]) > len(report["ops"])
        lines.append((warn if few else "") + f"{_observed(report)} on the candidate" + (
            ": fewer than half, so a divergence may lie among the unobserved" if few else "")
            + (end if few else "") + " (why not the others: the JSON's `unobservable`)")
    if report.get("repro"):
        lines.append(esc(f"repro: {report['repro_info']['command']}  (exit 1 = reproduces; "
                         f"{report['repro_info']['reference_command']} exits 0)"))
    return "\n".join(lines)


def error_growth_png(report: dict) -> bytes:
    """SNR along the graph (total and introduced alone), the threshold, the first divergence marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["ops"]
    cap = 150.0  # exact tensors (infinite SNR) are drawn at the top
    total = [min(r["snr_db"], cap) if r["snr_db"] is not None else math.nan for r in rows]
    alone = [min(r["introduced_snr_db"], cap) if r["introduced_snr_db"] is not None else math.nan for r in rows]
    figure, axes = plt.subplots(figsize=(10, 4))
    axes.plot(range(len(rows)), total, marker=".", label="candidate vs reference (total)")
    axes.plot(range(len(rows)), alone, marker="x", linestyle="none", label="op alone (introduced)")
    if report["thresholds"]["snr_floor"] is not None:
        axes.axhline(report["thresholds"]["snr_floor"], color="grey", linestyle="--", label="SNR floor")
    first = report.get("first_divergence")
    if first:
        index = next(i for i, r in enumerate(rows) if r["tensor"] == first["tensor"])
        axes.axvline(index, color="red", label=f"first divergence: {first['tensor']}")
    axes.set_xlabel("tensor (topological order)")
    axes.set_ylabel("SNR (dB)")
    axes.set_title(f"{report['model']['name']} on {report['candidate']['backend']} {report['candidate']['precision']}")
    axes.legend(loc="best", fontsize="small")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    plt.close(figure)
    return buffer.getvalue()
