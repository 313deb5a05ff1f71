"""`harness zoo`: list the model zoo, reproduce its weights, regenerate the README's SysNoise table."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from harness.cli.common import JsonOpt, console_for

zoo_app = typer.Typer(add_completion=False, no_args_is_help=True, help="The model zoo: list and train.")


@zoo_app.command("list")
def zoo_list(json_path: JsonOpt = None) -> None:
    """The zoo's models, their task, input and stated accuracy on the embedded benchmark."""
    from rich.table import Table

    from harness.models import DEFAULT_CLASSIFIER, DEFAULT_DETECTOR, ZOO
    from harness.report import write_json

    rows = []
    for name, make in ZOO.items():
        spec = make()
        rows.append({"name": name, "task": spec.task, "input_size": spec.profile.input_size,
                     "default": name in (DEFAULT_CLASSIFIER, DEFAULT_DETECTOR), "summary": spec.summary,
                     "stated": spec.stated})
    table = Table(title="zoo", title_justify="left")
    for column in ("name", "task", "input", "default", "stated metric", "summary"):
        table.add_column(column)
    for row in rows:
        stated = ", ".join(f"{k} {v:.3f}" for k, v in row["stated"].items())
        table.add_row(row["name"], row["task"], str(row["input_size"]), "yes" if row["default"] else "",
                      stated, row["summary"])
    console_for(json_path).print(table)
    if json_path:
        write_json({"schema": "harness.zoo/1", "models": rows}, json_path)


@zoo_app.command("train")
def zoo_train(name: Annotated[str, typer.Argument(help="Zoo model to train by its recipe.")],
              out: Annotated[Optional[Path], typer.Option("--out", help="Where to write the weights. "
                                                          "Default: the shipped weights file.")] = None) -> None:
    """Reproduce a zoo model's weights by its deterministic recipe (minutes on 2 CPU cores)."""
    from harness.model import resolve_model
    from harness.models.train import reproduce

    resolve_model(name)  # unknown names fail here, with the list of known ones
    reproduce(name, out, log=lambda line: Console(stderr=True).print(line))


@zoo_app.command("sysnoise-table")
def zoo_sysnoise_table(readme: Annotated[Optional[Path], typer.Option(
        "--readme", help="Rewrite the table between this file's sysnoise-table markers.")] = None) -> None:
    """The SysNoise summary of every zoo model on the embedded benchmark (the README's table)."""
    from harness.report.markdown import SYSNOISE_MARKERS, rewrite_between_markers, zoo_sysnoise_markdown

    body = zoo_sysnoise_markdown(progress=True)
    if readme is None:
        print(body)
        return
    rewrite_between_markers(readme, body, SYSNOISE_MARKERS, "sysnoise-table")
