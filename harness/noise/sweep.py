"""The SysNoise sweep on a cached, streaming stage pipeline.

A sweep plans every cell (variant) first, then makes one pass over the data in chunks. Within a chunk,
stages are cached by (input, stage parameters): each image is decoded once per decoder, resized once per
(decoder, geometry); inference runs once per distinct input set (by content) per model configuration;
post-processing never re-runs inference. Only per-sample predictions outlive a chunk, so memory does not
grow with the dataset. Then each cell compares its predictions with its baseline's. `counters` records
the work done.
"""
from __future__ import annotations

import hashlib
import json
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
    """One pre-processing profile applied to one chunk of the dataset: uint8 pixels of the samples that loaded."""

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


@dataclass(frozen=True)
class Request:
    """One evaluation a sweep needs: a profile's pre- and post-processing around one model configuration."""

    profile: Profile
    config: ModelConfig

    @property
    def key(self) -> tuple:
        return self.profile.stage_key("pre"), self.config, self.profile.stage_key("post")

    @property
    def stage_order(self) -> tuple:
        """Requests sorted by this share a decoder, then a resize, then an input set, back to back: a chunk
        keeps only the current one of each."""
        profile = self.profile
        return (profile.decoder, repr(_resize_key(profile)), repr(profile.stage_key("pre")), repr(self.config),
                repr(profile.stage_key("post")))


def _resize_key(profile: Profile) -> tuple:
    return profile.decoder, profile.resize, profile.geometry, profile.input_size, profile.resize_size


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


DEFAULT_CHUNK = 256  # images whose intermediates are held at once (~10 MB each at ImageNet geometry)
OUTPUTS_BUDGET = 512 * 2**20  # bytes of raw outputs a chunk keeps for re-use (StagedPipeline._evict_outputs)
SPILL_BYTES = 64 * 2**20     # a request's logits beyond this live in a memory-mapped file (Collected)


class Collected:
    """One request's per-sample predictions over a pass. Classification logits of a large set go to an
    unlinked memory-mapped file in the harness cache: the page cache holds them, not the heap (a
    1000-class model on 50,000 images is 200 MB per request, ~40 requests in a sweep)."""

    def __init__(self, capacity: int):
        self.capacity, self.ids, self.predictions, self.rows = capacity, [], [], None

    def add(self, ids: list[str], predictions: list) -> None:
        start = len(self.ids)
        self.ids.extend(ids)
        if not predictions or not isinstance(predictions[0], np.ndarray):
            self.predictions.extend(predictions)
            return
        if self.rows is None and predictions[0].nbytes * self.capacity > SPILL_BYTES:
            import tempfile

            from harness.cache import cache_root

            cache_root().mkdir(parents=True, exist_ok=True)
            self.rows = np.memmap(tempfile.TemporaryFile(dir=cache_root()), dtype=predictions[0].dtype, mode="w+",
                                  shape=(self.capacity, *predictions[0].shape))
        if self.rows is None:
            self.predictions.extend(predictions)
        else:
            self.rows[start:start + len(predictions)] = np.stack(predictions)
            self.predictions.extend(self.rows[start:start + len(predictions)])  # views: no copy on the heap


