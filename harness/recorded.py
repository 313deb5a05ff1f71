"""Targets that cannot host the harness (a Jetson, an NPU board, a phone).

`harness export-inputs DIR` writes the exact pre-processed input tensors with their sample ids, the
model, and a manifest; the user runs the model on the target and saves its outputs, keyed by the same
ids, to an .npz. `harness compare --candidate-outputs FILE.npz` then compares those recorded outputs
with the reference through the same post-processing, metrics and reports as any backend.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from harness.backends import Session
from harness.errors import InputError
from harness.files import write_atomic

INPUTS_FILE = "inputs.npz"
IDS_KEY = "sample_ids"


class RecordedSession(Session):
    """Serves outputs recorded on a target, looked up by sample id (never by position)."""

    uses_sample_ids = True

    def __init__(self, path: Path, input_names, output_names):
        super().__init__("recorded", "target", "recorded", input_names, output_names, "unknown")
        try:
            data = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as err:
            raise InputError(f"{path}: not a readable .npz of recorded outputs ({err})") from None
        if IDS_KEY not in data:
            raise InputError(f"{path}: no '{IDS_KEY}' array naming the sample of each output row")
        missing = [name for name in output_names if name not in data]
        if missing:
            raise InputError(f"{path}: missing output array(s) {', '.join(missing)}; it has "
                             f"{', '.join(k for k in data.files if k != IDS_KEY)}")
        self.path = path
        self.row = {str(sample): k for k, sample in enumerate(data[IDS_KEY])}
        self.arrays = {name: data[name] for name in output_names}

    def _run(self, feeds):
        raise InputError(f"{self.path}: recorded outputs are looked up by sample id, not computed from tensors")

    def run_ids(self, sample_ids: list[str]) -> dict[str, np.ndarray]:
        absent = [s for s in sample_ids if s not in self.row]
        if absent:
            raise KeyError(f"{self.path} has no outputs for sample(s) {', '.join(absent[:3])}"
                           f"{' ...' if len(absent) > 3 else ''}")
        rows = [self.row[s] for s in sample_ids]
        return {name: np.asarray(array[rows], np.float32) for name, array in self.arrays.items()}


def write_inputs(folder: Path, exported, dataset, batches, failures) -> dict:
    """Writes inputs.npz (input tensor + sample ids), model.onnx and manifest.json into folder."""
    folder.mkdir(parents=True, exist_ok=True)
    tensors, ids = [], []
    for batch in batches:
        tensors.append(batch.tensor)
        ids.extend(sample.id for sample in batch.samples)
    if not tensors:
        raise InputError(f"{dataset.root}: no sample could be pre-processed")
    np.savez(folder / INPUTS_FILE, **{exported.input_name: np.concatenate(tensors), IDS_KEY: np.array(ids)})
    shutil.copyfile(exported.onnx_path, folder / "model.onnx")
    manifest = {
        "schema": "harness.inputs/1", "model": exported.spec.name, "onnx_sha256": exported.sha256,
        "input": exported.input_name, "outputs": list(exported.output_names), "samples": len(ids),
        "failed": [f.to_json() for f in failures], "profile": exported.spec.profile.to_json(),
        "dataset": {"name": dataset.name, "path": str(dataset.root)},
        "how": (f"run model.onnx on the target for each row of {INPUTS_FILE}['{exported.input_name}'] and save "
                f"np.savez('outputs.npz', {IDS_KEY}=<the same ids>, " +
                ", ".join(f"{name}=<float32 [N, ...]>" for name in exported.output_names) +
                "); then: harness compare --candidate-outputs outputs.npz (same model and dataset)"),
    }
    write_atomic(folder / "manifest.json", json.dumps(manifest, indent=2))  # written last: its presence means done
    return manifest
