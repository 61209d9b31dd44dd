"""What the command modules share: the typer app, common options, the error guard, logging
setup, and loading a topology and opening its broker."""
from __future__ import annotations

import logging
import os
import signal
import sys
import time
from contextlib import asynccontextmanager
from enum import Enum
from pathlib import Path
from typing import Annotated, AsyncIterator, Callable, Optional

import typer

from edm_runner.errors import BrokerError, ConfigError, EdmError, InternalError, ServicesFailed
from edm_runner.invocation import Invocation

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="edm: declarative topologies for event-driven microservices.")

log = logging.getLogger("edm")

def _check_broker(ctx: typer.Context, param: typer.CallbackParam, url: Optional[str]) -> Optional[str]:
    """A usage error for a malformed ``--broker`` that says where the value came from."""
    from edm_runner.brokers import parse_url
    if url:
        try:
            parse_url(url)
        except EdmError as error:
            source = ctx.get_parameter_source(param.name)
            came = " (from the environment variable EDM_BROKER: fix it, unset it or pass --broker)" \
                if source is not None and source.name == "ENVIRONMENT" else ""
            raise typer.BadParameter(f"{error}{came}") from None
    return url


BrokerOption = Annotated[Optional[str], typer.Option(
    "--broker", envvar="EDM_BROKER", callback=_check_broker,
    help="Override the file's broker: local, local:PATH or kafka://HOST:PORT[,HOST:PORT].")]
StateDirOption = Annotated[Optional[Path], typer.Option(
    "--state-dir", help="Local state and embedded broker directory (default: .edm/ beside the topology).")]
TopologyOption = Annotated[Optional[Path], typer.Option(
    "--topology", "-t", help="Topology file that declares the stream (its topic, formats and broker).")]
NoCodeOption = Annotated[bool, typer.Option("--no-code", help="Refuse Python function references.")]
FileArgument = Annotated[Path, typer.Argument(help="The topology file.", show_default=False)]


class OutputFormat(str, Enum):
    text = "text"
    json = "json"


OutputFormatOption = Annotated[OutputFormat, typer.Option(
    "--format", help="text, or json for CI annotations and scripts.")]


class GraphFormat(str, Enum):
    mermaid = "mermaid"
    dot = "dot"


def fail(message: str, code: int = 1) -> typer.Exit:
    typer.echo(f"edm: {message}", err=True)
    return typer.Exit(code)


def _internal(error: Exception) -> str:
    """How an edm bug reads: one line, the traceback on demand."""
    what = str(error) if isinstance(error, InternalError) else f"{type(error).__name__}: {error}"
    return f"internal error: {what} (set EDM_DEBUG=1 for a traceback, and please report it)"


def guarded(action: Callable[[], int | None]) -> None:
    """Runs a command body, mapping user errors to messages and exit codes."""
    try:
        code = action()
    except ServicesFailed as group:  # every error of a run, each as it reads alone
        bugs = [e for e in group.exceptions if not isinstance(e, EdmError)]
        if bugs and os.environ.get("EDM_DEBUG"):
            raise
        for service, error in group.failures:
            text = str(error) if isinstance(error, EdmError) else _internal(error)
            typer.echo(f"edm: service {service!r} failed: {text}", err=True)
        raise typer.Exit(max(getattr(e, "exit_code", 1) for e in group.exceptions)) from group
    except ConfigError as error:
        for diagnostic in error.diagnostics:
            typer.echo(diagnostic.format(), err=True)
        raise typer.Exit(1) from error
    except EdmError as error:
        raise fail(str(error), error.exit_code) from error
    except (typer.Exit, KeyboardInterrupt):
        raise
    except BrokenPipeError:  # stdout's reader is gone (`| head`): stop quietly
        _discard_stdout()
        raise typer.Exit(128 + signal.SIGPIPE) from None
    except Exception as error:  # an edm bug: one line, the traceback on demand
        if os.environ.get("EDM_DEBUG"):
            raise
        raise fail(_internal(error), 1) from error
    raise typer.Exit(code or 0)


