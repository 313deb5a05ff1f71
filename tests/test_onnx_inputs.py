"""An .onnx file's inputs: several, each fed by name (the non-image ones declared constants, bound into the
graph); dynamic height and width; a batch fixed at 1. Each through compare, sysnoise and drift."""
import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from harness.export import export
from harness.model import resolve_model

PROFILE = ('input_size = 64\nresize_size = 72\nlabels = ["circle", "square", "triangle", "star", "ring", "cross", '
           '"hexagon", "diamond", "crescent", "arrow"]\n')


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """The zoo classifier's ONNX file as exported (`plain.onnx`); the same network behind a per-sample float
    `gain` [batch, 1] and an int64 `shift` [3] (image * gain + shift, `two_inputs.onnx`); and the same
    network with its batch fixed at 1 and its height and width dynamic (`batch1.onnx`)."""
    folder = tmp_path_factory.mktemp("onnx-inputs")
    base = onnx.load(str(export(resolve_model("resnet_tiny")).onnx_path))
    onnx.save(base, str(folder / "plain.onnx"))
    image = base.graph.input[0].name
    two = onnx.ModelProto()
    two.CopyFrom(base)
    for node in two.graph.node:
        for k, name in enumerate(node.input):
            node.input[k] = "shifted" if name == image else name
    network = list(two.graph.node)
    del two.graph.node[:]
    two.graph.node.extend([
        helper.make_node("Unsqueeze", ["gain", "axes"], ["gain4"], name="gain4"),
        helper.make_node("Mul", [image, "gain4"], ["scaled"], name="scaled"),
        helper.make_node("Cast", ["shift"], ["shift_float"], to=TensorProto.FLOAT, name="shift_float"),
        helper.make_node("Reshape", ["shift_float", "channels"], ["shift4"], name="shift4"),
        helper.make_node("Add", ["scaled", "shift4"], ["shifted"], name="shifted"), *network])
    two.graph.initializer.extend([helper.make_tensor("axes", TensorProto.INT64, [2], [2, 3]),
                                  helper.make_tensor("channels", TensorProto.INT64, [4], [1, 3, 1, 1])])
    two.graph.input.extend([helper.make_tensor_value_info("gain", TensorProto.FLOAT, ["batch", 1]),
                            helper.make_tensor_value_info("shift", TensorProto.INT64, [3])])
    onnx.checker.check_model(two)
    onnx.save(two, str(folder / "two_inputs.onnx"))
    fixed = onnx.ModelProto()
    fixed.CopyFrom(base)
    for value in [*fixed.graph.input, *fixed.graph.output]:
        value.type.tensor_type.shape.dim[0].dim_value = 1
    for dim, name in zip(fixed.graph.input[0].type.tensor_type.shape.dim[2:], ("height", "width")):
        dim.dim_param = name
    onnx.checker.check_model(fixed)
    onnx.save(fixed, str(folder / "batch1.onnx"))
    (folder / "profile.toml").write_text(PROFILE)
    return folder


def test_bound_constants_give_what_feeding_them_by_name_gives(files):
    """The derived graph fed the image alone equals the user's graph fed the image, the gain repeated per
    sample and the shift, by name, in ONNX Runtime with no optimisation (exactly)."""
    import onnxruntime as ort

    spec = resolve_model(str(files / "two_inputs.onnx"), inputs=("gain=[0.5]", "shift=[1, -2, 3]"))
    assert spec.input_name == "input" and [b.name for b in spec.bound_inputs] == ["gain", "shift"]
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    images = np.random.default_rng(0).standard_normal((5, 3, 64, 64)).astype(np.float32)
    bound = ort.InferenceSession(str(export(spec).onnx_path), options, providers=["CPUExecutionProvider"])
    assert [i.name for i in bound.get_inputs()] == ["input"]
    user = ort.InferenceSession(str(files / "two_inputs.onnx"), options, providers=["CPUExecutionProvider"])
    expected = user.run(None, {"input": images, "gain": np.full((5, 1), 0.5, np.float32),
                               "shift": np.array([1, -2, 3], np.int64)})[0]
    plain = ort.InferenceSession(str(files / "plain.onnx"), options, providers=["CPUExecutionProvider"])
    assert np.array_equal(bound.run(None, {"input": images})[0], expected)
    assert not np.allclose(expected, plain.run(None, {"input": images})[0], atol=1e-3)  # the values matter


