"""Tasks: what a model's outputs mean (DESIGN.md, "The nouns": Task).

A task is the thing that varies under every command, as a backend is: compare, sysnoise, drift, validate,
report and diff hold a `Task` and call it, and never test a task's name. A task turns a batch's raw
outputs into per-sample predictions (its post-processing stage, with that stage's variants), evaluates
predictions against a dataset's labels (its metric, with the per-sample records a paired comparison needs),
decides from two evaluations whether the metric moved (`change`, by its significance rule), says whether
two predictions of one sample agree (the label-free drift signal), which noise axes apply to it, and what a
report's gallery shows of a flipped sample.

Adding a task is one module here and one line in `registry()`.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np

from harness.errors import UnknownName

CLASSIFY, DETECT, SEGMENT, KEYPOINTS, INSTANCES = "classify", "detect", "segment", "keypoints", "instances"
TEXT_CLASSIFY, CAUSAL_LM = "text-classify", "causal-lm"
KEYPOINT_DETECT = "keypoint-detect"


@dataclass
class Evaluation:
    """A task's metric over a set of samples with what a paired comparison needs of it: `records` are the
    per-sample results (a classifier's correct/wrong per sample, a detector's per-image COCO matches)."""

    metrics: dict[str, float]
    records: object
    samples: int


class Task(ABC):
    """One task family. Subclasses set `name`, `primary_metric`, `significance_rule` and implement the
    abstract methods; predictions are whatever the task's post-processing makes (logits rows, Detections)."""

    name = ""
    primary_metric = ""
    significance_rule = ""
    post_axes: tuple[str, ...] = ()  # the post-processing noise axes that apply (nms, box_decode, points)
    # the pre-processing axes that apply: an image's decode, resize, crop and colour, or a text's tokeniser
    pre_axes: tuple[str, ...] = ("decoder", "resize", "crop", "color")
    graph_axes: tuple[str, ...] = ("ceil_mode", "upsample")  # graph rewrites of ops this family has
    # a deployment mistake of this family that `validate --init`'s starter gate offers to watch fail: (what it
    # is, the profile's name, the profile fields it changes)
    known_bad: tuple[str, str, dict] = ("the camera delivers BGR", "camera-bgr", {"color": "bgr"})

    def is_fraction(self, metric: str) -> bool:
        """Is `metric` a fraction (its changes read in points)? Every metric is, except those a task names."""
        return True

    def post_axes_of(self, spec) -> tuple[str, ...]:
        """The post-processing axes that act on this model (its head may have fewer stages)."""
        return self.post_axes

    def post_processed_by(self, spec, axis: str) -> str:
        """Who does the step of a post-processing axis that does not act on this model (post_axes_of)."""
        return "the model"

    @abstractmethod
    def predictions(self, outputs: dict[str, np.ndarray], geometries: list, profile, head: dict) -> list:
        """A batch's raw outputs (by output name, batch first) -> one prediction per sample, in stored-image
        coordinates where the task has any (`geometries`: harness.preprocess.Geometry per sample)."""

    @abstractmethod
    def evaluate(self, samples: list, predictions: list, num_classes: int) -> Evaluation:
        """The task's metrics of `predictions` against the samples' labels (fractions), with per-sample
        records for `change`."""

    @abstractmethod
    def change(self, baseline: Evaluation, candidate: Evaluation, rounds: int) -> dict:
        """The row fields that say whether the metric moved between two evaluations of the same samples
        (ci95, p_value, significant, significance_test, bootstrap_rounds), by the task's significance rule;
        `rounds`: the bootstrap's budget where a bootstrap decides ({} when 0)."""

    @abstractmethod
    def encode_predictions(self, predictions: list) -> dict[str, np.ndarray]:
        """Predictions as named arrays for a stored piece (an .npz: never a pickle)."""

    @abstractmethod
    def decode_predictions(self, arrays, count: int) -> list:
        """`count` predictions back from encode_predictions' arrays (an np.load result), every dtype and shape
        checked (harness.store.checked_array; BadPiece otherwise)."""

    def metric(self, samples: list, predictions: list, num_classes: int) -> dict[str, float]:
        return self.evaluate(samples, predictions, num_classes).metrics

    @abstractmethod
    def agreement(self, reference: list, candidate: list) -> np.ndarray:
        """bool[N]: does each candidate prediction agree with the reference's for that sample?"""

    @abstractmethod
    def flip_record(self, sample, reference, candidate, classes: tuple[str, ...]) -> dict:
        """What a report's gallery shows of a sample whose prediction flipped (label, both predictions,
        the candidate's confidence)."""

    def readable_flips(self, rows: list[dict], spec) -> list[dict]:
        """flip_record's rows made readable with what the model's spec knows (a causal LM's token ids decoded
        by its tokeniser)."""
        return rows

    def flip_overlay(self, sample, reference, candidate) -> np.ndarray | None:
        """uint8 RGB picture of a flipped sample with both predictions drawn on it (a report's gallery), made
        while the predictions exist; None: the gallery shows the image alone."""
        return None

    reads_text = False  # its models read token ids (a tokeniser is its pre-processing), not images
    # the raw outputs whose differences a comparison reports (None: all); a task whose run reduces the model's
    # outputs to token ids (a causal LM) names its float ones
    compared_outputs: tuple[str, ...] | None = None
    # the metric comes from one evaluation of the whole set per side (COCO AP), not a mean over samples:
    # its interval is a bootstrap over images of those evaluations, seconds each (`change` with rounds),
    # so a sweep may give intervals to the largest changes only
    evaluates_whole_set = False
    # its predictions cover the whole stored image (label maps, instance masks), which a geometry that crops
    # the image (shorter-crop, topdown) cannot give back
    needs_whole_image = False

    def run_batch(self, session, feeds: dict, inputs, start: int, stop: int, profile) -> dict[str, np.ndarray]:
        """The raw outputs of one batch (`feeds`: samples [start, stop) of `inputs`, harness.stages.Inputs): one
        model run. A task that runs a model several times a sample (a causal LM's greedy continuation) or
        reduces outputs too large to keep overrides it."""
        return session.run(feeds)

    def agreement_metrics(self, reference: list, candidate: list) -> dict:
        """Measures of agreement with the reference beyond `agreement` (a causal LM's next-token agreement),
        added to a compare row's outputs and a sweep row's measures."""
        return {}

    def divergence(self, reference: list, candidate: list) -> float | None:
        """A distribution distance between two prediction sets (KL of the class distributions), if any."""
        return None

    def accepts(self, dataset_task: str) -> bool:
        """Can this task evaluate a labelled dataset of `dataset_task`? (its own; a detector also an instance
        segmentation set, whose boxes it reads)"""
        return dataset_task == self.name

    def require_head(self, spec) -> None:
        """Refuses in one line (UsageError), before any work, a model whose head this task cannot post-process."""

    def view(self, dataset):
        """The samples this task evaluates of a loaded dataset (harness.data.Dataset): the dataset itself, or
        another view the loader made of the same file (a keypoints file's whole images)."""
        return dataset

    def preprocessor(self, dataset, counters: dict, spec):
        """The pre-processing stages of this task's inputs, with their caches (harness.stages.Preprocessor:
        decode, resize, colour; a text task's tokeniser)."""
        from harness.stages import Preprocessor

        return Preprocessor(dataset, counters)

    def scene(self):
        """The synthetic scene maker (harness.data.synthetic) whose images calibrate and train this task."""
        raise NotImplementedError(f"task {self.name}: no synthetic scenes")

    def benchmark(self):
        """The embedded evaluation split of this task (harness/data/benchmark), as a Dataset."""
        raise NotImplementedError(f"task {self.name}: no embedded benchmark")


def registry() -> dict[str, Task]:
    from harness.tasks.causal_lm import CausalLM
    from harness.tasks.classify import Classify
    from harness.tasks.detect import Detect
    from harness.tasks.instances import Instances
    from harness.tasks.keypoint_detect import KeypointDetect
    from harness.tasks.keypoints import Keypoints
    from harness.tasks.segment import Segment
    from harness.tasks.text_classify import TextClassify

    return {task.name: task for task in (Classify(), Detect(), Segment(), Keypoints(), Instances(), KeypointDetect(),
                                        TextClassify(), CausalLM())}


def get_task(name: str) -> Task:
    tasks = registry()
    if name not in tasks:
        raise UnknownName("task", name, list(tasks))
    return tasks[name]
