"""The SysNoise sweep: each variant of each axis is a cell, planned first, its predictions computed in
one streaming pass (harness.pipeline), then compared with its baseline's: Δ metric with its
uncertainty, flip rate, KL, what the variant reshapes.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass

import numpy as np

from harness.errors import BackendUnavailable
from harness.noise import Axis, Variant
from harness.noise.journal import ChunkJournal
from harness.inference import GRAPH_BASELINE
from harness.pipeline import Evaluated, ModelConfig, Request, StagedPipeline, shared_samples
from harness.profile import Profile
from harness.result import SIGNIFICANCE_KEYS, ResultRow
from harness.tasks import get_task

def reference_of(exported) -> tuple[dict, ModelConfig]:
    """The report's reference block and the reference's model configuration: the same reference compare
    uses (harness.compare.reference_target), as a sweep's cache key."""
    from harness.compare import reference_block, reference_target

    target, options, note = reference_target(exported)
    config = ModelConfig.at(target.placement, options=tuple(sorted(options.items())))
    return reference_block(target, options, note), config


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
    where, options = variant.target, tuple(sorted(variant.options.items()))  # load options: the variant's alone
    if variant.baseline == "same-backend-fp32":
        return ModelConfig.at(where, options=options), ModelConfig.at(where.with_precision("fp32"))
    if variant.baseline == "unrewritten-graph":
        return ModelConfig.at(where, tuple(sorted(variant.graph.items()))), ModelConfig.at(where, GRAPH_BASELINE)
    return ModelConfig.at(where), reference


def _paired(pipeline: StagedPipeline, profile: Profile, config: ModelConfig, base_profile: Profile,
            base_config: ModelConfig) -> tuple[Evaluated, Evaluated, list[str]]:
    """(candidate, baseline, the sample ids both evaluated, in the candidate's order)."""
    candidate = pipeline.evaluate(profile, config)
    baseline = pipeline.evaluate(base_profile, base_config)
    return candidate, baseline, shared_samples(candidate, baseline, pipeline.failures, len(pipeline.dataset.samples))


def _evaluation_pair(pipeline: StagedPipeline, candidate: Evaluated, baseline: Evaluated, shared: list[str],
                     classes) -> tuple:
    """(baseline's, candidate's) task evaluation on the shared samples (the baseline's kept for the axis)."""
    return (pipeline.evaluation(baseline, shared, len(classes), baseline=True),
            pipeline.evaluation(candidate, shared, len(classes)))


def change_of(pipeline: StagedPipeline, profile: Profile, config: ModelConfig, base_profile: Profile,
              base_config: ModelConfig, classes) -> dict:
    """The significance fields of one comparison by the task's rule (a bootstrap of
    pipeline.bootstrap_rounds rounds where one decides), on demand."""
    candidate, baseline, shared = _paired(pipeline, profile, config, base_profile, base_config)
    return pipeline.task.change(*_evaluation_pair(pipeline, candidate, baseline, shared, classes),
                                pipeline.bootstrap_rounds)


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


def effective_precision(pipeline: StagedPipeline, config: ModelConfig, base_config: ModelConfig) -> str | None:
    """For a precision variant: the precision its backend really runs, which need not be the one asked for
    (OpenVINO on a bf16-only CPU accepts an f16 hint and runs bf16: its 'fp16' row is a bf16 measurement)."""
    if config.precision == base_config.precision:
        return None
    return pipeline.session(config).precision_effective


def execution_of(pipeline: StagedPipeline, config: ModelConfig, base_config: ModelConfig) -> dict | None:
    """For a model variant: what its backend really executed (Session.execution), None for the others."""
    if config == base_config:
        return None
    return pipeline.session(config).execution()


