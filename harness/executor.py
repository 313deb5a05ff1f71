"""Where a command's cells run (DESIGN.md, "Scale"): `--executor local` (default) or `ray`, with
`--cell-timeout SECONDS`. Sysnoise's cells are its variants (harness.noise.cells), compare's its backend
configurations (harness.compare.cells).

One worker runs the whole job with its stage caches (a decode, a resize, a session is shared by the cells
that need it, as in a single process); the driver, this process, only watches and never imports a backend
package: the worker says which cell its current work is for and sends every finished row, which the driver
writes to the cell store at once. The worker streams the data in chunks, doing a piece of every cell per
chunk (harness.pipeline.StagedPipeline), so a cell's time is the sum of its pieces; work shared by
several cells is the first one's. When a native crash takes the worker down, or a cell runs past the
timeout and the driver kills it, that cell alone becomes a `failed` row saying so, and a new worker carries
on without it (for a sweep, the rows already finished are taken back, not computed again). So a crashing
backend or decoder costs its own cell and one worker start-up, never the run. The reference's own work is
bounded by the timeout too, and a reference that crashes or hangs ends the run with one line (exit 1).

`--workers N` (a sweep): N workers at once, each running every cell on its shard of the data (a contiguous
run of whole chunks, harness.pipeline.shard_of) with its own stage caches, and sending each (cell, chunk)'s
per-sample predictions (a piece) to the store; then one more worker makes the report from the merged
pieces, taken back instead of computed, so it is the one a single worker makes, number for number (the
metrics, intervals and seeded bootstraps see the same predictions in the same order). A crashed or
timed-out cell is isolated for every shard (the shards share the run's rows); a finished shard's pieces
stay in the store, so `--resume` after a lost driver or node recomputes only the chunks not finished.

- local: the worker is a process of this machine (multiprocessing, spawn: no inherited threads or state).
- ray: the worker is a Ray task (`ray.init(address=$RAY_ADDRESS)`, a local cluster when unset) asking for
  `--threads` CPUs (and a GPU when a candidate runs on one: the job's `gpus`); messages come back through a Ray queue, so the store stays on the driver's machine.
  Taking rows back from the store with `--resume` needs the store's path to be readable by the worker
  (one machine, or a shared file system).

A job (picklable: it travels to the worker) has `cpus` (what a Ray task asks for), `work(send)` (the
worker's side: returns the result and sends ("start", key, *details) before a cell's work, ("reference",)
before the reference's, ("pause",) between, and messages of its own, such as a sweep's rows for the
store), `receive(message, store)` (the driver's side of every message, "done" included) and
`isolate(details, reason, store)` (the driver's side of a cell whose work was running when its worker died
or timed out: it becomes a failed row the next worker takes as it is; returns what the report's
`executor.isolated_failures` lists). A job that shards has `shards(count)` (the jobs of the shards, whose
results hold an `account` the report's `executor.shards` lists) and `merging(their results, store)`.
"""
from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
import traceback
from typing import Callable

from harness.errors import HarnessError, UsageError

EXECUTORS = ("local", "ray")
POLL_S = 0.2
# a worker that said its last word ("done" or "error") is given this long to end by itself before it is
# killed: killed during its interpreter's shutdown, it leaves the semaphores it registered with the driver's
# resource tracker, which then prints a "leaked semaphore" warning under the command's one-line error
LAST_WORD_GRACE_S = 10.0


class WorkerError(HarnessError):
    """The worker stopped on an error of the user's (shown as the worker saw it)."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


def run_in_worker(job, send, quiet: bool) -> None:
    """The worker's side: the job's messages, then ("done", result) or ("error", exit_code, message).
    quiet: what resolving the model says was already said by an earlier worker. The driver does not resolve
    the model: torch's import (3 s) is paid once, in the worker."""
    if quiet:
        os.environ["HARNESS_WORKER"] = "1"
    try:
        send(("done", job.work(send)))
    except HarnessError as err:
        send(("error", err.exit_code, str(err)))
    except Exception as err:  # noqa: BLE001 - one line for the user; the traceback with --debug
        send(("error", 1, f"{type(err).__name__}: {' '.join(str(err).split())}", traceback.format_exc()))


def _local_main(job, connection, quiet: bool) -> None:
    _die_with_parent()
    run_in_worker(job, connection.send, quiet)


