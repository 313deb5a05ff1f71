"""The `harness` Typer application and its global options; each command group registers on it from its own
module (harness.cli.evaluate, sweep, gate, reports, models, zoo)."""
from __future__ import annotations

from typing import Annotated

import typer

from harness.cli.cache import cache_app
from harness.cli.zoo import zoo_app

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Cross-backend deployment harness: measure and explain what a model loses in deployment.")
app.add_typer(zoo_app, name="zoo")
app.add_typer(cache_app, name="cache")


def _print_version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        print(f"harness {version('harness')}")
        raise typer.Exit(0)


@app.callback()
def _options(version: Annotated[bool, typer.Option(
        "--version", callback=_print_version, is_eager=True, help="Print the harness version and exit.")] = False,
             ) -> None:
    """Cross-backend deployment harness: measure and explain what a model loses in deployment."""
