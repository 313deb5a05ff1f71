"""The `harness` command line: one module per command group, all on one Typer app (harness.cli.app). One
error boundary (harness.cli.common.run_with_error_contract, called by main): a HarnessError becomes one line
on stderr and its exit code (2 for usage/input errors); --debug or HARNESS_DEBUG=1 shows the traceback."""
from __future__ import annotations

# each registers its commands; their order is the order `harness --help` lists them in
from harness.cli import evaluate, sweep, gate, reports, models  # noqa: F401, I001
from harness.cli.app import app
from harness.cli.common import run_with_error_contract


def main() -> None:
    run_with_error_contract(app)


if __name__ == "__main__":
    main()
