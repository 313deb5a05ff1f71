"""One result row (harness.result.ResultRow): compare, sysnoise and validate emit it, diff reads it back."""
from harness.result import SIGNIFICANCE_KEYS, ResultRow

COMMON = ("status", "reason", "metric", "delta", "precision_effective", "execution")


def _round_trips(rows: list[dict]) -> None:
    for row in rows:
        assert ResultRow.from_json(row).to_json() == row
        assert set(COMMON) <= set(row)


def test_every_command_emits_the_same_row_and_it_reads_back(tmp_path, harness_cli):
    import json

    from harness.gate_file import load_gate
    from harness.validate import run_gate

    compare_json, sweep_json = tmp_path / "compare.json", tmp_path / "sweep.json"
    for argv in (["compare", "resnet_tiny", "--backends", "onnxruntime,openvino", "--precision", "fp32,bf16", "--limit", "40",
                  "--json", str(compare_json)],
                 ["sysnoise", "resnet_tiny", "--axes", "resize,precision", "--limit", "40", "--json", str(sweep_json)]):
        done = harness_cli(*argv)
        assert done.returncode == 0, done.stderr
    compared = json.loads(compare_json.read_text())["results"]
    variants = [v for axis in json.loads(sweep_json.read_text())["axes"] for v in axis["variants"]]
    gate = tmp_path / "gate.toml"
    gate.write_text('model = "resnet_tiny"\nlimit = 40\n[thresholds]\nmax_metric_drop = 0.01\n'
                    '[[profiles]]\nname = "ort"\nbackend = "onnxruntime"\n')
    profiles = run_gate(load_gate(gate), progress=False)["profiles"]
    _round_trips(compared + variants + profiles)
    # identities as each command names its candidates; the significance fields where the command decides them
    assert [ResultRow.from_json(r).key for r in compared] == [
        (backend, "cpu", precision) for backend in ("onnxruntime", "openvino") for precision in ("fp32", "bf16")]
    # ORT has no bf16 on the CPU; OpenVINO has, where the CPU has avx512_bf16 or AMX (machines here differ)
    from harness.backends import get_backend

    openvino_bf16 = "ok" if "bf16" in get_backend("openvino").precisions("cpu") else "unavailable"
    assert [r["status"] for r in compared] == ["ok", "unavailable", "ok", openvino_bf16]
    assert all(set(SIGNIFICANCE_KEYS) <= set(v) for v in variants)
    assert {ResultRow.from_json(p).key for p in profiles} == {("ort",)}
    int8 = next(v for v in variants if v["name"] == "onnxruntime-int8")
    row = ResultRow.from_json(int8)
    assert row.ok and row.identity == {"name": "onnxruntime-int8", "baseline": int8["baseline"]}
    assert row.delta == int8["metric"]["top1"] - int8["baseline_metric"]["top1"]
    assert row.measures["flip_rate"] == int8["flip_rate"] and row.significance["p_value"] == int8["p_value"]
