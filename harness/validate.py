"""`harness validate`: the pre-deployment gate. A TOML file names the model, the data, the deployment
profile(s) and the thresholds; every threshold of every profile becomes one check that passes or fails.

Each deployment profile is evaluated like a SysNoise variant (harness/noise/sweep.py): the training
profile on the reference against the deployment profile on its backend, on the same samples, through the
same stage caches. Per-axis SysNoise limits run the named axes once for the model; an op SNR floor runs
`harness drift` for each profile.

The gate runs on a worker (harness.executor; GateJob): each deployment profile is a cell, so a profile
whose backend segfaults, aborts or runs past `--cell-timeout` fails its own checks with that reason, and
the other profiles are measured on a new worker.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from harness.gate_file import DEFAULT_THRESHOLDS, Gate

SCHEMA = "harness.validate/1"


@dataclass
class Check:
    profile: str
    threshold: str
    limit: float
    value: float | None
    passed: bool
    message: str

    def to_json(self) -> dict:
        return {"profile": self.profile, "threshold": self.threshold, "limit": self.limit, "value": self.value,
                "passed": self.passed, "message": self.message}


@dataclass
class GateJob:
    """The gate file (read again by the worker) and the profiles isolated so far: a job of harness.executor."""

    config: Path
    allow_code: bool = False
    isolated: dict = field(default_factory=dict)  # profile name -> why its worker died or was killed

    @property
    def cpus(self) -> int:
        from harness.gate_file import load_gate

        return load_gate(self.config, self.allow_code).threads or 1

    def work(self, send) -> dict:
        from harness.compare.cells import work_messages
        from harness.gate_file import load_gate

        return run_gate(load_gate(self.config, self.allow_code), on_work=work_messages(send), isolated=self.isolated)

    def receive(self, message: tuple, store) -> None:
        """Nothing to keep: the checks are computed from the whole pass, at its end."""

    def isolate(self, cell: tuple, reason: str, store) -> dict:
        (name,) = cell
        self.isolated[name] = reason
        return {"profile": name, "reason": reason}


def run_gate(gate: Gate, progress: bool = True, on_work=None, isolated: dict | None = None) -> dict:
    """The gate's report. on_work: called with the name of the profile whose work begins ("reference" for
    the reference's, None between); isolated: profile name -> why it killed an earlier worker (its checks
    fail with that reason; it is not run again)."""
    from harness.calibration import calibration_set
    from harness.compare.cells import REFERENCE_WORK
    from harness.data import evaluation_data, load_dataset
    from harness.export import export
    from harness.pipeline import Request, StagedPipeline
    from harness.noise.stats import significance_block
    from harness.noise.sweep import reference_of
    from harness.tasks import get_task
    from harness.report.blocks import common_blocks, failure_records
    from harness.run import require_readable

    spec = gate.request.resolve()
    data = evaluation_data(spec.task, load_dataset(gate.dataset) if gate.dataset else None, gate.limit)
    data = data.aligned_to(spec.labels)
    working = on_work or (lambda owner: None)
    working(REFERENCE_WORK)  # the reference's decoder reads the first sample: bounded by --cell-timeout too
    require_readable(data, spec.profile)
    working(None)
    exported = export(spec)
    needs_int8 = any(p.get("precision") == "int8" for p in gate.profiles) or "precision" in gate.thresholds.get(
        "max_sysnoise_delta", {})
    # mAP intervals for each profile and each sysnoise axis's largest change only: a gate stays cheap
    pipeline = StagedPipeline(exported, data, gate.batch_size, gate.threads,
                              calibration_set(spec, gate.calibration) if needs_int8 else None, bootstrap_scope="largest")
    reference_identity, reference_config = reference_of(exported)
    task = get_task(spec.task)
    classes = data.classes or spec.labels
    limits = {**DEFAULT_THRESHOLDS, **gate.thresholds}
    planned = _planned_profiles(gate, spec.profile, reference_config)
    reference = Request(spec.profile, reference_config)
    isolated = isolated or {}
    running = [(name, p, c) for name, p, c in planned if name not in isolated]
    pipeline.on_work = working
    owners = {Request(p, c).key: name for name, p, c in reversed(running)}  # shared work is the first one's
    owners[reference.key] = REFERENCE_WORK
    pipeline.prepare([reference] + [Request(p, c) for _, p, c in running],  # one pass over the data for all
                     owners, output_pairs=[(Request(p, c), reference) for _, p, c in running], first=(reference.key,))
    checks, rows, drift_reports = _measure_profiles(pipeline, planned, data, reference_config, classes, limits,
                                                    isolated, working)
    sysnoise_reports = []
    if "max_sysnoise_delta" in limits:
        axis_checks, sysnoise = sysnoise_checks(pipeline, spec, data, reference_config, classes,
                                                limits["max_sysnoise_delta"])
        checks += axis_checks
        sysnoise_reports.append(sysnoise)
    passed = all(c.passed for c in checks)
    return {
        **common_blocks(SCHEMA, exported, data, pipeline.fingerprint, len(data.samples),
                        failure_records(pipeline.failures), {**reference_identity, "profile": spec.profile.to_json()},
                        gate.threads, {}, {row["settings"]["backend"] for row in rows if "settings" in row}),
        "gate": str(gate.path),
        "calibration": pipeline.calibration.describe() if pipeline.calibration is not None else None,
        "significance": significance_block(task, pipeline.bootstrap_rounds),
        "passed": passed,
        "checks": [c.to_json() for c in checks],
        "profiles": rows,
        "sysnoise": sysnoise_reports,
        "drift": drift_reports,
    }


def _planned_profiles(gate: Gate, reference_profile, reference_config) -> list[tuple]:
    """(name, profile, model configuration) of each of the gate's profiles."""
    from harness.pipeline import ModelConfig
    from harness.profile import profile_from_mapping

    planned = []
    for index, entry in enumerate(gate.profiles):
        profile = profile_from_mapping({k: v for k, v in entry.items() if k != "name"}, reference_profile,
                                       str(gate.path), gate.allow_code)
        config = ModelConfig.at(profile.placement)
        if config.backend == "torch" and reference_config.backend == "torch" and profile.precision == "fp32":
            config = reference_config
        planned.append((entry.get("name", f"profile-{index}"), profile, config))  # unique, as the gate file checks
    return planned


