"""What every `harness` command shares: option types, the console, report writing, model resolution."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Callable, Optional

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
InputShapeOpt = Annotated[Optional[str], typer.Option(
    "--input-shape", help="The model input's size for an .onnx file with dynamic height/width: S, HxW or "
                          "NxCxHxW (square). Default: the file's fixed size, else the profile's (224).")]
HtmlOpt = Annotated[Optional[Path], typer.Option(
    "--html", help="Write a self-contained HTML report (plots embedded, opens offline) here.")]


def console_for(json_path: str | None) -> Console:
    """The table goes to stderr when the JSON goes to stdout. Logs and CI are wider than 80 columns."""
    stderr = json_path == "-"
    probe = Console(stderr=stderr)
    width = None if probe.is_terminal or os.environ.get("COLUMNS") else 160
    return Console(stderr=stderr, width=width)


def write_reports(report: dict, json_path: str | None, html_path: Path | None,
                  others: dict[Path, Callable[[], str]] | None = None) -> None:
    """The JSON (with its sidecars), the HTML page and `others` (path -> its text: JUnit, Markdown), all from
    the same report, each written atomically. A file that cannot be written does not stop the others: the
    failures are one line at the end (exit 2), after every file that could be written was."""
    from harness.errors import HarnessError, InputError
    from harness.report import write_json
    from harness.report.html import flipped_thumbnails, write_html, write_sidecars

    writes_sidecars = bool(json_path) and json_path != "-"
    thumbnails = flipped_thumbnails(report) if html_path or writes_sidecars else None
    steps = []
    if writes_sidecars:
        steps.append(lambda: write_sidecars(report, Path(json_path), thumbnails))
    if json_path:
        steps.append(lambda: write_json(report, json_path))
    if html_path:
        steps.append(lambda: write_html(report, html_path, thumbnails=thumbnails))
    for path, render in (others or {}).items():
        steps.append(lambda path=path, render=render: _write_text(path, render()))
    failed = []
    for step in steps:
        try:
            step()
        except HarnessError as err:
            failed.append(str(err))
    if failed:
        raise InputError("; ".join(failed))


def print_data_notes(console: Console, report: dict, shown: int = 10) -> None:
    """The samples that failed and the files that were skipped, each with its reason (first `shown` of
    each; every one is in the JSON's dataset block)."""
    from rich.markup import escape

    dataset = report.get("dataset") or {}
    for kind, entries, name in (("failed sample", dataset.get("failed") or [], "sample"),
                                ("skipped file", dataset.get("skipped") or [], "path")):
        for entry in entries[:shown]:
            console.print(f"[yellow]{kind}[/] {escape(str(entry.get('path') or entry.get(name)))}: "
                          f"{escape(str(entry['reason']))}", highlight=False)
        if len(entries) > shown:
            console.print(f"[yellow]... and {len(entries) - shown} more {kind}s[/] (all in the JSON report)",
                          highlight=False)


def _write_text(path: Path, text: str) -> None:
    from harness.files import write_atomic

    write_atomic(path, text)


def checked_inputs(profile: Path | None, allow_code: bool, input_shape: str | None, dataset: Path | None):
    """The user's input files checked before the model is built (which imports torch and may export): a
    bad profile, shape or dataset is one line in a second, not after the work. Returns the dataset."""
    from harness.data import load_dataset
    from harness.model import parse_input_shape
    from harness.profile import Profile, load_profile

    if input_shape:
        parse_input_shape(input_shape)
    if profile is not None:
        load_profile(profile, Profile(), allow_code)
    return load_dataset(dataset) if dataset else None


def resolve(model, checkpoint, profile, allow_code: bool = False, input_shape: str | None = None):
    from harness.model import resolve_model

    return resolve_model(model, checkpoint=checkpoint, profile_path=profile, allow_code=allow_code,
                         input_shape=input_shape)
