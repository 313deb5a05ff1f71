"""Output comparison, computed once for every backend: streaming error statistics and agreement.

OutputStats reduces each batch to running sums and drops it, so memory does not grow with the number
of samples. Agreement is judged on post-processed predictions: top-1 class for classifiers; for
detectors, a sample agrees when its confident detections match one-to-one (same class, IoU >= 0.5).
"""
from __future__ import annotations

import dataclasses
import math
import threading
from dataclasses import dataclass, field

import numpy as np

from harness.postprocess import Detections

DETECTION_AGREEMENT = {"score_threshold": 0.3, "iou": 0.5}


class ExactSum:
    """A sum of floats that does not depend on the order of its terms: Shewchuk's non-overlapping partials
    (what math.fsum keeps), so statistics streamed by several workers over shards of the data and merged
    equal, bit for bit, those of one worker streaming it all (a plain running float sum would differ in the
    last bits with the order of the additions). Non-finite terms are summed apart (inf stays inf)."""

    __slots__ = ("partials", "special")

    def __init__(self):
        self.partials: list[float] = []
        self.special = 0.0

    def add(self, term: float) -> None:
        if not math.isfinite(term):
            self.special += term
            return
        kept = 0
        for partial in self.partials:
            if abs(term) < abs(partial):
                term, partial = partial, term
            high = term + partial
            low = partial - (high - term)
            if low:
                self.partials[kept] = low
                kept += 1
            term = high
        self.partials[kept:] = [term]

    def merge(self, other: ExactSum) -> None:
        for partial in other.partials:
            self.add(partial)
        self.special += other.special

    @property
    def value(self) -> float:
        return math.fsum(self.partials) + self.special if self.special else math.fsum(self.partials)


SUMS = ("sum_abs", "ref_sq", "cand_sq", "err_sq")
# values reduced per pass: the scratch buffers stay a few MB whatever the tensor, and a chunk's float32 sums
# are short enough to stay accurate (each chunk's sum is added exactly)
CHUNK = 1 << 20


class _Scratch(threading.local):
    """Float buffers reused across updates, per thread: a fresh array for every tensor costs its page
    faults, which took longer than the arithmetic on it. And this thread's float16 converter."""

    def __init__(self):
        self.buffers: dict = {}
        self.half_to_float = None


_SCRATCH = _Scratch()


def _scratch(dtype, index: int, size: int) -> np.ndarray:
    key = (np.dtype(dtype), index)
    buffer = _SCRATCH.buffers.get(key)
    if buffer is None or buffer.size < size:
        buffer = _SCRATCH.buffers[key] = np.empty(max(size, CHUNK), dtype)
    return buffer[:size]


class _HalfToFloat:
    """float16 to float32 by ONNX Runtime's Cast, on one thread, into the caller's buffer. numpy (2.4)
    converts float16 without SIMD, 100x slower (27 ms for 3.2 M values, most of drift's statistics time);
    torch converts as fast, but wakes an OpenMP pool whose spinning threads made the reductions around it
    three times slower."""

    def __init__(self):
        import onnxruntime as ort
        from onnx import TensorProto, helper

        graph = helper.make_graph([helper.make_node("Cast", ["half"], ["float"], to=TensorProto.FLOAT)], "cast",
                                  [helper.make_tensor_value_info("half", TensorProto.FLOAT16, ["n"])],
                                  [helper.make_tensor_value_info("float", TensorProto.FLOAT, ["n"])])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
        options = ort.SessionOptions()
        options.intra_op_num_threads = options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        self.binding = self.session.io_binding()

    def __call__(self, half: np.ndarray, out: np.ndarray) -> None:
        self.binding.bind_cpu_input("half", np.ascontiguousarray(half))
        self.binding.bind_output("float", "cpu", 0, np.float32, out.shape, out.ctypes.data)
        self.session.run_with_iobinding(self.binding)


def _converted(values: np.ndarray, kind, index: int) -> np.ndarray:
    """values as `kind`: themselves when they are already, else a copy into scratch buffer `index`."""
    if values.dtype == kind:
        return values
    out = _scratch(kind, index, values.size)
    if values.dtype == np.float16 and kind == np.float32:
        _SCRATCH.half_to_float = _SCRATCH.half_to_float or _HalfToFloat()
        _SCRATCH.half_to_float(values, out)
    else:
        np.copyto(out, values, casting="unsafe")
    return out


