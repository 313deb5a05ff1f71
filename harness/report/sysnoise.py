"""SysNoise report: the paper-layout table (terminal and Markdown)."""
from __future__ import annotations

from rich.table import Table

from harness.noise.sweep import distinct_findings
from harness.report.table import quantized_ops


def _points(value) -> str:
    return "-" if value is None else f"{value * 100:+.2f}"


def axis_cell(axis: dict) -> str:
    if not any(v["status"] == "ok" for v in axis["variants"]):
        return "n/a"
    measured = distinct_findings(axis["variants"])
    if not measured:
        return "identical"
    worst = min(measured, key=lambda v: v["delta"])
    largest = max(measured, key=lambda v: abs(v["delta"]))
    notes = [f"worst {_signed(worst)}"]
    if largest is not worst and largest.get("significant") is not None:
        notes.append(f"largest {_signed(largest)}")
    if all(v.get("significant") is not None for v in measured):
        notes.append(f"{sum(v['significant'] for v in measured)}/{len(measured)} significant")
    return f"{axis['delta_mean'] * 100:+.2f} ± {axis['delta_std'] * 100:.2f} ({'; '.join(notes)})"


def variant_notes(variant: dict) -> list[str]:
    """What a reader must know before taking a variant's row as a finding of its own: it repeats an earlier
    variant's very outputs (NV12 gives I420's samples), or its backend ran another precision than its name
    says (OpenVINO's f16 hint on a bf16-only CPU; ONNX Runtime's CPU provider running an FP16 graph's
    convolutions in fp32), or an int8 build left some compute ops in float."""
    notes = [f"= {variant['identical_to']}"] if variant.get("identical_to") else []
    effective = variant.get("precision_effective")
    if effective and not variant["name"].endswith(effective):
        notes.append(f"runs {effective}")
    execution = variant.get("execution") or {}
    if execution.get("mismatch"):
        notes.append(execution["mismatch"])
    elif shares := quantized_ops(execution):
        notes.append(", ".join(f"{precision} on {count}/{execution['compute_ops']}" for precision, count in shares.items())
                     + " compute ops")
    return notes


def _signed(variant: dict) -> str:
    """Δ in points, starred when its 95 % interval excludes 0."""
    return _points(variant["delta"]) + ("*" if variant.get("significant") else "")


def _shape(dims) -> str:
    return "x".join(map(str, dims))


def shape_notes(report: dict) -> list[str]:
    """One line per variant that reshapes the model: where inside it the shapes start to differ (a graph
    rewrite's first reshaped tensor) and which outputs change shape (harness.noise.sweep)."""
    notes = []
    for axis in report["axes"]:
        for v in axis["variants"]:
            changed = v.get("output_shapes_changed") or {}
            first = v.get("first_reshaped_tensor")
            if not changed and not first:
                continue
            parts = []
            if first:
                old, new = first["shapes"]
                parts.append(f"from {first['tensor']} ({first['op_type']}) {_shape(old)} -> {_shape(new)} on")
            if changed:
                shown = [f"{name} {_shape(old)} -> {_shape(new)}" for name, (old, new) in list(changed.items())[:3]]
                more = f", and {len(changed) - 3} more" if len(changed) > 3 else ""
                parts.append("outputs " + ", ".join(shown) + more)
            else:
                parts.append("the outputs keep their shape")
            notes.append(f"{report['model']['name']} {axis['axis']} `{v['name']}` reshapes the model "
                         + "; ".join(parts))
    return notes


def summary_markdown(report: dict | list[dict]) -> str:
    """One row per model (one report, or several with the same axes, e.g. the zoo's), one column per axis:
    Δ metric in points, mean ± std over the variants that differ from the reference (a variant with an
    earlier one's very outputs counted once), and the worst (most
    negative) one and, when it has an interval and is another, the one with the largest |Δ|; starred when significant
    (the report's `significance` rule: McNemar for accuracy, the bootstrap interval for mAP); how many variants
    are significant when all were tested; `identical` when none
    differs."""
    reports = report if isinstance(report, list) else [report]
    axes = [a["axis"] for a in reports[0]["axes"]]
    if any([a["axis"] for a in r["axes"]] != axes for r in reports):
        raise ValueError("summary rows need the same axes in every report")
    lines = ["| model | reference | " + " | ".join(axes) + " |", "|---|---|" + "---|" * len(axes)]
    for one in reports:
        metric = one["primary_metric"]
        lines.append(f"| {one['model']['name']} | {metric} {one['reference']['metric'][metric]:.4f} | "
                     + " | ".join(axis_cell(a) for a in one["axes"]) + " |")
    reshaped = [note for one in reports for note in shape_notes(one)]
    if reshaped:
        lines += [""] + [f"- {note}" for note in reshaped]
    report = reports[0]
    metric = report["primary_metric"]
    if len(reports) == 1 and report.get("combined"):
        lines += ["", "Cumulative (paper order, each axis at its worst variant, chosen on this data):", "",
                  "| + axis | variant | " + metric + " | Δ (pts) |", "|---|---|---|---|"]
        for step in report["combined"]:
            value = "-" if step["metric"] is None else f"{step['metric']:.4f}"
            lines.append(f"| {step['axis']} | {step['variant']} | {value} | {_points(step['delta'])} |")
    return "\n".join(lines)


def variants_table(report: dict) -> Table:
    metric = report["primary_metric"]
    from rich.markup import escape

    reference = report["reference"]["metric"].get(metric)
    table = Table(title=escape(f"sysnoise {report['model']['name']} on {report['dataset']['name']} "
                               f"({report['dataset']['samples']} samples); reference {metric} "
                               + ("-" if reference is None else f"{reference:.4f}")), title_justify="left",
                  caption=escape("\n".join(shape_notes(report))) or None, caption_justify="left")
    for column in ("axis", "variant", "status", metric, "Δ pts", "95% CI", "signif.", "flip rate", "KL"):
        table.add_column(column, justify="right" if column not in ("axis", "variant", "status") else "left")
    for axis in report["axes"]:
        for v in axis["variants"]:
            if v["status"] != "ok":
                table.add_row(axis["axis"], escape(v["name"]), f"[yellow]{v['status']}[/]", escape(v["reason"][:60]),
                              *[""] * 5)
                continue
            if v["identical_to_reference"]:
                table.add_row(axis["axis"], escape(v["name"]), "[dim]identical[/]", f"{v['metric'][metric]:.4f}",
                              *[""] * 5)
                continue
            ci = "-" if not v["ci95"] else escape(f"[{v['ci95'][0] * 100:+.2f}, {v['ci95'][1] * 100:+.2f}]")
            sig = "-" if v["significant"] is None else ("[red]yes[/]" if v["significant"] else "no")
            if v.get("p_value") is not None:
                sig += f" p={v['p_value']:.2g}"
            status = escape("; ".join(variant_notes(v))) or "ok"
            table.add_row(axis["axis"], escape(v["name"]), status, f"{v['metric'][metric]:.4f}", _points(v["delta"]), ci, sig,
                          f"{v['flip_rate']:.4f}" if v["flip_rate"] is not None else "-",
                          f"{v['kl']:.2e}" if v["kl"] is not None else "-")
    return table
