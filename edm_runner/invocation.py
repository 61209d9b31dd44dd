"""How the user invoked edm, so that every hint naming a command repeats the options in effect.

The CLI builds one ``Invocation`` from the file and options it parsed and passes it down;
code below the CLI never writes `edm VERB ...` into a message itself but asks
``invocation.command(VERB, ...)``. A hint that dropped `--state-dir` or `--broker` would send
the user to another state directory or broker: followed literally, it would do its work in
the wrong place, say `done`, and leave the problem where it was.
"""
from __future__ import annotations

import shlex
from dataclasses import dataclass, replace

# The options each command accepts, in the order a hint writes them. A command takes its
# topology file as its first argument, except those in _FILE_AS_OPTION (`-t FILE`).
_ACCEPTS: dict[str, tuple[str, ...]] = {
    "run": ("broker", "state_dir"),
    "reset": ("service", "broker", "state_dir"),
    "state": ("service", "state_dir"),
    "topics": ("broker", "state_dir"),
    "produce": ("broker", "state_dir"),
    "consume": ("broker", "state_dir"),
    "describe": (),
    "graph": (),
    "validate": (),
}
_FILE_AS_OPTION = {"topics", "produce", "consume"}
_FLAGS = {"service": "--service", "broker": "--broker", "state_dir": "--state-dir"}


@dataclass(frozen=True)
class Invocation:
    """The topology file and the options that locate its broker and state, as the user gave
    them (``None``: not given, the default applies; ``file`` None: no topology, which only the
    commands taking it as `-t FILE` accept). ``business``: the file is a business topology, so
    a hint about one of its services names it with `--service`."""

    file: str | None = "FILE"
    broker: str | None = None
    state_dir: str | None = None
    service: str | None = None
    business: bool = False

    def for_service(self, name: str) -> "Invocation":
        """The invocation as it concerns microservice ``name`` of the file."""
        return replace(self, service=name) if self.business else self

    def command(self, verb: str, *args: str) -> str:
        """`edm VERB FILE ARGS... --option value...`: the command line a hint tells the user
        to run, with every option VERB accepts that is in effect, quoted for a POSIX shell."""
        words = ["edm", verb]
        if verb in _FILE_AS_OPTION:
            words += [*args, *(["-t", self.file] if self.file is not None else [])]
        else:
            assert self.file is not None, f"edm {verb} takes a topology file"
            words += [self.file, *args]
        for option in _ACCEPTS[verb]:
            value = getattr(self, option)
            if value is not None:
                words += [_FLAGS[option], str(value)]
        return " ".join(shlex.quote(w) for w in words)
