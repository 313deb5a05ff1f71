"""A sysnoise sweep as a job of harness.executor: its cells are the variants; the worker's rows and pieces
of the pass go to the driver's cell store as they finish, so a restarted worker (or `--resume`) takes them
back instead of computing them again."""
from __future__ import annotations

import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path

from harness.model import ModelRequest
from harness.noise.runner import SweepSettings


@dataclass
class SweepJob:
    """What a worker needs to run one sweep: names and paths (picklable), resolved again in the worker; a job
    of harness.executor."""

    model: ModelRequest
    user_variants: list[str]
    settings: SweepSettings                    # what the sweep measures and how
    store_path: Path | None = None             # read by the worker: pieces of this run, and with --resume rows
    resume: bool = False                       # and pieces of earlier runs
    taken: dict = field(default_factory=dict)  # rows finished by earlier workers of this run, by cell key
    run: str = field(default_factory=lambda: uuid.uuid4().hex)  # names this run's pieces in the store
    piece_contexts: set = field(default_factory=set)  # the sweeps whose pieces the store got (driver side)
    shard: int | None = None                   # a data-parallel shard of the pass (of settings.workers)
    shard_results: list | None = None          # what the shards returned, for the job that merges them
    executor: str = "local"                    # where the workers run (harness.executor)
    shipped: object = None                     # Ray: a reference to the shards' pieces, {key: bytes}

    def shards(self, count: int) -> list[SweepJob]:
        """The jobs of a data-parallel run: shard k does the pass on its run of whole chunks, its pieces sent
        to the store (they share this job's rows and this run's name)."""
        if count != self.settings.workers:
            raise ValueError(f"{count} shards of a sweep planned for {self.settings.workers} workers")
        return [replace(self, shard=k) for k in range(count)]

    def merging(self, shard_results: list, store) -> SweepJob:
        """The job that makes the report from the shards' pieces (taken back, not computed). On Ray they
        travel through the object store: the merging worker may run on a machine without the store's file."""
        shipped = None
        if self.executor == "ray" and store is not None:
            import ray

            shipped = ray.put(store.pieces_of({r["context"] for r in shard_results if r["context"]}))
        return replace(self, shard=None, shard_results=shard_results, shipped=shipped)

    @property
    def cpus(self) -> int:
        return self.settings.threads or 1

    def work(self, send) -> dict:
        """The worker's side: the sweep, its rows and pieces sent as they finish; returns the report."""
        from harness.noise import add_user_variant
        from harness.noise.runner import sysnoise_report

        for text in self.user_variants:
            add_user_variant(text)
        spec = self.model.resolve()
        report = sysnoise_report(spec, self.settings, progress=True if self.shard is None else send, store=RelayStore(self, send),
                                 resume=True, shard=self.shard)
        if self.shard_results:
            report["counters"] = merged_counters(report["counters"], self.shard_results)
        return report

    def receive(self, message: tuple, store) -> None:
        """The driver's side: rows and pieces into the cell store as they come; a finished sweep's pieces
        dropped (its rows hold it all)."""
        kind = message[0]
        if kind == "row":
            _, key, axis, variant, row = message
            self.taken[key] = row
            if store is not None:
                store.put(key, axis, variant, row)
        elif kind == "piece" and store is not None:
            _, key, context, data = message
            store.put_piece(key, self.run, context, data)
            self.piece_contexts.add(context)
        elif kind == "done" and store is not None and self.shard is None:
            store.drop_pieces(self.piece_contexts)

    def isolate(self, cell: tuple, reason: str, store) -> dict:
        """The variant whose work killed or outlasted its worker: a failed row, taken as it is from now on."""
        from harness.noise.sweep import variant_row

        key, axis, variant, baseline = cell
        row = {**variant_row(variant, "failed", reason, baseline), "isolated": True}
        self.taken[key] = row
        if store is not None:
            store.put(key, axis, variant, row)
        return {"axis": axis, "variant": variant, "reason": reason}


def merged_counters(merging: dict, shard_results: list[dict]) -> dict:
    """The work of a data-parallel run: the shards' counters summed, plus what the merging worker did on
    its own (its distinct input sets are the whole data's); the pieces it took back from the shards are
    `pieces_merged`, so `pieces_taken` counts, as in one worker, only work taken back from a crashed worker or
    an earlier run."""
    merged = {key: value for key, value in merging.items() if key != "pieces_taken"}
    for result in shard_results:
        for key, value in result["account"]["counters"].items():
            if key != "distinct_inputs":
                merged[key] = merged.get(key, 0) + value
    merged["pieces_merged"] = merging.get("pieces_taken", 0)
    return merged


class RelayStore:
    """The worker's side of the cell store: rows of this run first, then (with --resume) the store's
    finished rows; every row it is given goes to the driver."""

    def __init__(self, job: SweepJob, send):
        from harness.store import CellStore

        self.taken, self.send = dict(job.taken), send
        self.stored = CellStore(job.store_path) if job.store_path else None
        self.path, self.resume, self.run = job.store_path, job.resume, job.run
        self.shipped = job.shipped

    def get(self, key: str) -> dict | None:
        if key in self.taken:
            return self.taken[key]
        row = self.stored.get(key) if self.stored is not None and self.resume else None
        return row if row is not None and row.get("status") == "ok" else None  # failures are tried again

    def take_piece(self, key: str):
        """A piece of the pass done by an earlier worker of this run (or with --resume, of any run)."""
        from harness.store import BadPiece, decode_piece

        if self.shipped is not None and not isinstance(self.shipped, dict):
            import ray

            self.shipped = ray.get(self.shipped)
        if self.shipped is not None:  # all there is: this worker may not see the store's file
            data = self.shipped.get(key)
        else:
            data = self.stored.get_piece(key, None if self.resume else self.run) if self.stored is not None else None
        if data is None:
            return None
        try:
            return decode_piece(data)
        except BadPiece:  # not what keep_piece wrote: computed again, never trusted
            return None

    def keep_piece(self, key: str, context: str, piece) -> None:
        from harness.store import encode_piece

        if self.stored is not None:
            self.send(("piece", key, context, encode_piece(*piece)))

    def started(self, key: str, axis: str, variant: str, baseline: str) -> None:
        self.send(("start", key, axis, variant, baseline))

    def paused(self) -> None:
        self.send(("pause",))

    def reference_work(self) -> None:
        self.send(("reference",))

    def put(self, key: str, axis: str, variant: str, row: dict) -> None:
        self.taken[key] = row
        self.send(("row", key, axis, variant, row))
