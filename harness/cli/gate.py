"""`harness validate`: the pre-deployment gate (harness.validate)."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape

from harness.cli.app import app
from harness.cli.common import (CellTimeoutOpt, ExecutorOpt, HtmlOpt, JsonOpt, console_for, print_data_notes,
                                write_reports)
from harness.errors import UsageError


@app.command()
def validate(
    config: Annotated[Optional[Path], typer.Option("--config", help="The gate file (TOML).")] = None,
    init: Annotated[bool, typer.Option("--init", help="Write a commented starter gate.toml in the current folder.")]
    = False,
    model: Annotated[Optional[str], typer.Option("--model", help="With --init: the model the gate names "
                                                                 "(default: the zoo's default classifier).")] = None,
    junit: Annotated[Optional[Path], typer.Option("--junit", help="Write JUnit XML here (one test per threshold "
                                                                  "per profile).")] = None,
    markdown: Annotated[Optional[Path], typer.Option("--markdown", help="Write a Markdown summary here (for a "
                                                                        "pull-request comment).")] = None,
    json_path: JsonOpt = None,
    html: HtmlOpt = None,
    allow_code: Annotated[bool, typer.Option(
        "--allow-code", help="Trust the gate file: let it name code (model = package.module:factory, "
                             "package.module:function variants). Without it such a gate is refused.")] = False,
    executor: ExecutorOpt = "local",
    cell_timeout: CellTimeoutOpt = None,
) -> None:
    """The pre-deployment gate: exit 0 when every threshold holds, 1 when one fails, 2 on a config error."""
    from harness.report.gate import gate_table, junit_xml, markdown_summary
    from harness.gate_file import load_gate, starter_gate
    from harness.executor import run_cells
    from harness.validate import GateJob

    if init:
        from harness.model import resolve_model
        from harness.tasks import get_task
        from harness.models import DEFAULT_CLASSIFIER

        target = Path.cwd() / "gate.toml"
        if target.exists():
            raise UsageError(f"{target}: already exists; remove it or edit it")
        spec = resolve_model(model or DEFAULT_CLASSIFIER)  # an unknown model fails here, with the known ones
        target.write_text(starter_gate(model or DEFAULT_CLASSIFIER, get_task(spec.task)))
        print(target)
        return
    if config is None:
        raise UsageError("validate needs --config gate.toml (or --init to write a starter)")
    load_gate(config, allow_code)  # a bad gate file is one line here, before a worker starts
    report = run_cells(GateJob(config, allow_code), executor, cell_timeout)
    console = console_for(json_path)
    others = {}
    if junit:
        others[junit] = lambda: junit_xml(report)
    if markdown:
        others[markdown] = lambda: markdown_summary(report)
    try:
        console.print(gate_table(report, config))
        print_data_notes(console, report)
    finally:
        write_reports(report, json_path, html, others)
    if not report["passed"]:
        for check in report["checks"]:
            if not check["passed"]:
                console.print("[bold red]gate failed[/]: "
                              + escape(f"{check['profile']} {check['threshold']}: {check['message']}"),
                              highlight=False)
        raise typer.Exit(1)
