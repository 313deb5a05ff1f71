"""Only one import name is claimed: backends/ and models/ install as harness.backends / harness.models,
from a built wheel too, not only from the editable install (DESIGN.md, "Layout")."""
import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHECK = """
import importlib, sys
target = sys.argv[1]
import harness, harness.backends, harness.models, harness.data
for module in (harness, harness.backends, harness.models):
    assert module.__file__.startswith(target), module.__file__
from harness.models import ZOO
spec = ZOO["resnet_tiny"]()
assert spec.weights.is_file() and str(spec.weights).startswith(target), spec.weights
from harness.data import embedded_benchmark
assert len(embedded_benchmark("classify")) == 1000 and len(embedded_benchmark("detect")) == 120
assert len(embedded_benchmark("segment")) == 150 and len(embedded_benchmark("keypoints")) == 236
for squatted in ("backends", "models"):
    try:
        importlib.import_module(squatted)
    except ModuleNotFoundError:
        continue
    raise SystemExit(f"top-level {squatted!r} is importable")
print("ok")
"""


def test_wheel_installs_under_the_harness_name_only(tmp_path):
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(wheels), str(ROOT)], check=True, capture_output=True, timeout=300)
    (wheel,) = wheels.glob("harness-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "harness/backends/ort.py" in names and "harness/models/weights/resnet_tiny.pt" in names
    assert "harness/data/benchmark/detect/instances.json" in names
    assert not any(n.startswith(("backends/", "models/")) for n in names)
    for package in ROOT.joinpath("harness").glob("*/__init__.py"):  # every sub-package is shipped
        assert f"harness/{package.parent.name}/__init__.py" in names, package.parent.name
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
                   check=True, capture_output=True, timeout=300)
    # -S: no site processing, so the editable install's path hooks are not active; the venv's
    # site-packages still supply numpy, torch, ...
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(target), sysconfig.get_paths()["purelib"]])}
    result = subprocess.run([sys.executable, "-S", "-c", CHECK, str(target)], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


def test_no_module_outside_harness_tasks_tests_a_task_by_name():
    """A task is a module (harness/tasks): every other module holds a Task and calls it, never branching
    on a task's name (the names live as harness.tasks.CLASSIFY / DETECT)."""
    import re

    named = re.compile(r"""["'](classify|detect)["']""")
    found = [f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
             for folder in ("harness", "backends", "models") for path in sorted(ROOT.joinpath(folder).rglob("*.py"))
             if "tasks" not in path.relative_to(ROOT).parts
             for number, line in enumerate(path.read_text().splitlines(), 1) if named.search(line)]
    assert not found, "\n".join(found)


def test_no_product_module_over_400_lines_and_no_function_over_80():
    """Issue 17's size limits, so a module or a function that outgrows them is split when it does, not later."""
    import ast

    too_long = []
    for folder in ("harness", "backends"):
        for path in sorted(ROOT.joinpath(folder).rglob("*.py")):
            text = path.read_text()
            if len(text.splitlines()) > 400:
                too_long.append(f"{path.relative_to(ROOT)}: {len(text.splitlines())} lines")
            too_long += [f"{path.relative_to(ROOT)}:{node.lineno} {node.name}: {node.end_lineno - node.lineno + 1} lines"
                         for node in ast.walk(ast.parse(text)) if isinstance(node, ast.FunctionDef)
                         and node.end_lineno - node.lineno + 1 > 80]
    assert not too_long, "\n".join(too_long)


# DESIGN.md's nouns table: each noun is defined in the module it names (not only re-exported from it)
NOUNS = {"ModelSpec": "harness.model", "ExportedModel": "harness.export", "Dataset": "harness.data",
         "Task": "harness.tasks", "Placement": "harness.placement", "Profile": "harness.profile",
         "Axis": "harness.noise", "Backend": "harness.backends", "Preprocessor": "harness.stages",
         "StagedPipeline": "harness.pipeline", "ResultRow": "harness.result",
         "OutputStats": "harness.compare.outputs"}


def test_each_noun_lives_in_one_module():
    import importlib

    for noun, module in NOUNS.items():
        assert getattr(importlib.import_module(module), noun).__module__ == module, noun
