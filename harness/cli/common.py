"""What every `harness` command shares: option types, the console, report writing, model resolution."""
from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import Annotated, Callable, Optional

import typer
from rich.console import Console

from harness.errors import HarnessError

ModelArg = Annotated[Optional[str], typer.Argument(
    help="Zoo name, torchvision:NAME or timm:NAME (+ --checkpoint), package.module:factory, or a path to an .onnx file. "
         "Default: the zoo's default classifier.", show_default=False)]
CheckpointOpt = Annotated[Optional[Path], typer.Option("--checkpoint", help="state_dict for the model's weights.")]
ProfileOpt = Annotated[Optional[Path], typer.Option(
    "--profile", help="TOML with the model's training profile (decoder, resize, input_size, mean, std, ...).")]
DatasetOpt = Annotated[Optional[Path], typer.Option(
    "--dataset", help="Class folder, COCO json (or folder with instances.json), a folder of unlabelled "
                      "images, or texts in JSON lines (.jsonl). Default: the embedded benchmark.")]
JsonOpt = Annotated[Optional[str], typer.Option("--json", help="Write the JSON report here ('-' for stdout).")]
ThreadsOpt = Annotated[Optional[int], typer.Option("--threads", min=1, help="Threads per backend.")]
LimitOpt = Annotated[Optional[int], typer.Option("--limit", min=1, help="Use the first N samples.")]
BatchSizeOpt = Annotated[int, typer.Option("--batch-size", min=1)]
CalibrationOpt = Annotated[Optional[Path], typer.Option(
    "--calibration", help="Training images for INT8 calibration (zoo models: the generated training split).")]
AllowCodeOpt = Annotated[bool, typer.Option(
    "--allow-code", help="Trust the --profile file: let it name package.module:function variants (imported and "
                         "run). Without it a file that names code is refused.")]
TaskOpt = Annotated[Optional[str], typer.Option(
    "--task", help="What the model is: classify, detect, segment, instances or keypoints (default: its source's, "
                   "or the --profile file's `task`; an .onnx file is a classifier unless told).")]
LabelsOpt = Annotated[Optional[Path], typer.Option(
    "--labels", help="The model's class names in class-index order, one per line (or a .json list); a dataset's "
                     "class folders are matched against them.")]
TokenizerOpt = Annotated[Optional[Path], typer.Option(
    "--tokenizer", help="A text model's tokeniser folder (save_pretrained's layout: tokenizer_config.json with "
                        "vocab.txt or tokenizer.json): the reference pre-processing of an .onnx text model.")]
InputShapeOpt = Annotated[Optional[str], typer.Option(
    "--input-shape", help="The model input's size for an .onnx file with dynamic height/width: S, HxW or "
                          "NxCxHxW (square). Default: the file's fixed size, else the profile's (224).")]
InputOpt = Annotated[Optional[list[str]], typer.Option(
    "--input", help="An .onnx file's input, by name (repeat for each): NAME=1x3x640x640 says NAME is the image "
                    "input and its shape; NAME=[640,640] or NAME=0.5 feeds a non-image input that constant with "
                    "every sample (a profile's [inputs] table says the same).")]
PostprocessOpt = Annotated[Optional[str], typer.Option(
    "--postprocess", help="Your own detection post-processing, package.module:function (imported and run: you "
                          "named it): called per batch with the raw outputs, each image's geometry and the "
                          "profile; returns (boxes xyxy in image pixels, scores, labels) per image.")]
HtmlOpt = Annotated[Optional[Path], typer.Option(
    "--html", help="Write a self-contained HTML report (plots embedded, opens offline) here.")]
ExecutorOpt = Annotated[str, typer.Option(
    "--executor", help="Where the work runs: local (a worker process; a crashing cell costs only itself) or ray "
                       "(a Ray task; $RAY_ADDRESS, else a local cluster).")]
CellTimeoutOpt = Annotated[Optional[float], typer.Option(
    "--cell-timeout", min=1, help="Seconds one cell (a variant, a backend configuration) may run before its "
                                  "worker is killed and the cell reported as timed out; bounds each chunk of "
                                  "the reference's work too.")]

WorkersOpt = Annotated[int, typer.Option(
    "--workers", min=1, help="Data-parallel workers (processes, or Ray tasks with --executor ray), each running "
                             "every cell on its shard of the data; the report is the one a single worker makes. "
                             "Without --threads each gets cores/workers threads.")]

MemoryBudgetOpt = Annotated[Optional[str], typer.Option(
    "--memory-budget", help="Memory the tapped tensors of one run may take, per worker (e.g. 2GB, 512MB; default "
                            "2GB): a batch whose taps would exceed it goes through the taps in smaller runs, with "
                            "the same statistics.")]

SIZE_UNITS = {"": 1, "b": 1, "k": 2**10, "kb": 2**10, "kib": 2**10, "m": 2**20, "mb": 2**20, "mib": 2**20,
              "g": 2**30, "gb": 2**30, "gib": 2**30}


