"""Sweep cost vs the distinct work it needs, for one fixed configuration (stated in the JSON):
ONNX Runtime FP32 as the model, the pre-processing axes (decoder, resize, colour), N images, batch and
threads fixed.

- hand-written: a plain script doing exactly the distinct work with the same libraries (each image
  decoded once per decoder, resized once per distinct (decoder, resize), inferred once per distinct
  input set). Goal: sweep / hand-written <= 1.3.
- naive: re-runs the whole pipeline per variant, as the SysNoise paper's public code does.
  Goal: naive / sweep >= 5.
"""
from __future__ import annotations

import hashlib
import time

import numpy as np

from harness.data import embedded_benchmark
from harness.export import export
from harness.model import resolve_model
from harness.noise import AXES
from harness.noise.sweep import ModelConfig, StagedPipeline, run_axis
from harness.preprocess import COLORS, apply_geometry, decode, normalize

AXIS_NAMES = ("decoder", "resize", "color")


def _profiles(spec):
    profiles = [spec.profile]
    for name in AXIS_NAMES:
        profiles += [spec.profile.replace(**v.profile) for v in AXES[name].variants(spec, "onnxruntime")]
    return profiles


def _infer(session, pixels, profile, batch_size):
    outputs = []
    for start in range(0, len(pixels), batch_size):
        outputs.append(session.run({"input": normalize(pixels[start:start + batch_size], profile)})["logits"])
    return np.concatenate(outputs)


def bench_sweep(count: int = 200, batch_size: int = 64, threads: int = 2) -> dict:
    from harness.backends import get_backend

    spec = resolve_model("resnet_tiny")
    dataset = embedded_benchmark("classify").limit(count).aligned_to(spec.labels)
    exported = export(spec)
    session = get_backend("onnxruntime").load(exported, "cpu", "fp32", threads)
    session.run({"input": np.zeros((batch_size, 3, 64, 64), np.float32)})
    profiles = _profiles(spec)
    blobs = {s.id: dataset.read(s) for s in dataset.samples}  # file reads are not what is measured
    # warm-up, so no contender pays a first import: every decoder/resizer/colour once, the statistics
    import scipy.stats  # noqa: F401
    first = next(iter(blobs.values()))
    for profile in profiles:
        COLORS[profile.color](apply_geometry(decode(first, profile.decoder), profile)[0])

    started = time.perf_counter()
    pipeline = StagedPipeline(exported, dataset, batch_size, threads)
    pipeline.read_bytes = blobs
    reference = ModelConfig("onnxruntime", "cpu", "fp32")
    for name in AXIS_NAMES:
        run_axis(pipeline, AXES[name], spec.profile, reference, "classify", spec.labels, "top1", "onnxruntime")
    sweep_s = time.perf_counter() - started

    started = time.perf_counter()
    decoded, resized, seen = {}, {}, {}
    for profile in profiles:
        for sample in dataset.samples:
            key = (sample.id, profile.decoder)
            if key not in decoded:
                decoded[key] = decode(blobs[sample.id], profile.decoder)
            rkey = (sample.id, profile.decoder, profile.resize)
            if rkey not in resized:
                resized[rkey] = apply_geometry(decoded[key], profile)[0]
        pixels = np.stack([COLORS[profile.color](resized[(s.id, profile.decoder, profile.resize)])
                           for s in dataset.samples])
        digest = hashlib.sha256(pixels.tobytes()).hexdigest()
        if digest not in seen:
            seen[digest] = _infer(session, pixels, profile, batch_size)
    hand_s = time.perf_counter() - started

    started = time.perf_counter()
    for profile in profiles:  # the whole pipeline again for every variant
        pixels = np.stack([COLORS[profile.color](apply_geometry(decode(blobs[s.id], profile.decoder), profile)[0])
                           for s in dataset.samples])
        _infer(session, pixels, profile, batch_size)
    naive_s = time.perf_counter() - started
    return {"name": "sysnoise_sweep_cost", "model": "resnet_tiny", "backend": "onnxruntime fp32",
            "axes": list(AXIS_NAMES), "variants": len(profiles) - 1, "images": count, "batch_size": batch_size,
            "threads": threads, "sweep_s": sweep_s, "hand_written_s": hand_s, "naive_s": naive_s,
            "sweep_over_hand_written": sweep_s / hand_s, "naive_over_sweep": naive_s / sweep_s,
            "goals": {"sweep_over_hand_written_max": 1.3, "naive_over_sweep_min": 5.0},
            "counters": pipeline.counters}
