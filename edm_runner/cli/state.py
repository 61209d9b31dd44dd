"""`edm state FILE get|scan|stats`: read a service's local state stores offline."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Callable, Optional

import typer
from typer.core import TyperGroup, TyperOption

from edm_runner.cli.common import (FileArgument, StateDirOption, app, guarded, invocation_of, load, local_state_dir,
                                   services_of)
from edm_runner.errors import EdmError
from edm_runner.invocation import Invocation


class _StateGroup(TyperGroup):
    """`edm state FILE [OPTIONS] COMMAND ...`: every option works wherever the user puts it.
    Click takes the first word after a group's arguments for the command name, so `edm state
    FILE --prefix P scan S` would look for a command `--prefix`. The options found before the
    command name are moved: the group's own (`--state-dir`, `--service`, `--help`) in front of
    FILE, the others (a command's, such as `--prefix`, `--json`) after the command name, where
    that command parses them (or names the one it does not know)."""

    def parse_args(self, ctx: typer.Context, args: list[str]) -> list[str]:
        mine = {name for param in self.get_params(ctx) for name in param.opts}
        takes_value = {name for command in [self, *self.commands.values()] for param in command.params
                       if isinstance(param, TyperOption) and not param.is_flag for name in param.opts}
        front: list[str] = []
        later: list[str] = []
        positionals: list[str] = []
        i = 0
        while i < len(args) and len(positionals) < 2:  # FILE, then the command name
            word = args[i]
            if not word.startswith("-") or word == "-":
                positionals.append(word)
                i += 1
                continue
            name = word.split("=", 1)[0]
            n = 2 if name == word and name in takes_value and i + 1 < len(args) else 1
            (front if name in mine else later).extend(args[i:i + n])
            i += n
        return super().parse_args(ctx, front + positionals + later + args[i:])


state_app = typer.Typer(no_args_is_help=True, cls=_StateGroup,
                        help="Read a service's local state stores offline (no broker, no runner needed).")
app.add_typer(state_app, name="state")

ServiceOption = Annotated[Optional[str], typer.Option(
    "--service", help="The microservice of a business topology whose stores to read.")]


@dataclass
class _StateTarget:
    file: Path
    service: Optional[str]
    state_dir: Optional[Path]


@state_app.callback()
def state(
    ctx: typer.Context,
    file: FileArgument,
    service: ServiceOption = None,
    state_dir: StateDirOption = None,
) -> None:
    """edm state FILE get STORE KEY | scan STORE [--prefix P] | stats  (JSON output)."""
    ctx.obj = _StateTarget(file, service, state_dir)


def _state_call(ctx: typer.Context, state_dir: Path | None, service_name: str | None, store: str | None,
                action: Callable[[object, Invocation], None], empty_ok: bool = False) -> None:
    """Opens the service's local state read-only and runs ``action(state, invocation)``; a
    ``store`` must be declared by the topology (or exist in the state: implicit join stores).
    A declared store nothing has written yet is an error, or (``empty_ok``) an empty result
    with a note on stderr.
    ``state_dir`` and ``service_name`` are the command's options, which win over the group's."""
    target: _StateTarget = ctx.obj
    state_dir = state_dir or target.state_dir
    service_name = service_name or target.service

    def body() -> int:
        from edm_runner.state.offline import open_readonly
        topology = load(target.file)
        services = services_of(topology, service_name)
        if len(services) > 1:
            raise EdmError(f"{target.file} has several microservices "
                           f"({', '.join(s.name for s in services)}); choose one with --service")
        service = services[0]
        invocation = invocation_of(topology, target.file, state_dir=state_dir).for_service(service.name)
        with open_readonly(local_state_dir(target.file, state_dir), service.name, invocation) as state:
            declared = sorted({*service.stores, *service.tables, *service.global_tables, *state.store_names()})
            if store is not None and store not in declared:
                raise EdmError(f"service {service.name!r} has no store {store!r}; its stores: "
                               f"{', '.join(declared) or 'none'}")
            if store is not None and store not in state.store_names():
                empty = (f"store {store!r} of service {service.name!r} is declared but empty: nothing has "
                         f"been written to it yet in {state.root} (`{invocation.command('run')}` fills it "
                         "as it processes events)")
                if not empty_ok:
                    raise EdmError(empty)
                typer.echo(f"edm: {empty}", err=True)
                return 0
            action(state, invocation)
        return 0
    guarded(body)


def _echo_entries(found) -> None:
    """JSON lines ``{"task", "key", "value"}``, plus ``start`` (windows) / ``end`` (sessions)."""
    for task, entry in found:
        line = {"task": task, "key": entry.key, "value": entry.value}
        if entry.start is not None:
            line["start"] = entry.start
        if entry.end is not None:
            line["end"] = entry.end
        typer.echo(json.dumps(line, ensure_ascii=False))


@state_app.command("get")
def state_get(
    ctx: typer.Context,
    store: str,
    key: str,
    as_json: Annotated[bool, typer.Option("--json", help="KEY is JSON (e.g. 42 or [\"a\",1]), not a string.")] = False,
    state_dir: StateDirOption = None,
    service: ServiceOption = None,
) -> None:
    """Print KEY's entry in STORE (a window or session store prints every window of the key)."""
    def action(state, invocation: Invocation) -> None:
        wanted: object = key
        if as_json:
            try:
                wanted = json.loads(key)
            except json.JSONDecodeError as error:
                raise EdmError(f"--json: KEY {key!r} is not JSON ({error.msg}); quote a string "
                               "key as '\"u-1\"'") from None
        found = state.get(store, wanted)
        if not found:
            raise EdmError(f"no key {wanted!r} in store {store!r} of service {state.service!r}; "
                           f"`{invocation.command('state', 'scan', store)}` lists its keys"
                           + ("" if as_json else " (--json reads KEY as JSON, e.g. a number)"))
        _echo_entries(found)
    _state_call(ctx, state_dir, service, store, action)


@state_app.command("scan")
def state_scan(
    ctx: typer.Context,
    store: str,
    prefix: Annotated[str, typer.Option("--prefix", help="Only keys whose text starts with P.")] = "",
    state_dir: StateDirOption = None,
    service: ServiceOption = None,
) -> None:
    """Print STORE's entries as JSON lines (task, key, value; start/end for windows and sessions)."""
    _state_call(ctx, state_dir, service, store, lambda state, _: _echo_entries(state.scan(store, prefix)),
                empty_ok=True)


@state_app.command("stats")
def state_stats(ctx: typer.Context, state_dir: StateDirOption = None, service: ServiceOption = None) -> None:
    """Print per task: its stores' entry counts and the checkpoint (changelog and input offsets)."""
    def action(state, _: Invocation) -> None:
        from edm_runner.state.task import tp_key
        tasks = [{"task": t.task, "path": str(t.path), "size_bytes": t.size_bytes,
                  "checkpoint": {"changelogs": {tp_key(tp): o for tp, o in t.checkpoint.changelogs.items()},
                                 "inputs": {tp_key(tp): o for tp, o in t.checkpoint.inputs.items()}},
                  "stores": [{"store": s.name, "type": s.type, "params": s.params, "entries": s.entries}
                             for s in t.stores]}
                 for t in state.stats()]
        typer.echo(json.dumps({"service": state.service, "path": str(state.root), "tasks": tasks},
                              indent=2, ensure_ascii=False))
    _state_call(ctx, state_dir, service, None, action)
