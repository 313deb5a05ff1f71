"""The gate (`harness validate`), its JUnit and Markdown, the HTML reports in a real headless browser, and
`harness diff`."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def _enable_bgr_block(gate: Path) -> None:
    text = gate.read_text()
    for line in ("[[profiles]]", 'name = "camera-bgr"', 'backend = "onnxruntime"', 'color = "bgr"'):
        text = text.replace(f"# {line}\n", f"{line}\n")
    gate.write_text(text)


def test_starter_gate_passes_as_shipped_and_fails_on_a_bgr_camera(tmp_path, harness_cli):
    import junitparser
    import xmlschema

    assert harness_cli("validate", "--init", cwd=tmp_path).returncode == 0
    gate = tmp_path / "gate.toml"
    assert "known-bad" in gate.read_text() and harness_cli("validate", "--init", cwd=tmp_path).returncode == 2

    good = harness_cli("validate", "--config", "gate.toml", "--junit", "good.xml", "--markdown", "good.md",
                       cwd=tmp_path)
    assert good.returncode == 0, good.stdout + good.stderr
    assert "passed" in good.stdout and "FAIL" not in good.stdout

    _enable_bgr_block(gate)
    bad = harness_cli("validate", "--config", "gate.toml", "--junit", "bad.xml", "--markdown", "bad.md",
                      "--json", "bad.json", cwd=tmp_path)
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert "gate failed: camera-bgr max_metric_drop" in bad.stdout
    report = json.loads((tmp_path / "bad.json").read_text())
    failed = {(c["profile"], c["threshold"]) for c in report["checks"] if not c["passed"]}
    assert ("camera-bgr", "max_metric_drop") in failed and not any(p == "onnxruntime-fp32" for p, _ in failed)
    assert "❌ **fail**" in (tmp_path / "bad.md").read_text() and "✅ pass" in (tmp_path / "good.md").read_text()

    schema = xmlschema.XMLSchema(str(HERE / "data" / "junit.xsd"))
    for name in ("good.xml", "bad.xml"):
        schema.validate(str(tmp_path / name))
    parsed = junitparser.JUnitXml.fromfile(str(tmp_path / "bad.xml"))
    cases = {(suite.name, case.name): case for suite in parsed for case in suite}
    assert len(cases) == len(report["checks"])
    assert not cases[("camera-bgr", "max_metric_drop")].is_passed
    assert cases[("onnxruntime-fp32", "max_metric_drop")].is_passed
    assert "drop 5.00 pts" in cases[("camera-bgr", "max_metric_drop")].result[0].message or \
        "drop" in cases[("camera-bgr", "max_metric_drop")].result[0].message


@pytest.mark.parametrize("body,expected", [
    ('model = "resnet_tiny"\nlimt = 3\n[thresholds]\nmax_metric_drop = 0.01\n',
     ["line 2", "limt", "unknown key", "allowed: model, checkpoint, profile, task, labels, input_shape, inputs, postprocess, "
                                       "calibration, dataset, limit"]),
    ('model = "resnet_tiny"\n[thresholds]\nmax_metric_drop = "big"\n',
     ["line 3", "thresholds.max_metric_drop", "expected float, got str"]),
    ('model = "resnet_tiny"\n[[profiles]]\nname = "x"\nbackend = "tensorflow"\n[thresholds]\nmax_metric_drop = 0.01\n',
     ["line 4", "profiles[0].backend", "'tensorflow' is not one of onnxruntime, openvino"]),
    ('model = "resnet_tiny"\n[thresholds]\nmax_sysnoise_delta = { blur = 0.01 }\n',
     ["thresholds.max_sysnoise_delta.blur", "unknown noise axis", "allowed: decoder, resize"]),
])
def test_gate_config_errors_name_the_file_the_key_and_the_allowed_values(tmp_path, harness_cli, body, expected):
    (tmp_path / "gate.toml").write_text(body)
    result = harness_cli("validate", "--config", "gate.toml", cwd=tmp_path)
    assert result.returncode == 2
    line = result.stderr.strip()
    assert len(line.splitlines()) == 1 and line.startswith("harness: error: gate.toml: "), line
    for fragment in expected:
        assert fragment in line, (fragment, line)


def _compare_with_flips(tmp_path, harness_cli) -> Path:
    # 200 images: INT8 flips 6 of them on ONNX Runtime and 4 on OpenVINO
    result = harness_cli("compare", "--backends", "ort,openvino", "--precision", "int8", "--limit", "200",
                         "--json", str(tmp_path / "run" / "compare.json"))
    assert result.returncode == 0, result.stderr
    return tmp_path / "run" / "compare.json"


def test_report_renders_from_the_json_and_its_sidecars_alone(tmp_path, harness_cli):
    source = _compare_with_flips(tmp_path, harness_cli)
    report = json.loads(source.read_text())
    flipped = {f["sample"] for row in report["results"] for f in row["flipped"]}
    assert flipped and report["sidecars"]["thumbnails"].endswith(".npz")
    moved = tmp_path / "elsewhere"
    moved.mkdir()
    for row in report["results"]:  # another machine: the dataset is not there
        for flip in row["flipped"]:
            flip["path"] = f"/nonexistent/{flip['sample']}.jpg"
    (moved / "compare.json").write_text(json.dumps(report))
    shutil.copy(source.with_name(report["sidecars"]["thumbnails"]), moved)
    result = harness_cli("report", str(moved / "compare.json"), "--html", str(moved / "page.html"))
    assert result.returncode == 0, result.stderr
    page = (moved / "page.html").read_text()
    assert page.count("<figure>") == sum(len(row["flipped"]) for row in report["results"])
    assert "http://" not in page and "https://" not in page


def test_html_reports_open_offline_in_headless_chromium_with_their_plots(tmp_path, harness_cli, opens_in_chromium):
    """The compare page and the gate's; each task's gallery (a segmenter's class maps, a keypoint model's
    keypoints, an instance segmenter's masks) is opened by its own through_every_command test."""
    compare_json = _compare_with_flips(tmp_path, harness_cli)
    gate = tmp_path / "gate.toml"
    gate.write_text('model = "resnet_tiny"\nlimit = 120\n[[profiles]]\nname = "ov-int8"\nbackend = "openvino"\n'
                    'precision = "int8"\n[thresholds]\nmax_metric_drop = 0.10\nmin_op_snr_db = 40\n'
                    'max_sysnoise_delta = { decoder = 0.05, color = 0.05 }\n')
    validate = harness_cli("validate", "--config", str(gate), "--json", str(tmp_path / "gate.json"),
                           "--html", str(tmp_path / "gate.html"))
    # measured on 120 images: INT8 drops top-1 by 2.5 pts and its worst tensor sits near 20 dB, each noise
    # axis' worst variant drops 0.8 pts; the limits are far from each, so only the SNR floor fails
    assert validate.returncode == 1, validate.stderr
    verdict = json.loads((tmp_path / "gate.json").read_text())
    assert not verdict["passed"]
    assert {(c["profile"], c["threshold"]) for c in verdict["checks"] if not c["passed"]} == {("ov-int8", "min_op_snr_db")}
    assert harness_cli("report", str(compare_json), "--html", str(tmp_path / "compare.html")).returncode == 0
    opens_in_chromium(tmp_path / "compare.html", plots=1)  # the delta bars
    opens_in_chromium(tmp_path / "gate.html", plots=2)     # SysNoise bars and drift error growth


def _compare_report(top1: float) -> dict:
    return {"schema": "harness.compare/1", "model": {"name": "m", "task": "classify", "onnx_sha256": "a"},
            "results": [{"backend": "onnxruntime", "device": "cpu", "precision": "int8", "status": "ok",
                         "metric": {"top1": top1}, "outputs": {"max_abs": 0.1}}]}


def test_diff_exits_1_when_a_metric_regresses_beyond_the_limit(tmp_path, harness_cli):
    (tmp_path / "old.json").write_text(json.dumps(_compare_report(0.90)))
    (tmp_path / "new.json").write_text(json.dumps(_compare_report(0.88)))
    strict = harness_cli("diff", str(tmp_path / "old.json"), str(tmp_path / "new.json"), "--max-regression", "0.01",
                         "--json", str(tmp_path / "diff.json"))
    assert strict.returncode == 1 and "REGRESSED" in strict.stdout
    row = json.loads((tmp_path / "diff.json").read_text())["rows"][0]
    assert row["metric_change"] == pytest.approx(-0.02) and row["regressed"]
    lenient = harness_cli("diff", str(tmp_path / "old.json"), str(tmp_path / "new.json"), "--max-regression", "0.05")
    assert lenient.returncode == 0
    (tmp_path / "other.json").write_text(json.dumps({"schema": "harness.drift/1", "ops": []}))
    mixed = harness_cli("diff", str(tmp_path / "old.json"), str(tmp_path / "other.json"))
    assert mixed.returncode == 2 and "cannot diff" in mixed.stderr


def test_diff_counts_a_newly_added_failing_gate_check_and_reads_in_points(tmp_path, harness_cli):
    def gate(*checks):
        return {"schema": "harness.validate/1", "model": {"name": "m", "task": "classify"},
                "checks": [{"profile": "p", "threshold": name, "limit": 0.01, "value": 0.0, "passed": ok}
                           for name, ok in checks]}

    (tmp_path / "old.json").write_text(json.dumps(gate(("max_metric_drop", True))))
    (tmp_path / "new.json").write_text(json.dumps(gate(("max_metric_drop", True), ("min_op_snr_db", False))))
    result = harness_cli("diff", str(tmp_path / "old.json"), str(tmp_path / "new.json"), "--json", "-")
    assert result.returncode == 1, result.stderr
    report = json.loads(result.stdout)
    assert report["regressions"] == 1
    added = next(r for r in report["rows"] if r["row"] == ["p", "min_op_snr_db"])
    assert added["status"] == "added" and added["regressed"]
    (tmp_path / "a.json").write_text(json.dumps(_compare_report(0.90)))
    (tmp_path / "b.json").write_text(json.dumps(_compare_report(0.88)))
    shown = harness_cli("diff", str(tmp_path / "a.json"), str(tmp_path / "b.json"), "--max-regression", "0.01")
    assert "Δ metric (pts)" in shown.stdout and "-2.00" in shown.stdout and "beyond 1.00 pts" in shown.stdout