class StagedPipeline:
    """Evaluates requests (profile, model configuration) on a dataset in one streaming pass.

    The data is walked in chunks of images. In a chunk, every pending request is run with the stage caches
    of that chunk: each image is decoded once per decoder and resized once per (decoder, geometry); inference
    runs once per distinct input set (by content) per model configuration; post-processing once per distinct
    (inputs, model, post-processing), never re-running inference. Only per-sample predictions outlive the
    chunk, so memory is bounded by the chunk, not the dataset (holding every decode of every decoder of a
    50,000-image ImageNet val would take ~500 GB). A request that raises is recorded as broken and skipped
    for the rest of the pass; `evaluate` raises its error to whichever cell needs it.
    """

    def __init__(self, exported, dataset, batch_size: int = 64, threads: int | None = None, calibration=None,
                 bootstrap_seconds: float = 10.0, bootstrap_scope: str = "all", chunk_size: int = DEFAULT_CHUNK):
        self.exported, self.dataset = exported, dataset
        self.batch_size, self.threads, self.calibration = batch_size, threads, calibration
        # whole batches per chunk: every sample meets the same batch boundaries as in one unchunked pass
        self.chunk_size = -(-max(chunk_size, 1) // batch_size) * batch_size
        self.bootstrap_seconds = bootstrap_seconds  # bound on each mAP bootstrap
        # "all": every detection variant gets its mAP interval; "largest": per axis only the variant with the
        # largest |Δ| (an interval costs ~200 COCO accumulations: seconds per variant)
        self.bootstrap_scope = bootstrap_scope
        self.by_id = {s.id: s for s in dataset.samples}
        self.read_bytes: dict[str, bytes] = {}  # optional pre-read file contents (benchmarks)
        self.evaluated: dict[tuple, Evaluated] = {}
        self.broken: dict[tuple, Exception] = {}
        self.output_shapes: dict[tuple, dict[str, list[int]]] = {}  # (pre key, config) -> per-sample shapes
        self.output_errors: dict[tuple, float] = {}  # (request key, baseline key) -> max abs output difference
        self.input_sets: dict[tuple, str] = {}       # pre key -> digest of its whole input set
        self.sessions: dict = {}
        self.coco_cache: dict = {}           # see coco()
        self.last_candidate_coco = None
        self.failures: dict[str, str] = {}
        self.counters = {"decodes": 0, "resizes": 0, "inferences": 0, "distinct_inputs": 0}
        # called with the cell a request's work is for (its first owner), then None: an executor times cells
        # and blames a crash on the cell whose work was running
        self.on_work = None
        self._owner = None
        # (store, sweep context): each (request, chunk)'s predictions are written to the store as they are
        # done, and taken back instead of recomputed (a restarted worker, --resume)
        self.journal = None
        self._compared_outputs: set = set()  # (pre key, config) whose raw outputs a pass compares
        self._drop_chunk()

    def _drop_chunk(self) -> None:
        self._decoded: dict = {}
        self._decoder = None
        self._resized: dict = {}
        self._resize_current = None
        self._inputs: tuple | None = None   # (pre key, Inputs) of the current input set
        self._chunk_inputs: dict = {}        # pre key -> (digest, ids) of this chunk
        self._outputs: dict = {}             # (inputs digest, config) -> raw outputs (see _evict_outputs)
        self._kept_outputs: set = set()      # of them, those an output comparison needs at the chunk's end
        self._shapes: dict = {}              # (inputs digest, config) -> per-sample output shapes
        self._predictions: dict = {}         # (inputs digest, config, post key) -> predictions of this chunk

    # pre-processing --------------------------------------------------------------------------------
    def _decode(self, sample, decoder: str):
        key = (sample.id, decoder)
        if key not in self._decoded:
            if decoder != self._decoder:  # requests come sorted by decoder: the previous one is done
                self._decoded, self._decoder = {}, decoder
            try:
                data = self.read_bytes[sample.id] if sample.id in self.read_bytes else self.dataset.read(sample)
                self._decoded[key] = (decode(data, decoder), stored_size(data))
            except (OSError, SampleError) as err:
                self._decoded[key] = None
                self.failures.setdefault(sample.id, f"{decoder}: {err}")
            self.counters["decodes"] += 1
        return self._decoded[key]

    def _resize(self, sample, profile: Profile):
        """(pixels, geometry) after decode and geometry, kept apart from colour: colour variants re-use it."""
        key = (sample.id, *_resize_key(profile))
        if key not in self._resized:
            if key[1:] != self._resize_current:  # likewise sorted by resize within a decoder
                self._resized, self._resize_current = {}, key[1:]
            decoded = self._decode(sample, profile.decoder)
            self._resized[key] = None if decoded is None else apply_geometry(decoded[0], profile, decoded[1])
            if decoded is not None:
                self.counters["resizes"] += 1
        return self._resized[key]

    def _chunk_stack(self, samples, profile: Profile) -> Inputs | None:
        key = profile.stage_key("pre")
        if self._inputs is None or self._inputs[0] != key:
            ids, pixels, geometries = [], [], []
            color = lookup(COLORS, "color mode", profile.color)
            for sample in samples:
                resized = self._resize(sample, profile)
                if resized is None:
                    continue
                ids.append(sample.id)
                pixels.append(color(resized[0]))
                geometries.append(resized[1])
            if not ids:
                return None
            stacked = np.stack(pixels)
            digest = hashlib.sha256(stacked.tobytes() + "|".join(ids).encode()).hexdigest()
            self._inputs = key, Inputs(ids, stacked, geometries, digest)
            self._chunk_inputs[key] = digest, ids
        return self._inputs[1]

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

    def _chunk_outputs(self, inputs: Inputs, profile: Profile, config: ModelConfig) -> dict[str, np.ndarray]:
        key = (inputs.digest, config)
        if key not in self._outputs:
            session = self._session(config)
            parts: dict[str, list] = {}
            for start in range(0, len(inputs.ids), self.batch_size):
                tensor = normalize(inputs.pixels[start:start + self.batch_size], profile)
                for name, value in session.run({session.input_names[0]: tensor}).items():
                    parts.setdefault(name, []).append(value)
                self.counters["inferences"] += len(tensor)
            self._outputs[key] = {name: np.concatenate(values) for name, values in parts.items()}
            self._shapes[key] = {name: list(value.shape[1:]) for name, value in self._outputs[key].items()}
            self._evict_outputs(keep=key)
        return self._outputs[key]

    def _evict_outputs(self, keep: tuple) -> None:
        """Raw outputs can be large (a detector's maps at 800 px are MBs per image): beyond OUTPUTS_BUDGET
        bytes in a chunk, the oldest are dropped, except those an output comparison needs at the chunk's
        end. Dropping one costs at most an inference again; what identical input sets share is mostly
        their predictions, which are kept."""
        total = sum(v.nbytes for outputs in self._outputs.values() for v in outputs.values())
        for key in list(self._outputs):
            if total <= OUTPUTS_BUDGET:
                break
            if key != keep and key not in self._kept_outputs:
                total -= sum(v.nbytes for v in self._outputs.pop(key).values())

    def _chunk_predictions(self, samples, request: Request) -> tuple[list[str], list]:
        profile, config = request.profile, request.config
        inputs = self._chunk_stack(samples, profile)
        if inputs is None:
            return [], []
        pre = profile.stage_key("pre")
        if (pre, config) in self._compared_outputs:
            self._kept_outputs.add((inputs.digest, config))
        key = (inputs.digest, config, profile.stage_key("post"))
        if key not in self._predictions or (pre, config) in self._compared_outputs:
            outputs = self._chunk_outputs(inputs, profile, config)
            if key not in self._predictions:
                self._predictions[key] = self._postprocess(inputs, outputs, profile)
        self.output_shapes.setdefault((pre, config), self._shapes[inputs.digest, config])
        return inputs.ids, self._predictions[key]

    def _postprocess(self, inputs: Inputs, outputs: dict, profile: Profile) -> list:
        spec = self.exported.spec
        predictions = []
        for start in range(0, len(inputs.ids), self.batch_size):
            stop = start + self.batch_size
            batch = Batch([self.by_id[i] for i in inputs.ids[start:stop]], None, inputs.geometries[start:stop], [])
            predictions.extend(postprocess(spec.task, {k: v[start:stop] for k, v in outputs.items()}, batch,
                                           profile, spec.head))
        return predictions

    def _track_output_errors(self, pairs: list[tuple[Request, Request]]) -> None:
        """Max abs difference of raw outputs, per (candidate, baseline) pair, over this chunk's shared samples."""
        for request, base in pairs:
            if request.key in self.broken or base.key in self.broken:
                continue
            found = [self._chunk_inputs.get(r.profile.stage_key("pre")) for r in (request, base)]
            if None in found:
                continue
            (cand_digest, cand_ids), (base_digest, base_ids) = found
            cand = self._outputs[cand_digest, request.config]
            baseline = self._outputs[base_digest, base.config]
            base_at = {sample: k for k, sample in enumerate(base_ids)}
            cand_index = [k for k, sample in enumerate(cand_ids) if sample in base_at]
            base_index = [base_at[cand_ids[k]] for k in cand_index]
            errors = [float(np.max(np.abs(np.asarray(baseline[name][base_index], np.float64)
                                          - np.asarray(cand[name][cand_index], np.float64))))
                      for name in baseline if name in cand and cand_index]
            key = (request.key, base.key)
            self.output_errors[key] = max([self.output_errors.get(key, 0.0), *errors])

    # the pass ----------------------------------------------------------------------------------------
    def prepare(self, requests: list[Request], owners: dict | None = None, output_pairs=(), progress=None) -> None:
        """Evaluates every request not evaluated yet, in one pass over the data (see the class). `owners`:
        request key -> the cell its work is for (reported through `on_work`); `output_pairs`: (candidate,
        baseline) requests whose max abs output difference to keep (`output_error`)."""
        output_pairs = [(r, b) for r, b in output_pairs if (r.key, b.key) not in self.output_errors]
        again = {r.key for pair in output_pairs for r in pair}  # raw outputs are not kept: a pair is re-run
        pending: dict[tuple, Request] = {}
        for request in [*requests, *(r for pair in output_pairs for r in pair)]:
            if (request.key not in self.evaluated or request.key in again) and request.key not in self.broken:
                pending.setdefault(request.key, request)
        if not pending:
            return
        order = sorted(pending.values(), key=lambda r: r.stage_order)
        self._compared_outputs = {(r.profile.stage_key("pre"), r.config) for pair in output_pairs for r in pair}
        collected = {request.key: Collected(len(self.dataset.samples)) for request in order}
        running = {request.key: hashlib.sha256() for request in order}
        samples = self.dataset.samples
        owners = owners or {}
        for start in range(0, len(samples), self.chunk_size):
            chunk = samples[start:start + self.chunk_size]
            for request in order:
                if request.key in self.broken:
                    continue
                self._working(owners.get(request.key))
                try:
                    ids, predictions, input_digest = self._piece(chunk, request)
                except Exception as err:  # noqa: BLE001 - one request failing fails only the cells needing it
                    self.broken[request.key] = err
                    collected.pop(request.key)
                    continue
                collected[request.key].add(ids, predictions)
                if input_digest:
                    running[request.key].update(input_digest.encode())
            self._working(None)
            self._track_output_errors(output_pairs)
            self._drop_chunk()
            if progress:
                progress(len(chunk))
        for request in order:
            if request.key in collected:
                done = collected[request.key]
                self.evaluated[request.key] = Evaluated(done.ids, done.predictions, predictions_digest(done.predictions))
                self.input_sets.setdefault(request.profile.stage_key("pre"), running[request.key].hexdigest())
        self.counters["distinct_inputs"] = len(set(self.input_sets.values()))

    def _piece(self, chunk, request: Request) -> tuple[list[str], list, str | None]:
        """(ids, predictions, input set digest) of one request on one chunk: computed, or taken back from the
        journal."""
        pre = request.profile.stage_key("pre")
        journal = self.journal if (pre, request.config) not in self._compared_outputs else None
        if journal is not None:
            store, context = journal
            key = hashlib.sha256(f"{context}|{request.key!r}|{'|'.join(s.id for s in chunk)}".encode()).hexdigest()
            taken = store.take_piece(key)
            if taken is not None:
                ids, predictions, shapes, input_digest, failures = taken
                if shapes is not None:
                    self.output_shapes.setdefault((pre, request.config), shapes)
                for sample, reason in failures.items():
                    self.failures.setdefault(sample, reason)
                self.counters["pieces_taken"] = self.counters.get("pieces_taken", 0) + 1
                return ids, predictions, input_digest
        ids, predictions = self._chunk_predictions(chunk, request)
        input_digest = self._chunk_inputs[pre][0] if ids else None
        if journal is not None:
            failures = {s.id: self.failures[s.id] for s in chunk if s.id in self.failures}
            store.keep_piece(key, context, (ids, predictions, self.output_shapes.get((pre, request.config)),
                                           input_digest, failures))
        return ids, predictions, input_digest

    def _working(self, owner) -> None:
        if self.on_work is not None and owner != self._owner:
            self.on_work(owner)
        self._owner = owner

    def _result(self, request: Request) -> Evaluated:
        if request.key in self.broken:
            raise self.broken[request.key]
        return self.evaluated[request.key]

    def evaluate(self, profile: Profile, config: ModelConfig) -> Evaluated:
        request = Request(profile, config)
        self.prepare([request])
        return self._result(request)

    def output_error(self, profile: Profile, config: ModelConfig, base_profile: Profile,
                     base_config: ModelConfig) -> float:
        """Max abs difference of the raw outputs on the samples both evaluated (tracked during the pass)."""
        request, base = Request(profile, config), Request(base_profile, base_config)
        self.prepare([request, base], output_pairs=[(request, base)])
        self._result(request), self._result(base)
        return self.output_errors.get((request.key, base.key), float("nan"))  # nan: no sample in common

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
    first thing to know about a large Δ (shapes are recorded during the pass)."""
    if config == base_config:
        return {}
    candidate = pipeline.output_shapes.get((profile.stage_key("pre"), config), {})
    baseline = pipeline.output_shapes.get((base_profile.stage_key("pre"), base_config), {})
    return {name: [baseline[name], shape] for name, shape in candidate.items()
            if name in baseline and shape != baseline[name]}


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


@dataclass
class Cell:
    """One variant of one axis, planned: what it runs, what it is measured against, its store key, and its
    row when one was taken back from the store."""

    axis: str
    variant: Variant
    profile: Profile
    config: ModelConfig
    base_config: ModelConfig
    key: str | None
    stored: dict | None
    context: str | None = None  # hash of what every cell of the sweep depends on (with a store)

    @property
    def owner(self) -> tuple:
        return self.key, self.axis, self.variant.name, self.variant.baseline


def plan_axis(pipeline: StagedPipeline, axis: Axis, reference_profile: Profile, reference_config: ModelConfig,
              task: str, primary: str, graph_backend: str, store=None, resume: bool = False) -> list[Cell]:
    from harness.store import cell_key

    context = _cell_context(pipeline, reference_profile, reference_config, task, primary) \
        if store is not None else None
    context_hash = hashlib.sha256(json.dumps(context, sort_keys=True, default=str).encode()).hexdigest() \
        if context is not None else None
    cells = []
    for variant in axis.variants(pipeline.exported.spec, graph_backend):
        key = cell_key(context, axis.name, variant) if store is not None else None
        stored = store.get(key) if store is not None and resume else None
        if stored is not None and not (stored.get("status") == "ok" or stored.get("isolated")):
            stored = None  # ok, or a cell that crashed or timed out in an earlier worker of this run (executor)
        profile = reference_profile.replace(**variant.profile) if variant.profile else reference_profile
        cells.append(Cell(axis.name, variant, profile, *variant_configs(variant, reference_config), key, stored,
                          context_hash))
    return cells


def prepare_cells(pipeline: StagedPipeline, cells: list[Cell], reference_profile: Profile, store=None,
                  first: tuple[Request, ...] = (), progress=None) -> None:
    """One pass over the data for every cell still to compute (its candidate and its baseline). `first`:
    requests no cell owns (the reference: a crash there is the sweep's, not a cell's)."""
    requests, owners = list(first), {request.key: None for request in first}
    for cell in cells:
        if cell.stored is not None:
            continue
        for request in (Request(cell.profile, cell.config), Request(reference_profile, cell.base_config)):
            requests.append(request)
            owners.setdefault(request.key, cell.owner if store is not None else None)
    if store is not None:
        pipeline.on_work = lambda owner: store.started(*owner) if owner else store.paused()
    contexts = {cell.context for cell in cells if cell.context is not None}
    if hasattr(store, "keep_piece") and len(contexts) == 1:  # an executor's relay store keeps the pass's pieces
        pipeline.journal = (store, contexts.pop())
    try:
        pipeline.prepare(requests, owners, progress=progress)
    finally:
        pipeline.on_work, pipeline.journal = None, None


def run_axis(pipeline: StagedPipeline, axis: Axis, reference_profile: Profile, reference_config: ModelConfig,
             task: str, classes, primary: str, graph_backend: str, progress=None, store=None,
             resume: bool = False, cells: list[Cell] | None = None) -> dict:
    """Every variant of `axis` (`cells`: planned with plan_axis, and prepared with the other axes' in one
    pass). With a CellStore, each finished variant row is written to it at once; with `resume`, rows
    already there (same model, data and settings) are taken back, marked `resumed`."""
    if cells is None:
        cells = plan_axis(pipeline, axis, reference_profile, reference_config, task, primary, graph_backend, store,
                          resume)
        prepare_cells(pipeline, cells, reference_profile, store)
    variants_out, planned = [], {}
    for cell in cells:
        variant = cell.variant
        if cell.stored is not None:
            resumed = not cell.stored.get("isolated")
            variants_out.append({**cell.stored, "resumed": True} if resumed else cell.stored)
            pipeline.counters["resumed"] = pipeline.counters.get("resumed", 0) + resumed
            if progress:
                progress(variant.name)
            continue
        planned[variant.name] = cell
        if store is not None:
            store.started(*cell.owner)
        entry = variant_row(variant.name, "ok", "", variant.baseline)
        try:
            entry.update(compare_variant(pipeline, task, classes, cell.profile, cell.config, reference_profile,
                                         cell.base_config, primary))
        except BackendUnavailable as err:
            entry.update(status="unavailable", reason=str(err))
        except Exception as err:  # noqa: BLE001 - one crashing variant is a row, the sweep goes on
            entry.update(status="failed", reason=f"{type(err).__name__}: {str(err).splitlines()[0][:300]}")
        if store is not None:
            store.put(cell.key, axis.name, variant.name, entry)
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


def run_axes(pipeline: StagedPipeline, axes: list[Axis], reference_profile: Profile, reference_config: ModelConfig,
             task: str, classes, primary: str, graph_backend: str, store=None, resume: bool = False,
             on_pass=None, on_axis=None) -> list[dict]:
    """Every variant of every axis: one pass over the data computes all their predictions (the reference's
    first, owned by no cell), then each axis compares its variants. `on_pass(images)` follows the pass;
    `on_axis(axis, cells)` gives an axis's per-variant progress callback."""
    plans = [plan_axis(pipeline, axis, reference_profile, reference_config, task, primary, graph_backend, store,
                       resume) for axis in axes]
    prepare_cells(pipeline, [cell for cells in plans for cell in cells], reference_profile, store,
                  first=(Request(reference_profile, reference_config),), progress=on_pass)
    return [run_axis(pipeline, axis, reference_profile, reference_config, task, classes, primary, graph_backend,
                     progress=on_axis(axis, cells) if on_axis else None, store=store, cells=cells)
            for axis, cells in zip(axes, plans)]


def _interval_of_largest(pipeline: StagedPipeline, axis_name: str, variants_out: list[dict], planned: dict,
                         reference_profile: Profile, classes, store) -> None:
    """The mAP interval of the axis's variant with the largest |Δ| (bootstrap_scope "largest")."""
    measured = [v for v in variants_out if v["status"] == "ok" and not v["identical_to_reference"]]
    largest = max(measured, key=lambda v: abs(v["delta"])) if measured else None
    if largest is None or largest.get("ci95") is not None or largest["name"] not in planned:
        return  # nothing measured, or an interval already there (taken back from the store)
    cell = planned[largest["name"]]
    candidate, baseline, shared = _paired(pipeline, cell.profile, cell.config, reference_profile, cell.base_config)
    largest.update(_map_interval(pipeline, _coco_pair(pipeline, candidate, baseline, shared, classes), len(shared)))
    if store is not None:
        store.put(cell.key, axis_name, largest["name"], {k: v for k, v in largest.items()
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
    steps = []
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
        steps.append((name, chosen, profile, config))
    # one more pass over the data for every step at once (the worst variants are known only now)
    pipeline.prepare([Request(reference_profile, reference_config)] + [Request(p, c) for _, _, p, c in steps])
    curve = []
    for name, chosen, profile, config in steps:
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
