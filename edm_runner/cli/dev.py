"""`edm dev kafka start|stop|status`: a dev Apache Kafka broker or cluster."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from edm_runner.cli.common import app, guarded

dev_app = typer.Typer(no_args_is_help=True, help="Development helpers.")
kafka_app = typer.Typer(no_args_is_help=True,
                        help="A single-node Apache Kafka broker (KRaft) for tests and development.")
app.add_typer(dev_app, name="dev")
dev_app.add_typer(kafka_app, name="kafka")

KafkaDirOption = Annotated[Optional[Path], typer.Option(
    "--dir", help="Working directory of the dev broker (default: $XDG_STATE_HOME/edm/kafka, else "
    "~/.local/state/edm/kafka, whatever the current directory).")]


@kafka_app.command("start")
def kafka_start(workdir: KafkaDirOption = None,
                nodes: Annotated[Optional[int], typer.Option(
                    "--nodes", min=1, help="Nodes of the KRaft cluster (each a broker and a controller; "
                    "topics get min(3, N) replicas). Default: the size already in --dir, else 1.")] = None,
                ) -> None:
    """Start (or find running) a KRaft broker or cluster; prints its bootstrap address last."""
    def body() -> int:
        from edm_runner import devkafka
        info = devkafka.start(workdir, nodes=nodes)
        typer.echo(f"kafka running, {_pids(info)}, logs in {info.workdir}", err=True)
        typer.echo(info.bootstrap)
        return 0
    guarded(body)


@kafka_app.command("stop")
def kafka_stop(workdir: KafkaDirOption = None,
               node: Annotated[Optional[int], typer.Option(
                   "--node", help="Stop only this node of a cluster (`start` brings it back).")] = None,
               ) -> None:
    """Stop the dev broker (every node of the cluster)."""
    def body() -> int:
        from edm_runner import devkafka
        what = "kafka" if node is None else f"kafka node {node}"
        typer.echo(f"{what} stopped" if devkafka.stop(workdir, node=node) else f"{what} not running "
                   f"{_where(workdir)}", err=True)
        return 0
    guarded(body)


@kafka_app.command("status")
def kafka_status(workdir: KafkaDirOption = None) -> None:
    """Say whether the dev broker (every node of the cluster) is running (exit 0) or not (exit 1)."""
    def body() -> int:
        from edm_runner import devkafka
        info = devkafka.status(workdir)
        if info is None:
            typer.echo(f"kafka not running {_where(workdir)}", err=True)
            return 1
        typer.echo(f"kafka running, {_pids(info)}", err=True)
        typer.echo(info.bootstrap)
        return 0
    guarded(body)


def _where(workdir: Optional[Path]) -> str:
    from edm_runner import devkafka
    if workdir is not None:
        return f"in {workdir}"
    return f"in {devkafka.default_workdir()} (pass --dir DIR for a broker started with --dir)"


def _pids(info) -> str:
    if len(info.nodes) == 1:
        return f"pid {info.pid}"
    return f"{len(info.nodes)} nodes, pids {', '.join(map(str, info.pids))}"
