"""`harness cache`: what the artefact cache holds under HARNESS_CACHE (exports, FP16/INT8 graphs, TVM
libraries, TensorRT engines, graph variants, the sweep store) and freeing it."""
from __future__ import annotations

from typing import Annotated, Optional

import typer

from harness.cli.common import JsonOpt, console_for

cache_app = typer.Typer(add_completion=False, no_args_is_help=True,
                        help="The artefact cache under HARNESS_CACHE: show and free it.")

KindOpt = Annotated[Optional[list[str]], typer.Option(
    "--kind", help="Only this kind (a folder of the cache: exports, tvm, int8-nncf, ..., or cells for the sweep "
                   "store); repeat for several.")]


def _chosen(kinds: list[str] | None):
    from harness.cache import cache_entries, cache_root
    from harness.errors import UsageError

    entries = cache_entries()
    present = sorted({e.kind for e in entries})
    unknown = [k for k in kinds or () if k not in present]
    if unknown:
        raise UsageError(f"--kind {unknown[0]}: no such kind in {cache_root()} (present: "
                         f"{', '.join(present) or 'none, the cache is empty'})")
    return [e for e in entries if not kinds or e.kind in kinds]


def _summary(entries) -> list[dict]:
    kinds = {}
    for entry in entries:
        row = kinds.setdefault(entry.kind, {"kind": entry.kind, "entries": 0, "unfinished": 0, "bytes": 0,
                                            "oldest_use": entry.last_used, "latest_use": entry.last_used})
        row["entries"] += 1
        row["unfinished"] += not entry.complete
        row["bytes"] += entry.bytes
        row["oldest_use"] = min(row["oldest_use"], entry.last_used)
        row["latest_use"] = max(row["latest_use"], entry.last_used)
    return list(kinds.values())


def _print(rows: list[dict], title: str, json_path: str | None) -> None:
    import datetime

    from rich.table import Table

    def when(stamp: float) -> str:
        return datetime.datetime.fromtimestamp(stamp).strftime("%Y-%m-%d %H:%M")

    table = Table(title=title, title_justify="left")
    for column in ("kind", "entries", "size", "latest use", "least recent use"):
        table.add_column(column, justify="right" if column in ("entries", "size") else "left")
    for row in rows:
        entries = f"{row['entries']}" + (f" ({row['unfinished']} unfinished)" if row["unfinished"] else "")
        table.add_row(row["kind"], entries, f"{row['bytes'] / 2**20:.1f} MiB", when(row["latest_use"]),
                      when(row["oldest_use"]))
    table.add_row("total", str(sum(r["entries"] for r in rows)), f"{sum(r['bytes'] for r in rows) / 2**20:.1f} MiB",
                  "", "")
    console_for(json_path).print(table)


@cache_app.command("info")
def cache_info(kind: KindOpt = None, json_path: JsonOpt = None) -> None:
    """What the cache holds, kind by kind: entries, size, when last used (a build or a hit)."""
    from harness.cache import cache_root
    from harness.report import write_json

    rows = _summary(_chosen(kind))
    _print(rows, f"harness cache {cache_root()}", json_path)
    if json_path:
        write_json({"schema": "harness.cache/1", "root": str(cache_root()), "kinds": rows,
                    "bytes": sum(r["bytes"] for r in rows)}, json_path)


@cache_app.command("clear")
def cache_clear(older_than: Annotated[Optional[float], typer.Option(
        "--older-than", min=0, help="Only what has not been used (built or hit) for this many days.")] = None,
                kind: KindOpt = None, json_path: JsonOpt = None) -> None:
    """Frees the cache (or its entries unused for --older-than DAYS): each artefact is rebuilt when next
    needed. A build's staging folder younger than an hour is kept: it may be a build in progress."""
    from harness.cache import cache_root, clear_cache
    from harness.report import write_json

    removed = _summary(clear_cache(_chosen(kind), older_than))
    _print(removed, f"removed from {cache_root()}", json_path)
    if json_path:
        write_json({"schema": "harness.cache-clear/1", "root": str(cache_root()), "older_than_days": older_than,
                    "removed": removed, "bytes": sum(r["bytes"] for r in removed)}, json_path)