def _die_with_parent() -> None:
    """Linux: the kernel kills this worker when the driver dies, even by SIGKILL (an OOM kill, a CI runner's
    hard stop), where no `finally` of the driver runs. Elsewhere, an orphaned worker ends at its next message
    (a broken pipe) unless it hangs."""
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return
    pr_set_pdeathsig = 1
    try:
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
    except (OSError, AttributeError):  # no prctl in this libc: the fallback above
        return
    if os.getppid() == 1:  # the driver died before the request took effect
        os._exit(1)


class LocalWorker:
    def __init__(self, job, quiet: bool):
        import multiprocessing

        context = multiprocessing.get_context("spawn")
        # a Pipe, not a Queue: Connection.send writes before it returns, where a Queue's feeder thread may
        # still hold the "start" of a cell whose native code kills the process the next instant
        self.messages, sending = context.Pipe(duplex=False)
        # not a daemon: a backend may start processes of its own (a daemon may not)
        self.process = context.Process(target=_local_main, args=(job, sending, quiet))
        self.process.start()
        sending.close()

    def receive(self, timeout: float):
        try:
            return self.messages.recv() if self.messages.poll(timeout) else None
        except EOFError:  # the worker is gone; ended() says how
            return None

    def ended(self) -> str | None:
        """Why the worker is gone, or None while it runs."""
        if self.process.is_alive():
            return None
        code = self.process.exitcode
        if code is not None and code < 0:
            import signal

            return f"signal {signal.Signals(-code).name}"
        return f"exit code {code}"

    def kill(self, grace: float = 0.0) -> None:
        if grace:
            self.process.join(grace)
        if self.process.is_alive():
            self.process.kill()
        self.process.join(5)


class RayWorker:
    def __init__(self, job, quiet: bool, spread: bool = False):
        """`spread`: one of several shards running at once, sent to the least used node (Ray's SPREAD) so
        that shards share a cluster's nodes rather than queue behind each other on the driver's."""
        import ray
        from ray.util.queue import Queue

        if not ray.is_initialized():
            ray.init(address=os.environ.get("RAY_ADDRESS"), include_dashboard=False, log_to_driver=False,
                     configure_logging=False)
        self.ray = ray
        self.messages = Queue()
        self.ref = ray.remote(num_cpus=job.cpus, num_gpus=getattr(job, "gpus", 0), max_retries=0,
                              scheduling_strategy="SPREAD" if spread else "DEFAULT")(_ray_main).remote(
            job, self.messages, quiet)

    def receive(self, timeout: float):
        from ray.util.queue import Empty

        try:
            return self.messages.get(timeout=timeout)
        except Empty:
            return None

    def ended(self) -> str | None:
        ready, _ = self.ray.wait([self.ref], timeout=0)
        if not ready:
            return None
        try:
            self.ray.get(self.ref)
            return "the task ended"
        except Exception as err:  # noqa: BLE001 - Ray's own words on why the task died
            return f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"

    def kill(self, grace: float = 0.0) -> None:
        # A task that said its last word is left to return: a forced cancel racing the task's reply in flight
        # crashes the driver inside Ray 2.60 ("Tried to complete task that was not pending", seen in CI)
        if not self.ray.wait([self.ref], timeout=grace)[0]:
            self.ray.cancel(self.ref, force=True)


def _ray_main(job, messages, quiet: bool) -> None:
    import ray

    messages.put(("node", ray.get_runtime_context().get_node_id()))  # where a shard ran (the report says)
    run_in_worker(job, messages.put, quiet)


