"""README.md's commands table names every option each command accepts, so a user reading it
sees the whole CLI (and an option added to a command without the README fails here)."""
from __future__ import annotations

import re

from typing import Any

import typer.main
from typer.core import TyperOption

from cli_helpers import ROOT
from edm_runner.cli import app


def _commands(group: Any, prefix: str) -> list[tuple[str, Any]]:
    """(`edm VERB ...`, its command) for every command; a group's subcommands are listed alone."""
    found = []
    for name, command in group.commands.items():
        if hasattr(command, "commands") and name != "state":  # `edm state FILE get|scan|stats`: one row
            found += _commands(command, f"{prefix} {name}")
        else:
            found.append((f"{prefix} {name}", command))
    return found


def test_the_commands_table_lists_every_option() -> None:
    rows = [line for line in (ROOT / "README.md").read_text().splitlines() if line.startswith("| `edm ")]
    missing = []
    for name, command in _commands(typer.main.get_command(app), "edm"):
        words = name.split()
        # `edm dev kafka start|stop|status` share a row: the row that names the group and the verb.
        row = next((r for r in rows if re.match(rf"\| `{' '.join(words[:3])}\b", r) and words[-1] in r), None)
        assert row is not None, f"README.md's commands table has no row for `{name}`"
        params = [command, *getattr(command, "commands", {}).values()]
        for option in (p for c in params for p in c.params if isinstance(p, TyperOption)):
            # -t FILE or --topology FILE: either spelling names it
            if "--help" not in option.opts and not any(re.search(rf"{o}\b", row) for o in option.opts):
                missing.append(f"{name} {option.opts[0]}")
    assert not missing, f"README.md's commands table does not name: {', '.join(missing)}"


def test_the_guarantees_promise_exact_stores_only_where_they_are() -> None:
    """At-least-once keeps a store exact only when the inputs feed it directly: after a crash, a
    store behind a repartition counts the re-written records again (+2.9% measured on a killed
    join -> group_by -> count). README and docs/language.md said stores stay exact, period."""
    readme = (ROOT / "README.md").read_text()
    guarantees = readme[readme.index("## Guarantees"):]
    guarantees = guarantees[:guarantees.index("\n## ")]
    language = (ROOT / "docs" / "language.md").read_text()
    for text in (guarantees, next(line for line in language.splitlines() if line.startswith("| `guarantee` |"))):
        flat = " ".join(text.split())
        assert "stores stay exact." not in flat.lower() and "Stores stay exact even so:" not in flat
        assert re.search(r"group_by.*exactly_once", flat), flat
