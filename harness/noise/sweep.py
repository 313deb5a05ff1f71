"""The SysNoise sweep on a cached stage pipeline.

Stages are cached by (input, stage parameters): each image is decoded once per decoder, resized once
per (decoder, pre-processing profile); inference runs once per distinct input set (by content) per
model configuration; post-processing never re-runs inference. `counters` records the work done.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from harness.compare.outputs import agreement, mean_kl
from harness.errors import BackendUnavailable, SampleError
from harness.noise import Axis, Variant
from harness.noise.stats import mcnemar_exact, paired_bootstrap_ci, significant
from harness.preprocess import COLORS, apply_geometry, decode, normalize, stored_size
from harness.profile import Profile
from harness.run import Batch, postprocess
from harness.variants import lookup


@dataclass
class Inputs:
    """One pre-processing profile applied to the dataset: uint8 pixels of the samples that loaded."""

    ids: list[str]
    pixels: np.ndarray
    geometries: list
    digest: str


GRAPH_BASELINE = (("baseline", True),)  # the model-stage baseline: unrewritten graph, same path as rewrites


@dataclass(frozen=True)
class ModelConfig:
    backend: str
    device: str
    precision: str
    graph: tuple = ()          # sorted (name, value) pairs of a graph rewrite


@dataclass
class Evaluated:
    ids: list[str]
    predictions: list
    outputs_digest: str       # of the post-processed predictions: identity is judged where the metric looks


def predictions_digest(predictions: list) -> str:
    digest = hashlib.sha256()
    for prediction in predictions:
        parts = (prediction.boxes, prediction.scores, prediction.labels) if hasattr(prediction, "boxes") \
            else (prediction,)
        for part in parts:
            digest.update(np.ascontiguousarray(part).tobytes())
    return digest.hexdigest()


class StagedPipeline:
    def __init__(self, exported, dataset, batch_size: int = 64, threads: int | None = None, calibration=None,
                 bootstrap_seconds: float = 10.0, bootstrap_scope: str = "all"):
        self.exported, self.dataset = exported, dataset
        self.batch_size, self.threads, self.calibration = batch_size, threads, calibration
        self.bootstrap_seconds = bootstrap_seconds  # bound on each mAP bootstrap
        # "all": every detection variant gets its mAP interval; "largest": per axis only the variant with the
        # largest |Δ| (an interval costs ~200 COCO accumulations: seconds per variant)
        self.bootstrap_scope = bootstrap_scope
        self.by_id = {s.id: s for s in dataset.samples}
        self.decoded: dict = {}
        self.resized: dict = {}
        self.read_bytes: dict[str, bytes] = {}  # optional pre-read file contents (benchmarks)
        self.inputs_cache: dict = {}
        self.outputs_cache: dict = {}
        self.evaluated: dict = {}
        self.sessions: dict = {}
        self.coco_cache: dict = {}           # see coco()
        self.last_candidate_coco = None
        self.failures: dict[str, str] = {}
        self.counters = {"decodes": 0, "resizes": 0, "inferences": 0, "distinct_inputs": 0}

    # pre-processing --------------------------------------------------------------------------------
    def _decoded(self, sample, decoder: str):
        key = (sample.id, decoder)
        if key not in self.decoded:
            try:
                data = self.read_bytes[sample.id] if sample.id in self.read_bytes else self.dataset.read(sample)
                self.decoded[key] = (decode(data, decoder), stored_size(data))
            except (OSError, SampleError) as err:
                self.decoded[key] = None
                self.failures.setdefault(sample.id, f"{decoder}: {err}")
            self.counters["decodes"] += 1
        return self.decoded[key]

    def _resized(self, sample, profile: Profile):
        """(pixels, geometry) after decode and geometry, cached apart from colour: colour variants re-use it."""
        key = (sample.id, profile.decoder, profile.resize, profile.geometry, profile.input_size, profile.resize_size)
        if key not in self.resized:
            decoded = self._decoded(sample, profile.decoder)
            self.resized[key] = None if decoded is None else apply_geometry(decoded[0], profile, decoded[1])
            if decoded is not None:
                self.counters["resizes"] += 1
        return self.resized[key]

    def inputs(self, profile: Profile) -> Inputs:
        key = profile.stage_key("pre")
        if key not in self.inputs_cache:
            ids, pixels, geometries = [], [], []
            color = lookup(COLORS, "color mode", profile.color)
            for sample in self.dataset.samples:
                resized = self._resized(sample, profile)
                if resized is None:
                    continue
                ids.append(sample.id)
                pixels.append(color(resized[0]))
                geometries.append(resized[1])
            stacked = np.stack(pixels)
            digest = hashlib.sha256(stacked.tobytes() + "|".join(ids).encode()).hexdigest()
            self.inputs_cache[key] = Inputs(ids, stacked, geometries, digest)
        return self.inputs_cache[key]

    # inference ---------------------------------------------------------------------------------------
    def model(self, config: ModelConfig):
        """The exported model a configuration runs: a graph rewrite's file, or the export itself."""
        from harness.noise.graph import rewritten_model

        if not config.graph:
            return self.exported
        # a rewrite, or the unrewritten graph through the same rewrite path
        return rewritten_model(self.exported, **({} if config.graph == GRAPH_BASELINE else dict(config.graph)))

    def _session(self, config: ModelConfig):
        if config not in self.sessions:
            from harness.backends import get_backend

            model = self.model(config)
            # spinning=False: a sweep interleaves decoding/resizing with inference, and ONNX Runtime's
            # busy-waiting threads would starve it (measured: torchvision decode 0.13 -> 12 ms per image)
            self.sessions[config] = get_backend(config.backend).load(
                model, config.device, config.precision, self.threads, calibration=self.calibration, spinning=False)
        return self.sessions[config]

    def outputs(self, profile: Profile, config: ModelConfig) -> tuple[Inputs, dict[str, np.ndarray]]:
        inputs = self.inputs(profile)
        key = (inputs.digest, config)
        if key not in self.outputs_cache:
            if not any(k[0] == inputs.digest for k in self.outputs_cache):
                self.counters["distinct_inputs"] += 1
            session = self._session(config)
            chunks: dict[str, list] = {}
            for start in range(0, len(inputs.ids), self.batch_size):
                tensor = normalize(inputs.pixels[start:start + self.batch_size], profile)
                for name, value in session.run({session.input_names[0]: tensor}).items():
                    chunks.setdefault(name, []).append(value)
                self.counters["inferences"] += len(tensor)
            self.outputs_cache[key] = {name: np.concatenate(parts) for name, parts in chunks.items()}
        return inputs, self.outputs_cache[key]

    def evaluate(self, profile: Profile, config: ModelConfig) -> Evaluated:
        inputs, outputs = self.outputs(profile, config)
        key = (inputs.digest, config, profile.stage_key("post"))
        if key not in self.evaluated:  # a baseline is evaluated once, not once per variant
            self.evaluated[key] = self._postprocess(inputs, outputs, profile)
        return self.evaluated[key]

    def _postprocess(self, inputs: Inputs, outputs: dict, profile: Profile) -> Evaluated:
        spec = self.exported.spec
        predictions = []
        for start in range(0, len(inputs.ids), self.batch_size):
            stop = start + self.batch_size
            batch = Batch([self.by_id[i] for i in inputs.ids[start:stop]], None, inputs.geometries[start:stop], [])
            predictions.extend(postprocess(spec.task, {k: v[start:stop] for k, v in outputs.items()}, batch,
                                           profile, spec.head))
        return Evaluated(inputs.ids, predictions, predictions_digest(predictions))

    def coco(self, evaluated: Evaluated, ids: list[str], num_classes: int, baseline: bool = False):
        """pycocotools' accumulated COCOeval of `evaluated` on the samples `ids`, evaluated once per
        (predictions, samples) for a baseline (shared by every variant of an axis) and for the last
        candidate (variants that post-process alike sit next to each other: decoders that decode alike, I420
        and NV12); other candidates are not kept, as an evaluation of a large set is large."""
        from harness.metrics import coco_evaluate

        key = (evaluated.outputs_digest, hashlib.sha256("|".join(ids).encode()).hexdigest())
        if key in self.coco_cache:
            return self.coco_cache[key]
        index = {i: k for k, i in enumerate(evaluated.ids)}
        truth = [(self.by_id[i].boxes, self.by_id[i].box_labels) for i in ids]
        result = coco_evaluate(truth, [evaluated.predictions[index[i]] for i in ids], num_classes)
        if not baseline:
            self.coco_cache.pop(self.last_candidate_coco, None)
            self.last_candidate_coco = key
        self.coco_cache[key] = result
        return result