def compare_variant(pipeline: StagedPipeline, task: str, classes, profile: Profile, config: ModelConfig,
                    base_profile: Profile, base_config: ModelConfig, primary: str, identity: dict | None = None) -> ResultRow:
    """One candidate (profile, model configuration) against its baseline on the samples both evaluated."""
    kind = get_task(task)
    candidate, baseline, shared = _paired(pipeline, profile, config, base_profile, base_config)
    cand_index = {i: k for k, i in enumerate(candidate.ids)}
    base_index = {i: k for k, i in enumerate(baseline.ids)}
    cand = [candidate.predictions[cand_index[i]] for i in shared]
    base = [baseline.predictions[base_index[i]] for i in shared]
    base_evaluation, evaluation = _evaluation_pair(pipeline, candidate, baseline, shared, classes)
    metric, base_metric = evaluation.metrics, base_evaluation.metrics
    agree = kind.agreement(base, cand)
    identical = candidate.outputs_digest == baseline.outputs_digest
    measures = {**NO_MEASURES, "baseline_metric": base_metric,
                "flip_rate": float(1 - agree.mean()) if len(agree) else None,
                "identical_to_reference": identical, "outputs_sha256": candidate.outputs_digest,
                "samples": len(shared), "kl": kind.divergence(base, cand),
                "output_shapes_changed": output_shape_changes(pipeline, profile, config, base_profile, base_config),
                "first_reshaped_tensor": first_reshaped(pipeline, config, base_config),
                **kind.agreement_metrics(base, cand)}
    significance = dict.fromkeys(SIGNIFICANCE_KEYS)
    # a whole-set evaluation's interval costs seconds: none for identical predictions, and with
    # bootstrap_scope "largest" only for the axis's largest change (_interval_of_largest)
    if not kind.evaluates_whole_set or (not identical and pipeline.bootstrap_scope == "all"):
        significance.update(kind.change(base_evaluation, evaluation, pipeline.bootstrap_rounds))
    return ResultRow(dict(identity or {}), "ok", "", metric, metric[primary] - base_metric[primary], significance,
                     effective_precision(pipeline, config, base_config), execution_of(pipeline, config, base_config),
                     measures)


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
    return {"model": pipeline.exported.sha256, "data": pipeline.fingerprint,
            "samples": [s.id for s in pipeline.dataset.samples], "reference": reference_profile.to_json(),
            "reference_config": reference_config, "batch": pipeline.batch_size, "threads": pipeline.threads,
            "calibration": getattr(pipeline.calibration, "sha256", None),
            "bootstrap_rounds": pipeline.bootstrap_rounds, "bootstrap_scope": pipeline.bootstrap_scope,
            "task": task, "primary": primary,
            "versions": _versions()}


# a variant row's own fields before (or without) its numbers: every key a report reads
NO_MEASURES = {"baseline_metric": None, "flip_rate": None, "identical_to_reference": False, "outputs_sha256": None,
               "samples": 0, "kl": None, "output_shapes_changed": {}, "first_reshaped_tensor": None, "changes": {}}


def variant_row(name: str, status: str, reason: str, baseline: str) -> dict:
    """A variant's row without its numbers (it did not run): every key a report reads, numbers None."""
    return ResultRow({"name": name, "baseline": baseline}, status, reason,
                     significance=dict.fromkeys(SIGNIFICANCE_KEYS), measures=dict(NO_MEASURES)).to_json()


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


REFERENCE_WORK = ("reference",)  # the owner of work no cell owns: the executor bounds it by --cell-timeout too


def prepare_cells(pipeline: StagedPipeline, cells: list[Cell], reference_profile: Profile, store=None,
                  first: tuple[Request, ...] = (), progress=None) -> None:
    """One pass over the data for every cell still to compute (its candidate and its baseline). `first`:
    requests no cell owns (the reference: a crash there is the sweep's, not a cell's)."""
    requests, owners = list(first), {request.key: REFERENCE_WORK for request in first}
    for cell in cells:
        if cell.stored is not None:
            continue
        for request in (Request(cell.profile, cell.config), Request(reference_profile, cell.base_config)):
            requests.append(request)
            owners.setdefault(request.key, cell.owner if store is not None else None)
    if store is not None:
        pipeline.on_work = lambda owner: (store.reference_work() if owner == REFERENCE_WORK else
                                          store.started(*owner) if owner else store.paused())
    contexts = {cell.context for cell in cells if cell.context is not None}
    if hasattr(store, "keep_piece") and len(contexts) == 1:  # an executor's relay store keeps the pass's pieces
        pipeline.journal = ChunkJournal(store, contexts.pop())
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
            if resumed:
                pipeline.counters["resumed"] = pipeline.counters.get("resumed", 0) + 1
            if progress:
                progress(variant.name)
            continue
        planned[variant.name] = cell
        if store is not None:
            store.started(*cell.owner)
        identity = {"name": variant.name, "baseline": variant.baseline}
        try:
            entry = compare_variant(pipeline, task, classes, cell.profile, cell.config, reference_profile,
                                    cell.base_config, primary, identity).to_json()
        except BackendUnavailable as err:
            entry = variant_row(variant.name, "unavailable", str(err), variant.baseline)
        except Exception as err:  # noqa: BLE001 - one crashing variant is a row, the sweep goes on
            entry = variant_row(variant.name, "failed", f"{type(err).__name__}: {str(err).splitlines()[0][:300]}",
                                variant.baseline)
        # what the variant sets: profile fields (a colour row says where it converted: color_at), the model
        entry["changes"] = {**variant.profile, **({"target": variant.target.to_json()} if variant.target else {}),
                            **{k: v for k, v in (("options", variant.options), ("graph", variant.graph)) if v}}
        if store is not None:
            store.put(cell.key, axis.name, variant.name, entry)
        variants_out.append(entry)
        if progress:
            progress(variant.name)
    _mark_repeats(variants_out)
    if get_task(task).evaluates_whole_set and pipeline.bootstrap_scope == "largest" and pipeline.bootstrap_rounds > 0:
        _interval_of_largest(pipeline, axis.name, variants_out, planned, reference_profile, classes, store)
    measured = [v["delta"] for v in distinct_findings(variants_out)]
    worst = min(measured) if measured else None
    return {"axis": axis.name, "stage": axis.stage, "description": axis.description,
            "delta_mean": float(np.mean(measured)) if measured else 0.0,
            "delta_std": float(np.std(measured)) if measured else 0.0,
            "delta_max": worst, "variants": variants_out,
            "note": "mean/std/max over the variants that ran and differ from the reference, each distinct output "
                    "once (a variant identical_to an earlier one repeats its measurement)"}


