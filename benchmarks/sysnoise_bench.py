"""Sweep cost vs the distinct work it needs, for one fixed configuration (stated in the JSON): the zoo
detector (every CPU axis applies to it: decoder, resize, colour, precision, ceil mode, upsample, NMS, box
decoding), ONNX Runtime as the model for every variant (the precision axis: ORT FP16 and INT8; the
`backend` axis is other backends by definition and is left out), N images, batch and threads fixed, the
mAP bootstrap off (its rounds cost the same in any sweep, so they would only dilute the ratio).

Every contender uses the same ONNX Runtime sessions, built before timing (INT8 calibration and graph
rewrites are not what is compared), and the same files, read before timing.

- hand-written: a plain script doing exactly the distinct work with the same libraries and functions:
  each image decoded once per decoder, resized once per distinct (decoder, resize), coloured and inferred
  once per distinct input set and model, post-processed once per distinct post-processing, each distinct
  result evaluated once (harness.metrics.coco_evaluate: faster-coco-eval). Goal: sweep / hand-written <= 1.3.
- naive: the whole pipeline (decode, resize, colour, inference, post-processing, evaluation) again for
  every variant, as the SysNoise paper's public code does (one evaluation run per noise setting).
  Goal: naive / sweep >= 5. `naive_over_hand_written` is the ceiling of that ratio for this configuration:
  a sweep cannot skip distinct work, and most of a variant's work is its own (its inference, its
  post-processing, its COCO evaluation). `naive_stage_s` says where the naive loop's time goes, and
  `naive_preprocessing_share` how much of it is decode, resize and colour, the stages a sweep shares.
- the sweep once more with pycocotools evaluating instead of faster-coco-eval: `coco_library_speedup`.
"""
from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass

import numpy as np

from harness.calibration import calibration_set
from harness.data import embedded_benchmark
from harness.export import export
import harness.metrics as harness_metrics
from harness.metrics import coco_evaluate, metrics_of
from harness.model import resolve_model
from harness.noise import AXES, Axis
from harness.pipeline import ModelConfig, StagedPipeline
from harness.noise.sweep import run_axes, variant_configs
from harness.preprocess import COLORS, apply_geometry, color_before_geometry, decode, normalize, stored_size
from harness.tasks import get_task

MODEL = "fcos_tiny"
BACKEND = "onnxruntime"
AXIS_NAMES = ("decoder", "resize", "color", "precision", "ceil_mode", "upsample", "nms", "box_decode")


@dataclass(frozen=True)
class OnBackend(Axis):
    """An axis restricted to the variants that run on one backend (or change no model at all)."""

    backend: str = BACKEND

    def variants(self, spec, graph_backend):
        return [v for v in super().variants(spec, graph_backend) if v.target is None or v.target.backend == self.backend]


def _axes():
    return [OnBackend(AXES[name].name, AXES[name].stage, AXES[name].description) for name in AXIS_NAMES]


def _plan(spec, reference: ModelConfig):
    """(profile, config, baseline config) of every variant, the reference first."""
    plan = [(spec.profile, reference, reference)]
    for axis in _axes():
        for variant in axis.variants(spec, BACKEND):
            profile = spec.profile.replace(**variant.profile) if variant.profile else spec.profile
            plan.append((profile, *variant_configs(variant, reference)))
    return plan


def _infer(session, pixels: np.ndarray, profile, batch_size: int) -> dict[str, np.ndarray]:
    chunks: dict[str, list] = {}
    for start in range(0, len(pixels), batch_size):
        for name, value in session.run({session.input_names[0]: normalize(pixels[start:start + batch_size],
                                                                           profile)}).items():
            chunks.setdefault(name, []).append(value)
    return {name: np.concatenate(parts) for name, parts in chunks.items()}


def _predictions(spec, samples, outputs, geometries, profile, batch_size: int) -> list:
    predictions = []
    for start in range(0, len(samples), batch_size):
        stop = start + batch_size
        predictions.extend(get_task(spec.task).predictions({k: v[start:stop] for k, v in outputs.items()},
                                                           geometries[start:stop], profile, spec.head))
    return predictions


def _lap(totals: dict[str, float], stage: str, since: float) -> float:
    now = time.perf_counter()
    totals[stage] += now - since
    return now