def reference_metric(pipeline: StagedPipeline, profile: Profile, config: ModelConfig, task: str, classes) -> dict:
    """The task metric of one (profile, model config) on the pipeline's data (evaluated once, cached)."""
    from harness.compare import task_metric

    evaluated = pipeline.evaluate(profile, config)
    samples = [pipeline.by_id[i] for i in evaluated.ids]
    return task_metric(task, samples, evaluated.predictions, evaluated.predictions, len(classes))


def variant_configs(variant: Variant, reference: ModelConfig) -> tuple[ModelConfig, ModelConfig]:
    """(variant's model configuration, its baseline's)."""
    if variant.target is None:
        return reference, reference
    backend, device, precision = variant.target
    if variant.baseline == "same-backend-fp32":
        return ModelConfig(backend, device, precision), ModelConfig(backend, device, "fp32")
    if variant.baseline == "unrewritten-graph":
        graph = tuple(sorted(variant.graph.items()))
        return ModelConfig(backend, device, precision, graph), ModelConfig(backend, device, precision, GRAPH_BASELINE)
    return ModelConfig(backend, device, precision), reference


def _paired(pipeline: StagedPipeline, profile: Profile, config: ModelConfig, base_profile: Profile,
            base_config: ModelConfig) -> tuple[Evaluated, Evaluated, list[str]]:
    """(candidate, baseline, the sample ids both evaluated, in the candidate's order)."""
    candidate = pipeline.evaluate(profile, config)
    baseline = pipeline.evaluate(base_profile, base_config)
    in_baseline = set(baseline.ids)
    return candidate, baseline, [i for i in candidate.ids if i in in_baseline]


