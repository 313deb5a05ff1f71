"""The one run engine: requests (a profile around a model configuration) evaluated in one streaming pass
over the data. compare (the reference and its targets), the SysNoise sweep (every variant and its
baseline) and validate (a gate's profiles) all evaluate on it.

The data is walked in chunks. Within a chunk, stages are cached by (input, stage parameters): each image
is decoded once per decoder, resized once per (decoder, geometry) (harness.stages.Preprocessor);
inference runs once per distinct input set (by content) per model configuration
(harness.inference.ModelStage); post-processing never re-runs inference. Only per-sample
predictions outlive a chunk, so memory does not grow with the dataset. `counters` records the work done;
a chunk's pieces go to the journal when there is one (harness.noise.journal).
"""
from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass

import numpy as np

from harness.compare.outputs import OutputStats
from harness.errors import SampleError
from harness.inference import ModelConfig, ModelStage
from harness.noise.journal import ChunkJournal, Piece
from harness.noise.stats import MAP_ROUNDS
from harness.profile import Profile
from harness.stages import resize_key
from harness.tasks import Evaluation, get_task


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
        return (profile.decoder, repr(resize_key(profile)), repr(profile.stage_key("pre")), repr(self.config),
                repr(profile.stage_key("post")))


@dataclass
class Evaluated:
    ids: list[str]
    predictions: list
    outputs_digest: str       # of the post-processed predictions: identity is judged where the metric looks


def shared_samples(candidate: Evaluated, baseline: Evaluated, failures: dict[str, str], total: int) -> list[str]:
    """The sample ids both evaluated, in the candidate's order. None is no measurement (a metric of no
    samples): a SampleError that says which side read nothing and the first failure."""
    in_baseline = set(baseline.ids)
    shared = [i for i in candidate.ids if i in in_baseline]
    if not shared:
        side, evaluated = ("baseline", baseline) if candidate.ids else ("variant", candidate)
        first = next(iter(failures.values()), "no failure recorded")
        raise SampleError(f"no sample was evaluated by both the variant and its baseline: the {side} read "
                          f"{len(evaluated.ids)} of {total} (first failure: {first})")
    return shared


