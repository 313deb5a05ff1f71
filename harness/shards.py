"""A data-parallel worker's part of a pass, and the merge of the parts into the pass one worker makes.

With `--workers N` each worker runs every request of a pass on its shard of the data (a contiguous run of
whole chunks, harness.pipeline.shard_of) and returns a PassPart: per request its samples' predictions,
the streamed output statistics of each compared pair (OutputStats: exact sums, counts and maxima), the
batch timings, what broke, which samples could not be read, and what each session said it executed. The
merging worker puts the parts together in shard order, which is sample order, into a pipeline that then
holds what one worker's pass would hold: the same predictions in the same order, the same statistics bit
for bit, so every metric, interval and row computed from it is the same. Sessions are not loaded again:
their facts come from the parts.
"""
from __future__ import annotations

from dataclasses import dataclass, field


class CarriedError(Exception):
    """An error raised in a shard's worker, carried by its type's name and words (a backend's exception types
    need not survive pickling); `carried` makes one whose type has the original's name."""


def carried(name: str, text: str) -> CarriedError:
    return type(name, (CarriedError,), {})(text)


@dataclass
class PassPart:
    """What one shard's worker computed (picklable: it travels back to the driver, then to the merger)."""

    evaluated: dict = field(default_factory=dict)      # request key -> (sample ids, predictions)
    broken: dict = field(default_factory=dict)         # request key -> (error type name, message)
    output_stats: dict = field(default_factory=dict)   # (request key, baseline key) -> OutputStats
    output_errors: dict = field(default_factory=dict)  # (request key, baseline key) -> max abs difference
    batch_ms: dict = field(default_factory=dict)       # model config -> inference ms per batch
    failures: dict = field(default_factory=dict)       # sample id -> (decoder, error type name, what to say)
    shapes: dict = field(default_factory=dict)         # (pre key, model config) -> per-sample output shapes
    facts: dict = field(default_factory=dict)          # model config -> (precision_effective, execution)
    counters: dict = field(default_factory=dict)


def part_of(pipeline, configs) -> PassPart:
    """This worker's part of the pass it just made (the sessions of `configs` say what they executed)."""
    from harness.stages import read_failure

    part = PassPart(counters=dict(pipeline.counters), output_stats=dict(pipeline.output_stats),
                    output_errors=dict(pipeline.output_errors), batch_ms=dict(pipeline.models.batch_ms),
                    shapes=dict(pipeline.output_shapes))
    part.evaluated = {key: (done.ids, list(done.predictions)) for key, done in pipeline.evaluated.items()}
    part.broken = {key: (type(err).__name__, str(err)) for key, err in pipeline.broken.items()}
    part.failures = {sample: (decoder, type(err).__name__, read_failure(err))
                     for sample, (decoder, err) in pipeline.stages.failures.items()}
    for config in configs:
        session = pipeline.session(config)
        part.facts[config] = (session.precision_effective, session.execution())
    return part


def merge_parts(pipeline, parts: list[PassPart]) -> dict:
    """Puts the parts, in shard order, into `pipeline` as if it had made the pass; returns the sessions'
    facts by model config."""
    from harness.compare.outputs import OutputStats
    from harness.pipeline import Evaluated, predictions_digest

    collected: dict = {}
    facts: dict = {}
    for part in parts:
        for key, (ids, predictions) in part.evaluated.items():
            done = collected.setdefault(key, ([], []))
            done[0].extend(ids)
            done[1].extend(predictions)
        for key, (name, text) in part.broken.items():
            pipeline.broken.setdefault(key, carried(name, text))
        for pair, stats in part.output_stats.items():
            pipeline.output_stats.setdefault(pair, OutputStats()).merge(stats)
        for pair, error in part.output_errors.items():
            pipeline.output_errors[pair] = max(pipeline.output_errors.get(pair, 0.0), error)
        for config, times in part.batch_ms.items():
            pipeline.models.batch_ms.setdefault(config, []).extend(times)
        for sample, (decoder, name, text) in part.failures.items():
            pipeline.stages.failures[sample] = (decoder, carried(name, text))
        for key, shapes in part.shapes.items():
            pipeline.output_shapes.setdefault(key, shapes)
        for config, said in part.facts.items():
            facts.setdefault(config, said)
        for name, value in part.counters.items():
            pipeline.counters[name] = pipeline.counters.get(name, 0) + value
    for key, (ids, predictions) in collected.items():
        if key not in pipeline.broken:
            pipeline.evaluated[key] = Evaluated(ids, predictions, predictions_digest(pipeline.task, predictions))
    return facts
