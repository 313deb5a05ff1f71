"""The artefact cache you can manage: keys that change with the toolchain's version, `harness cache info`
and `harness cache clear [--older-than DAYS] [--kind KIND]` on a real cache built by real backends."""
import json
import os
import time

import pytest

from harness.backends import get_backend
from harness.export import export
from harness.model import resolve_model

DAY = 86400


@pytest.fixture
def cache(tmp_path, monkeypatch):
    root = tmp_path / "cache"
    monkeypatch.setenv("HARNESS_CACHE", str(root))
    return root


def test_an_upgraded_toolchain_builds_anew(cache, monkeypatch):
    import importlib.metadata

    import harness.artifacts as artifacts

    exported = export(resolve_model("resnet_tiny"))
    converted = []
    real_convert = artifacts.convert_fp16
    monkeypatch.setattr(artifacts, "convert_fp16", lambda *args: converted.append(args) or real_convert(*args))
    first = get_backend("onnxruntime").load(exported, "cpu", "fp16")
    get_backend("onnxruntime").load(exported, "cpu", "fp16")
    assert len(converted) == 1
    installed = importlib.metadata.version
    monkeypatch.setattr(importlib.metadata, "version",
                        lambda name: "99.0" if name == "onnxconverter-common" else installed(name))
    get_backend("onnxruntime").load(exported, "cpu", "fp16")
    assert len(converted) == 2 and len(list((cache / "fp16-onnxconverter").iterdir())) == 2
    assert export(resolve_model("resnet_tiny")).cache_hit  # the exporter's packages did not change
    del first


def _age(folder, days: float) -> None:
    stamp = time.time() - days * DAY
    os.utime(folder / ".complete" if (folder / ".complete").exists() else folder, (stamp, stamp))


def test_cache_info_and_clear_older_than(cache, harness_cli):
    from harness.store import CellStore

    exported = export(resolve_model("resnet_tiny"))
    get_backend("onnxruntime").load(exported, "cpu", "fp16")
    CellStore().close()
    old_export = exported.onnx_path.parent
    _age(old_export, 10)
    fp16 = next((cache / "fp16-onnxconverter").iterdir())
    _age(fp16, 10)
    export(resolve_model("resnet_tiny"))  # a hit is a use: the export is no longer old
    stale, running = cache / "exports" / ".build-stale", cache / "exports" / ".build-running"
    for folder in (stale, running):
        folder.mkdir()
        (folder / "model.onnx").write_bytes(b"\0" * 1000)
    _age(stale, 0.5)  # twelve hours: a killed build's leftovers

    info = harness_cli("cache", "info", "--json", "-", env={"HARNESS_CACHE": str(cache)})
    assert info.returncode == 0, info.stderr
    kinds = {row["kind"]: row for row in json.loads(info.stdout)["kinds"]}
    assert set(kinds) == {"exports", "fp16-onnxconverter", "cells"}
    assert kinds["exports"]["entries"] == 3 and kinds["exports"]["unfinished"] == 2
    on_disk = sum(f.stat().st_size for f in (cache / "exports").rglob("*") if f.is_file())
    assert kinds["exports"]["bytes"] == on_disk > exported.onnx_path.stat().st_size
    assert "fp16-onnxconverter" in info.stderr and "MiB" in info.stderr  # the table, beside the JSON on stdout

    cleared = harness_cli("cache", "clear", "--older-than", "0.25", "--json", "-", env={"HARNESS_CACHE": str(cache)})
    assert cleared.returncode == 0, cleared.stderr
    removed = {row["kind"]: row["entries"] for row in json.loads(cleared.stdout)["removed"]}
    assert removed == {"fp16-onnxconverter": 1, "exports": 1}  # the unused FP16 graph, the stale staging folder
    assert not fp16.exists() and not stale.exists() and running.exists() and exported.onnx_path.exists()

    only_cells = harness_cli("cache", "clear", "--kind", "cells", env={"HARNESS_CACHE": str(cache)})
    assert only_cells.returncode == 0 and not list(cache.glob("cells.sqlite*")) and exported.onnx_path.exists()
    everything = harness_cli("cache", "clear", env={"HARNESS_CACHE": str(cache)})
    assert everything.returncode == 0 and not exported.onnx_path.exists()
    assert running.exists()  # a build that may still be running is never pulled from under it
    wrong = harness_cli("cache", "info", "--kind", "engines", env={"HARNESS_CACHE": str(cache)})
    assert wrong.returncode == 2 and wrong.stderr.strip().splitlines() == [
        f"harness: error: --kind engines: no such kind in {cache} (present: exports)"]