def run_cells(job, executor: str = "local", cell_timeout: float | None = None, store=None,
              on_message: Callable | None = None, max_restarts: int = 50, workers: int = 1):
    """Runs `job` on a worker, restarting it past a crashed or timed-out cell; returns its result, with the
    executor's account in its `executor` key. `on_message`: the driver's own use of the worker's messages
    (a progress bar), and of ("restart", isolated failure) before a new worker starts the pass again.
    `workers` > 1: the job's data-parallel shards (job.shards(count), each its own worker, at once), then the
    job that merges what they sent (job.merging(their results))."""
    if executor not in EXECUTORS:
        raise UsageError(f"--executor {executor!r}: expected one of {', '.join(EXECUTORS)}")
    if workers > 1 and not hasattr(job, "shards"):
        raise UsageError(f"--workers {workers}: this command runs on one worker")
    if executor == "ray":
        import sys

        try:
            import ray
        except ImportError as err:
            raise UsageError(f"--executor ray needs Ray ({err}): pip install ray (in the harness checkout: "
                             "pip install -e '.[ray]')") from err
        started_here = not ray.is_initialized()
        # Ray prints its cluster's events (a dead worker, ...) on stdout, where `--json -` writes the report
        with contextlib.redirect_stdout(sys.stderr):
            try:
                return _drive(job, executor, cell_timeout, store, on_message, max_restarts, workers)
            finally:
                if started_here:
                    ray.shutdown()
    return _drive(job, executor, cell_timeout, store, on_message, max_restarts, workers)


@contextlib.contextmanager
def _terminate_like_interrupt():
    """SIGTERM (a cancelled CI job, `kill`, `timeout`) ends the driver the way Ctrl-C does: through the
    `finally` that kills its worker. By default SIGTERM ends the process at once, and the worker, a spawned
    process, would outlive it, still computing (or hanging) with no one to report to."""
    if threading.current_thread() is not threading.main_thread() \
            or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield  # a handler of the caller's own, or no way to install one: left alone
        return

    def stop(signum, frame):
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _drive(job, executor: str, cell_timeout: float | None, store, on_message, max_restarts: int, workers: int):
    account = {"name": executor, "cell_timeout": cell_timeout, "workers": workers, "worker_starts": 0,
               "isolated_failures": []}
    with _terminate_like_interrupt():
        if workers > 1:
            lanes = _drive_lanes(job.shards(workers), executor, cell_timeout, store, on_message, max_restarts,
                                 account)
            shards = [lane.result for lane in lanes]
            account["shards"] = [{**shard["account"], "node": lane.node, "seconds": lane.seconds}
                                 for shard, lane in zip(shards, lanes)]
            job = job.merging(shards, store)
        last = _drive_lanes([job], executor, cell_timeout, store, on_message, max_restarts, account)[0]
        result = last.result
        if workers > 1:
            account["merge_seconds"] = last.seconds  # a worker's start-up, and the metrics of every cell
    result["executor"] = account
    return result


class _Lane:
    """One job on its worker, restarted past each cell that crashed or timed out in it."""

    def __init__(self, job):
        self.job, self.worker, self.watch, self.result, self.restarts = job, None, None, None, 0
        self.node = None  # the Ray node its last worker ran on (None: this machine)
        self.started = self.seconds = None  # its first worker's start; wall seconds until its result

    def start(self, executor: str, quiet: bool, cell_timeout, store, on_message, shard: bool) -> None:
        self.started = self.started or time.monotonic()
        self.worker = LocalWorker(self.job, quiet) if executor == "local" else RayWorker(self.job, quiet, shard)
        self.watch = _Watch(self.worker, self.job, cell_timeout, store, on_message)

    def stop(self) -> None:
        if self.worker is not None:
            self.worker.kill(LAST_WORD_GRACE_S if self.watch.said_last_word else 0.0)
            self.node = self.watch.node
        self.worker = self.watch = None


def _drive_lanes(jobs: list, executor: str, cell_timeout: float | None, store, on_message, max_restarts: int,
                 account: dict) -> list[_Lane]:
    """Runs the jobs at once, one worker each, in this one thread (the store is written from here alone);
    returns their lanes (results) in order."""
    lanes = [_Lane(job) for job in jobs]
    isolated = account["isolated_failures"]
    try:
        while running := [lane for lane in lanes if lane.result is None]:
            for lane in running:
                if lane.worker is None:
                    # the first worker of the command says what resolving the model says; the others are quiet
                    lane.start(executor, account["worker_starts"] > 0, cell_timeout, store, on_message,
                               shard=len(lanes) > 1)
                    account["worker_starts"] += 1
                outcome = lane.watch.step(POLL_S / len(running))
                if outcome is None:
                    continue
                lane.stop()
                if outcome[0] == "done":
                    lane.result, lane.seconds = outcome[1], time.monotonic() - lane.started
                    continue
                _, current, reason = outcome
                if current is None:
                    raise WorkerError(f"the worker stopped outside any cell: {reason}", 1)
                lane.restarts += 1
                if lane.restarts > max_restarts:
                    raise WorkerError(f"the worker was restarted {max_restarts} times; giving up", 1)
                isolated.append(lane.job.isolate(current[:-1], reason, store))
                if len(lanes) > 1:  # each shard's worker meets the cell on its own data
                    isolated[-1]["shard"] = lanes.index(lane)
                if on_message is not None:  # the next worker's pass starts over (a progress bar resets)
                    on_message(("restart", isolated[-1]))
    finally:  # done, failed, or interrupted (Ctrl-C): no worker outlives the driver
        for lane in lanes:
            lane.stop()
    return lanes


