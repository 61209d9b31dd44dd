"""A single-node Apache Kafka (KRaft) broker for development and tests: ``edm dev kafka``.

The broker jars are fetched once with Maven into ``~/.cache/edm/kafka-<version>/libs``
(override with ``EDM_KAFKA_CACHE``) and reused. Everything else lives in a workdir
(default ``.edm/kafka`` under the current directory):

    state.json         pid, ports and bootstrap address of the running broker
    server.properties  the broker config (written once; ports are kept across restarts)
    log4j2.properties  routes every broker log line to server.log
    server.log         the broker's log; stdout.log holds what the JVM printed itself
    data/              the KRaft log dir (formatted once, kept across stop/start)

Invariants:
- At most one broker per workdir: ``start`` returns the recorded broker when its process is
  alive and answers metadata requests, and only starts a new one otherwise.
- A PID is trusted only if ``/proc/<pid>/cmdline`` still names ``kafka.Kafka`` and this
  workdir's config, so a recycled PID is never signalled.
- The broker runs in its own session (process group): stopping the caller does not stop it.
"""
from __future__ import annotations

import asyncio
import base64
import contextlib
import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

from edm_runner.errors import EdmError

KAFKA_VERSION = "4.0.0"
LOG4J_VERSION = "2.24.3"
HEAP = "-Xmx512m"

# Kept in sync with kafka/pom.xml; carried here so an installed package needs no checkout.
POM = f"""<?xml version="1.0" encoding="UTF-8"?>
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>edm</groupId>
  <artifactId>edm-dev-kafka</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.kafka</groupId>
      <artifactId>kafka_2.13</artifactId>
      <version>{KAFKA_VERSION}</version>
    </dependency>
    <dependency>
      <groupId>org.apache.logging.log4j</groupId>
      <artifactId>log4j-slf4j-impl</artifactId>
      <version>{LOG4J_VERSION}</version>
    </dependency>
    <dependency>
      <groupId>org.apache.logging.log4j</groupId>
      <artifactId>log4j-core</artifactId>
      <version>{LOG4J_VERSION}</version>
    </dependency>
  </dependencies>
</project>
"""


class DevKafkaError(EdmError):
    """The dev broker cannot be fetched, started or stopped."""


@dataclass(frozen=True)
class KafkaInfo:
    """A running dev broker. ``bootstrap`` is ``host:port`` for clients."""

    bootstrap: str
    pid: int
    port: int
    controller_port: int
    workdir: Path
    version: str = KAFKA_VERSION

    @property
    def log_file(self) -> Path:
        return self.workdir / "server.log"


def default_workdir() -> Path:
    return Path.cwd() / ".edm" / "kafka"


def cache_dir() -> Path:
    override = os.environ.get("EDM_KAFKA_CACHE")
    if override:
        return Path(override)
    return Path.home() / ".cache" / "edm" / f"kafka-{KAFKA_VERSION}"


def missing_tools() -> list[str]:
    """The external programs the dev broker needs that are not on PATH (java, mvn)."""
    return [tool for tool in ("java", "mvn") if shutil.which(tool) is None]


def fetch_jars(cache: Path | None = None) -> Path:
    """The directory holding the broker jars, fetching them with Maven on first use.

    A ``.complete`` marker is written only after a successful fetch, and a file lock
    serializes concurrent fetches (parallel test sessions), so a half-copied cache is never used.
    """
    cache = cache or cache_dir()
    libs = cache / "libs"
    marker = cache / ".complete"
    if marker.exists():
        return libs
    _require_tools()
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if marker.exists():
            return libs
        (cache / "pom.xml").write_text(POM)
        shutil.rmtree(libs, ignore_errors=True)
        proc = subprocess.run(
            ["mvn", "-q", "-B", "-f", str(cache / "pom.xml"), "dependency:copy-dependencies",
             f"-DoutputDirectory={libs}"],
            stdin=subprocess.DEVNULL, capture_output=True, text=True)
        if proc.returncode != 0:
            detail = _tail_text(proc.stdout + proc.stderr, 20)
            raise DevKafkaError(
                f"could not fetch the Kafka {KAFKA_VERSION} jars with Maven into {libs}:\n{detail}\n"
                "check network access to Maven Central, or set EDM_KAFKA_CACHE to a directory "
                "that already holds them")
        marker.write_text(KAFKA_VERSION + "\n")
    return libs


def status(workdir: Path | None = None) -> KafkaInfo | None:
    """The broker recorded in ``workdir`` if its process is alive and it answers requests."""
    info = _read_state(_workdir(workdir))
    if info is None or not _is_ours(info) or not _accepts_requests(info.bootstrap):
        return None
    return info