def _compare(harness_cli, model, out, *options):
    result = harness_cli("compare", str(model), "--profile", str(model.parent / "profile.toml"), "--backends",
                         "onnxruntime,openvino,tvm", "--limit", "24", "--json", str(out), *options)
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(out.read_text()), result.stderr


def _every_row_agrees(report):
    for row in report["results"]:
        assert row["status"] == "ok" and row["outputs"]["top1_agreement"] == 1.0, row
        assert row["outputs"]["max_abs"] < 1e-4, row


def _sysnoise_and_drift(harness_cli, model, folder, profile, *options):
    """sysnoise (resize; precision with INT8 calibrated on the training images) and drift (INT8 on ONNX
    Runtime): every variant ok, drift's table has the ops."""
    common = ("--profile", str(profile), "--calibration", str(folder / "train"), *options)
    sysnoise = harness_cli("sysnoise", str(model), "--axes", "resize,precision", "--limit", "24", *common,
                           "--json", str(folder / "sysnoise.json"))
    assert sysnoise.returncode == 0, sysnoise.stderr[-2000:]
    axes = json.loads((folder / "sysnoise.json").read_text())["axes"]
    variants = {v["name"]: v for axis in axes for v in axis["variants"]}
    assert {"onnxruntime-int8", "onnxruntime-fp16", "openvino-int8"} <= set(variants)
    assert all(v["status"] == "ok" for v in variants.values()), [(n, v.get("reason")) for n, v in variants.items()]
    drift = harness_cli("drift", str(model), "--backend", "onnxruntime", "--precision", "int8", "--limit", "4",
                        *common, "--json", str(folder / "drift.json"))
    assert drift.returncode == 0, drift.stderr[-2000:]
    report = json.loads((folder / "drift.json").read_text())
    assert len(report["ops"]) >= 10, report["ops"]
    return variants


def test_a_two_input_onnx_through_compare_sysnoise_and_drift(files, tmp_path, harness_cli, class_folders):
    """gain = 1 and shift = 0 make the two-input graph the plain one: the same reference top1 to the last
    sample, every backend agreeing; the report lists what was bound."""
    plain, _ = _compare(harness_cli, files / "plain.onnx", tmp_path / "plain.json")
    two, _ = _compare(harness_cli, files / "two_inputs.onnx", tmp_path / "two.json", "--input", "gain=[1.0]",
                      "--input", "shift=[0, 0, 0]")
    assert two["reference"]["metric"] == plain["reference"]["metric"] and plain["reference"]["metric"]["top1"] > 0.8
    _every_row_agrees(two)
    assert [row["backend"] for row in two["results"]] == ["onnxruntime", "openvino", "tvm"]
    assert two["model"]["bound_inputs"] == [
        {"name": "gain", "dtype": "float32", "shape": [1], "value": [1.0], "per_sample": True},
        {"name": "shift", "dtype": "int64", "shape": [3], "value": [0, 0, 0], "per_sample": False}]
    labels = resolve_model("resnet_tiny").labels
    class_folders(tmp_path / "train", {label: label for label in labels}, 3, skip=50)  # not the images evaluated
    (tmp_path / "inputs.toml").write_text(PROFILE + "[inputs]\ngain = [1.0]\nshift = [0, 0, 0]\n")
    variants = _sysnoise_and_drift(harness_cli, files / "two_inputs.onnx", tmp_path,
                                   tmp_path / "inputs.toml")  # the profile's [inputs] table declares them here
    assert variants["onnxruntime-int8"]["metric"]["top1"] >= 0.75, variants["onnxruntime-int8"]


