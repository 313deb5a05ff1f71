"""A run: a dataset pushed through pre-processing -> model on a backend -> post-processing.

The one engine is harness.pipeline.StagedPipeline (compare, sysnoise and validate evaluate their
requests on it: one pass over the data, the very same input tensors for every model configuration, which
is what "matched pre-processing" means). Its pre-processing stages (harness.stages) also make the batches
of the passes that tap tensors inside the model (drift, export-inputs, calibration): `iter_batches`.
Failures stay local: a sample that cannot be read is counted and skipped.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator

import numpy as np

from harness.data import Dataset, Sample, printable
from harness.errors import InputError, SampleError
from harness.preprocess import Geometry, normalize
from harness.profile import Profile
from harness.stages import Preprocessor, read_failure


@dataclass
class Batch:
    samples: list[Sample]
    tensor: np.ndarray                 # float32[N, 3, S, S] (a text batch: its input_ids)
    geometries: list[Geometry]
    positions: list[int]               # of the samples in the dataset
    feeds: dict = field(default_factory=dict)  # a text batch's named inputs (token ids, mask), padded

    def named(self, input_names) -> dict[str, np.ndarray]:
        """The model's inputs by name: a text batch's feeds, or the image tensor as the first input."""
        return self.feeds or {input_names[0]: self.tensor}

    def sliced(self, start: int, stop: int) -> "Batch":
        return Batch(self.samples[start:stop], self.tensor[start:stop], self.geometries[start:stop],
                     self.positions[start:stop], {name: value[start:stop] for name, value in self.feeds.items()})


@dataclass
class FailedSample:
    sample: str
    path: str
    reason: str

    def to_json(self) -> dict:
        return {"sample": self.sample, "path": self.path, "reason": self.reason}


def require_readable(dataset: Dataset, profile: Profile) -> None:
    """One line and exit 2 when not one sample can be read and decoded by the reference's decoder, before
    any work: a run over nothing would report an empty or NaN metric (or "no divergence") as a result.
    Costs one decode when the first sample is fine."""
    from harness.preprocess import decode

    if not dataset.samples:
        raise InputError(f"{dataset.root}: the dataset holds no samples")
    if dataset.samples[0].text is not None:  # a text set: its loader has read every sample
        return
    first = None
    for sample in dataset.samples:
        try:
            decode(dataset.read(sample), profile.decoder)
            return
        except (OSError, SampleError) as err:
            first = first or f"{sample.id}: {read_failure(err)}"
    raise InputError(f"{dataset.root}: none of its {len(dataset.samples)} samples can be read with the "
                     f"{profile.decoder} decoder (first: {first})")


def iter_batches(dataset: Dataset, profile: Profile, batch_size: int, failures: list[FailedSample],
                 positions: range | None = None, spec=None) -> Iterator[Batch]:
    """Pre-processed batches through the pre-processing stages every run uses (harness.stages): one per run
    of `batch_size` dataset positions (of `positions`, which starts at a multiple of `batch_size`; default:
    all), holding its readable samples. Unreadable samples go to `failures` and are left out, so their
    batch is short: batch k holds positions k*b to (k+1)*b - 1 whatever came before, as in the staged
    pipeline's chunks, and a data-parallel shard of whole batches meets the batches one pass meets.
    `spec`: a text model's (its tokeniser and inputs); its batches carry their padded feeds."""
    positions = range(len(dataset.samples)) if positions is None else positions
    if spec is not None and spec.text_inputs:
        yield from _text_batches(dataset, profile, spec, batch_size, failures, positions)
        return
    stages = Preprocessor(dataset)
    for start in range(positions.start, positions.stop, batch_size):
        pending = []
        for position in range(start, min(start + batch_size, positions.stop)):
            sample = dataset.samples[position]
            found = stages.pixels(sample, profile)
            stages.drop()  # one sample at a time: nothing here is used twice
            if found is None:
                failures.append(FailedSample(sample.id, printable(sample.path),
                                             read_failure(stages.failures[sample.id][1])))
            else:
                pending.append((sample, *found, position))
        if pending:
            yield _collate(pending, profile)


def _text_batches(dataset: Dataset, profile: Profile, spec, batch_size: int, failures: list[FailedSample],
                  positions: range) -> Iterator[Batch]:
    from harness.stages import TextPreprocessor

    stages = TextPreprocessor(dataset, None, spec.tokenizer)
    for start in range(positions.start, positions.stop, batch_size):
        window = list(range(start, min(start + batch_size, positions.stop)))
        inputs = stages.stack([dataset.samples[p] for p in window], profile)
        for sample_id, (_, err) in stages.failures.items():
            failures.append(FailedSample(sample_id, sample_id, read_failure(err)))
        stages.failures.clear()
        if inputs is None:
            continue
        kept = set(inputs.ids)
        loaded = [p for p in window if dataset.samples[p].id in kept]
        feeds = inputs.feeds(0, len(loaded), profile, spec.input_names)
        yield Batch([dataset.samples[p] for p in loaded], feeds[spec.input_names[0]], [None] * len(loaded), loaded,
                    feeds)


def _collate(items, profile: Profile) -> Batch:
    tensor = normalize(np.stack([item[1] for item in items]), profile)
    return Batch([i[0] for i in items], tensor, [i[2] for i in items], [i[3] for i in items])


def timing_summary(load_s: float, batch_ms: list[float]) -> dict:
    times = np.asarray(batch_ms, np.float64)
    return {"load_s": round(load_s, 4),
            "batch_ms": round(float(np.median(times)), 3) if len(times) else None,
            "batch_ms_p90": round(float(np.percentile(times, 90)), 3) if len(times) else None,
            "batches": int(len(times))}
