"""`harness diff` and `harness report`: reports read back, compared and rendered."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from harness.cli.app import app
from harness.cli.common import HtmlOpt, JsonOpt, console_for


@app.command("diff")
def diff_cmd(
    old: Annotated[Path, typer.Argument(help="The earlier JSON report.")],
    new: Annotated[Path, typer.Argument(help="The later JSON report of the same kind.")],
    max_regression: Annotated[float, typer.Option(
        "--max-regression", min=0, help="Largest allowed metric drop per row, as a fraction (0.01 = 1 point).")]
    = 0.0,
    json_path: JsonOpt = None,
) -> None:
    """What changed between two runs: per-row metric and error changes; exit 1 on a regression."""
    from harness.report import read_report, write_json
    from harness.report.diff import diff_reports, diff_table

    result = diff_reports(read_report(old), read_report(new), max_regression, names=(old, new))
    console = console_for(json_path)
    console.print(diff_table(result, old, new))
    if result["old_model_sha256"] != result["new_model_sha256"]:
        console.print("the two runs used different ONNX exports (onnx_sha256 differs)", highlight=False)
    console.print(f"{result['regressions']} regression(s) (a metric drop beyond {max_regression * 100:.2f} pts, or a "
                  "gate check that fails)", highlight=False)
    if json_path:
        write_json(result, json_path)
    if result["regressions"]:
        raise typer.Exit(1)


@app.command("report")
def report_cmd(
    result: Annotated[Path, typer.Argument(help="A JSON report written by compare, sysnoise, drift or validate.")],
    html: HtmlOpt = None,
) -> None:
    """Render a JSON report (and its sidecar files) as a self-contained HTML page."""
    from harness.report import read_report
    from harness.report.html import write_html

    report = read_report(result)
    out = html or result.with_suffix(".html")
    write_html(report, out, json_path=result)
    print(out)