def bench_sweep(count: int | None = None, batch_size: int = 32, threads: int = 2) -> dict:
    spec = resolve_model(MODEL)
    dataset = embedded_benchmark(spec.task).limit(count).aligned_to(spec.labels)
    samples, classes = dataset.samples, len(spec.labels)
    truth = [(s.boxes, s.box_labels) for s in samples]
    exported = export(spec)
    reference = ModelConfig(BACKEND, "cpu", "fp32")
    plan = _plan(spec, reference)
    blobs = {s.id: dataset.read(s) for s in samples}  # file reads are not what is measured

    warm = StagedPipeline(exported, dataset, batch_size, threads, calibration_set(spec, count=32), bootstrap_rounds=0)
    first = blobs[samples[0].id]
    for profile, config, base_config in plan:  # sessions built, every decoder/resizer/colour imported once
        for model_config in (config, base_config):
            warm.session(model_config).run({"input": np.zeros((1, 3, 128, 128), np.float32)})
        COLORS[profile.color](apply_geometry(decode(first, profile.decoder), profile, stored_size(first))[0])
    import scipy.stats  # noqa: F401
    sessions = warm.models.sessions

    def sweep():
        started = time.perf_counter()
        pipeline = StagedPipeline(exported, dataset, batch_size, threads, None, bootstrap_rounds=0)
        pipeline.stages.read, pipeline.models.sessions = (lambda sample: blobs[sample.id]), dict(sessions)
        results = run_axes(pipeline, _axes(), spec.profile, reference, spec.task, spec.labels, "map", BACKEND)
        return time.perf_counter() - started, pipeline, results

    # the same sweep with pycocotools evaluating (the reference library), then with the harness's default
    default_library = harness_metrics.COCO_LIBRARY
    harness_metrics.COCO_LIBRARY = "pycocotools"
    try:
        pycocotools_s, _, pycocotools_results = sweep()
    finally:
        harness_metrics.COCO_LIBRARY = default_library
    sweep_s, pipeline, axis_results = sweep()
    failed = [f"{a['axis']}/{v['name']}: {v['reason']}" for a in axis_results for v in a["variants"]
              if v["status"] != "ok"]
    sweep_deltas = [v["delta"] for a in axis_results for v in a["variants"] if v["status"] == "ok"]

    started = time.perf_counter()
    decoded, resized, inputs, outputs, predictions, metrics = {}, {}, {}, {}, {}, {}
    work = {"decodes": 0, "resizes": 0, "inference_passes": 0, "postprocess_passes": 0, "evaluations": 0}

    def evaluated(profile, config):
        pre = profile.stage_key("pre")
        if pre not in inputs:
            pixels, geometries = [], []
            for sample in samples:
                data = blobs[sample.id]
                if (sample.id, profile.decoder) not in decoded:
                    decoded[sample.id, profile.decoder] = decode(data, profile.decoder)
                    work["decodes"] += 1
                at_decode = color_before_geometry(profile)  # a camera's YUV: converted before the resize
                rkey = (sample.id, profile.decoder, profile.resize, profile.color if at_decode else "")
                if rkey not in resized:
                    image = decoded[sample.id, profile.decoder]
                    resized[rkey] = apply_geometry(COLORS[profile.color](image) if at_decode else image, profile,
                                                   stored_size(data))
                    work["resizes"] += 1
                pixels.append(resized[rkey][0] if at_decode else COLORS[profile.color](resized[rkey][0]))
                geometries.append(resized[rkey][1])
            stacked = np.stack(pixels)
            inputs[pre] = (hashlib.sha256(stacked.tobytes()).hexdigest(), stacked, geometries)
        digest, pixels, geometries = inputs[pre]
        if (digest, config) not in outputs:
            outputs[digest, config] = _infer(sessions[config], pixels, profile, batch_size)
            work["inference_passes"] += 1
        post = (digest, config, profile.stage_key("post"))
        if post not in predictions:
            predictions[post] = _predictions(spec, samples, outputs[digest, config], geometries, profile, batch_size)
            work["postprocess_passes"] += 1
            metrics[post] = metrics_of(coco_evaluate(truth, predictions[post], classes))
            work["evaluations"] += 1
        return metrics[post]["map"]

    hand_deltas = [evaluated(profile, config) - evaluated(spec.profile, base)
                   for profile, config, base in plan[1:]]
    hand_s = time.perf_counter() - started

    started = time.perf_counter()
    baselines = [(spec.profile, reference)] + [(spec.profile, b) for b in dict.fromkeys(b for _, _, b in plan[1:])
                                               if b != reference]
    naive_runs = baselines + [(profile, config) for profile, config, _ in plan[1:]]
    naive_metric = {}
    # where the naive loop's time goes: only its first stage (decode, resize, colour) is what a sweep can share
    # across most variants; the rest is mostly each variant's own work
    naive_stage_s = dict.fromkeys(("decode_resize_colour", "inference", "postprocess", "evaluation"), 0.0)
    for profile, config in naive_runs:  # one evaluation run per noise setting: everything again
        mark = time.perf_counter()
        pixels, geometries = [], []
        for sample in samples:
            data = blobs[sample.id]
            image = decode(data, profile.decoder)
            if color_before_geometry(profile):
                image, geometry = apply_geometry(COLORS[profile.color](image), profile, stored_size(data))
            else:
                image, geometry = apply_geometry(image, profile, stored_size(data))
                image = COLORS[profile.color](image)
            pixels.append(image)
            geometries.append(geometry)
        stacked = np.stack(pixels)
        mark = _lap(naive_stage_s, "decode_resize_colour", mark)
        result = _infer(sessions[config], stacked, profile, batch_size)
        mark = _lap(naive_stage_s, "inference", mark)
        predicted = _predictions(spec, samples, result, geometries, profile, batch_size)
        mark = _lap(naive_stage_s, "postprocess", mark)
        naive_metric[profile, config] = metrics_of(coco_evaluate(truth, predicted, classes))["map"]
        _lap(naive_stage_s, "evaluation", mark)
    naive_s = time.perf_counter() - started
    naive_deltas = [naive_metric[profile, config] - naive_metric[spec.profile, base] for profile, config, base in plan[1:]]

    return {"name": "sysnoise_sweep_cost", "model": MODEL, "backend": f"{BACKEND} (fp32; fp16/int8 on the precision "
            "axis)", "axes": list(AXIS_NAMES), "variants": len(plan) - 1, "images": len(samples),
            "batch_size": batch_size, "threads": threads, "bootstrap_rounds": 0,
            "sweep_s": sweep_s, "hand_written_s": hand_s, "naive_s": naive_s, "coco_library": default_library,
            # the sweep with pycocotools' Python COCOeval instead (same deltas: coco_libraries_agree)
            "sweep_s_pycocotools": pycocotools_s, "coco_library_speedup": pycocotools_s / sweep_s,
            "coco_libraries_agree": bool(np.allclose(sweep_deltas, [v["delta"] for a in pycocotools_results
                                                                    for v in a["variants"] if v["status"] == "ok"],
                                                     atol=1e-9)),
            "sweep_over_hand_written": sweep_s / hand_s, "naive_over_sweep": naive_s / sweep_s,
            # the most any sweep doing only the distinct work can gain over the naive loop here
            "naive_over_hand_written": naive_s / hand_s,
            "naive_stage_s": naive_stage_s,
            # the part of the naive loop a sweep can share; sharing it all gains at most 1 / (1 - share)
            "naive_preprocessing_share": naive_stage_s["decode_resize_colour"] / naive_s,
            "goals": {"sweep_over_hand_written_max": 1.3, "naive_over_sweep_min": 5.0},
            "counters": pipeline.counters, "hand_written_work": work, "naive_runs": len(naive_runs),
            "failed_variants": failed,
            # the sweep did exactly the hand-written script's distinct work, stage by stage
            "same_work": pipeline.counters["decodes"] == work["decodes"]
            and pipeline.counters["resizes"] == work["resizes"]
            and pipeline.counters["inferences"] == work["inference_passes"] * len(samples),
            "deltas_agree": bool(np.allclose(sweep_deltas, hand_deltas, atol=1e-9)
                                 and np.allclose(sweep_deltas, naive_deltas, atol=1e-9))}


if __name__ == "__main__":
    import json
    print(json.dumps(bench_sweep(), indent=2))