@dataclass
class OutputStats:
    """Running max/mean abs error and cosine similarity of candidate vs reference, over all outputs. Each
    update's sums are added exactly (ExactSum): `merge` of the statistics of two shards of the data is the
    statistics of both, whatever the order."""

    max_abs: float = 0.0
    count: int = 0
    ref_max_abs: float = 0.0
    nonfinite: int = 0
    per_output: dict = field(default_factory=dict)
    sums: dict = field(default_factory=lambda: {name: ExactSum() for name in SUMS})

    sum_abs = property(lambda self: self.sums["sum_abs"].value)
    ref_sq = property(lambda self: self.sums["ref_sq"].value)
    cand_sq = property(lambda self: self.sums["cand_sq"].value)
    err_sq = property(lambda self: self.sums["err_sq"].value)

    def update(self, reference: dict[str, np.ndarray], candidate: dict[str, np.ndarray]) -> None:
        for name, ref in reference.items():
            ref, cand = np.asarray(ref), np.asarray(candidate[name])
            if ref.size != cand.size:
                raise ValueError(f"output {name!r}: candidate shape {cand.shape} != reference {ref.shape}")
            if not ref.size:
                continue
            # float32 arithmetic for float32/float16 data (float64 where an input is float64): per-tensor
            # stream reductions over millions of values are memory-bound, and float32 sums over a chunk keep
            # SNR to well under 0.01 dB; the running totals are exact
            kind = np.float64 if np.result_type(ref, cand) == np.float64 else np.float32
            ref, cand = ref.reshape(-1), cand.reshape(-1)
            worst = 0.0
            for start in range(0, ref.size, CHUNK):
                part = slice(start, start + CHUNK)
                worst = max(worst, self._add_chunk(_converted(ref[part], kind, 0), _converted(cand[part], kind, 1)))
            self.count += ref.size
            self.per_output[name] = max(self.per_output.get(name, 0.0), worst)

    def _add_chunk(self, ref: np.ndarray, cand: np.ndarray) -> float:
        """Adds one chunk's sums; returns its max abs error."""
        error = np.subtract(cand, ref, out=_scratch(ref.dtype, 2, ref.size))
        # the squared norms first: when they are finite, so is every value, and the pass that masks
        # non-finite values is skipped (these reductions are memory-bound: each pass saved counts)
        with np.errstate(over="ignore"):
            products = (float(ref @ ref), float(cand @ cand), float(error @ error))
        if not all(math.isfinite(v) for v in products):
            finite = np.isfinite(cand)
            self.nonfinite += int((~finite).sum())
            cand = np.where(finite, cand, 0.0)
            error = cand - ref
            # finite values whose squares overflow float32 (a transformer's additive attention mask holds
            # float32's lowest value): the sums in float64
            wide = [np.asarray(v, np.float64) for v in (ref, cand, error)]
            products = tuple(float(v @ v) for v in wide)
        magnitude = np.abs(error, out=error)
        sums = self.sums
        sums["sum_abs"].add(float(magnitude.sum()))  # numpy's pairwise sum: float32 loses < 1e-6 here
        for key, value in zip(("ref_sq", "cand_sq", "err_sq"), products):
            sums[key].add(value)
        self.ref_max_abs = max(self.ref_max_abs, float(ref.max()), -float(ref.min()))
        worst = float(magnitude.max())
        self.max_abs = max(self.max_abs, worst)
        return worst

    def merge(self, other: OutputStats) -> None:
        """Adds the statistics of other samples (another worker's shard)."""
        self.max_abs = max(self.max_abs, other.max_abs)
        self.count += other.count
        self.ref_max_abs = max(self.ref_max_abs, other.ref_max_abs)
        self.nonfinite += other.nonfinite
        for name, worst in other.per_output.items():
            self.per_output[name] = max(self.per_output.get(name, 0.0), worst)
        for name, total in other.sums.items():
            self.sums[name].merge(total)

    def to_json(self) -> dict:
        denom = np.sqrt(self.ref_sq * self.cand_sq)
        # the dot product from the error's norm (|c - r|^2 = |c|^2 + |r|^2 - 2 r.c): a float32 r.c is off by
        # ~1e-6 relative, as much as 1 - cosine itself between a tensor and its FP16 copy; the error's norm has
        # no such cancellation, and the norms' own rounding cancels to first order in the quotient
        dot = (self.ref_sq + self.cand_sq - self.err_sq) / 2
        cosine = float(np.clip(dot / denom, -1.0, 1.0)) if denom > 0 else (1.0 if self.ref_sq == self.cand_sq else 0.0)
        return {"max_abs": self.max_abs, "mean_abs": self.sum_abs / max(self.count, 1), "cosine": cosine,
                "rel_l2": self.rel_l2, "snr_db": self.snr_db, "nonfinite": self.nonfinite,
                "max_abs_per_output": dict(self.per_output)}

    @property
    def rel_l2(self) -> float:
        """||candidate - reference|| / ||reference|| (0 when both are zero)."""
        if self.ref_sq == 0:
            return 0.0 if self.err_sq == 0 else float("inf")
        return float(np.sqrt(self.err_sq / self.ref_sq))

    @property
    def snr_db(self) -> float:
        """10 log10(||reference||^2 / ||error||^2): 40 dB is a 1 % relative error; inf when exact."""
        if self.err_sq == 0:
            return float("inf")
        return float(10 * np.log10(self.ref_sq / self.err_sq)) if self.ref_sq > 0 else float("-inf")


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


