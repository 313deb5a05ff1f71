"""Data-parallel workers (`--workers N`): the data split into shards of whole chunks, each worker running
every cell on its shard; the report must be the one a single worker makes, number for number, on local
processes and on a two-node Ray cluster (where crashes and hangs are isolated too), and after a lost driver
`--resume` recomputes only unfinished work.
A detector's sharded sweep (seeded mAP intervals): tests/test_significance.py."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

# 24 images in chunks of 4: three workers get two chunks each
SWEEP = ["sysnoise", "--axes", "color", "--limit", "24", "--batch-size", "4", "--chunk-size", "4", "--threads", "1"]
HARNESS = str(Path(sys.executable).with_name("harness"))
PLUGINS = {"PYTHONPATH": str(Path(__file__).parent / "plugins") + os.pathsep + os.environ.get("PYTHONPATH", "")}
COMPARE = ["compare", "--limit", "24", "--batch-size", "4", "--threads", "1"]
DRIFT = ["--batch-size", "4", "--threads", "1"]
WORK = ("decodes", "resizes", "inferences")  # counters of work done: a sharded run does each piece once too


def _measured(report: dict) -> dict:
    """The report without what says how it ran (workers, store, counters of work taken back)."""
    return {key: value for key, value in report.items() if key not in ("executor", "store", "counters")}


def _run(*args: str, env: dict | None = None, exit_code: int = 0) -> dict:
    done = subprocess.run([HARNESS, *args, "--json", "-"], capture_output=True, text=True, timeout=600,
                          env={**os.environ, **(env or {})})
    assert done.returncode == exit_code, done.stderr[-3000:]
    return json.loads(done.stdout)


def _made_once(name: str, *args: str) -> dict:
    """A one-worker report that sharded runs must equal, made once per test run: pytest-xdist's workers share
    it through the run's cache folder (conftest.py)."""
    import fcntl

    kept = Path(os.environ["HARNESS_CACHE"]) / f"test-workers-{name}.json"
    with open(kept.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not kept.exists():
            kept.write_text(json.dumps(_run(*args)))
        return json.loads(kept.read_text())


@pytest.fixture(scope="module")
def one_worker() -> dict:
    """The sweep on one worker."""
    return _made_once("sweep", *SWEEP)


@pytest.fixture(scope="module")
def one_worker_compare() -> dict:
    return _made_once("compare", *COMPARE, "--backends", "onnxruntime,openvino")


@pytest.fixture(scope="module")
def drift_data(tmp_path_factory) -> tuple[Path, str]:
    """24 benchmark images, the one at position 10 (in the second of three shards) unreadable; the folder and
    that sample."""
    import shutil

    from harness.data import embedded_benchmark, load_dataset

    folder = tmp_path_factory.mktemp("drift-data")
    for sample in embedded_benchmark("classify").limit(24).samples:
        (folder / sample.id).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(sample.path, folder / sample.id)
    broken = load_dataset(folder).samples[10]
    broken.path.write_bytes(broken.path.read_bytes()[:100])
    return folder, broken.id


def _drift(*args: str, env: dict | None = None) -> dict:
    """ORT FP16 against the tensor reference: every tensor tapped, the ops alone on the first 14 positions
    (across the first shard boundary), a floor that makes an op diverge (so the merge writes a repro), and a
    memory budget that holds the taps of 3 samples, so batches of 4 go through the taps as 3 + 1."""
    return _run("drift", "--backend", "onnxruntime", "--precision", "fp16", "--taps", "graph-outputs",
                "--snr-floor", "70", "--unit-samples", "14", "--memory-budget", "12MB", *DRIFT, *args, env=env)


def _untimed(report: dict) -> dict:
    """A compare report without its timings: workers sharing the cores time each other's batches too."""
    measured = _measured(report)
    measured["reference"] = {k: v for k, v in measured["reference"].items() if k != "timing"}
    measured["results"] = [{k: v for k, v in row.items() if k != "timing"} for row in measured["results"]]
    return measured


def test_compare_on_three_workers_makes_the_one_worker_report_and_isolates_a_segfault_per_shard(one_worker_compare):
    """Each worker runs the reference and every candidate on its shard; the rows come from the merged
    predictions and output statistics (exact sums: the same to the last bit). A backend that segfaults is
    one failed row, and the others' rows are those of one worker without it; each shard's worker meets it
    once."""
    env = {"PYTHONPATH": str(Path(__file__).parent / "faulty_backends") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    three = _run(*COMPARE, "--backends", "onnxruntime,openvino,segfaults", "--workers", "3", env=env, exit_code=1)
    crashed = three["results"].pop()
    assert crashed["backend"] == "segfaults" and crashed["status"] == "failed"
    assert crashed["reason"] == "its worker process died (signal SIGSEGV) while running it"
    assert _compared(three) == _compared(one_worker_compare)
    rows = {row["backend"]: row for row in three["results"]}
    assert rows["onnxruntime"]["status"] == rows["openvino"]["status"] == "ok"
    assert rows["onnxruntime"]["outputs"]["max_abs"] > 0 and rows["openvino"]["outputs"]["max_abs"] > 0
    assert sorted(f["shard"] for f in three["executor"]["isolated_failures"]) == [0, 1, 2]
    assert [s["chunks"] for s in three["executor"]["shards"]] == [2, 2, 2]  # 24 images, batches of 4


def _untimed_drift(report: dict) -> dict:
    return {k: v for k, v in report.items() if k not in ("executor", "timing", "repro", "repro_info")}


def _compared(report: dict) -> dict:
    return {k: _untimed(report)[k] for k in ("reference", "results", "dataset", "model")}


def test_drift_on_three_workers_makes_the_one_worker_report_with_an_unreadable_sample_in_a_shard(drift_data,
                                                                                                 tmp_path):
    """Each worker taps every tensor on its shard's batches and runs the ops alone on its positions below
    --unit-samples; the statistics merge exactly, and the tap check and the repro's probe are the first
    batch's. Batches are runs of dataset positions, so the unreadable sample shortens its own batch in
    both runs; the ops ran alone on the 13 readable samples of the first 14 positions."""
    folder, broken = drift_data
    one = _drift("--dataset", str(folder), "--repro", str(tmp_path / "one"))
    three = _drift("--dataset", str(folder), "--workers", "3", "--repro", str(tmp_path / "three"))
    assert [s["chunks"] for s in three["executor"]["shards"]] == [2, 2, 2]
    assert _untimed_drift(three) == _untimed_drift(one)
    assert one["unit_samples"] == 13 and one["dataset"]["samples"] == 23
    assert one["tapped_run"]["samples"] == 3 and one["tapped_run"]["budget_bytes"] == 12 * 2**20
    assert [f["sample"] for f in one["dataset"]["failed"]] == [broken]
    assert sum(row["observable"] for row in one["ops"]) == len(one["ops"]) > 20 and one["first_divergence"]
    assert (tmp_path / "one" / "candidate.onnx").read_bytes() == (tmp_path / "three" / "candidate.onnx").read_bytes()
    for name in ("inputs.npz", "expected.npz"):  # the merging worker wrote the same repro, from the same probe
        with np.load(tmp_path / "one" / name) as a, np.load(tmp_path / "three" / name) as b:
            assert sorted(a) == sorted(b) and all(np.array_equal(a[k], b[k]) for k in a)


def test_output_statistics_merged_from_shards_equal_one_stream_to_the_last_bit():
    """The sums behind mean abs error, cosine, rel L2 and SNR are exact (correctly rounded, whatever the
    order): three shards' statistics merged equal one worker's stream. Running float sums would not: the
    terms below differ by 2^60, and the order of additions decides which low bits survive."""
    import math
    import pickle

    import numpy as np

    from harness.compare.outputs import ExactSum, OutputStats

    rng = np.random.default_rng(7)
    batches = [(rng.standard_normal((4, 64)) * 10.0 ** rng.integers(-3, 18), None) for _ in range(12)]
    batches = [(ref, ref + rng.standard_normal(ref.shape) * 10.0 ** rng.integers(-6, 6)) for ref, _ in batches]
    one = OutputStats()
    for ref, cand in batches:
        one.update({"logits": ref}, {"logits": cand})
    merged = OutputStats()
    for shard in (batches[:5], batches[5:6], batches[6:]):
        part = OutputStats()
        for ref, cand in shard:
            part.update({"logits": ref}, {"logits": cand})
        merged.merge(pickle.loads(pickle.dumps(part)))  # as it travels from a shard's worker
    assert merged.to_json() == one.to_json() and merged.count == one.count == 12 * 4 * 64
    terms = [2.0 ** 60, 1.0, -(2.0 ** 60), 3.0, 0.1, -0.1, 1e-30]
    total = ExactSum()
    for term in terms:
        total.add(term)
    assert total.value == math.fsum(terms) == 4.0 + 1e-30 and sum(terms) != total.value


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# `ray start --address` returns once the second raylet runs, before the head's scheduler has its CPU in view:
# a task sent then queues on the head's busy CPU rather than going to the idle node (CI saw both shards on
# the head once). So the test waits until the cluster offers both CPUs.
_BOTH_CPUS_OFFERED = """
import time, ray
ray.init(log_to_driver=False)
deadline = time.monotonic() + 60
while ray.available_resources().get("CPU", 0) < 2 and time.monotonic() < deadline:
    time.sleep(0.2)
print(ray.available_resources().get("CPU", 0), len([node for node in ray.nodes() if node["Alive"]]))
"""


def test_ray_workers_on_a_two_node_cluster_make_the_one_worker_reports_and_isolate_a_crash_and_a_hang(
        one_worker, one_worker_compare, tmp_path, ray_alone):
    """A Ray head and a second worker node (`ray start`, two raylets on loopback, one CPU each). The sweep's,
    compare's and drift's two shards are Ray tasks, one on each node; the sweep's merging task gets their
    pieces through the object store. Then a one-worker sweep on the same cluster: a crashing decoder and a
    hanging colour converter each cost their own cell (a Ray task's crash and a timeout), and the store
    still gets every row."""
    from harness.store import CellStore

    ray = str(Path(sys.executable).with_name("ray"))
    address = f"127.0.0.1:{_free_port()}"
    # token authentication is Ray's default for `ray start`; this cluster listens on loopback only. The
    # user's variants must be importable where the tasks run: the nodes start with them on their path
    env = {**os.environ, **PLUGINS, "RAY_AUTH_MODE": "disabled", "RAY_ADDRESS": address}
    common = ["--node-ip-address", "127.0.0.1", "--disable-usage-stats", "--num-cpus", "1"]
    store = tmp_path / "faults.sqlite"
    try:
        for start in (["--head", "--port", address.split(":")[1], "--include-dashboard", "false"],
                      ["--address", address]):
            started = subprocess.run([ray, "start", *start, *common], capture_output=True, text=True, env=env,
                                     timeout=120)
            assert started.returncode == 0, started.stderr[-2000:]
        offered = subprocess.run([sys.executable, "-c", _BOTH_CPUS_OFFERED], capture_output=True, text=True,
                                 env=env, timeout=120)
        assert offered.stdout.split()[-2:] == ["2.0", "2"], offered.stdout + offered.stderr[-2000:]
        report = _run(*SWEEP, "--workers", "2", "--executor", "ray", "--store", str(tmp_path / "cells.sqlite"),
                      env=env)
        compared = _run(*COMPARE, "--backends", "onnxruntime,openvino", "--workers", "2", "--executor", "ray", env=env)
        drifted = _drift("--limit", "24", "--workers", "2", "--executor", "ray", env=env)
        faults = _run("sysnoise", "--axes", "decoder,color", "--limit", "10", "--executor", "ray", "--cell-timeout",
                      "8", "--store", str(store), "--variant",
                      "decoder=harness_test_variants:decoder_that_kills_the_process",
                      "--variant", "color=harness_test_variants:stage_that_hangs", env=env, exit_code=1)
    finally:
        subprocess.run([ray, "stop", "--force"], capture_output=True, env=env, timeout=120)
    assert _measured(report) == _measured(one_worker)
    assert _compared(compared) == _compared(one_worker_compare)
    assert _untimed_drift(drifted) == _untimed_drift(_drift("--limit", "24"))
    shards = [run["executor"]["shards"] for run in (report, compared, drifted)]
    assert [len(each) for each in shards] == [2, 2, 2] and all(s["node"] for each in shards for s in each)
    assert len({s["node"] for s in shards[0]}) == 2  # one CPU on each node: the sweep's shards ran on both
    assert report["executor"]["name"] == compared["executor"]["name"] == drifted["executor"]["name"] == "ray"
    for name in WORK:
        assert report["counters"][name] == one_worker["counters"][name]
    assert report["counters"]["pieces_merged"] > 0
    assert faults["executor"]["name"] == "ray" and faults["executor"]["worker_starts"] == 3
    rows = {(a["axis"], v["name"]): v for a in faults["axes"] for v in a["variants"]}
    crashed = rows["decoder", "harness_test_variants:decoder_that_kills_the_process"]
    hung = rows["color", "harness_test_variants:stage_that_hangs"]
    assert crashed["status"] == "failed" and "WorkerCrashedError" in crashed["reason"]
    assert hung["status"] == "failed" and hung["reason"].startswith("timed out: still running after 8 s")
    assert sum(v["status"] == "ok" for v in rows.values()) == len(rows) - 2
    cells = CellStore(store)
    stored = cells.connection.execute("SELECT count(*) FROM cells").fetchone()[0]
    cells.close()
    assert stored == len(rows)


def _children(pid: int) -> list[int]:
    found = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [int(child) for child in found if "spawn_main" in Path(f"/proc/{child}/cmdline").read_text()]


def _pieces(store: Path) -> int:
    from harness.store import CellStore

    if not store.exists():
        return 0
    cells = CellStore(store)
    try:
        return cells.connection.execute("SELECT count(*) FROM pieces").fetchone()[0]
    finally:
        cells.close()


def _wait(condition, what: str, seconds: float = 180) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"waited {seconds} s for {what}"
        time.sleep(0.3)


def test_resume_after_a_lost_worker_and_a_lost_driver_recomputes_only_unfinished_shards(one_worker, tmp_path):
    """Three workers, each stuck in a hanging colour converter after its first chunk. kill -9 one worker:
    that cell fails alone, a new worker finishes the shard without it. Then kill -9 the driver (the other
    workers go with it). --resume takes every stored piece back: the finished shard does no work at all,
    the others only their unfinished chunks, and the report equals an uninterrupted one."""
    store = tmp_path / "cells.sqlite"
    common = [*SWEEP, "--workers", "3", "--store", str(store)]
    driver = subprocess.Popen([HARNESS, *common, "--variant", "color=harness_test_variants:stage_that_hangs"],
                              env={**os.environ, **PLUGINS}, stdout=subprocess.DEVNULL,
                              stderr=(tmp_path / "stderr.txt").open("w"))
    try:
        _wait(lambda: len(_children(driver.pid)) == 3 and _pieces(store) >= 6, "three workers at the hang")
        time.sleep(1.0)  # each worker is now inside the hanging converter
        first = _children(driver.pid)
        os.kill(first[0], signal.SIGKILL)
        _wait(lambda: any(pid not in first for pid in _children(driver.pid)), "a new worker for the lost one")
        _wait(lambda: len(_children(driver.pid)) == 2, "the new worker to finish its shard")
        time.sleep(2.0)  # the driver writes the last pieces it was sent to the store
        os.kill(driver.pid, signal.SIGKILL)
        assert driver.wait(60) == -signal.SIGKILL
        _wait(lambda: all(not Path(f"/proc/{pid}").exists() or
                          Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z"
                          for pid in first[1:]), "the driver's workers to go with it", 10)
    finally:
        driver.kill()
    stored = _pieces(store)
    resumed = _run(*common, "--resume")
    assert _measured(resumed) == _measured(one_worker)  # three local workers make the one-worker report
    shards = resumed["executor"]["shards"]
    assert [(s["shard"], s["chunks"]) for s in shards] == [(0, 2), (1, 2), (2, 2)]
    assert resumed["executor"]["worker_starts"] == 4  # three shards and the worker that merges them
    assert sum(s["counters"].get("pieces_taken", 0) for s in shards) == stored
    idle = [s for s in shards if all(s["counters"][name] == 0 for name in WORK)]
    assert len(idle) == 1 and idle[0]["counters"]["pieces_taken"] > 0  # the shard that was finished
    for name in WORK:
        assert 0 < resumed["counters"][name] < one_worker["counters"][name]