def _mark_repeats(variants_out: list[dict]) -> None:
    """`identical_to`: the first earlier variant with the very same outputs (NV12 gives I420's samples;
    pytorch_half_pixel picks half_pixel's at 2x), also for rows taken back from the store."""
    first_with: dict[tuple, str] = {}
    for row in variants_out:
        # against another baseline the same outputs are another Δ, so another finding
        key = (row.get("baseline"), row.get("outputs_sha256"))
        row["identical_to"] = first_with.get(key) if key[1] else None
        if key[1]:
            first_with.setdefault(key, row["name"])


def distinct_findings(variants_out: list[dict]) -> list[dict]:
    """The variants an axis's summary counts: ran, differ from the reference, and repeat no earlier variant
    (two variants with one output are one finding, not two)."""
    return [v for v in variants_out if v["status"] == "ok" and not v["identical_to_reference"]
            and not v.get("identical_to")]


def prepare_axes(pipeline: StagedPipeline, axes: list[Axis], reference_profile: Profile, reference_config: ModelConfig,
                 task: str, primary: str, graph_backend: str, store=None, resume=False, on_pass=None) -> list[list[Cell]]:
    """Every axis's cells, planned, and their predictions computed in one pass (the reference's first)."""
    plans = [plan_axis(pipeline, axis, reference_profile, reference_config, task, primary, graph_backend, store,
                       resume) for axis in axes]
    prepare_cells(pipeline, [cell for cells in plans for cell in cells], reference_profile, store,
                  first=(Request(reference_profile, reference_config),), progress=on_pass)
    return plans


def run_axes(pipeline: StagedPipeline, axes: list[Axis], reference_profile: Profile, reference_config: ModelConfig,
             task: str, classes, primary: str, graph_backend: str, store=None, resume: bool = False,
             on_pass=None, on_axis=None) -> list[dict]:
    """Every variant of every axis: their predictions computed in one pass (prepare_axes), then each axis
    compares its variants. `on_pass(images)` follows the pass; `on_axis(axis, cells)` gives an axis's
    per-variant progress callback."""
    plans = prepare_axes(pipeline, axes, reference_profile, reference_config, task, primary, graph_backend, store,
                         resume, on_pass)
    return [run_axis(pipeline, axis, reference_profile, reference_config, task, classes, primary, graph_backend,
                     progress=on_axis(axis, cells) if on_axis else None, store=store, cells=cells)
            for axis, cells in zip(axes, plans)]


def _interval_of_largest(pipeline: StagedPipeline, axis_name: str, variants_out: list[dict], planned: dict,
                         reference_profile: Profile, classes, store) -> None:
    """The mAP interval of the axis's variant with the largest |Δ| (bootstrap_scope "largest")."""
    measured = distinct_findings(variants_out)
    largest = max(measured, key=lambda v: abs(v["delta"])) if measured else None
    if largest is None or largest.get("ci95") is not None or largest["name"] not in planned:
        return  # nothing measured, or an interval already there (taken back from the store)
    cell = planned[largest["name"]]
    largest.update(change_of(pipeline, cell.profile, cell.config, reference_profile, cell.base_config, classes))
    if store is not None:
        store.put(cell.key, axis_name, largest["name"], {k: v for k, v in largest.items()
                                                                  if k not in ("identical_to", "resumed")})


def worst_variant(axis_result: dict) -> str | None:
    candidates = distinct_findings(axis_result["variants"])
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
            where = variant.target
            if variant.graph:  # a rewrite keeps the backend and precision chosen so far (torch runs no ONNX)
                graph.update(variant.graph)
                where = dataclasses.replace(where, backend=config.backend if config.backend != "torch" else
                                            where.backend, precision=config.precision)
            config = ModelConfig.at(where, tuple(sorted(graph.items())))
        steps.append((name, chosen, profile, config))
    # one more pass over the data for every step at once (the worst variants are known only now)
    pipeline.prepare([Request(reference_profile, reference_config)] + [Request(p, c) for _, _, p, c in steps])
    curve = []
    for name, chosen, profile, config in steps:
        try:
            row = compare_variant(pipeline, task, classes, profile, config, reference_profile, reference_config,
                                  primary)
            curve.append({"axis": name, "variant": chosen, "metric": row.metric[primary], "delta": row.delta,
                          "ci95": row.significance["ci95"], "significant": row.significance["significant"],
                          "flip_rate": row.measures["flip_rate"]})
        except Exception as err:  # noqa: BLE001 - the curve stops where a combination cannot run
            curve.append({"axis": name, "variant": chosen, "metric": None, "delta": None,
                          "reason": f"{type(err).__name__}: {err}"})
            break
    return curve