def mean_kl(reference_logits: np.ndarray, candidate_logits: np.ndarray) -> float:
    """Mean over samples of KL(softmax(reference) || softmax(candidate)), in nats."""
    p = softmax(reference_logits.astype(np.float64))
    log_p = np.log(np.clip(p, 1e-300, None))
    log_q = np.log(np.clip(softmax(candidate_logits.astype(np.float64)), 1e-300, None))
    return float(np.mean(np.sum(p * (log_p - log_q), axis=-1)))


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """float[K, 4] x float[M, 4] xyxy -> IoU float[K, M]."""
    tl = np.maximum(a[:, None, :2], b[None, :, :2])
    br = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(br - tl, 0, None), axis=2)
    area_a = np.prod(a[:, 2:] - a[:, :2], axis=1)
    area_b = np.prod(b[:, 2:] - b[:, :2], axis=1)
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)


def detections_agree(reference: Detections, candidate: Detections, score_threshold: float, iou: float,
                     overlaps=None) -> bool:
    """True when the confident detections of both sides pair up one-to-one by class and IoU, in any order.
    `overlaps(reference indices, candidate indices)` -> IoU matrix: box IoU unless given (mask IoU for
    instance masks)."""
    keep_r = reference.scores >= score_threshold
    keep_c = candidate.scores >= score_threshold
    if keep_r.sum() != keep_c.sum():
        return False
    boxes_r, labels_r = reference.boxes[keep_r], reference.labels[keep_r]
    boxes_c, labels_c = candidate.boxes[keep_c], candidate.labels[keep_c]
    if len(boxes_r) == 0:
        return True
    pair_overlap = _iou(boxes_r, boxes_c) if overlaps is None else overlaps(np.nonzero(keep_r)[0], np.nonzero(keep_c)[0])
    overlap = pair_overlap * (labels_r[:, None] == labels_c[None, :])
    used = np.zeros(len(boxes_c), bool)
    for row in np.argsort(-reference.scores[keep_r]):
        candidates = np.where(~used & (overlap[row] >= iou))[0]
        if len(candidates) == 0:
            return False
        used[candidates[np.argmax(overlap[row, candidates])]] = True
    return True


def prediction_label(prediction) -> object:
    """What a sample's prediction is, for the flipped-sample list: a class index or a detection count."""
    if isinstance(prediction, Detections):
        return int((prediction.scores >= DETECTION_AGREEMENT["score_threshold"]).sum())
    return int(np.argmax(prediction))


def predictions_task(predictions: list):
    """The task whose predictions these are (on unlabelled data only the predictions say which): detections
    (with masks or keypoints), class maps (2-D unsigned integers), keypoints (float J x 3) or logits rows."""
    from harness.masks import InstanceDetections
    from harness.tasks import CLASSIFY, DETECT, INSTANCES, KEYPOINT_DETECT, KEYPOINTS, SEGMENT, get_task
    from harness.tasks.keypoint_detect import KeypointDetections

    first = predictions[0] if predictions else None
    if isinstance(first, InstanceDetections):
        return get_task(INSTANCES)
    if isinstance(first, KeypointDetections):
        return get_task(KEYPOINT_DETECT)
    if isinstance(first, Detections):
        return get_task(DETECT)
    if isinstance(first, np.ndarray) and first.ndim == 2:
        return get_task(SEGMENT if first.dtype.kind == "u" else KEYPOINTS)
    return get_task(CLASSIFY)


def agreement(reference: list, candidate: list) -> np.ndarray:
    """bool[N]: does the candidate's prediction of each sample agree with the reference's?"""
    return predictions_task(reference).agreement(reference, candidate)


@dataclass(frozen=True)
class Thresholds:
    """A tensor diverges when its SNR falls below `snr_floor` dB, or, when atol/rtol are given, when its
    max abs error exceeds atol + rtol * max |reference|. Non-finite candidate values always diverge."""

    snr_floor: float = 40.0
    atol: float | None = None
    rtol: float | None = None

    def diverged(self, stats: OutputStats) -> bool:
        if stats.nonfinite:
            return True
        if self.atol is not None or self.rtol is not None:
            return stats.max_abs > (self.atol or 0.0) + (self.rtol or 0.0) * stats.ref_max_abs
        return stats.snr_db < self.snr_floor

    def to_json(self) -> dict:
        return dataclasses.asdict(self)