def parse_size(option: str, text: str | None) -> int | None:
    """'2GB', '512MB', '1.5G' or a byte count -> bytes (binary units: 1 GB = 2**30); one line otherwise."""
    from harness.errors import UsageError

    if text is None:
        return None
    found = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]*)?)\s*([a-zA-Z]*)\s*", str(text))
    if not found or found.group(2).lower() not in SIZE_UNITS or float(found.group(1)) * SIZE_UNITS[
            found.group(2).lower()] < 1:
        raise UsageError(f"{option} {text!r}: expected a positive size such as 2GB, 512MB or a byte count")
    return int(float(found.group(1)) * SIZE_UNITS[found.group(2).lower()])


def threads_per_worker(workers: int, threads: int | None, executor: str = "local") -> int | None:
    """--threads, or with several workers their share of this machine's cores (said on stderr): workers x
    threads is the cores asked for. On Ray, whose nodes this machine cannot count, one thread (and CPU)
    per task. One worker without --threads leaves each backend its own default."""
    if workers == 1 or threads is not None:
        return threads
    if executor == "ray":
        print(f"harness: {workers} Ray tasks x 1 thread each, one CPU asked for each (--threads sets it)",
              file=sys.stderr)
        return 1
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    chosen = max(1, cores // workers)
    print(f"harness: {workers} workers x {chosen} thread{'s' if chosen > 1 else ''} each ({cores} cores here; "
          "--threads sets it)", file=sys.stderr)
    return chosen


def run_with_progress(job, title: str, executor: str, cell_timeout: float | None, workers: int, store=None) -> dict:
    """The job on its worker(s) (harness.executor.run_cells), their ("samples", n) and ("progress", n)
    messages drawn as one bar on stderr."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from harness.executor import run_cells

    with Progress(TextColumn("[progress.description]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(title, total=None)  # the worker says how many

        def show(message: tuple) -> None:
            if message[0] == "samples":
                bar.update(task, total=message[1])
            elif message[0] == "progress":
                bar.advance(task, message[1])
            elif message[0] == "restart" and workers == 1:  # a cell crashed the worker: the next one starts over
                bar.reset(task)
        return run_cells(job, executor, cell_timeout, store, on_message=show, workers=workers)


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
    thumbnails = flipped_thumbnails(report)  # always: it also moves overlay pictures out of the JSON
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


def checked_inputs(model, dataset: Path | None):
    """The user's input files checked before the model is built (harness.model.ModelRequest.check): a bad
    profile, shape, labels file or dataset is one line in a second, not after the work. Returns the dataset."""
    from harness.data import load_dataset

    model.check()
    return load_dataset(dataset) if dataset else None


def _json_to_stdout(args: list[str]) -> bool:
    return any(a == "--json=-" or (a == "--json" and k + 1 < len(args) and args[k + 1] == "-")
               for k, a in enumerate(args))


ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def run_with_error_contract(app) -> None:
    """The one error boundary of every command (README's exit codes): a HarnessError is one line and its
    code; --debug or HARNESS_DEBUG=1 shows the traceback instead."""
    debug = os.environ.get("HARNESS_DEBUG", "") not in ("", "0")
    if "--debug" in sys.argv[1:]:
        sys.argv.remove("--debug")
        debug = True
        os.environ["HARNESS_DEBUG"] = "1"  # the sweep's worker process shows its traceback too
    for stream in (sys.stdout, sys.stderr):  # a non-UTF-8 file name is printed escaped, never a crash
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    if _json_to_stdout(sys.argv[1:]):
        from harness.report import reserve_stdout_for_report

        reserve_stdout_for_report()
    try:
        # standalone_mode=False: typer's click would turn an EOFError raised anywhere into a bare "Aborted!"
        # (exit 1) and print its usage errors as a multi-line box
        code = app(standalone_mode=False)
    except HarnessError as err:
        if debug:
            raise
        _fail(str(err), err.exit_code)
    except typer.Abort as err:
        cause = err.__cause__ or err.__context__
        if isinstance(cause, KeyboardInterrupt):
            _fail("interrupted", 130, prefix="harness: ")
        if debug:
            raise
        _fail(f"{type(cause).__name__}: {cause} (--debug shows where)" if cause else "aborted", 1)
    except typer.TyperException as err:  # the parser's own usage errors: one line too, exit 2
        if type(err).__name__ == "NoArgsIsHelpError":  # bare `harness`: the help, as before
            err.show()
            sys.exit(err.exit_code)
        context = getattr(err, "ctx", None)
        hint = f" (see {context.command_path} --help)" if context is not None else ""
        _fail(err.format_message() + hint, getattr(err, "exit_code", 2))
    except KeyboardInterrupt:
        _fail("interrupted", 130, prefix="harness: ")
    sys.exit(code if isinstance(code, int) else 0)


def _fail(message: str, code: int, prefix: str = "harness: error: ") -> None:
    print(prefix + " ".join(ANSI.sub("", message).split()), file=sys.stderr)  # one plain line: no colour codes
    sys.exit(code)
