"""The `edm` command line (typer). A thin shell: parse, call the packages, render results, map
errors to exit codes. One module per command group; `common` holds what they share.

Exit codes: 0 success, 1 a user-facing error (invalid file, broker refused, event failed under
the `fail` policy), 2 a usage error; as Unix tools, 128 + the signal when one ended the command:
130 after SIGINT (Ctrl-C; `edm run` first stops cleanly), 141 when the reader of stdout went
away (`edm consume ... | head -2`, quietly). SIGTERM, the orchestrator's normal stop, makes
`edm run` stop cleanly and exit 0. User errors never print a traceback; an internal error
prints one line and asks for EDM_DEBUG=1 to see the traceback.
"""
from __future__ import annotations

import sys

# Importing a command module registers its commands on `app`, in the order `edm --help` lists them.
from edm_runner.cli import check, schemas, run, streams, reset, dev, state, chart, testing  # noqa: F401
from edm_runner.cli.common import app

__all__ = ["app", "main"]


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