def _coco_pair(pipeline: StagedPipeline, candidate: Evaluated, baseline: Evaluated, shared: list[str], classes):
    return (pipeline.coco(baseline, shared, len(classes), baseline=True),
            pipeline.coco(candidate, shared, len(classes)))


def _map_interval(pipeline: StagedPipeline, evaluators, images: int) -> dict:
    from harness.metrics import bootstrap_map_delta

    interval = bootstrap_map_delta(*evaluators, images, seconds=pipeline.bootstrap_seconds)
    return {} if interval is None else {"ci95": list(interval), "significant": significant(interval)}


def output_shape_changes(pipeline: StagedPipeline, profile: Profile, config: ModelConfig, base_profile: Profile,
                         base_config: ModelConfig) -> dict[str, list[list[int]]]:
    """{output: [baseline per-sample shape, candidate per-sample shape]} for the outputs a model variant
    reshapes, e.g. a pooling ceil-mode flip growing a detector's maps from 16 to 17 points a side: the
    first thing to know about a large Δ (both sides' outputs are cached already)."""
    if config == base_config:
        return {}
    _, candidate = pipeline.outputs(profile, config)
    _, baseline = pipeline.outputs(base_profile, base_config)
    return {name: [list(baseline[name].shape[1:]), list(value.shape[1:])] for name, value in candidate.items()
            if name in baseline and value.shape[1:] != baseline[name].shape[1:]}


def first_reshaped(pipeline: StagedPipeline, config: ModelConfig, base_config: ModelConfig) -> dict | None:
    """For a graph rewrite: the first tensor inside the model whose shape it changes (noise.graph)."""
    if not config.graph or config.graph == base_config.graph:
        return None
    from harness.noise.graph import first_reshaped_tensor

    return first_reshaped_tensor(pipeline.model(base_config).onnx_path, pipeline.model(config).onnx_path)


