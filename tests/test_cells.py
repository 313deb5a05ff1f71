"""Every command's backends run in cells (harness.executor): a backend that segfaults, aborts or hangs is one
failed row naming the signal or the timeout; the other rows and every report file are complete."""
import json
import os
import time
from pathlib import Path

FAULTY_BACKENDS = Path(__file__).parent / "faulty_backends"   # segfaults, aborts, hangs: entry-point plugins
PLUGINS = Path(__file__).parent / "plugins"


def _env(*folders: Path) -> dict:
    return {"PYTHONPATH": os.pathsep.join([*map(str, folders), os.environ.get("PYTHONPATH", "")])}


def test_compare_isolates_a_segfaulting_an_aborting_and_a_hanging_backend(harness_cli, tmp_path):
    page = tmp_path / "compare.html"
    started = time.monotonic()
    result = harness_cli("compare", "--backends", "ort,segfaults,aborts,hangs", "--limit", "8", "--batch-size", "4",
                         "--cell-timeout", "4", "--json", "-", "--html", str(page), env=_env(FAULTY_BACKENDS),
                         timeout=300)
    assert result.returncode == 1, result.stderr[-2000:]  # README: a failed row makes the exit code 1
    assert time.monotonic() - started < 150
    report = json.loads(result.stdout)
    rows = report["results"]
    assert [row["backend"] for row in rows] == ["onnxruntime", "segfaults", "aborts", "hangs"]  # the order asked
    assert [row["status"] for row in rows] == ["ok", "failed", "failed", "failed"]
    assert rows[1]["reason"] == "its worker process died (signal SIGSEGV) while running it"
    assert rows[2]["reason"] == "its worker process died (signal SIGABRT) while running it"
    assert rows[3]["reason"] == "timed out: still running after 4 s (--cell-timeout); its worker was killed"
    assert report["executor"]["worker_starts"] == 4
    assert sorted(f["target"] for f in report["executor"]["isolated_failures"]) == [  # in the order they ran
        "aborts:cpu:fp32", "hangs:cpu:fp32", "segfaults:cpu:fp32"]
    # the healthy row is the row ONNX Runtime gets alone, on a worker no faulty backend ever shared
    alone = json.loads(harness_cli("compare", "--backends", "ort", "--limit", "8", "--batch-size", "4",
                                   "--json", "-").stdout)
    assert rows[0]["metric"] == alone["results"][0]["metric"]
    assert rows[0]["outputs"]["max_abs"] == alone["results"][0]["outputs"]["max_abs"]
    assert report["reference"]["metric"] == alone["reference"]["metric"]
    assert report["dataset"]["samples"] == 8
    html = page.read_text()
    assert all(reason in html for reason in ("SIGSEGV", "SIGABRT", "timed out"))


def test_a_hanging_reference_ends_compare_after_the_cell_timeout(harness_cli, tmp_path):
    """The reference's decoder hangs: every candidate shares its pre-processing, nothing can be measured,
    and compare stops after --cell-timeout with one line (exit 1), without blaming a candidate."""
    profile = tmp_path / "hang.toml"
    profile.write_text('[pre]\ndecoder = "harness_test_variants:stage_that_hangs"\n')
    started = time.monotonic()
    result = harness_cli("compare", "--backends", "ort", "--limit", "4", "--profile", str(profile), "--allow-code",
                         "--cell-timeout", "3", "--json", "-", env=_env(PLUGINS), timeout=300)
    assert result.returncode == 1, result.stderr[-2000:]
    assert result.stderr.strip().splitlines()[-1].startswith(
        "harness: error: the reference pass ran past --cell-timeout (3 s")
    assert time.monotonic() - started < 60


def test_validate_fails_only_the_profile_whose_backend_segfaults(harness_cli, tmp_path):
    gate = tmp_path / "gate.toml"
    gate.write_text('model = "resnet_tiny"\nlimit = 8\nbatch_size = 4\n'
                    '[[profiles]]\nname = "ort"\nbackend = "onnxruntime"\n'
                    '[[profiles]]\nname = "camera-driver"\nbackend = "segfaults"\n'
                    '[thresholds]\nmax_metric_drop = 0.01\nmin_top1_agreement = 0.98\n')
    junit, page = tmp_path / "gate.xml", tmp_path / "gate.html"
    result = harness_cli("validate", "--config", str(gate), "--json", "-", "--junit", str(junit), "--html", str(page),
                         env=_env(FAULTY_BACKENDS), timeout=300)
    assert result.returncode == 1, result.stderr[-2000:]  # a threshold fails: exit 1, never a crash (139)
    report = json.loads(result.stdout)
    rows = {row["profile"]: row for row in report["profiles"]}
    assert rows["ort"]["status"] == "ok" and rows["camera-driver"]["status"] == "failed"
    reason = "its worker process died (signal SIGSEGV) while running it"
    assert rows["camera-driver"]["reason"] == reason
    checks = {(c["profile"], c["threshold"]): c for c in report["checks"]}
    assert all(c["passed"] for (profile, _), c in checks.items() if profile == "ort")
    assert not checks["camera-driver", "max_metric_drop"]["passed"]
    assert checks["camera-driver", "max_metric_drop"]["message"] == f"did not run: {reason}"
    assert report["executor"]["worker_starts"] == 2
    assert report["executor"]["isolated_failures"] == [{"profile": "camera-driver", "reason": reason}]
    assert junit.read_text().count("<failure") == sum(not c["passed"] for c in report["checks"]) >= 2
    assert "SIGSEGV" in page.read_text()


def test_drift_on_a_hanging_backend_reports_the_timeout(harness_cli, tmp_path):
    page = tmp_path / "drift.html"
    result = harness_cli("drift", "--backend", "hangs", "--limit", "4", "--batch-size", "4", "--cell-timeout", "4",
                         "--json", "-", "--html", str(page), env=_env(FAULTY_BACKENDS), timeout=300)
    assert result.returncode == 1, result.stderr[-2000:]
    report = json.loads(result.stdout)
    assert report["status"] == "failed"
    assert report["reason"] == "timed out: still running after 4 s (--cell-timeout); its worker was killed"
    assert report["candidate"]["backend"] == "hangs" and report["ops"] == []
    assert report["executor"]["isolated_failures"] == [{"target": "hangs:cpu:fp32", "reason": report["reason"]}]
    assert "FAILED: hangs:cpu fp32: timed out" in page.read_text()
