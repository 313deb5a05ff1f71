"""The model stage of the run engine (harness.pipeline): a model configuration (a placement, a graph rewrite, load options), its
backend session loaded once, and the raw outputs of an input set cached by content within a chunk."""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from harness.placement import Placement
from harness.profile import Profile
from harness.tasks import get_task

GRAPH_BASELINE = (("baseline", True),)  # the model-stage baseline: unrewritten graph, same path as rewrites
OUTPUTS_BUDGET = 512 * 2**20  # bytes of raw outputs a chunk keeps for re-use (ModelStage.evict)


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


class ModelStage:
    """Sessions by model configuration, and per chunk the raw outputs by (input set digest, configuration):
    inference runs once per distinct input set per configuration. `counters["inferences"]` counts samples
    run; `batch_ms` holds each configuration's inference time per batch (after one untimed warm-up batch
    when `warmup`: lazy initialisation is not inference time)."""

    def __init__(self, exported, batch_size: int, threads: int | None, calibration, counters: dict):
        self.exported, self.batch_size, self.threads, self.calibration = exported, batch_size, threads, calibration
        self.task = get_task(exported.spec.task)
        self.counters = counters
        self.counters.setdefault("inferences", 0)
        self.sessions: dict = {}
        self.warmup = False
        self.batch_ms: dict[ModelConfig, list[float]] = {}
        self.first_batches: dict[ModelConfig, dict] = {}   # with `warmup`: what time_alone runs
        self.drop()

    def drop(self) -> None:
        """Forgets the chunk's outputs."""
        self.outputs: dict = {}       # (inputs digest, config) -> raw outputs (see evict)
        self.kept: set = set()        # of them, those an output comparison needs at the chunk's end
        self.shapes: dict = {}        # (inputs digest, config) -> per-sample output shapes

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

            # spinning=False: a sweep interleaves decoding/resizing with inference, and ONNX Runtime's
            # busy-waiting threads would starve it (measured: torchvision decode 0.13 -> 12 ms per image)
            self.sessions[config] = get_backend(config.backend).load(
                self.model(config), config.device, config.precision, self.threads, calibration=self.calibration,
                spinning=False, **dict(config.options))
        return self.sessions[config]

    def run(self, inputs, profile: Profile, config: ModelConfig) -> dict[str, np.ndarray]:
        """The raw outputs of an input set (harness.stages.Inputs) normalised by `profile`, batch by batch."""
        key = (inputs.digest, config)
        if key not in self.outputs:
            session = self.session(config)
            times = self.batch_ms.setdefault(config, [])
            parts: dict[str, list] = {}
            step = min(self.batch_size, inputs.batch_limit or self.batch_size)
            for start in range(0, len(inputs.ids), step):
                feeds = inputs.feeds(start, start + step, profile, session.input_names)
                ids = inputs.ids[start:start + step]
                infer = (lambda: session.run_ids(ids)) if session.uses_sample_ids else \
                    (lambda: self.task.run_batch(session, feeds, inputs, start, start + step, profile))
                if self.warmup and not times:
                    infer()
                    if not session.uses_sample_ids:
                        self.first_batches.setdefault(config, feeds)
                started = time.perf_counter()
                outputs = infer()
                times.append((time.perf_counter() - started) * 1000)
                for name, value in outputs.items():
                    parts.setdefault(name, []).append(value)
                self.counters["inferences"] += len(ids)
            self.outputs[key] = {name: np.concatenate(values) for name, values in parts.items()}
            self.shapes[key] = {name: list(value.shape[1:]) for name, value in self.outputs[key].items()}
            self.evict(keep=key)
        return self.outputs[key]

    def time_alone(self, config: ModelConfig, runs: int) -> list[float]:
        """ms per batch of `config` run alone: its first batch of the pass, one warm-up run, then `runs`
        timed runs. In the pass, configurations take turns batch by batch, each evicting the others' caches
        and warm threads, which slowed each by its own factor (1.6x to 2.3x measured on ResNet-50)."""
        feeds = self.first_batches.get(config)
        if feeds is None:
            return self.batch_ms.get(config, [])
        session = self.session(config)
        session.run(feeds)
        times = []
        for _ in range(runs):
            started = time.perf_counter()
            session.run(feeds)
            times.append((time.perf_counter() - started) * 1000)
        return times

    def evict(self, keep: tuple) -> None:
        """Raw outputs can be large (a detector's maps at 800 px are MBs per image): beyond OUTPUTS_BUDGET
        bytes in a chunk, the oldest are dropped, except those an output comparison needs at the chunk's
        end. Dropping one costs at most an inference again; what identical input sets share is mostly
        their predictions, which are kept."""
        total = sum(v.nbytes for outputs in self.outputs.values() for v in outputs.values())
        for key in list(self.outputs):
            if total <= OUTPUTS_BUDGET:
                break
            if key != keep and key not in self.kept:
                total -= sum(v.nbytes for v in self.outputs.pop(key).values())