def compare_variant(pipeline: StagedPipeline, task: str, classes, profile: Profile, config: ModelConfig,
                    base_profile: Profile, base_config: ModelConfig, primary: str) -> dict:
    from harness.compare import task_metric

    candidate, baseline, shared = _paired(pipeline, profile, config, base_profile, base_config)
    cand_index = {i: k for k, i in enumerate(candidate.ids)}
    base_index = {i: k for k, i in enumerate(baseline.ids)}
    cand = [candidate.predictions[cand_index[i]] for i in shared]
    base = [baseline.predictions[base_index[i]] for i in shared]
    samples = [pipeline.by_id[i] for i in shared]
    evaluators = None
    if task == "detect":  # one COCO evaluate per side serves the metric and the bootstrap
        from harness.metrics import metrics_of

        evaluators = _coco_pair(pipeline, candidate, baseline, shared, classes)
        base_metric, metric = (metrics_of(e) for e in evaluators)
    else:
        metric = task_metric(task, samples, cand, base, len(classes))
        base_metric = task_metric(task, samples, base, base, len(classes))
    agree = agreement(base, cand)
    row = {"metric": metric, "baseline_metric": base_metric,
           "delta": metric[primary] - base_metric[primary],
           "flip_rate": float(1 - agree.mean()) if len(agree) else None,
           "identical_to_reference": candidate.outputs_digest == baseline.outputs_digest,
           "outputs_sha256": candidate.outputs_digest,
           "samples": len(shared), "ci95": None, "significant": None, "p_value": None, "kl": None,
           "output_shapes_changed": output_shape_changes(pipeline, profile, config, base_profile, base_config),
           "first_reshaped_tensor": first_reshaped(pipeline, config, base_config)}
    if task != "detect":
        row["kl"] = mean_kl(np.asarray(base), np.asarray(cand))
    if task == "detect" and not row["identical_to_reference"] and pipeline.bootstrap_seconds > 0 \
            and pipeline.bootstrap_scope == "all":
        row.update(_map_interval(pipeline, evaluators, len(samples)))
    if task == "classify":
        labels = np.array([s.label for s in samples])
        base_ok = np.asarray(base).argmax(1) == labels
        cand_ok = np.asarray(cand).argmax(1) == labels
        row["ci95"] = list(paired_bootstrap_ci(base_ok, cand_ok))
        row["significant"] = significant(tuple(row["ci95"]))
        row["p_value"] = mcnemar_exact(base_ok, cand_ok)
    return row