def _discard_stdout() -> None:
    """Point stdout at /dev/null, so the flush at exit does not fail again on the broken pipe."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


class _RepeatFilter(logging.Filter):
    """Lets one message template through at most once per ``interval_s``, then says how many
    were held back: a broker outage makes aiokafka log the same line many times a second."""

    def __init__(self, interval_s: float = 10.0) -> None:
        super().__init__()
        self.interval_s = interval_s
        self._seen: dict[str, tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith("aiokafka"):
            return True
        now = time.monotonic()
        last, held = self._seen.get(str(record.msg), (float("-inf"), 0))
        if now - last < self.interval_s:
            self._seen[str(record.msg)] = (last, held + 1)
            return False
        self._seen[str(record.msg)] = (now, 0)
        if held:
            record.msg = f"{record.msg} ({held} similar messages held back)"
        return True


# Retriable conditions aiokafka logs at ERROR while it retries them, expected on a fresh cluster
# or topic and gone a moment later: a group coordinator being elected or loaded (a cluster's first
# group creates __consumer_offsets), a partition leader not acting as one yet or moving.
_TRANSIENT = ("GroupCoordinatorNotAvailableError", "NotCoordinatorForGroupError", "GroupLoadInProgressError",
              "LeaderNotAvailableError", "NotLeaderForPartitionError")


class _TransientFilter(logging.Filter):
    """Shows aiokafka's records about a transient condition (``_TRANSIENT``, in the record's
    arguments) at INFO, not ERROR; every other aiokafka error stays as it is."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith("aiokafka") or record.levelno <= logging.INFO:
            return True
        args = record.args if isinstance(record.args, tuple) else (record.args,)
        if not any(type(arg).__name__ in _TRANSIENT for arg in args):
            return True
        record.levelno, record.levelname = logging.INFO, "INFO"
        return logging.getLogger("aiokafka").isEnabledFor(logging.INFO)


def setup_logging(level: str) -> None:
    """Logs at ``level`` to stderr. aiokafka's own INFO lines (joins, syncs, coordinator lookups)
    show only at DEBUG: edm logs what a user needs of them (the assignment of each service)."""
    logging.basicConfig(level=level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)-5s %(name)s: %(message)s", datefmt="%H:%M:%S")
    if level.lower() != "debug":
        logging.getLogger("aiokafka").setLevel(max(logging.WARNING, logging.getLogger().level))
    for handler in logging.getLogger().handlers:
        handler.addFilter(_TransientFilter())
        if level.lower() != "debug":
            handler.addFilter(_RepeatFilter())


def load(path: Path, no_code: bool = False):
    from edm_runner.language import load_file
    return load_file(path, no_code=no_code)


def local_state_dir(topology_file: Path | None, state_dir: Path | None) -> Path:
    if state_dir is not None:
        return state_dir
    base = topology_file.resolve().parent if topology_file is not None else Path.cwd()
    return base / ".edm"


def invocation_of(topology, file: Path | None, *, broker: str | None = None, state_dir: Path | None = None,
                service: str | None = None) -> Invocation:
    """How the user ran this command: what hints that name a command repeat (``file`` None:
    a command given no topology, `-t`)."""
    from edm_runner.language.model import BusinessTopology
    return Invocation(None if file is None else str(file), broker, None if state_dir is None else str(state_dir),
                      service, business=isinstance(topology, BusinessTopology))


def open_broker(topology, topology_file: Path | None, broker_url: str | None, state_dir: Path | None):
    from edm_runner.brokers import open_broker as open_url
    from edm_runner.language.model import BrokerSpec
    spec = topology.broker if topology is not None else BrokerSpec()
    return open_url(spec, local_state_dir(topology_file, state_dir), broker_url)


@asynccontextmanager
async def connected(broker, invocation: Invocation) -> AsyncIterator[None]:
    """``broker`` started for the block and closed after it. A full embedded broker is
    completed with the commands that free room, as ``invocation`` ran edm."""
    from edm_runner.brokers.base import BrokerFullError

    def with_way_out(error: Exception) -> Exception:
        if not isinstance(error, BrokerFullError):
            return error
        return BrokerError(f"{error}; delete topics you no longer need (`{invocation.command('topics')}` "
                           f"lists them, `{invocation.command('topics', '--delete', 'TOPIC')}` deletes one) "
                           "or run on Kafka")

    await broker.start()
    try:
        yield
    except BrokerFullError as error:
        raise with_way_out(error) from error
    except ServicesFailed as group:
        if any(isinstance(e, BrokerFullError) for e in group.exceptions):
            raise ServicesFailed([(s, with_way_out(e)) for s, e in group.failures]) from group
        raise
    finally:
        await broker.close()



def services_of(topology, service: str | None = None) -> list:
    """The microservices of ``topology`` (one, or every one of a business topology), or the
    one named ``service``."""
    from edm_runner.language.model import BusinessTopology
    services = topology.services if isinstance(topology, BusinessTopology) else [topology]
    if service is None:
        return services
    for candidate in services:
        if candidate.name == service:
            return [candidate]
    raise EdmError(f"{topology.source_file} has no microservice {service!r}; its microservices: "
                   f"{', '.join(s.name for s in services)}")
