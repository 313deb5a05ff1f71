"""`harness compare`, `drift` and `repro`: one model on several backends, against its reference, from the
final outputs down to the first op that diverges."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from harness.cli.app import app
from harness.cli.common import (AllowCodeOpt, BatchSizeOpt, CalibrationOpt, CellTimeoutOpt, CheckpointOpt,
                                DatasetOpt, ExecutorOpt, HtmlOpt, InputOpt, InputShapeOpt, PostprocessOpt, JsonOpt, LimitOpt, MemoryBudgetOpt,
                                LabelsOpt, TokenizerOpt, ModelArg, ProfileOpt, TaskOpt, ThreadsOpt, WorkersOpt, checked_inputs, console_for, parse_size,
                                print_data_notes, run_with_progress, threads_per_worker, write_reports)
from harness.errors import InputError, UsageError
from harness.model import ModelRequest


@app.command()
def compare(
    model: ModelArg = None,
    backends: Annotated[Optional[str], typer.Option(
        "--backends", help="Comma list of backend[:device], e.g. ort,torch or ort:cuda. Default: every installed.")] = None,
    precision: Annotated[str, typer.Option("--precision", help="Comma list: fp32, fp16, bf16, int8, int4 (OpenVINO, text).")] = "fp32",
    dataset: DatasetOpt = None,
    batch_size: BatchSizeOpt = 32,
    threads: ThreadsOpt = None,
    limit: LimitOpt = None,
    json_path: JsonOpt = None,
    html: HtmlOpt = None,
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
    candidate_outputs: Annotated[Optional[Path], typer.Option(
        "--candidate-outputs", help="Outputs recorded on a target from `harness export-inputs` (.npz with "
                                    "sample_ids): compared as a candidate row 'recorded'.")] = None,
    artifact: Annotated[Optional[Path], typer.Option(
        "--artifact", help="A deployed file to run as the candidate (QDQ .onnx, OpenVINO .xml, TensorRT .engine); "
                           "needs exactly one --backends entry.")] = None,
    executor: ExecutorOpt = "local",
    cell_timeout: CellTimeoutOpt = None,
    workers: WorkersOpt = 1,
    timed_runs: Annotated[Optional[int], typer.Option(
        "--timed-runs", min=0, help="Runs of each configuration alone after the accuracy pass, timed (default: as "
                                    "many as the pass had batches, 3 to 10). 0: none, no warm-up either; the "
                                    "pass's own times are reported (a correctness run on a slow backend).")] = None,
) -> None:
    """Reference (training profile on the training system) vs candidate backends: metric, output and timing.
    Runs on a worker: a backend that crashes or hangs is one failed row."""
    from harness.compare import parse_targets
    from harness.compare.cells import CompareJob

    console = console_for(json_path)
    request = ModelRequest(model, checkpoint, profile, allow_code, input_shape, task, labels, tuple(inputs or ()),
                           postprocess, tokenizer)
    checked_inputs(request, dataset)  # before the worker: fail fast
    if candidate_outputs is not None and not candidate_outputs.is_file():
        raise InputError(f"{candidate_outputs}: recorded outputs file not found")
    targets = [] if candidate_outputs is not None and not backends else parse_targets(backends, precision)
    if artifact is not None:
        _check_artifact(artifact, targets, backends)
    threads = threads_per_worker(workers, threads, executor)
    job = CompareJob(model=request, backends=backends, precision=precision, recorded=candidate_outputs,
                     timed_runs=timed_runs,
                     **_candidates_options(dataset, limit, batch_size, threads, calibration, artifact))
    report = run_with_progress(job, f"compare {request.title}", executor, cell_timeout, workers)
    _show_compare(console, report, json_path, html)
    if any(row["status"] == "failed" for row in report["results"]):
        raise typer.Exit(1)


def _candidates_options(dataset, limit, batch_size, threads, calibration, artifact) -> dict:
    """The options compare and drift share, as their jobs (harness.compare.cells.CandidatesJob) name them."""
    return {"dataset": dataset, "limit": limit, "batch_size": batch_size, "threads": threads,
            "calibration": calibration, "artifact": artifact}


def _check_artifact(artifact: Path, targets: list, backends: str | None) -> None:
    """--artifact: a file that exists, for exactly one backend that loads deployed files."""
    from harness.backends import registry

    if not artifact.exists():
        raise InputError(f"{artifact}: deployed artefact not found")
    if len({(t.backend.name, t.device) for t in targets}) != 1 or not backends:
        raise UsageError("--artifact runs one deployed file: name exactly one backend with --backends")
    if "artifact" not in targets[0].backend.load_options:
        raise UsageError(f"--artifact: {targets[0].backend.name} cannot run a deployed file (it runs the model "
                         "itself); use a backend that loads one: " + ", ".join(
                             b.name for b in registry().values() if "artifact" in b.load_options))


def _show_compare(console, report: dict, json_path, html) -> None:
    from harness.report.table import compare_table, status_notes

    try:  # the reports are written even when rendering the table fails
        console.print(compare_table(report))
        for line in status_notes(report):
            console.print(line, highlight=False)
        print_data_notes(console, report)
    finally:
        write_reports(report, json_path, html)

@app.command()
def drift(
    model: ModelArg = None,
    backend: Annotated[str, typer.Option("--backend", help="Candidate backend[:device], e.g. openvino or ort:cuda.")]
    = "onnxruntime",
    precision: Annotated[str, typer.Option("--precision", help="fp32, fp16, bf16, int8 or int4 (OpenVINO, a text model).")] = "fp32",
    dataset: DatasetOpt = None,
    limit: LimitOpt = None,
    batch_size: BatchSizeOpt = 32,
    threads: ThreadsOpt = None,
    taps: Annotated[Optional[str], typer.Option(
        "--taps", help="Tap method: graph-outputs (every tensor), kernel-boundary (non-perturbing) or "
                       "forward-hooks (torch). Default: the backend's first, with a fall-back to kernel-boundary "
                       "when tapping changes the outputs.")] = None,
    snr_floor: Annotated[float, typer.Option("--snr-floor", help="A tensor diverges below this SNR (dB).")] = 40.0,
    atol: Annotated[Optional[float], typer.Option("--atol", help="Diverges when max abs > atol + rtol*max|ref| "
                                                                 "(replaces the SNR rule).")] = None,
    rtol: Annotated[Optional[float], typer.Option("--rtol")] = None,
    unit_samples: Annotated[Optional[int], typer.Option(
        "--unit-samples", min=1, help="Run the isolated ops on the samples among the first N dataset positions "
                                      "only (default: all).")] = None,
    repro: Annotated[Optional[Path], typer.Option("--repro", help="Write the minimal repro folder here.")] = None,
    memory_budget: MemoryBudgetOpt = None,
    json_path: JsonOpt = None,
    html: HtmlOpt = None,
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
    artifact: Annotated[Optional[Path], typer.Option(
        "--artifact", help="The deployed file the candidate runs (e.g. a QDQ .onnx made elsewhere).")] = None,
    executor: ExecutorOpt = "local",
    cell_timeout: CellTimeoutOpt = None,
    workers: WorkersOpt = 1,
) -> None:
    """Layer-wise drift: every tensor on the candidate vs the tensor reference, the first divergence, the
    error each op introduces vs inherits, and a minimal repro. Runs on a worker: a candidate that crashes or
    hangs gives a report that says so (exit 1)."""
    from harness.backends import parse_target
    from harness.compare.cells import DriftJob
    from harness.compare.drift import Thresholds
    from harness.report.drift import drift_summary, drift_table, introducers_table

    request = ModelRequest(model, checkpoint, profile, allow_code, input_shape, task, labels, tuple(inputs or ()),
                           postprocess, tokenizer)
    checked_inputs(request, dataset)  # before the worker: fail fast
    console = console_for(json_path)
    parse_target(backend)
    if artifact is not None and not artifact.is_file():
        raise InputError(f"{artifact}: deployed artefact not found")
    threads = threads_per_worker(workers, threads, executor)
    job = DriftJob(model=request, backend=backend, precision=precision, thresholds=Thresholds(snr_floor, atol, rtol),
                   taps=taps, unit_samples=unit_samples, repro=repro,
                   memory_budget=parse_size("--memory-budget", memory_budget),
                   **_candidates_options(dataset, limit, batch_size, threads, calibration, artifact))
    report = run_with_progress(job, f"drift {request.title} on {backend}", executor, cell_timeout,
                                workers)
    try:
        console.print(drift_table(report))
        console.print(introducers_table(report))
        console.print(drift_summary(report), highlight=False)
        print_data_notes(console, report)
    finally:
        write_reports(report, json_path, html)
    if report["status"] == "failed":
        raise typer.Exit(1)


@app.command("repro")
def repro_cmd(
    folder: Annotated[Path, typer.Argument(help="A folder written by `harness drift --repro`.")],
    reference: Annotated[bool, typer.Option("--reference", help="Run the reference form on the tensor reference "
                                                                "(ONNX Runtime FP32, no optimisation).")] = False,
    threads: ThreadsOpt = None,
) -> None:
    """Re-run a drift repro: exit 1 when the sub-graph still diverges, 0 when it matches."""
    from harness.compare.repro import check_repro

    diverged, stats, meta = check_repro(folder, reference, threads)
    side = "reference (onnxruntime fp32, no optimisation)" if reference else \
        f"{meta['candidate']['backend']}:{meta['candidate']['device']} {meta['candidate']['precision']}"
    print(f"{meta['tensor']} ({meta['op_type']}, {meta['nodes']} nodes) on {side}: SNR {stats.snr_db:.1f} dB, "
          f"max abs {stats.max_abs:.3g} -> {'DIVERGES' if diverged else 'matches'}")
    raise typer.Exit(1 if diverged else 0)