def predictions_digest(task, predictions: list) -> str:
    """sha256 of every part of the predictions, as the task stores them (Task.encode_predictions: an
    instance segmenter's masks as much as its boxes)."""
    digest = hashlib.sha256()
    for name, array in sorted(task.encode_predictions(predictions).items()):
        digest.update(name.encode())
        digest.update(str(array.shape).encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


DEFAULT_CHUNK = 256  # images whose intermediates are held at once (~10 MB each at ImageNet geometry)
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


def shard_chunk_size(samples: int, batch_size: int, chunk_size: int, shards: int = 1) -> int:
    """Images per chunk: whole batches (every sample meets the batch boundaries of one unchunked pass, so
    predictions do not depend on the chunking), and small enough that `shards` workers each get a chunk
    where the data allows it (shards are runs of whole chunks)."""
    if shards > 1:
        chunk_size = min(chunk_size, -(-samples // shards))
    return -(-max(chunk_size, 1) // batch_size) * batch_size


def shard_of(chunks: int, shard: int, shards: int) -> range:
    """The chunk indices of data-parallel shard `shard` of `shards`: contiguous, sizes differing by one."""
    return range(shard * chunks // shards, (shard + 1) * chunks // shards)


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
                 bootstrap_rounds: int = MAP_ROUNDS, bootstrap_scope: str = "all", chunk_size: int = DEFAULT_CHUNK,
                 shards: int = 1, shard: int | None = None):
        self.exported, self.dataset, self.batch_size = exported, dataset, batch_size
        self.task = get_task(exported.spec.task)
        self.chunk_size = shard_chunk_size(len(dataset.samples), batch_size, chunk_size, shards)
        # `shard` of `shards`: the pass walks only that contiguous run of whole chunks (a data-parallel worker)
        self.shards, self.shard = shards, shard
        self.bootstrap_rounds = bootstrap_rounds  # seeded rounds of each mAP bootstrap (0: none)
        # "all": every detection variant gets its mAP interval; "largest": per axis only the variant with the
        # largest |Δ| (an interval costs ~200 COCO accumulations: seconds per variant)
        self.bootstrap_scope = bootstrap_scope
        self.by_id = {s.id: s for s in dataset.samples}
        self.counters = {"decodes": 0, "resizes": 0, "inferences": 0, "distinct_inputs": 0}
        self.stages = self.task.preprocessor(dataset, self.counters, exported.spec)
        self.models = ModelStage(exported, batch_size, threads, calibration, self.counters)
        self.evaluated: dict[tuple, Evaluated] = {}
        self.broken: dict[tuple, Exception] = {}
        self.output_shapes: dict[tuple, dict[str, list[int]]] = {}  # (pre key, config) -> per-sample shapes
        self.output_errors: dict[tuple, float] = {}  # (request key, baseline key) -> max abs output difference
        self.output_stats: dict[tuple, OutputStats] = {}  # the same pairs' streamed error statistics
        self.input_sets: dict[tuple, str] = {}       # pre key -> digest of its whole input set
        self.evaluations: dict = {}          # see evaluation()
        self.last_candidate_evaluation = None
        self.taken_failures: dict[str, str] = {}     # failures of pieces taken back from the journal
        # called with the cell a request's work is for (its first owner), then None: an executor times cells
        # and blames a crash on the cell whose work was running
        self.on_work = None
        self._owner = None
        self.journal: ChunkJournal | None = None
        self._compared_outputs: set = set()  # (pre key, config) whose raw outputs a pass compares
        self._drop_chunk()

    @property
    def threads(self) -> int | None:
        return self.models.threads

    @property
    def calibration(self):
        return self.models.calibration

    @property
    def failures(self) -> dict[str, str]:
        """Sample id -> why it could not be read (the first decoder that failed on it)."""
        found = {sample: f"{decoder}: {err}" for sample, (decoder, err) in self.stages.failures.items()}
        return {**self.taken_failures, **found}

    def _drop_chunk(self) -> None:
        self.stages.drop()
        self.models.drop()
        self._chunk_inputs: dict = {}        # pre key -> (digest, ids) of this chunk
        self._predictions: dict = {}         # (inputs digest, config, post key) -> predictions of this chunk

    @functools.cached_property
    def fingerprint(self) -> str:
        """The data's provenance hash (reads every file: once per sweep, not once per axis)."""
        return self.dataset.fingerprint()

    def model(self, config: ModelConfig):
        return self.models.model(config)

    def session(self, config: ModelConfig):
        return self.models.session(config)

    # one request on one chunk ------------------------------------------------------------------------
    def _chunk_predictions(self, samples, request: Request) -> tuple[list[str], list]:
        profile, config = request.profile, request.config
        inputs = self.stages.stack(samples, profile)
        if inputs is None:
            return [], []
        pre = profile.stage_key("pre")
        self._chunk_inputs[pre] = inputs.digest, inputs.ids
        if (pre, config) in self._compared_outputs:
            self.models.kept.add((inputs.digest, config))
        key = (inputs.digest, config, profile.stage_key("post"))
        if key not in self._predictions or (pre, config) in self._compared_outputs:
            outputs = self.models.run(inputs, profile, config)
            if key not in self._predictions:
                self._predictions[key] = self._postprocess(inputs, outputs, profile)
        self.output_shapes.setdefault((pre, config), self.models.shapes[inputs.digest, config])
        return inputs.ids, self._predictions[key]

    def _postprocess(self, inputs, outputs: dict, profile: Profile) -> list:
        head = self.exported.spec.head
        predictions = []
        for start in range(0, len(inputs.ids), self.batch_size):  # batch by batch, as compare decodes
            stop = start + self.batch_size
            predictions.extend(self.task.predictions({k: v[start:stop] for k, v in outputs.items()},
                                                     inputs.geometries[start:stop], profile, head))
        return predictions

    def _piece(self, chunk, request: Request) -> tuple[list[str], list, str | None]:
        """(ids, predictions, input set digest) of one request on one chunk: computed, or taken back from the
        journal."""
        pre = request.profile.stage_key("pre")
        journal = self.journal if (pre, request.config) not in self._compared_outputs else None
        if journal is not None and (piece := journal.take(request.key, chunk)) is not None:
            if piece.shapes is not None:
                self.output_shapes.setdefault((pre, request.config), piece.shapes)
            for sample, reason in piece.failures.items():
                self.taken_failures.setdefault(sample, reason)
            self.counters["pieces_taken"] = self.counters.get("pieces_taken", 0) + 1
            return piece.ids, piece.predictions, piece.input_digest
        ids, predictions = self._chunk_predictions(chunk, request)
        input_digest = self._chunk_inputs[pre][0] if ids else None
        if journal is not None:
            failures = self.failures
            chunk_failures = {s.id: failures[s.id] for s in chunk if s.id in failures}
            journal.keep(request.key, chunk, Piece(self.task.name, ids, predictions,
                                                   self.output_shapes.get((pre, request.config)), input_digest,
                                                   chunk_failures))
        return ids, predictions, input_digest

    def _track_output_errors(self, pairs: list[tuple[Request, Request]]) -> None:
        """Raw outputs of each (candidate, baseline) pair over this chunk's shared samples: the max abs
        difference (float64) and the streamed statistics (OutputStats). A candidate whose outputs do not
        match the baseline's (a missing output, another shape) is broken."""
        for request, base in pairs:
            if request.key in self.broken or base.key in self.broken:
                continue
            found = [self._chunk_inputs.get(r.profile.stage_key("pre")) for r in (request, base)]
            if None in found:
                continue
            (cand_digest, cand_ids), (base_digest, base_ids) = found
            cand = self.models.outputs[cand_digest, request.config]
            baseline = self.models.outputs[base_digest, base.config]
            if self.task.compared_outputs is not None:
                baseline = {name: baseline[name] for name in self.task.compared_outputs if name in baseline}
            base_at = {sample: k for k, sample in enumerate(base_ids)}
            cand_index = [k for k, sample in enumerate(cand_ids) if sample in base_at]
            base_index = [base_at[cand_ids[k]] for k in cand_index]
            if not cand_index:
                continue
            key = (request.key, base.key)
            stats = self.output_stats.setdefault(key, OutputStats())
            try:
                for start in range(0, len(cand_index), self.batch_size):  # batch by batch: the float32 sums
                    stop = start + self.batch_size                         # of a batched run, bit for bit
                    stats.update({name: value[base_index[start:stop]] for name, value in baseline.items()},
                                 {name: value[cand_index[start:stop]] for name, value in cand.items()})
            except (KeyError, ValueError) as err:
                self.broken[request.key] = err
                continue
            errors = [float(np.max(np.abs(np.asarray(baseline[name][base_index], np.float64)
                                          - np.asarray(cand[name][cand_index], np.float64))))
                      for name in baseline if name in cand]
            self.output_errors[key] = max([self.output_errors.get(key, 0.0), *errors])

    # the pass ----------------------------------------------------------------------------------------
    def prepare(self, requests: list[Request], owners: dict | None = None, output_pairs=(), progress=None,
                first: tuple = ()) -> None:
        """Evaluates every request not evaluated yet, in one pass over the data (see the class). `owners`:
        request key -> the cell its work is for (reported through `on_work`); `output_pairs`: (candidate,
        baseline) requests whose max abs output difference to keep (`output_error`); `first`: keys of
        requests whose piece of each chunk runs before the others' (a reference's: the pre-processing the
        others share is then its work, timed and blamed as such)."""
        output_pairs = [(r, b) for r, b in output_pairs if (r.key, b.key) not in self.output_errors]
        again = {r.key for pair in output_pairs for r in pair}  # raw outputs are not kept: a pair is re-run
        pending: dict[tuple, Request] = {}
        for request in [*requests, *(r for pair in output_pairs for r in pair)]:
            if (request.key not in self.evaluated or request.key in again) and request.key not in self.broken:
                pending.setdefault(request.key, request)
        if not pending:
            return
        order = sorted(pending.values(), key=lambda r: (r.key not in first, r.stage_order))
        self._compared_outputs = {(r.profile.stage_key("pre"), r.config) for pair in output_pairs for r in pair}
        collected = {request.key: Collected(len(self.dataset.samples)) for request in order}
        running = {request.key: hashlib.sha256() for request in order}
        samples, owners = self.dataset.samples, owners or {}
        for start in self.chunk_starts():
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
            if request.key in collected and request.key not in self.broken:
                done = collected[request.key]
                self.evaluated[request.key] = Evaluated(done.ids, done.predictions,
                                                          predictions_digest(self.task, done.predictions))
                self.input_sets.setdefault(request.profile.stage_key("pre"), running[request.key].hexdigest())
        self.counters["distinct_inputs"] = len(set(self.input_sets.values()))

    def chunk_starts(self) -> range:
        """Where each chunk of the pass starts: every chunk, or this worker's shard of them."""
        starts = range(0, len(self.dataset.samples), self.chunk_size)
        if self.shard is None:
            return starts
        mine = shard_of(len(starts), self.shard, self.shards)
        return starts[mine.start:mine.stop]

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

    def evaluation(self, evaluated: Evaluated, ids: list[str], num_classes: int, baseline: bool = False) -> Evaluation:
        """The task's evaluation of `evaluated` on the samples `ids`, made once per (predictions, samples) for
        a baseline (shared by every variant of an axis) and for the last candidate (variants that
        post-process alike sit next to each other: decoders that decode alike, I420 and NV12); other
        candidates are not kept, as a detector's evaluation of a large set is large."""
        key = (evaluated.outputs_digest, hashlib.sha256("|".join(ids).encode()).hexdigest())
        if key in self.evaluations:
            return self.evaluations[key]
        index = {i: k for k, i in enumerate(evaluated.ids)}
        result = self.task.evaluate([self.by_id[i] for i in ids], [evaluated.predictions[index[i]] for i in ids],
                                    num_classes)
        if not baseline:
            self.evaluations.pop(self.last_candidate_evaluation, None)
            self.last_candidate_evaluation = key
        self.evaluations[key] = result
        return result