def _measure_profiles(pipeline, planned: list[tuple], data, reference_config, classes, limits: dict,
                      isolated: dict, working) -> tuple[list[Check], list[dict], list[dict]]:
    """Each profile's result row and checks against the reference (its drift report with min_op_snr_db)."""
    from harness.noise.sweep import change_of, compare_variant
    from harness.result import ResultRow

    spec, task = pipeline.exported.spec, pipeline.task
    primary = task.primary_metric
    checks, rows, drift_reports = [], [], []
    for name, profile, config in planned:
        working(name)
        try:
            if name in isolated:
                raise ProfileIsolated(isolated[name])
            row = compare_variant(pipeline, spec.task, classes, profile, config, spec.profile, reference_config,
                                  primary, {"profile": name})
            if task.evaluates_whole_set and not row.measures["identical_to_reference"]:
                row.significance.update(change_of(pipeline, profile, config, spec.profile, reference_config, classes))
            error = pipeline.output_error(profile, config, spec.profile, reference_config)
        except Exception as err:  # noqa: BLE001 - a profile that cannot run fails its checks, the gate goes on
            message = str(err) if isinstance(err, ProfileIsolated) else \
                f"{type(err).__name__}: {' '.join(str(err).split())[:300]}"
            checks += [Check(name, key, float(limit), None, False, f"did not run: {message}")
                       for key, limit in limits.items() if key != "max_sysnoise_delta" and limit is not False
                       and (key != "min_int8_share" or profile.precision == "int8")]
            rows.append(ResultRow({"profile": name}, "failed", message).to_json())
            continue
        rows.append(ResultRow(row.identity, "ok", "", row.metric, row.delta, row.significance, row.precision_effective,
                              pipeline.session(config).execution(),
                              {"settings": profile.to_json(), "top1_agreement": 1 - row.measures["flip_rate"],
                               "max_output_error": error}).to_json())
        checks += profile_checks(name, row.to_json(), error, primary, limits) + execution_checks(
            name, profile.precision, rows[-1]["execution"], limits)
        if "min_op_snr_db" in limits:
            check, drift = snr_check(name, spec, profile, data, limits["min_op_snr_db"], pipeline.calibration)
            checks.append(check)
            drift_reports.append(drift)
    working(None)
    return checks, rows, drift_reports


class ProfileIsolated(Exception):
    """A profile that killed or outlasted an earlier worker of this gate (the reason its checks fail)."""


def profile_checks(profile: str, row: dict, error: float, primary: str, limits: dict) -> list[Check]:
    """max_metric_drop, min_top1_agreement and max_output_error of one profile's comparison row."""
    checks = []
    if "max_metric_drop" in limits:
        drop = -row["delta"] + 0.0  # no "-0" for an unchanged metric
        checks.append(Check(profile, "max_metric_drop", limits["max_metric_drop"], drop,
                            drop <= limits["max_metric_drop"],
                            f"{primary} {row['metric'][primary]:.4f} vs reference {row['baseline_metric'][primary]:.4f}"
                            f": drop {drop * 100:.2f} pts (limit {limits['max_metric_drop'] * 100:.2f}; "
                            f"{significance_text(row)})"))
    if "min_top1_agreement" in limits:
        agreement = 1 - row["flip_rate"]
        checks.append(Check(profile, "min_top1_agreement", limits["min_top1_agreement"], agreement,
                            agreement >= limits["min_top1_agreement"],
                            f"agreement {agreement:.4f} over {row['samples']} samples "
                            f"(limit {limits['min_top1_agreement']})"))
    if "max_output_error" in limits:
        checks.append(Check(profile, "max_output_error", limits["max_output_error"], error,
                            error <= limits["max_output_error"],
                            f"max abs output difference {error:.3g} (limit {limits['max_output_error']:.3g})"))
    return checks