def start(workdir: Path | None = None, *, timeout_s: float = 120.0) -> KafkaInfo:
    """Start a dev broker in ``workdir`` (or return the one already running there).

    Blocks until the broker answers a metadata request; raises ``DevKafkaError`` with the
    tail of the broker log when it dies or does not answer within ``timeout_s``.
    Synchronous: call it from a thread when an event loop is running.
    """
    workdir = _workdir(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    recorded = _read_state(workdir)
    if recorded is not None and _is_ours(recorded):
        # Alive: either ready, or still starting (a concurrent start): wait for it either way.
        _wait_ready(recorded, None, timeout_s)
        return recorded
    libs = fetch_jars()
    port, controller_port = _ports(workdir, recorded)
    _write_configs(workdir, port, controller_port)
    if not (workdir / "data" / "meta.properties").exists():
        _format_storage(workdir, libs)
    stdout = open(workdir / "stdout.log", "ab")
    try:
        proc = subprocess.Popen(
            ["java", HEAP, "-Xms128m", "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20",
             "-Djava.awt.headless=true",
             f"-Dlog4j2.configurationFile={workdir / 'log4j2.properties'}",
             f"-Dkafka.logs.dir={workdir}",
             "-cp", f"{libs}/*", "kafka.Kafka", str(workdir / "server.properties")],
            stdin=subprocess.DEVNULL, stdout=stdout, stderr=subprocess.STDOUT,
            start_new_session=True, cwd=workdir)
    finally:
        stdout.close()
    info = KafkaInfo(bootstrap=f"127.0.0.1:{port}", pid=proc.pid, port=port,
                     controller_port=controller_port, workdir=workdir)
    _write_state(info)
    try:
        _wait_ready(info, proc, timeout_s)
    except DevKafkaError:
        _terminate(proc.pid, 5.0)
        raise
    return info


def stop(workdir: Path | None = None, *, timeout_s: float = 30.0) -> bool:
    """Stop the broker of ``workdir``: SIGTERM, then SIGKILL after ``timeout_s``.

    Returns False when no broker of this workdir was running. Data and ports are kept for
    the next start (state.json stays; its PID is no longer trusted once the process is gone).
    """
    workdir = _workdir(workdir)
    info = _read_state(workdir)
    if info is None:
        return False
    running = _is_ours(info)
    if running:
        _terminate(info.pid, timeout_s)
    return running


# --- internals -------------------------------------------------------------------------------

def _workdir(workdir: Path | None) -> Path:
    return (workdir or default_workdir()).resolve()


def _require_tools() -> None:
    missing = missing_tools()
    if missing:
        raise DevKafkaError(
            f"the dev Kafka broker needs {' and '.join(missing)} on PATH: install a JDK (17+) "
            "and Maven, or point edm at an existing broker (EDM_KAFKA_BOOTSTRAP / bootstrap_servers)")


def _read_state(workdir: Path) -> KafkaInfo | None:
    try:
        raw = json.loads((workdir / "state.json").read_text())
        raw["workdir"] = Path(raw["workdir"])
        return KafkaInfo(**raw)
    except (FileNotFoundError, ValueError, TypeError, KeyError):
        return None


def _write_state(info: KafkaInfo) -> None:
    raw = asdict(info)
    raw["workdir"] = str(info.workdir)
    tmp = info.workdir / "state.json.tmp"
    tmp.write_text(json.dumps(raw, indent=2) + "\n")
    tmp.replace(info.workdir / "state.json")


def _is_ours(info: KafkaInfo) -> bool:
    """The recorded PID is a live (non-zombie) kafka.Kafka process of this workdir."""
    try:
        cmdline = Path(f"/proc/{info.pid}/cmdline").read_bytes().split(b"\0")
        stat = Path(f"/proc/{info.pid}/stat").read_text()
    except OSError:
        return False
    if stat.rsplit(")", 1)[-1].split()[0] in ("Z", "X"):
        return False
    return b"kafka.Kafka" in cmdline and str(info.workdir / "server.properties").encode() in cmdline


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _port_free(port: int) -> bool:
    """Nobody listens on ``port``. SO_REUSEADDR (as the broker's own listener uses) lets
    connections of the previous run lingering in TIME_WAIT not count as a listener."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _ports(workdir: Path, recorded: KafkaInfo | None) -> tuple[int, int]:
    """Reuse the previous ports when free (clients keep their address), else pick new ones."""
    if recorded is not None and _port_free(recorded.port) and _port_free(recorded.controller_port):
        return recorded.port, recorded.controller_port
    port = _free_port()
    controller_port = _free_port()
    while controller_port == port:
        controller_port = _free_port()
    return port, controller_port


def _write_configs(workdir: Path, port: int, controller_port: int) -> None:
    settings = {
        "process.roles": "broker,controller",
        "node.id": "1",
        "controller.quorum.voters": f"1@127.0.0.1:{controller_port}",
        "listeners": f"PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}",
        "advertised.listeners": f"PLAINTEXT://127.0.0.1:{port}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
        "log.dirs": str(workdir / "data"),
        "num.partitions": "1",
        # Topics are created by edm (ensure_topics) with declared partition counts; an
        # auto-created topic would hide a missing declaration.
        "auto.create.topics.enable": "false",
        "offsets.topic.replication.factor": "1",
        "offsets.topic.num.partitions": "4",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "transaction.state.log.num.partitions": "4",
        "share.coordinator.state.topic.replication.factor": "1",
        "share.coordinator.state.topic.min.isr": "1",
        "group.initial.rebalance.delay.ms": "0",
        # A restarted node must wait out its previous registration's session before it is
        # unfenced: keep that short so restarts take seconds, not ~10 s more.
        "broker.heartbeat.interval.ms": "500",
        "broker.session.timeout.ms": "4000",
        "num.network.threads": "2",
        "num.io.threads": "4",
    }
    (workdir / "server.properties").write_text(
        "".join(f"{key}={value}\n" for key, value in settings.items()))
    (workdir / "log4j2.properties").write_text(f"""\
status = warn
appender.file.type = File
appender.file.name = FILE
appender.file.fileName = {workdir / 'server.log'}
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = FILE
logger.statechange.name = state.change.logger
logger.statechange.level = WARN
logger.request.name = kafka.request.logger
logger.request.level = WARN
""")


def _cluster_id() -> str:
    # Kafka's Uuid string form: URL-safe base64 without padding; it avoids a leading '-'.
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not text.startswith("-"):
            return text


def _format_storage(workdir: Path, libs: Path) -> None:
    shutil.rmtree(workdir / "data", ignore_errors=True)
    proc = subprocess.run(
        ["java", HEAP, "-Dlog4j2.configurationFile=" + str(workdir / "log4j2.properties"),
         "-cp", f"{libs}/*", "kafka.tools.StorageTool", "format",
         "-t", _cluster_id(), "-c", str(workdir / "server.properties")],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, cwd=workdir)
    if proc.returncode != 0:
        raise DevKafkaError(f"formatting the Kafka storage in {workdir / 'data'} failed:\n"
                            f"{_tail_text(proc.stdout + proc.stderr, 20)}")


def _wait_ready(info: KafkaInfo, proc: subprocess.Popen | None, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        exited = proc.poll() if proc is not None else (None if _is_ours(info) else -1)
        if exited is not None:
            raise DevKafkaError(
                f"the Kafka broker (pid {info.pid}) exited during startup (status {exited}); "
                f"last lines of its logs:\n{_log_tail(info.workdir)}")
        if _accepts_requests(info.bootstrap):
            return
        if time.monotonic() > deadline:
            raise DevKafkaError(
                f"the Kafka broker (pid {info.pid}) did not answer at {info.bootstrap} within "
                f"{timeout_s:.0f} s; last lines of {info.log_file}:\n{_log_tail(info.workdir)}")
        # Connection refused returns at once: pace the probes instead of spinning.
        time.sleep(0.2)


def _accepts_requests(bootstrap: str) -> bool:
    """True when the broker answers a metadata request and lists itself (it is unfenced)."""
    from aiokafka.client import AIOKafkaClient
    from aiokafka.errors import KafkaError

    host, _, port = bootstrap.rpartition(":")
    try:
        # A plain connect first: cheap, and keeps aiokafka from logging every refused attempt.
        socket.create_connection((host, int(port)), timeout=2.0).close()
    except OSError:
        return False

    async def probe() -> bool:
        client = AIOKafkaClient(bootstrap_servers=bootstrap, request_timeout_ms=5000,
                                client_id="edm-dev-probe")
        try:
            await client.bootstrap()
            return bool(client.cluster.brokers())
        except KafkaError:
            return False
        finally:
            await client.close()

    return asyncio.run(probe())


def _terminate(pid: int, timeout_s: float) -> None:
    """SIGTERM the broker's process group, SIGKILL it after ``timeout_s``, wait for the exit."""
    for sig, wait_s in ((signal.SIGTERM, timeout_s), (signal.SIGKILL, 10.0)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, sig)
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if _exited(pid):
                return
            time.sleep(0.1)
    if not _exited(pid):
        raise DevKafkaError(f"the Kafka broker (pid {pid}) did not exit after SIGKILL")


def _exited(pid: int) -> bool:
    with contextlib.suppress(ChildProcessError):
        # Our own child (tests): reap it so it does not linger as a zombie.
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[-1].split()[0] in ("Z", "X")


def _tail_text(text: str, lines: int) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def _log_tail(workdir: Path, lines: int = 30) -> str:
    parts = []
    for name in ("stdout.log", "server.log"):
        path = workdir / name
        if path.exists():
            tail = _tail_text(path.read_text(errors="replace"), lines)
            if tail:
                parts.append(f"--- {path}\n{tail}")
    return "\n".join(parts) or "(no log output)"
