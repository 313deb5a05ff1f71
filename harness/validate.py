"""`harness validate`: the pre-deployment gate. A TOML file names the model, the data, the deployment
profile(s) and the thresholds; every threshold of every profile becomes one check that passes or fails.

Each deployment profile is evaluated like a SysNoise variant (harness/noise/sweep.py): the training
profile on the reference against the deployment profile on its backend, on the same samples, through the
same stage caches. Per-axis SysNoise limits run the named axes once for the model; an op SNR floor runs
`harness drift` for each profile.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from harness.errors import UsageError

SCHEMA = "harness.validate/1"
TOP_KEYS = {"model": str, "dataset": str, "limit": int, "batch_size": int, "threads": int, "profiles": list,
            "thresholds": dict}
THRESHOLDS = {
    "max_metric_drop": "largest allowed drop of the primary metric (top1 or mAP), as a fraction: 0.01 = 1 point",
    "min_top1_agreement": "smallest allowed share of samples whose prediction matches the reference",
    "max_output_error": "largest allowed max abs difference of the raw model outputs",
    "max_sysnoise_delta": "per noise axis, the largest allowed drop at its worst variant: {resize = 0.02, ...}",
    "min_op_snr_db": "every observable tensor's SNR vs the tensor reference must stay at or above this (dB)",
    "require_requested_execution": "each profile's backend ran what it asked, as its runtime reports it: every "
                                   "compute op in the asked precision (int8: at least one), every node on the "
                                   "asked device or execution provider (default true)",
    "min_int8_share": "for int8 profiles, the smallest allowed share of compute ops that really ran int8",
}
# checks every gate runs unless its file turns them off
DEFAULT_THRESHOLDS = {"require_requested_execution": True}


class GateError(UsageError):
    """A gate file problem: names the file, the line or key, and what is allowed."""


@dataclass
class Gate:
    path: Path
    model: str | None
    dataset: Path | None
    limit: int | None
    batch_size: int
    threads: int | None
    profiles: list[dict]
    thresholds: dict
    text: str = field(repr=False, default="")
    allow_code: bool = False                   # --allow-code: the file's code names are honoured


def _line_of(text: str, key: str) -> str:
    for number, line in enumerate(text.splitlines(), 1):
        if re.match(rf"\s*{re.escape(key)}\s*=", line) or line.strip() in (f"[{key}]", f"[[{key}]]"):
            return f"line {number}"
    return "key"


def _fail(gate_path: Path, text: str, key: str, problem: str) -> GateError:
    return GateError(f"{gate_path}: {_line_of(text, key.split('.')[-1])} ({key}): {problem}")


def _check_type(path, text, key, value, kind) -> None:
    ok = isinstance(value, kind) and not (kind in (int, float) and isinstance(value, bool))
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        ok = True
    if not ok:
        raise _fail(path, text, key, f"expected {kind.__name__}, got {type(value).__name__} {value!r}")


def _check_range(path, text, key, value, low=None, high=None) -> None:
    import math

    if isinstance(value, float) and not math.isfinite(value):
        raise _fail(path, text, key, f"must be a finite number, got {value!r}")
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = f"between {low} and {high}" if low is not None and high is not None else \
            f">= {low}" if low is not None else f"<= {high}"
        raise _fail(path, text, key, f"must be {bounds}, got {value!r}")


# (low, high) of every number a gate holds; fractions are metric units (DESIGN.md)
TOP_RANGES = {"limit": (1, None), "batch_size": (1, 4096), "threads": (1, 1024)}
THRESHOLD_RANGES = {"max_metric_drop": (0.0, 1.0), "min_top1_agreement": (0.0, 1.0), "max_output_error": (0.0, None),
                    "max_sysnoise_delta": (0.0, 1.0), "min_op_snr_db": (-200.0, 400.0), "min_int8_share": (0.0, 1.0)}


def _check_threshold(path, text, key, value) -> None:
    from harness.noise import AXES

    name = key.split(".")[1]
    if name == "max_sysnoise_delta" and key.count(".") == 1:
        _check_type(path, text, key, value, dict)
        if not value:
            raise _fail(path, text, key, f"no axis: name at least one of {', '.join(AXES)}, e.g. {{ resize = 0.02 }}")
        for axis, limit in value.items():
            if axis not in AXES:
                raise _fail(path, text, f"{key}.{axis}", f"unknown noise axis; allowed: {', '.join(AXES)}")
            _check_threshold(path, text, f"{key}.{axis}", limit)
        return
    if name == "require_requested_execution":
        _check_type(path, text, key, value, bool)
        return
    _check_type(path, text, key, value, float)
    _check_range(path, text, key, value, *THRESHOLD_RANGES[name])


def _check_profile(path, text, where: str, profile, allow_code: bool) -> dict:
    from harness.backends import get_backend
    from harness.errors import UnknownName
    from harness.profile import FIELD_NAMES, FieldError, checked_field

    if not isinstance(profile, dict):
        raise _fail(path, text, "profiles", f"{where} must be a table ([[profiles]])")
    checked = {}
    for key, value in profile.items():
        if key == "name":
            _check_type(path, text, f"{where}.name", value, str)
            checked[key] = value
            continue
        if key not in FIELD_NAMES or key == "labels":
            raise _fail(path, text, f"{where}.{key}", "unknown profile key; allowed: name, "
                        + ", ".join(n for n in FIELD_NAMES if n != "labels"))
        if key == "backend":  # an alias (ort, ov, trt) names its backend
            try:
                checked[key] = get_backend(str(value)).name if isinstance(value, str) else value
            except UnknownName:
                raise _fail(path, text, f"{where}.{key}", f"{value!r} is not one of "
                            f"{', '.join(_allowed_backends())}") from None
            _check_type(path, text, f"{where}.{key}", checked[key], str)
            continue
        try:
            checked[key] = checked_field(key, value, allow_code)
        except FieldError as err:
            raise _fail(path, text, f"{where}.{key}", err.problem) from None
    return checked


def _allowed_backends() -> tuple:
    from harness.backends import registry

    return tuple(registry())


def load_gate(path: Path, allow_code: bool = False) -> Gate:
    """Reads and checks every field of a gate (types, ranges, names) before any work starts: a gate that
    cannot check anything, or only vacuously, is a config error (exit 2)."""
    from harness.files import read_toml
    from harness.model import names_code

    if not path.exists():
        raise GateError(f"{path}: gate file not found (write a starter with `harness validate --init`)")
    data, text = read_toml(path, "gate file")
    for key, value in data.items():
        if key not in TOP_KEYS:
            raise _fail(path, text, key, f"unknown key; allowed: {', '.join(TOP_KEYS)}")
        _check_type(path, text, key, value, TOP_KEYS[key])
        if key in TOP_RANGES:
            _check_range(path, text, key, value, *TOP_RANGES[key])
    if names_code(data.get("model")) and not allow_code:
        raise _fail(path, text, "model", f"{data['model']!r} names a factory to import and call; a gate file runs "
                    "no code unless you pass --allow-code (README, Trust)")
    thresholds = data.get("thresholds", {})
    for key, value in thresholds.items():
        if key not in THRESHOLDS:
            raise _fail(path, text, f"thresholds.{key}", f"unknown threshold; allowed: {', '.join(THRESHOLDS)}")
        _check_threshold(path, text, f"thresholds.{key}", value)
    if not thresholds:
        raise _fail(path, text, "thresholds", f"no thresholds: a gate needs at least one of {', '.join(THRESHOLDS)}")
    profiles = data.get("profiles", [{"name": "onnxruntime-fp32", "backend": "onnxruntime"}])
    if not profiles and set(thresholds) != {"max_sysnoise_delta"}:
        raise _fail(path, text, "profiles", "an empty list checks nothing: add a [[profiles]] table (backend, "
                    "precision, ...) or leave `profiles` out for ONNX Runtime FP32")
    if "min_int8_share" in thresholds and not any(p.get("precision") == "int8" for p in profiles
                                                  if isinstance(p, dict)):
        raise _fail(path, text, "thresholds.min_int8_share", "applies to int8 profiles and no profile has "
                    'precision = "int8": it would check nothing')
    names = set()
    checked = []
    for index, profile in enumerate(profiles):
        where = f"profiles[{index}]"
        entry = _check_profile(path, text, where, profile, allow_code)
        name = entry.get("name", f"profile-{index}")
        if name in names:
            raise _fail(path, text, "name", f"{where}: profile name {name!r} used twice")
        names.add(name)
        checked.append(entry)
    return Gate(path, data.get("model"), Path(data["dataset"]) if data.get("dataset") else None, data.get("limit"),
                data.get("batch_size", 64), data.get("threads"), checked, thresholds, text, allow_code)


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


def run_gate(gate: Gate, progress: bool = True) -> dict:
    from harness.calibration import calibration_set
    from harness.data import embedded_benchmark, load_dataset
    from harness.export import export
    from harness.model import resolve_model
    from harness.noise import get_axes
    from harness.noise.pipeline import ModelConfig, Request, StagedPipeline
    from harness.noise.stats import significance_block
    from harness.tasks import get_task
    from harness.noise.sweep import (compare_variant, map_interval, reference_metric, reference_of, run_axes,
                                     worst_variant)
    from harness.profile import profile_from_mapping
    from harness.provenance import provenance
    from harness.run import require_readable

    spec = resolve_model(gate.model)
    data = (load_dataset(gate.dataset) if gate.dataset else embedded_benchmark(spec.task)).limit(gate.limit)
    data = data.aligned_to(spec.labels)
    require_readable(data, spec.profile)
    exported = export(spec)
    needs_int8 = any(p.get("precision") == "int8" for p in gate.profiles) or "precision" in gate.thresholds.get(
        "max_sysnoise_delta", {})
    # mAP intervals for each profile and each sysnoise axis's largest change only: a gate stays cheap
    pipeline = StagedPipeline(exported, data, gate.batch_size, gate.threads,
                              calibration_set(spec) if needs_int8 else None, bootstrap_scope="largest")
    reference_identity, reference_config = reference_of(exported)
    task = get_task(spec.task)
    primary = task.primary_metric
    classes = data.classes or spec.labels
    limits = {**DEFAULT_THRESHOLDS, **gate.thresholds}
    checks, rows, drift_reports = [], [], []
    planned = []
    for entry in gate.profiles:
        profile = profile_from_mapping({k: v for k, v in entry.items() if k != "name"}, spec.profile, str(gate.path),
                                       gate.allow_code)
        config = ModelConfig(profile.backend, profile.device, profile.precision)
        if config.backend == "torch" and reference_config.backend == "torch" and profile.precision == "fp32":
            config = reference_config
        planned.append((entry.get("name", "profile"), profile, config))
    reference = Request(spec.profile, reference_config)
    pipeline.prepare([reference] + [Request(p, c) for _, p, c in planned],  # one pass over the data for all
                     output_pairs=[(Request(p, c), reference) for _, p, c in planned])
    for name, profile, config in planned:
        try:
            row = compare_variant(pipeline, spec.task, classes, profile, config, spec.profile, reference_config,
                                  primary)
            if task.evaluates_whole_set and not row["identical_to_reference"]:
                row.update(map_interval(pipeline, profile, config, spec.profile, reference_config, classes))
            error = pipeline.output_error(profile, config, spec.profile, reference_config)
        except Exception as err:  # noqa: BLE001 - a profile that cannot run fails its checks, the gate goes on
            message = f"{type(err).__name__}: {' '.join(str(err).split())[:300]}"
            checks += [Check(name, key, float(limit), None, False, f"did not run: {message}")
                       for key, limit in limits.items() if key != "max_sysnoise_delta" and limit is not False
                       and (key != "min_int8_share" or profile.precision == "int8")]
            rows.append({"profile": name, "status": "failed", "reason": message})
            continue
        execution = pipeline.session(config).execution()
        rows.append({"profile": name, "status": "ok", "settings": profile.to_json(), "metric": row["metric"],
                     "delta": row["delta"], "top1_agreement": 1 - row["flip_rate"], "max_output_error": error,
                     "execution": execution,
                     **{key: row[key] for key in ("ci95", "significant", "p_value", "significance_test",
                                                  "bootstrap_rounds")}})
        if "max_metric_drop" in limits:
            drop = -row["delta"] + 0.0  # no "-0" for an unchanged metric
            checks.append(Check(name, "max_metric_drop", limits["max_metric_drop"], drop,
                                drop <= limits["max_metric_drop"],
                                f"{primary} {row['metric'][primary]:.4f} vs reference {row['baseline_metric'][primary]:.4f}"
                                f": drop {drop * 100:.2f} pts (limit {limits['max_metric_drop'] * 100:.2f}; "
                                f"{significance_text(row)})"))
        if "min_top1_agreement" in limits:
            agreement = 1 - row["flip_rate"]
            checks.append(Check(name, "min_top1_agreement", limits["min_top1_agreement"], agreement,
                                agreement >= limits["min_top1_agreement"],
                                f"agreement {agreement:.4f} over {row['samples']} samples "
                                f"(limit {limits['min_top1_agreement']})"))
        if "max_output_error" in limits:
            checks.append(Check(name, "max_output_error", limits["max_output_error"], error,
                                error <= limits["max_output_error"],
                                f"max abs output difference {error:.3g} (limit {limits['max_output_error']:.3g})"))
        checks += execution_checks(name, profile.precision, execution, limits)
        if "min_op_snr_db" in limits:
            from harness.compare.drift import Thresholds, drift_report

            drift = drift_report(spec, profile.backend, profile.device, profile.precision, data.limit(16),
                                 thresholds=Thresholds(snr_floor=limits["min_op_snr_db"]),
                                 calibration=pipeline.calibration, progress=False)
            drift_reports.append(drift)
            first = drift["first_divergence"]
            worst = min((r["snr_db"] for r in drift["ops"] if r["snr_db"] is not None), default=None)
            checks.append(Check(name, "min_op_snr_db", limits["min_op_snr_db"], worst, first is None,
                                "every observable tensor above the floor" if first is None else
                                f"{first['tensor']} ({first['op_type']}, {first['module']}) at {first['snr_db']:.1f} dB"))
    sysnoise_reports = []
    if "max_sysnoise_delta" in limits:
        axis_limits = limits["max_sysnoise_delta"]
        axes = get_axes(",".join(axis_limits))
        results = run_axes(pipeline, axes, spec.profile, reference_config, spec.task, classes, primary, "onnxruntime")
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
        sysnoise_reports.append({"schema": "harness.sysnoise/1", "model": {"name": spec.name, "task": spec.task},
                                 "dataset": {"name": data.name, "samples": len(data.samples)},
                                 "reference": {"metric": reference_metric(pipeline, spec.profile, reference_config,
                                                                          spec.task, classes)},
                                 "primary_metric": primary, "axes": results, "combined": []})
    passed = all(c.passed for c in checks)
    return {
        "schema": SCHEMA,
        "provenance": provenance(gate.threads, {}, exported, pipeline.fingerprint,
                                 sorted({row["settings"]["backend"] for row in rows if "settings" in row})),
        "gate": str(gate.path),
        "model": {"name": spec.name, "task": spec.task, "onnx_sha256": exported.sha256,
                  "weights": spec.weights_source},
        "dataset": {"name": data.name, "samples": len(data.samples), "failed_samples": len(pipeline.failures),
                    "failed": [{"sample": k, "reason": v} for k, v in pipeline.failures.items()],
                    "skipped_files": len(data.skipped), "skipped": data.skipped},
        "reference": {**reference_identity, "profile": spec.profile.to_json()},
        "significance": significance_block(task, pipeline.bootstrap_rounds),
        "passed": passed,
        "checks": [c.to_json() for c in checks],
        "profiles": rows,
        "sysnoise": sysnoise_reports,
        "drift": drift_reports,
    }


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


def gate_table(report: dict, config):
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=escape(f"gate {config}: {'passed' if report['passed'] else 'FAILED'}"), title_justify="left")
    for column in ("profile", "threshold", "limit", "value", "result", "detail"):
        table.add_column(column)
    for check in report["checks"]:
        value = "-" if check["value"] is None else f"{check['value']:.4g}"
        table.add_row(escape(check["profile"]), check["threshold"], f"{check['limit']:.4g}", value,
                      "[green]pass[/]" if check["passed"] else "[bold red]FAIL[/]", escape(check["message"]))
    return table


_NOT_XML = re.compile("[^\u0009\u000a\u000d\u0020-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def xml_text(value) -> str:
    """Text XML 1.0 can hold: control characters (a profile name may carry one) are dropped, never left to
    make the file ill-formed; ElementTree escapes the rest."""
    return _NOT_XML.sub("", str(value))


def junit_xml(report: dict) -> str:
    """One <testsuite> per profile, one <testcase> per threshold (JUnit XML as GitLab/GitHub/Jenkins read it)."""
    from xml.etree import ElementTree as ET

    model = xml_text(report["model"]["name"])
    suites = ET.Element("testsuites", name=f"harness validate {model}",
                        tests=str(len(report["checks"])), failures=str(sum(not c["passed"] for c in report["checks"])))
    by_profile: dict[str, list] = {}
    for check in report["checks"]:
        by_profile.setdefault(check["profile"], []).append(check)
    for profile, checks in by_profile.items():
        suite = ET.SubElement(suites, "testsuite", name=xml_text(profile), tests=str(len(checks)),
                              failures=str(sum(not c["passed"] for c in checks)), errors="0", skipped="0", time="0")
        for check in checks:
            case = ET.SubElement(suite, "testcase", name=xml_text(check["threshold"]),
                                 classname=xml_text(f"harness.gate.{model}.{profile}"), time="0")
            if not check["passed"]:
                failure = ET.SubElement(case, "failure", message=xml_text(check["message"]), type="threshold")
                failure.text = xml_text(f"{check['threshold']} = {check['limit']}: {check['message']}")
            else:
                ET.SubElement(case, "system-out").text = xml_text(check["message"])
    ET.indent(suites)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(suites, encoding="unicode") + "\n"


def markdown_summary(report: dict) -> str:
    verdict = "passed" if report["passed"] else "FAILED"
    lines = [f"### harness gate {verdict}: {report['model']['name']} on {report['dataset']['name']} "
             f"({report['dataset']['samples']} samples)", "",
             "| profile | threshold | limit | value | result |", "|---|---|---|---|---|"]
    for check in report["checks"]:
        value = "-" if check["value"] is None else f"{check['value']:.4g}"
        lines.append(f"| {check['profile']} | `{check['threshold']}` | {check['limit']:.4g} | {value} | "
                     f"{'✅ pass' if check['passed'] else '❌ **fail**'} |")
    failed = [c for c in report["checks"] if not c["passed"]]
    if failed:
        lines += ["", "Failed:"] + [f"- {c['profile']} `{c['threshold']}`: {c['message']}" for c in failed]
    return "\n".join(lines) + "\n"


def starter_gate(model: str) -> str:
    """A commented gate.toml that passes on `model` as shipped; the block at the end, uncommented, is a
    known-bad deployment that fails it."""
    return f'''# harness gate: `harness validate --config gate.toml` exits 0 when every threshold holds, 1 when one
# fails, 2 when this file has a problem. Metric units are fractions: 0.01 = 1 point.
model = "{model}"          # zoo name, torchvision:NAME, package.module:factory or a path to an .onnx
# dataset = "path/to/val"     # ImageNet-style folder or COCO json; default: the embedded benchmark
# limit = 200                 # use the first N samples
batch_size = 64

# Each deployment profile: backend, device and precision, plus any pre/post-processing field that
# differs from the model's training profile (decoder, resize, color, nms, box_decode, ...).
[[profiles]]
name = "onnxruntime-fp32"
backend = "onnxruntime"
device = "cpu"
precision = "fp32"

[thresholds]
max_metric_drop = 0.01        # the primary metric (top1 or mAP) may drop by at most 1 point
min_top1_agreement = 0.98     # at least 98 % of samples keep the reference's prediction
max_output_error = 0.001      # max abs difference of the raw outputs
# min_op_snr_db = 30          # every intermediate tensor at least 30 dB SNR (runs harness drift)
# max_sysnoise_delta = {{ resize = 0.02, decoder = 0.01 }}   # per noise axis, the worst variant's drop
# require_requested_execution = true   # (default) fail a profile whose backend ran another precision or device
# min_int8_share = 0.9        # int8 profiles: at least 90 % of compute ops really ran int8

# A known-bad deployment: the camera delivers BGR. Uncomment to watch the gate fail.
# [[profiles]]
# name = "camera-bgr"
# backend = "onnxruntime"
# color = "bgr"
'''