def snr_check(name: str, spec, profile, data, floor: float, calibration) -> tuple[Check, dict]:
    """min_op_snr_db: `harness drift` of the profile's backend on the first 16 samples."""
    from harness.compare.drift import Thresholds
    from harness.compare.drift_report import drift_report

    drift = drift_report(spec, profile.backend, profile.device, profile.precision, data.limit(16),
                         thresholds=Thresholds(snr_floor=floor), calibration=calibration, progress=False)
    first = drift["first_divergence"]
    worst = min((r["snr_db"] for r in drift["ops"] if r["snr_db"] is not None), default=None)
    return Check(name, "min_op_snr_db", floor, worst, first is None,
                 "every observable tensor above the floor" if first is None else
                 f"{first['tensor']} ({first['op_type']}, {first['module']}) at {first['snr_db']:.1f} dB"), drift


def sysnoise_checks(pipeline, spec, data, reference_config, classes, axis_limits: dict) -> tuple[list[Check], dict]:
    """max_sysnoise_delta: the named axes swept once on the gate's pipeline, one check per axis at its worst
    variant, and the sweep's report."""
    from harness.noise import get_axes
    from harness.noise.sweep import reference_metric, run_axes, worst_variant
    from harness.tasks import get_task

    primary = get_task(spec.task).primary_metric
    results = run_axes(pipeline, get_axes(",".join(axis_limits)), spec.profile, reference_config, spec.task,
                       classes, primary, "onnxruntime")
    checks = []
    for result in results:
        limit = axis_limits[result["axis"]]
        worst = result["delta_max"]
        drop = -worst if worst is not None else None
        worst_row = next((v for v in result["variants"] if v["name"] == worst_variant(result)), {})
        checks.append(Check("sysnoise", f"max_sysnoise_delta.{result['axis']}", limit, drop,
                            drop is not None and drop <= limit,
                            "no variant ran" if drop is None else
                            f"worst variant {worst_row.get('name')} drops {drop * 100:.2f} pts (limit "
                            f"{limit * 100:.2f}; {significance_text(worst_row)})"))
    report = {"schema": "harness.sysnoise/1", "model": {"name": spec.name, "task": spec.task},
              "dataset": {"name": data.name, "samples": len(data.samples)},
              "reference": {"metric": reference_metric(pipeline, spec.profile, reference_config, spec.task, classes)},
              "primary_metric": primary, "axes": results, "combined": []}
    return checks, report


def execution_checks(profile: str, precision: str, execution: dict, limits: dict) -> list[Check]:
    """require_requested_execution (unless turned off) and, for an int8 profile, min_int8_share, from the
    session's execution record (backends.execution_record)."""
    checks = []
    recorded = execution.get("recorded")
    if limits.get("require_requested_execution"):
        matches = execution.get("matches_request")
        ran = ", ".join(f"{count} {p}" for p, count in (execution.get("by_precision") or {}).items())
        message = (f"not verifiable: {execution['source']}" if not recorded or matches is None else
                   execution["mismatch"] if matches is False else
                   f"ran as asked: compute ops {ran} on {execution['expected_placement']}")
        checks.append(Check(profile, "require_requested_execution", 1.0, None if matches is None else float(matches),
                            matches is not False, message))
    if "min_int8_share" in limits and precision == "int8":
        share, limit = execution.get("int8_share"), limits["min_int8_share"]
        message = (f"not verifiable: {execution['source']}" if share is None else
                   f"{round(share * execution['compute_ops'])}/{execution['compute_ops']} compute ops ran int8 "
                   f"({share:.0%}; limit {limit:.0%})")
        checks.append(Check(profile, "min_int8_share", limit, share, share is not None and share >= limit, message))
    return checks


def significance_text(row: dict) -> str:
    """The Δ's significance in words, by the one rule (harness.noise.stats): the check's threshold is on the
    measured drop; this says whether the data could tell it from chance."""
    if row.get("identical_to_reference"):
        return "identical outputs"
    if row.get("significant") is None:
        return "significance not tested"
    verdict = "significant" if row["significant"] else "not significant"
    if row.get("p_value") is not None:
        return f"{verdict}, McNemar p = {row['p_value']:.3g}"
    low, high = row["ci95"]
    return f"{verdict}, 95 % interval [{low * 100:+.2f}, {high * 100:+.2f}] pts"
