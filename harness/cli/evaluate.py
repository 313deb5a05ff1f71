"""`harness compare`, `drift` and `repro`: one model on several backends, against its reference, from the
final outputs down to the first op that diverges."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from harness.cli.app import app
from harness.cli.common import (AllowCodeOpt, BatchSizeOpt, CalibrationOpt, CheckpointOpt, DatasetOpt, HtmlOpt,
                                InputShapeOpt, JsonOpt, LimitOpt, ModelArg, ProfileOpt, ThreadsOpt, checked_inputs,
                                console_for, print_data_notes, resolve, write_reports)
from harness.errors import InputError, UsageError


@app.command()
def compare(
    model: ModelArg = None,
    backends: Annotated[Optional[str], typer.Option(
        "--backends", help="Comma list of backend[:device], e.g. ort,torch or ort:cuda. Default: every installed.")] = None,
    precision: Annotated[str, typer.Option("--precision", help="Comma list: fp32, fp16, bf16, int8.")] = "fp32",
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
    calibration: CalibrationOpt = None,
    candidate_outputs: Annotated[Optional[Path], typer.Option(
        "--candidate-outputs", help="Outputs recorded on a target from `harness export-inputs` (.npz with "
                                    "sample_ids): compared as a candidate row 'recorded'.")] = None,
    artifact: Annotated[Optional[Path], typer.Option(
        "--artifact", help="A deployed file to run as the candidate (QDQ .onnx, OpenVINO .xml, TensorRT .engine); "
                           "needs exactly one --backends entry.")] = None,
) -> None:
    """Reference (training profile on the training system) vs candidate backends: metric, output and timing."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from harness.calibration import calibration_set
    from harness.compare import SCHEMA, compare as run_compare, parse_targets
    from harness.data import embedded_benchmark
    from harness.data.benchmark import SEED as BENCHMARK_SEED
    from harness.export import export
    from harness.report.blocks import common_blocks

    console = console_for(json_path)
    user_data = checked_inputs(profile, allow_code, input_shape, dataset)  # before the model: fail fast
    spec = resolve(model, checkpoint, profile, allow_code, input_shape)
    if candidate_outputs is not None and not candidate_outputs.is_file():
        raise InputError(f"{candidate_outputs}: recorded outputs file not found")
    targets = [] if candidate_outputs is not None and not backends else parse_targets(backends, precision)
    data = (user_data if user_data is not None else embedded_benchmark(spec.task)).limit(limit)
    exported = export(spec)
    if artifact is not None:
        _check_artifact(artifact, targets, backends)
    calibration_data = None
    if any(t.precision == "int8" for t in targets) and artifact is None:
        calibration_data = calibration_set(spec, calibration)
    with Progress(TextColumn("[progress.description]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(f"compare {spec.name}", total=len(data))
        core = run_compare(exported, data, targets, batch_size=batch_size, threads=threads,
                           progress=lambda n: bar.advance(task, n), calibration=calibration_data,
                           artifact=artifact, recorded=candidate_outputs)
    report = {
        **common_blocks(SCHEMA, exported, data, data.fingerprint(), core["processed"], core["failed"],
                        core["reference"], threads, {"benchmark": BENCHMARK_SEED} if dataset is None else {},
                        {t.backend.name for t in targets} | {core["reference"]["backend"]},
                        model={"source": spec.source, "onnx": str(exported.onnx_path), "exporter": exported.exporter,
                               "opset": exported.opset},
                        dataset={"path": str(data.root), "task": core["task"]}),
        "results": core["results"],
        "calibration": core["calibration"],
        "artifact": str(artifact) if artifact else None,
    }
    _show_compare(console, report, json_path, html)
    if any(row["status"] == "failed" for row in core["results"]):
        raise typer.Exit(1)


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
    precision: Annotated[str, typer.Option("--precision", help="fp32, fp16, bf16 or int8.")] = "fp32",
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
        "--unit-samples", min=1, help="Run the isolated ops on the first N samples only (default: all).")] = None,
    repro: Annotated[Optional[Path], typer.Option("--repro", help="Write the minimal repro folder here.")] = None,
    json_path: JsonOpt = None,
    html: HtmlOpt = None,
    checkpoint: CheckpointOpt = None,
    profile: ProfileOpt = None,
    allow_code: AllowCodeOpt = False,
    input_shape: InputShapeOpt = None,
    calibration: CalibrationOpt = None,
    artifact: Annotated[Optional[Path], typer.Option(
        "--artifact", help="The deployed file the candidate runs (e.g. a QDQ .onnx made elsewhere).")] = None,
) -> None:
    """Layer-wise drift: every tensor on the candidate vs the tensor reference, the first divergence, the
    error each op introduces vs inherits, and a minimal repro."""
    from harness.backends import parse_target
    from harness.calibration import calibration_set
    from harness.compare.drift import Thresholds, drift_report
    from harness.data import embedded_benchmark
    from harness.report.drift import drift_summary, drift_table, introducers_table

    user_data = checked_inputs(profile, allow_code, input_shape, dataset)  # before the model: fail fast
    spec = resolve(model, checkpoint, profile, allow_code, input_shape)
    console = console_for(json_path)
    target, device = parse_target(backend)
    if artifact is not None and not artifact.is_file():
        raise InputError(f"{artifact}: deployed artefact not found")
    data = (user_data if user_data is not None else embedded_benchmark(spec.task)).limit(limit)
    report = drift_report(spec, target.name, device, precision, data, batch_size, threads,
                          Thresholds(snr_floor, atol, rtol), taps, unit_samples,
                          calibration_set(spec, calibration) if precision == "int8" and not artifact else None, repro,
                          artifact)
    try:
        console.print(drift_table(report))
        console.print(introducers_table(report))
        console.print(drift_summary(report), highlight=False)
        print_data_notes(console, report)
    finally:
        write_reports(report, json_path, html)


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
