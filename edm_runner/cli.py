"""The `edm` command line (typer). A thin shell: parse, call the packages, map errors to exit codes."""
from __future__ import annotations

import typer

app = typer.Typer(no_args_is_help=True, add_completion=False)


def main() -> None:
    app()
