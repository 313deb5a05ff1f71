"""The stage pipeline a SysNoise sweep runs on: requests (a profile around a model configuration)
evaluated in one streaming pass over the data.

The data is walked in chunks. Within a chunk, stages are cached by (input, stage parameters): each image
is decoded once per decoder, resized once per (decoder, geometry); inference runs once per distinct input
set (by content) per model configuration; post-processing never re-runs inference. Only per-sample
predictions outlive a chunk, so memory does not grow with the dataset. `counters` records the work done.
"""
from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass

import numpy as np

from harness.errors import SampleError
from harness.noise.stats import MAP_ROUNDS
from harness.preprocess import COLORS, apply_geometry, color_before_geometry, decode, normalize, stored_size
from harness.profile import Profile
from harness.tasks import get_task
from harness.placement import Placement
from harness.plugins import lookup

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
    options: tuple = ()        # sorted (name, value) load options (the ONNX-only reference: optimize off)

    @classmethod
    def at(cls, placement: Placement, graph: tuple = (), options: tuple = ()) -> "ModelConfig":
        """The configuration that runs the exported model (or its `graph` rewrite) where `placement` says."""
        return cls(placement.backend, placement.device, placement.precision, graph, options)

    @property
    def placement(self) -> Placement:
        return Placement(self.backend, self.device, self.precision)


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
    """What a resized image depends on: with the colour converted at decode, the colour too ("" sorts the
    resizes every colour shares first)."""
    color = profile.color if color_before_geometry(profile) else ""
    return profile.decoder, color, profile.resize, profile.geometry, profile.input_size, profile.resize_size


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
                 bootstrap_rounds: int = MAP_ROUNDS, bootstrap_scope: str = "all", chunk_size: int = DEFAULT_CHUNK):
        self.exported, self.dataset = exported, dataset
        self.batch_size, self.threads, self.calibration = batch_size, threads, calibration
        # whole batches per chunk: every sample meets the same batch boundaries as in one unchunked pass
        self.chunk_size = -(-max(chunk_size, 1) // batch_size) * batch_size
        self.bootstrap_rounds = bootstrap_rounds  # seeded rounds of each mAP bootstrap (0: none)
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

    @functools.cached_property
    def fingerprint(self) -> str:
        """The data's provenance hash (reads every file: once per sweep, not once per axis)."""
        return self.dataset.fingerprint()

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
        """(pixels, geometry) after decode and geometry: kept apart from a colour converted at the model input,
        so such colour variants re-use it; a colour converted at decode comes before it."""
        key = (sample.id, *_resize_key(profile))
        if key not in self._resized:
            if key[1:] != self._resize_current:  # likewise sorted by resize within a decoder
                self._resized, self._resize_current = {}, key[1:]
            decoded = self._decode(sample, profile.decoder)
            if decoded is not None and color_before_geometry(profile):
                decoded = lookup(COLORS, "color mode", profile.color)(decoded[0]), decoded[1]
            self._resized[key] = None if decoded is None else apply_geometry(decoded[0], profile, decoded[1])
            if decoded is not None:
                self.counters["resizes"] += 1
        return self._resized[key]

    def _chunk_stack(self, samples, profile: Profile) -> Inputs | None:
        key = profile.stage_key("pre")
        if self._inputs is None or self._inputs[0] != key:
            ids, pixels, geometries = [], [], []
            color = (lambda image: image) if color_before_geometry(profile) else \
                lookup(COLORS, "color mode", profile.color)
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

    def session(self, config: ModelConfig):
        """The backend session of a model configuration, loaded once."""
        if config not in self.sessions:
            from harness.backends import get_backend

            model = self.model(config)
            # spinning=False: a sweep interleaves decoding/resizing with inference, and ONNX Runtime's
            # busy-waiting threads would starve it (measured: torchvision decode 0.13 -> 12 ms per image)
            self.sessions[config] = get_backend(config.backend).load(
                model, config.device, config.precision, self.threads, calibration=self.calibration, spinning=False,
                **dict(config.options))
        return self.sessions[config]

    def _chunk_outputs(self, inputs: Inputs, profile: Profile, config: ModelConfig) -> dict[str, np.ndarray]:
        key = (inputs.digest, config)
        if key not in self._outputs:
            session = self.session(config)
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
        task = get_task(spec.task)
        predictions = []
        for start in range(0, len(inputs.ids), self.batch_size):  # batch by batch, as compare decodes
            stop = start + self.batch_size
            predictions.extend(task.predictions({k: v[start:stop] for k, v in outputs.items()},
                                                inputs.geometries[start:stop], profile, spec.head))
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