class _Watch:
    """Relays one worker's messages to its job and keeps the time of the cell whose work is running. A
    cell's work comes in pieces (the data is streamed in chunks, each chunk doing a piece of every cell), so
    its time is the sum of its pieces."""

    def __init__(self, worker, job, cell_timeout: float | None, store, on_message):
        self.worker, self.job, self.cell_timeout, self.store, self.on_message = \
            worker, job, cell_timeout, store, on_message
        self.current, self.spent, self.node = None, {}, None
        self.said_last_word = False  # "done" or "error" came: the worker ends by itself
        self.reference_since = None  # the reference's work (no cell's) runs since then

    def step(self, timeout: float):
        """One wait for a message: None while the worker runs; ("done", result) or ("gone", the cell it was
        in, why)."""
        message = self.worker.receive(timeout)
        if message is None:
            message, reason = self._silent()
            if reason is not None:
                return "gone", self.current, reason
        while message is not None:  # all that came: a worker's messages must not queue behind the others'
            outcome = self._relay(message)
            if outcome is not None:
                return outcome
            message = self.worker.receive(0)
        return None

    def _silent(self) -> tuple[tuple | None, str | None]:
        """No message came: (a last message of a worker that just ended, None), or (None, why the worker is
        given up: a timeout kills it), or (None, None) while it may go on."""
        cell_timeout, current, now = self.cell_timeout, self.current, time.monotonic()
        if cell_timeout and current and self.spent.get(current[0], 0.0) + now - current[-1] > cell_timeout:
            self.worker.kill()
            return None, f"timed out: still running after {cell_timeout:g} s (--cell-timeout); its worker was killed"
        if cell_timeout and self.reference_since is not None and now - self.reference_since > cell_timeout:
            # the reference's own work is bounded too: nothing can be measured against a reference that
            # never finishes, and a run that hangs there must not run until killed from outside
            self.worker.kill()
            raise WorkerError(f"the reference pass ran past --cell-timeout ({cell_timeout:g} s on one chunk of "
                              "data); its worker was killed and nothing can be measured against it", 1)
        ended = self.worker.ended()
        if ended is None:
            return None, None
        last = self.worker.receive(1.0)  # a last message may still be in flight
        if last is not None:
            return last, None
        if self.reference_since is not None:
            raise WorkerError(f"the reference's worker process died ({ended}) while running the reference; "
                              "nothing can be measured against it", 1)
        return None, f"its worker process died ({ended}) while running it"

    def _relay(self, message: tuple):
        kind = message[0]
        self.said_last_word = kind in ("done", "error")
        if kind == "node":
            self.node = message[1]
            return None
        if kind == "reference" or (kind == "piece" and self.reference_since is not None):  # begun, or progressed
            self.reference_since = time.monotonic()
        elif kind in ("start", "pause"):
            self.reference_since = None
        if kind in ("start", "pause", "row", "reference") and self.current is not None:  # the running piece ends
            self.spent[self.current[0]] = self.spent.get(self.current[0], 0.0) + time.monotonic() - self.current[-1]
            self.current = None
        if kind == "start":
            self.current = (*message[1:], time.monotonic())
        elif kind == "error":
            if len(message) > 3 and _debugging():
                import sys

                print(message[3], file=sys.stderr)
            raise WorkerError(message[2], message[1])
        self.job.receive(message, self.store)
        if self.on_message is not None:
            self.on_message(message)
        return ("done", message[1]) if kind == "done" else None


def _debugging() -> bool:
    return os.environ.get("HARNESS_DEBUG", "") not in ("", "0")
