"""INT8 calibration data: one concept for every backend's own quantizer.

A calibration set is a seeded subset of the **training** data (never the evaluation split), pushed
through the model's training profile, i.e. the same matched pre-processing the comparison uses. Zoo
models draw it from the generator's training split; other models from `--calibration DIR`.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from harness.model import ModelSpec
from harness.run import FailedSample, iter_batches

DEFAULT_COUNT = 64
DEFAULT_SEED = 0


@dataclass(frozen=True)
class CalibrationSet:
    """float32[N, 3, S, S] pre-processed training samples, and where they came from."""

    tensors: np.ndarray
    source: str
    seed: int

    @property
    def sha256(self) -> str:
        return hashlib.sha256(np.ascontiguousarray(self.tensors).tobytes()).hexdigest()

    def samples(self):
        """One [1, 3, S, S] array at a time, as quantizers' data readers want them."""
        for k in range(len(self.tensors)):
            yield self.tensors[k:k + 1]

    def describe(self) -> dict:
        return {"source": self.source, "samples": int(len(self.tensors)), "seed": self.seed,
                "sha256": self.sha256}


def _from_generator(spec: ModelSpec, count: int, seed: int) -> CalibrationSet:
    from harness.data.benchmark import SEED
    from harness.models.train import RECIPES
    from harness.tasks import get_task
    from harness.preprocess import normalize, to_pixels

    recipe = RECIPES[spec.name]
    indices = np.random.default_rng(seed).choice(recipe.train_count, size=count, replace=False)
    make = get_task(spec.task).scene()
    scenes = [make(SEED, "train", int(i), spec.profile.input_size) for i in indices]
    # a top-down model is calibrated on crops of instances, as it runs: each scene's first figure
    pixels = [to_pixels(scene.jpeg, spec.profile, scene.boxes[0] if spec.profile.geometry == "topdown" and
                        len(scene.boxes) else None)[0] for scene in scenes]
    return CalibrationSet(normalize(np.stack(pixels), spec.profile),
                          f"embedded training split (generator seed {SEED}), {count} samples", seed)


def _from_dataset(spec: ModelSpec, path: Path, count: int, seed: int) -> CalibrationSet:
    from harness.data import evaluation_data, load_dataset
    from harness.errors import InputError

    if not path.exists():
        raise InputError(f"{path}: calibration folder not found (--calibration names the model's training images)")
    dataset = evaluation_data(spec.task, load_dataset(path), None)  # as the model sees them (whole images or crops)
    order = np.random.default_rng(seed).permutation(len(dataset.samples))[:count]
    subset = type(dataset)(dataset.name, dataset.task, dataset.root, dataset.classes,
                           [dataset.samples[k] for k in sorted(order)])
    failures: list[FailedSample] = []
    tensors = [batch.tensor for batch in iter_batches(subset, spec.profile, 64, failures)]
    if not tensors:
        raise InputError(f"{path}: none of the calibration images could be read")
    return CalibrationSet(np.concatenate(tensors), f"{path} ({len(order)} of {len(dataset)} samples)", seed)


def calibration_set(spec: ModelSpec, path: Path | None = None, count: int = DEFAULT_COUNT,
                    seed: int = DEFAULT_SEED) -> CalibrationSet | None:
    """The model's calibration set, or None when it has no training data to draw from."""
    from harness.models.train import RECIPES

    if path is not None:
        return _from_dataset(spec, Path(path), count, seed)
    if spec.source == f"zoo:{spec.name}" and spec.name in RECIPES:
        return _from_generator(spec, count, seed)
    return None


NO_CALIBRATION = ("INT8 needs calibration images from the model's training data "
                  "(never the evaluation split): pass --calibration DIR")
