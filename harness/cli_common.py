"""What every `harness` command shares: option types, the console, report writing, model resolution."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

ModelArg = Annotated[Optional[str], typer.Argument(
    help="Zoo name, torchvision:NAME (+ --checkpoint), package.module:factory, or a path to an .onnx file. "
         "Default: the zoo's default classifier.", show_default=False)]
CheckpointOpt = Annotated[Optional[Path], typer.Option("--checkpoint", help="state_dict for the model's weights.")]
ProfileOpt = Annotated[Optional[Path], typer.Option(
    "--profile", help="TOML with the model's training profile (decoder, resize, input_size, mean, std, ...).")]
DatasetOpt = Annotated[Optional[Path], typer.Option(
    "--dataset", help="Class folder, COCO json (or folder with instances.json), or a folder of unlabelled "
                      "images. Default: the embedded benchmark.")]
JsonOpt = Annotated[Optional[str], typer.Option("--json", help="Write the JSON report here ('-' for stdout).")]
ThreadsOpt = Annotated[Optional[int], typer.Option("--threads", min=1, help="Threads per backend.")]
AllowCodeOpt = Annotated[bool, typer.Option(
    "--allow-code", help="Trust the --profile file: let it name package.module:function variants (imported and "
                         "run). Without it a file that names code is refused.")]
HtmlOpt = Annotated[Optional[Path], typer.Option(
    "--html", help="Write a self-contained HTML report (plots embedded, opens offline) here.")]


def console_for(json_path: str | None) -> Console:
    """The table goes to stderr when the JSON goes to stdout. Logs and CI are wider than 80 columns."""
    stderr = json_path == "-"
    probe = Console(stderr=stderr)
    width = None if probe.is_terminal or os.environ.get("COLUMNS") else 160
    return Console(stderr=stderr, width=width)


def write_reports(report: dict, json_path: str | None, html_path: Path | None) -> None:
    """The JSON (with its sidecars) and the HTML page, both from the same report."""
    from harness.report import write_json
    from harness.report.html import flipped_thumbnails, write_html, write_sidecars

    writes_sidecars = bool(json_path) and json_path != "-"
    thumbnails = flipped_thumbnails(report) if html_path or writes_sidecars else None
    if writes_sidecars:
        write_sidecars(report, Path(json_path), thumbnails)
    if json_path:
        write_json(report, json_path)
    if html_path:
        write_html(report, html_path, thumbnails=thumbnails)


def resolve(model, checkpoint, profile, allow_code: bool = False):
    from harness.model import resolve_model

    return resolve_model(model, checkpoint=checkpoint, profile_path=profile, allow_code=allow_code)
