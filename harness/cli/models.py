"""`harness export`, `export-inputs` and `backends`: what a model and the installed runtimes are."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from harness.cli.app import app
from harness.cli.common import (AllowCodeOpt, CheckpointOpt, DatasetOpt, InputOpt, InputShapeOpt, PostprocessOpt, JsonOpt, LimitOpt, ModelArg,
                                LabelsOpt, ProfileOpt, TaskOpt, checked_inputs, console_for)
from harness.model import ModelRequest


@app.command("export-inputs")
def export_inputs(
    folder: Annotated[Path, typer.Argument(help="Folder to write inputs.npz, model.onnx and manifest.json into.")],
    model: ModelArg = None,
    dataset: DatasetOpt = None,
    limit: LimitOpt = None,
    checkpoint: CheckpointOpt = None,
    profile: ProfileOpt = None,
    allow_code: AllowCodeOpt = False,
    input_shape: InputShapeOpt = None,
    inputs: InputOpt = None,
    postprocess: PostprocessOpt = None,
    task: TaskOpt = None,
    labels: LabelsOpt = None,
) -> None:
    """Write the exact pre-processed inputs (with sample ids) for a target that cannot host the harness."""
    from harness.data import embedded_benchmark
    from harness.export import export
    from harness.recorded import write_inputs
    from harness.run import iter_batches, require_readable

    request = ModelRequest(model, checkpoint, profile, allow_code, input_shape, task, labels, tuple(inputs or ()),
                           postprocess)
    user_data = checked_inputs(request, dataset)  # before the model: fail fast
    spec = request.resolve()
    data = (user_data if user_data is not None else embedded_benchmark(spec.task)).limit(limit)
    require_readable(data, spec.profile)
    exported = export(spec)
    failures = []
    manifest = write_inputs(folder, exported, data, iter_batches(data, spec.profile, 64, failures), failures)
    Console(stderr=True).print(f"wrote {manifest['samples']} inputs ({len(failures)} failed) to {folder}; "
                               f"{manifest['how']}", highlight=False, markup=False)


@app.command("backends")
def backends_cmd(json_path: JsonOpt = None, markdown: Annotated[bool, typer.Option(
        "--markdown", help="Print the declared backends x devices x precisions table (the README's).")] = False,
        ) -> None:
    """Every known backend: version, devices, precisions, or why it is unavailable."""
    from harness.backends import registry
    from harness.report import write_json
    from harness.report.markdown import backends_markdown
    from harness.report.table import backends_table

    if markdown:
        print(backends_markdown(registry().values()))
        return
    rows = [backend.describe() for backend in registry().values()]
    console_for(json_path).print(backends_table(rows))
    if json_path:
        write_json({"schema": "harness.backends/1", "backends": rows}, json_path)


@app.command("export")
def export_cmd(model: ModelArg = None, checkpoint: CheckpointOpt = None, profile: ProfileOpt = None,
               json_path: JsonOpt = None, allow_code: AllowCodeOpt = False,
               input_shape: InputShapeOpt = None, task: TaskOpt = None, inputs: InputOpt = None) -> None:
    """Export the model to ONNX once (cached by content hash) and print where it is."""
    from harness.export import export
    from harness.report import write_json

    request = ModelRequest(model, checkpoint, profile, allow_code, input_shape, task, inputs=tuple(inputs or ()))
    exported = export(request.resolve())
    info = {"schema": "harness.export/1", "model": exported.spec.name, "onnx": str(exported.onnx_path),
            "onnx_sha256": exported.sha256, "exporter": exported.exporter, "opset": exported.opset,
            "cache_hit": exported.cache_hit, "mapped_tensors": len(exported.name_map.get("tensors", {}))}
    console = console_for(json_path)
    state = "re-used from cache" if exported.cache_hit else "exported"
    console.print(f"{info['model']}: {state} {info['onnx']} ({info['exporter']}, opset {info['opset']}, "
                  f"{info['mapped_tensors']} tensors mapped to torch modules)", markup=False, highlight=False)
    if json_path:
        write_json(info, json_path)