def _versions() -> dict:
    """The packages a cell's numbers depend on: a stored cell from other versions is not taken back."""
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in ("harness", "torch", "onnxruntime", "openvino", "apache-tvm", "nncf", "pillow",
                 "opencv-python-headless", "numpy"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = None
    return found


def _cell_context(pipeline: StagedPipeline, reference_profile: Profile, reference_config: ModelConfig, task: str,
                  primary: str) -> dict:
    """Everything a stored cell's result depends on besides its variant (hashes the data files: only
    computed when there is a store)."""
    return {"model": pipeline.exported.sha256, "data": pipeline.dataset.fingerprint(),
            "samples": [s.id for s in pipeline.dataset.samples], "reference": reference_profile.to_json(),
            "reference_config": reference_config, "batch": pipeline.batch_size, "threads": pipeline.threads,
            "calibration": getattr(pipeline.calibration, "sha256", None),
            "bootstrap_seconds": pipeline.bootstrap_seconds, "bootstrap_scope": pipeline.bootstrap_scope,
            "task": task, "primary": primary,
            "versions": _versions()}


def variant_row(name: str, status: str, reason: str, baseline: str) -> dict:
    """A variant's row before (or without) its numbers: every key a report reads, numbers None."""
    return {"name": name, "status": status, "reason": reason, "baseline": baseline, "metric": None,
            "baseline_metric": None, "delta": None, "flip_rate": None, "identical_to_reference": False,
            "outputs_sha256": None, "samples": 0, "ci95": None, "significant": None, "p_value": None, "kl": None,
            "output_shapes_changed": {}, "first_reshaped_tensor": None}


def run_axis(pipeline: StagedPipeline, axis: Axis, reference_profile: Profile, reference_config: ModelConfig,
             task: str, classes, primary: str, graph_backend: str, progress=None, store=None,
             resume: bool = False) -> dict:
    """Every variant of `axis`. With a CellStore, each finished variant row is written to it at once;
    with `resume`, rows already there (same model, data and settings) are taken back, marked `resumed`."""
    from harness.store import cell_key

    variants_out, planned = [], {}
    context = _cell_context(pipeline, reference_profile, reference_config, task, primary) \
        if store is not None else None
    for variant in axis.variants(pipeline.exported.spec, graph_backend):
        key = cell_key(context, axis.name, variant) if store is not None else None
        stored = store.get(key) if store is not None and resume else None
        if stored is not None and (stored.get("status") == "ok" or stored.get("isolated")):
            # ok, or a cell that crashed or timed out in an earlier worker of this run (harness.noise.executor)
            resumed = not stored.get("isolated")
            variants_out.append({**stored, "resumed": True} if resumed else stored)
            pipeline.counters["resumed"] = pipeline.counters.get("resumed", 0) + resumed
            if progress:
                progress(variant.name)
            continue
        profile = reference_profile.replace(**variant.profile) if variant.profile else reference_profile
        config, base_config = variant_configs(variant, reference_config)
        planned[variant.name] = (profile, config, base_config, key)
        if store is not None:
            store.started(key, axis.name, variant.name, variant.baseline)
        entry = variant_row(variant.name, "ok", "", variant.baseline)
        try:
            entry.update(compare_variant(pipeline, task, classes, profile, config, reference_profile, base_config,
                                         primary))
        except BackendUnavailable as err:
            entry.update(status="unavailable", reason=str(err))
        except Exception as err:  # noqa: BLE001 - one crashing variant is a row, the sweep goes on
            entry.update(status="failed", reason=f"{type(err).__name__}: {str(err).splitlines()[0][:300]}")
        if store is not None:
            store.put(key, axis.name, variant.name, entry)
        same = [v["name"] for v in variants_out if v.get("outputs_sha256") and
                v.get("outputs_sha256") == entry.get("outputs_sha256")]
        entry["identical_to"] = same[0] if same else None  # e.g. NV12 gives I420's very samples
        variants_out.append(entry)
        if progress:
            progress(variant.name)
    if task == "detect" and pipeline.bootstrap_scope == "largest" and pipeline.bootstrap_seconds > 0:
        _interval_of_largest(pipeline, axis.name, variants_out, planned, reference_profile, classes, store)
    measured = [v["delta"] for v in variants_out if v["status"] == "ok" and not v["identical_to_reference"]]
    worst = min(measured) if measured else None
    return {"axis": axis.name, "stage": axis.stage, "description": axis.description,
            "delta_mean": float(np.mean(measured)) if measured else 0.0,
            "delta_std": float(np.std(measured)) if measured else 0.0,
            "delta_max": worst, "variants": variants_out,
            "note": "mean/std/max over the variants that ran and differ from the reference"}


def _interval_of_largest(pipeline: StagedPipeline, axis_name: str, variants_out: list[dict], planned: dict,
                         reference_profile: Profile, classes, store) -> None:
    """The mAP interval of the axis's variant with the largest |Δ| (bootstrap_scope "largest")."""
    measured = [v for v in variants_out if v["status"] == "ok" and not v["identical_to_reference"]]
    largest = max(measured, key=lambda v: abs(v["delta"])) if measured else None
    if largest is None or largest.get("ci95") is not None or largest["name"] not in planned:
        return  # nothing measured, or an interval already there (taken back from the store)
    profile, config, base_config, key = planned[largest["name"]]
    candidate, baseline, shared = _paired(pipeline, profile, config, reference_profile, base_config)
    largest.update(_map_interval(pipeline, _coco_pair(pipeline, candidate, baseline, shared, classes), len(shared)))
    if store is not None:
        store.put(key, axis_name, largest["name"], {k: v for k, v in largest.items()
                                                                  if k not in ("identical_to", "resumed")})


def worst_variant(axis_result: dict) -> str | None:
    candidates = [v for v in axis_result["variants"] if v["status"] == "ok" and not v["identical_to_reference"]]
    return min(candidates, key=lambda v: v["delta"])["name"] if candidates else None


def combine(pipeline: StagedPipeline, axis_results: list[dict], reference_profile: Profile,
            reference_config: ModelConfig, task: str, classes, primary: str, graph_backend: str) -> list[dict]:
    """Cumulative curve: each axis, in the paper's order, at its worst variant (chosen on the evaluated
    data, as the paper does) on top of the previous ones."""
    from harness.noise import AXES, PAPER_ORDER

    by_axis = {r["axis"]: r for r in axis_results}
    profile, config, graph = reference_profile, reference_config, {}
    curve = []
    for name in PAPER_ORDER:
        if name not in by_axis or worst_variant(by_axis[name]) is None:
            continue
        chosen = worst_variant(by_axis[name])
        variant = next(v for v in AXES[name].variants(pipeline.exported.spec, graph_backend) if v.name == chosen)
        profile = profile.replace(**variant.profile) if variant.profile else profile
        if variant.target is not None:
            backend, device, precision = variant.target
            if variant.graph:
                graph.update(variant.graph)
                backend = config.backend if config.backend != "torch" else backend
                precision = config.precision
            config = ModelConfig(backend, device, precision, tuple(sorted(graph.items())))
        try:
            row = compare_variant(pipeline, task, classes, profile, config, reference_profile, reference_config,
                                  primary)
            curve.append({"axis": name, "variant": chosen, "metric": row["metric"][primary], "delta": row["delta"],
                          "ci95": row["ci95"], "significant": row["significant"], "flip_rate": row["flip_rate"]})
        except Exception as err:  # noqa: BLE001 - the curve stops where a combination cannot run
            curve.append({"axis": name, "variant": chosen, "metric": None, "delta": None,
                          "reason": f"{type(err).__name__}: {err}"})
            break
    return curve
