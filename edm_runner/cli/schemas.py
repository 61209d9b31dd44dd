"""`edm schema`: the topology JSON Schema (`edm schema [-o FILE]`, as before), and the evolution
of event schemas: `edm schema check FILE [--against ...]`, `edm schema lock FILE`.

`schema` stays a command that writes the topology schema when no subcommand follows, so the
existing `edm schema -o schemas/topology.schema.json` keeps working; `check` and `lock` are its
subcommands. Exit codes of check and lock: 0 compatible, 1 a breaking change, 2 a broken input
(an invalid topology, an unreadable lock, an unknown revision) or a usage error.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Callable, Optional

import typer

from edm_runner.cli.common import FileArgument, NoCodeOption, OutputFormat, OutputFormatOption, app, guarded

schema_app = typer.Typer(invoke_without_command=True, no_args_is_help=False,
                         help="Write the topology JSON Schema; check and lock event schemas (check, lock).")
app.add_typer(schema_app, name="schema")

AgainstOption = Annotated[Optional[str], typer.Option(
    "--against", help="The previous version: git:REV (e.g. git:origin/main), a directory holding the previous "
                      "version of the current directory, or a lock file (default: the topology's lock file).")]


@schema_app.callback()
def schema(
    ctx: typer.Context,
    output: Annotated[Path, typer.Option("--output", "-o", help="Where to write the JSON Schema.")]
    = Path("schemas/topology.schema.json"),
) -> None:
    """Write the topology JSON Schema assembled from the operators' own schemas (without a
    subcommand); `edm schema check` and `edm schema lock` check and record event schemas."""
    if ctx.invoked_subcommand is not None:
        return

    def body() -> int:
        from edm_runner.language import write_schema
        write_schema(output)
        typer.echo(f"wrote {output}")
        return 0
    guarded(body)


def _declared(file: Path, no_code: bool) -> tuple[Any, list] | None:
    """The model and its declared schemas, or None after printing the errors of an invalid file."""
    from edm_runner.evolution.declared import current
    from edm_runner.language import validate_file
    validation = validate_file(file, no_code=no_code)
    if validation.model is None:
        for diagnostic in validation.errors:
            typer.echo(diagnostic.format(), err=True)
        typer.echo(f"edm: {file} is not valid ({len(validation.errors)} error(s)): fix it first", err=True)
        return None
    return validation.model, current(validation.model)


def _history(file: Path, against: Optional[str]) -> tuple[Callable, Callable[[int], str], str]:
    """(subject -> previous versions, version -> its name, what was compared against)."""
    from edm_runner.evolution.declared import HistoryError, dir_tree, git_tree, previous
    from edm_runner.evolution.lock import lock_path, read_lock
    if against is None:
        lock = lock_path(file)
        if not lock.is_file():
            raise HistoryError(f"nothing to compare {file} with: no lock file {lock}; record the current schemas "
                               f"with `edm schema lock {file}`, or pass --against git:REV or --against DIR")
        against = str(lock)
    if against.startswith("git:"):
        tree, relative = git_tree(file, against[4:])
    elif Path(against).is_dir():
        tree, relative = dir_tree(file, Path(against), Path.cwd())
    elif Path(against).is_file():
        entries = read_lock(Path(against))
        return (lambda s: entries[s].versions if s in entries else []), (lambda n: f"version {n}"), against
    else:
        raise HistoryError(f"--against {against}: not git:REV, a directory or a lock file")
    found = previous(tree, relative) or {}
    return (lambda s: [found[s][1]] if s in found else []), (lambda n: tree.label), against


@schema_app.command("check")
def schema_check(
    file: FileArgument,
    against: AgainstOption = None,
    output: OutputFormatOption = OutputFormat.text,
    no_code: NoCodeOption = False,
) -> None:
    """Compare each stream's key and value schemas with their previous versions under the
    stream's compatibility mode: file:line: stream: $.path: what changed; why it breaks; what to do."""
    def body() -> int:
        from edm_runner.evolution.check import check
        from edm_runner.language.model import BusinessTopology
        loaded = _declared(file, no_code)
        if loaded is None:
            return 2
        model, declared = loaded
        history, label, source = _history(file, against)
        findings, compared = check(declared, history, label, isinstance(model, BusinessTopology))
        if output is OutputFormat.json:
            typer.echo(json.dumps({"compatible": not findings, "against": source, "compared": compared,
                                   "breaking_changes": [f.as_json() for f in findings]}, indent=2))
        else:
            for finding in findings:
                typer.echo(finding.format(), err=True)
            if findings:
                typer.echo(f"{len(findings)} breaking change(s) against {source}", err=True)
            else:
                typer.echo(f"{compared} schema(s) compared with {source}: no breaking change")
        return 1 if findings else 0
    guarded(body)


@schema_app.command("lock")
def schema_lock(
    file: FileArgument,
    force: Annotated[bool, typer.Option("--force", help="Record schemas that break their compatibility "
                                                        "mode (their consumers will fail on new events).")] = False,
    no_code: NoCodeOption = False,
) -> None:
    """Record every stream's schemas in the topology's lock file (<name>.schemas.lock.json beside
    it), a new version for each changed one; refuses a change that breaks its mode unless --force."""
    def body() -> int:
        from edm_runner.evolution.check import check, next_lock
        from edm_runner.evolution.lock import lock_path, read_lock, render_lock
        from edm_runner.language.model import BusinessTopology
        loaded = _declared(file, no_code)
        if loaded is None:
            return 2
        model, declared = loaded
        path = lock_path(file)
        entries = read_lock(path) if path.is_file() else {}
        findings, _ = check(declared, lambda s: entries[s].versions if s in entries else [],
                            lambda n: f"version {n}", isinstance(model, BusinessTopology))
        if findings and not force:
            for finding in findings:
                typer.echo(finding.format(), err=True)
            typer.echo(f"edm: not locked: {len(findings)} breaking change(s); fix them, or record them anyway "
                       f"with `edm schema lock {file} --force`", err=True)
            return 1
        new, added = next_lock(declared, entries)
        text = render_lock(file, new)
        if path.is_file() and path.read_text(encoding="utf-8") == text:
            typer.echo(f"{path} is up to date ({len(new)} schema(s))")
            return 0
        path.write_text(text, encoding="utf-8")
        typer.echo(f"wrote {path}: {len(new)} schema(s)" + (f", new: {', '.join(added)}" if added else ""))
        return 0
    guarded(body)
