"""compare's Δ and flips against a candidate whose predictions are known by construction: every fourth
sample is moved to the next class, the rest keep the reference's prediction. The expected numbers come
from torch and the folder names directly, not from the harness's metric code; scoring the candidate with
the reference's predictions (a bug that once left every compare test green) gives Δ 0 and 0 flips here."""
import json
from pathlib import Path

import numpy as np
import torch

from harness.model import resolve_model

SAMPLES = 80


def test_a_constructed_candidate_has_the_flips_and_delta_it_was_built_with(tmp_path, harness_cli):
    folder = tmp_path / "target"
    exported = harness_cli("export-inputs", str(folder), "--limit", str(SAMPLES))
    assert exported.returncode == 0, exported.stderr
    stored = np.load(folder / "inputs.npz", allow_pickle=False)
    ids = [str(s) for s in stored["sample_ids"]]
    spec = resolve_model("resnet_tiny")
    with torch.inference_mode():
        reference = spec.load_torch()(torch.from_numpy(stored["input"])).numpy()
    labels = np.array([spec.labels.index(Path(sample).parts[0]) for sample in ids])  # class folder = label
    reference_pred = reference.argmax(1)
    moved = np.arange(len(ids)) % 4 == 0
    candidate_pred = np.where(moved, (reference_pred + 1) % len(spec.labels), reference_pred)
    logits = np.full((len(ids), len(spec.labels)), -5.0, np.float32)
    logits[np.arange(len(ids)), candidate_pred] = 5.0
    np.savez(tmp_path / "outputs.npz", sample_ids=np.array(ids), logits=logits)

    result = harness_cli("compare", "--candidate-outputs", str(tmp_path / "outputs.npz"), "--limit", str(SAMPLES),
                         "--json", str(tmp_path / "c.json"))
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "c.json").read_text())
    (row,) = report["results"]
    reference_top1 = float(np.mean(reference_pred == labels))
    candidate_top1 = float(np.mean(candidate_pred == labels))
    assert report["reference"]["metric"]["top1"] == reference_top1
    assert row["metric"]["top1"] == candidate_top1
    assert row["delta"]["top1"] == candidate_top1 - reference_top1 != 0.0
    assert row["outputs"]["flips"] == int(moved.sum()) == SAMPLES // 4
    assert row["outputs"]["top1_agreement"] == 1 - moved.mean()
    flipped = {flip["sample"]: flip for flip in row["flipped"]}
    assert set(flipped) == {ids[k] for k in np.where(moved)[0]}
    first = int(np.where(moved)[0][0])
    assert flipped[ids[first]]["candidate_pred"] == spec.labels[candidate_pred[first]]
    assert flipped[ids[first]]["reference_pred"] == spec.labels[reference_pred[first]]
