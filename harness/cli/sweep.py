"""`harness sysnoise`: the SysNoise sweep, run on a worker (harness.executor, harness.noise.cells)."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape

from harness.cli.app import app
from harness.cli.common import (AllowCodeOpt, BatchSizeOpt, CalibrationOpt, CellTimeoutOpt, CheckpointOpt,
                                DatasetOpt, ExecutorOpt, HtmlOpt, InputOpt, InputShapeOpt, PostprocessOpt, JsonOpt, LimitOpt, ModelArg,
                                LabelsOpt, TokenizerOpt, ProfileOpt, TaskOpt, ThreadsOpt, WorkersOpt, checked_inputs, console_for, print_data_notes,
                                run_with_progress, threads_per_worker, write_reports)
from harness.model import ModelRequest


@app.command()
def sysnoise(
    model: ModelArg = None,
    axes: Annotated[Optional[str], typer.Option("--axes", help="Comma list of noise axes (default: all).")] = None,
    list_axes: Annotated[bool, typer.Option("--list-axes", help="Print the axes and their variants.")] = False,
    combine: Annotated[bool, typer.Option("--combine", help="Add the axes cumulatively in the paper's order.")] = False,
    backend: Annotated[str, typer.Option("--backend", help="Backend for graph-rewrite axes (ceil_mode, upsample).")]
    = "onnxruntime",
    dataset: DatasetOpt = None,
    batch_size: BatchSizeOpt = 64,
    threads: ThreadsOpt = None,
    limit: LimitOpt = None,
    json_path: JsonOpt = None,
    html: HtmlOpt = None,
    markdown: Annotated[Optional[Path], typer.Option("--markdown", help="Write the paper-layout table here.")] = None,
    checkpoint: CheckpointOpt = None,
    profile: ProfileOpt = None,
    allow_code: AllowCodeOpt = False,
    input_shape: InputShapeOpt = None,
    inputs: InputOpt = None,
    postprocess: PostprocessOpt = None,
    task: TaskOpt = None,
    labels: LabelsOpt = None,
    tokenizer: TokenizerOpt = None,
    calibration: CalibrationOpt = None,
    variant: Annotated[Optional[list[str]], typer.Option(
        "--variant", help="Your own variant: AXIS=package.module:function (decoder, resize, color or nms); "
                          "repeatable.")] = None,
    bootstrap_rounds: Annotated[Optional[int], typer.Option(
        "--bootstrap-rounds", min=0, help="Seeded rounds of each mAP bootstrap (default 200, ~20 s an interval "
                                          "on 120 images); 0 skips it (no interval for mAP).")] = None,
    bootstrap_seconds: Annotated[Optional[float], typer.Option(
        "--bootstrap-seconds", min=0, hidden=True, help="Deprecated: rounds are the budget (reproducible); "
                                                        "0 still skips the bootstrap.")] = None,
    bootstrap_scope: Annotated[str, typer.Option(
        "--bootstrap-scope", help="mAP intervals for every detection variant, or per axis only for the largest "
                                  "|Δ| (faster).")] = "all",
    executor: ExecutorOpt = "local",
    cell_timeout: CellTimeoutOpt = None,
    workers: WorkersOpt = 1,
    store: Annotated[Optional[Path], typer.Option(
        "--store", help="SQLite file that keeps every finished variant as it finishes "
                        "(default: $HARNESS_CACHE/cells.sqlite).")] = None,
    resume: Annotated[bool, typer.Option(
        "--resume", help="Take variants already finished in the store (same model, data, settings) back "
                         "instead of running them again.")] = False,
    chunk_size: Annotated[Optional[int], typer.Option(
        "--chunk-size", min=1, help="Images whose decodes, resizes and input tensors are held at once (default "
                                    "256, rounded up to whole batches); memory grows with it, not with the "
                                    "dataset.")] = None,
) -> None:
    """SysNoise sweep: vary one part of the deployment system at a time against the training profile."""
    from harness.backends import get_backend
    from harness.noise import add_user_variant, get_axes
    from harness.noise.cells import SweepJob
    from harness.noise.runner import SweepSettings

    request = ModelRequest(model, checkpoint, profile, allow_code, input_shape, task, labels, tuple(inputs or ()),
                           postprocess, tokenizer)
    checked_inputs(request, dataset)  # before the worker: fail fast
    console = console_for(json_path)
    graph_backend = get_backend(backend).name
    for text in variant or []:
        add_user_variant(text)
    if list_axes:
        _print_axes(console, request.resolve(), graph_backend)
        return
    rounds = _bootstrap_rounds(bootstrap_rounds, bootstrap_seconds)
    threads = threads_per_worker(workers, threads, executor)
    settings = SweepSettings(axes, dataset, limit, batch_size, threads, calibration, graph_backend, combine,
                             **({} if rounds is None else {"bootstrap_rounds": rounds}),
                             bootstrap_scope=bootstrap_scope, **({"chunk_size": chunk_size} if chunk_size else {}),
                             workers=workers)
    get_axes(axes)  # a misspelt axis fails here, before a worker starts
    job = SweepJob(request, list(variant or []), settings, None, resume, executor=executor)
    report = _run_stored(job, executor, cell_timeout, store)
    _show(console, report, json_path, html, markdown)
    if any(v["status"] == "failed" for axis in report["axes"] for v in axis["variants"]):
        raise typer.Exit(1)  # README: a row that failed (a crash, a timeout) makes the exit code 1


def _print_axes(console, spec, graph_backend: str) -> None:
    from harness.noise import AXES, unavailable

    for axis in AXES.values():
        names = ", ".join(v.name for v in axis.variants(spec, graph_backend))
        missing = unavailable(axis.name, spec)
        names += f"{'; ' if names else ''}unavailable here: {missing}" if missing else ""
        tasks = ", ".join(axis.applies_to()) or "none"
        console.print(f"[bold]{axis.name}[/] ({axis.stage}): {axis.description}\n  {escape(names)}\n  acts on: {tasks}",
                      highlight=False)


def _bootstrap_rounds(rounds: int | None, seconds: float | None) -> int | None:
    """--bootstrap-rounds, with the deprecated --bootstrap-seconds said to be ignored (0 still skips)."""
    if seconds is not None:  # a time budget gave other intervals on a slower machine
        print("harness: --bootstrap-seconds is deprecated and ignored: the mAP bootstrap runs a fixed number of "
              "seeded rounds (--bootstrap-rounds)" + ("; 0 skips it, as before" if seconds == 0 else ""),
              file=sys.stderr)
        if seconds == 0 and rounds is None:
            return 0
    return rounds


def _run_stored(job, executor: str, cell_timeout: float | None, store: Path | None) -> dict:
    """The sweep on its workers, every finished variant (and every chunk's piece of the pass) kept in the
    cell store as it finishes."""
    from harness.executor import run_cells
    from harness.store import CellStore

    cells = CellStore(store)
    job.store_path = cells.path
    workers = job.settings.workers
    try:
        if workers > 1:  # the shards' pass as one bar (one worker draws its own, axis by axis)
            report = run_with_progress(job, f"sysnoise {job.model.title} (images, {workers} workers)",
                                       executor, cell_timeout, workers, cells)
        else:
            report = run_cells(job, executor, cell_timeout, cells)
    except (KeyboardInterrupt, SystemExit):  # Ctrl-C, or SIGTERM (harness.executor)
        print(f"harness: sweep stopped; the variants and data chunks it finished are kept in {cells.path}: "
              "run the same command with --resume to carry on from there", file=sys.stderr)
        raise
    finally:
        cells.close()
    report["store"] = str(cells.path)
    return report


def _show(console, report: dict, json_path, html, markdown) -> None:
    from harness.report.sysnoise import summary_markdown, variants_table

    try:
        console.print(variants_table(report))
        for axis in report["axes"]:
            if axis.get("unavailable"):
                console.print(f"{axis['axis']}: no variant: {axis['unavailable']}", highlight=False, markup=False)
        console.print(summary_markdown(report), highlight=False, markup=False)
        print_data_notes(console, report)
    finally:
        write_reports(report, json_path, html, {markdown: lambda: summary_markdown(report) + "\n"} if markdown else None)