def test_a_batch_one_onnx_with_dynamic_size_through_compare_sysnoise_and_drift(files, tmp_path, harness_cli,
                                                                               class_folders):
    """A graph fixed at batch 1 runs one sample at a time on every backend (it used to fail at batch 32),
    scoring exactly as the dynamic-batch graph; its dynamic height and width are named until declared."""
    plain, _ = _compare(harness_cli, files / "plain.onnx", tmp_path / "plain.json")
    undeclared = harness_cli("compare", str(files / "batch1.onnx"), "--backends", "ort", "--limit", "4")
    assert undeclared.returncode == 0, undeclared.stderr[-2000:]
    assert "input's 'height' and 'width' are dynamic; evaluating at 224x224 px" in undeclared.stderr
    assert "batch is fixed at 1: evaluated 1 sample(s) at a time" in undeclared.stderr
    fixed, stderr = _compare(harness_cli, files / "batch1.onnx", tmp_path / "fixed.json", "--input", "input=1x3x64x64")
    assert "dynamic" not in stderr and fixed["model"]["fixed_batch"] == 1
    assert fixed["reference"]["metric"] == plain["reference"]["metric"]
    _every_row_agrees(fixed)
    labels = resolve_model("resnet_tiny").labels
    class_folders(tmp_path / "train", {label: label for label in labels}, 3, skip=50)
    _sysnoise_and_drift(harness_cli, files / "batch1.onnx", tmp_path, files / "profile.toml", "--input",
                        "input=1x3x64x64")


WITH_SHIFT = ("shift=[0, 0, 0]",)


@pytest.mark.parametrize("model, options, fragments", [
    ("two_inputs", (), ["input 'gain' (float32 [batch, 1]) is not the image and has no value", "--input gain=VALUE"]),
    ("two_inputs", ("gain=[1.0, 2.0]", *WITH_SHIFT), ["dimension 1 of 'gain' is 1 in two_inputs.onnx; the value "
                                                      "gives 2"]),
    ("two_inputs", ("gian=[1.0]", *WITH_SHIFT), ["no input named 'gian'", "its inputs are input, gain, shift"]),
    ("two_inputs", ("gain=[1.0]", "shift=[0.5, 0, 0]"), ["[0.5, 0, 0] is not a int64 value"]),
    ("two_inputs", ("gain=one", *WITH_SHIFT), ["input 'gain' = 'one' is neither a shape"]),
    ("two_inputs", ("gain",), ["expected NAME=SHAPE"]),
    ("batch1", ("input=2x3x64x64",), ["dimension 0 of 'input' is fixed at 1 in batch1.onnx, not 2"]),
    ("batch1", ("input=1x3x64x48",), ["'input' is 64x48; the pre-processing makes square inputs"]),
])
def test_a_wrong_input_declaration_is_one_line_naming_it(files, harness_cli, model, options, fragments):
    args = [arg for option in options for arg in ("--input", option)]
    result = harness_cli("compare", str(files / f"{model}.onnx"), "--backends", "ort", "--limit", "2", *args)
    assert result.returncode == 2 and result.stderr.strip().count("\n") == 0, result.stderr[-2000:]
    assert all(fragment in result.stderr for fragment in fragments), result.stderr


def test_inputs_are_declared_for_onnx_files_only(harness_cli):
    result = harness_cli("compare", "resnet_tiny", "--input", "gain=[1.0]", "--backends", "ort", "--limit", "2")
    assert result.returncode == 2 and "inputs are declared for an .onnx file" in result.stderr, result.stderr


def test_a_gate_declares_the_inputs_as_the_command_line_does(files, tmp_path, harness_cli):
    (tmp_path / "gate.toml").write_text(
        f'model = "{files / "two_inputs.onnx"}"\nprofile = "{files / "profile.toml"}"\nlimit = 8\n'
        'inputs = { gain = [1.0], shift = [0, 0, 0] }\n[thresholds]\nmax_output_error = 0.0001\n')
    result = harness_cli("validate", "--config", str(tmp_path / "gate.toml"), "--json", str(tmp_path / "gate.json"))
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    report = json.loads((tmp_path / "gate.json").read_text())
    assert [b["name"] for b in report["model"]["bound_inputs"]] == ["gain", "shift"]
    (tmp_path / "bad.toml").write_text((tmp_path / "gate.toml").read_text().replace("shift = [0, 0, 0]",
                                                                                      "shift = [0, 0]"))
    result = harness_cli("validate", "--config", str(tmp_path / "bad.toml"))
    assert result.returncode == 2 and "bad.toml: line 4 (inputs): " in result.stderr, result.stderr
    assert "dimension 0 of 'shift' is 3 in two_inputs.onnx; the value gives 2" in result.stderr, result.stderr
