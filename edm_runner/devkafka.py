"""An Apache Kafka (KRaft) cluster for development and tests: ``edm dev kafka``.

One node by default; ``nodes=N`` starts N nodes, each a combined broker and controller (the
controller quorum is all N), with replication set for a real cluster: internal topics and
topics without a replication factor get min(3, N) replicas, ``min.insync.replicas`` is
min(2, N). So leader changes and replication are part of what runs on it.

The broker jars are fetched once with Maven into ``~/.cache/edm/kafka-<version>/libs``
(override with ``EDM_KAFKA_CACHE``) and reused. Everything else lives in a workdir, by default
one well-known place whatever the current directory (``default_workdir``: ``$XDG_STATE_HOME/
edm/kafka``, else ``~/.local/state/edm/kafka``), so ``status`` and ``stop`` find the broker
from anywhere:

    state.json         bootstrap address, and pid and ports of every node
    server.properties  a node's config (ports are kept across restarts)
    log4j2.properties  routes every broker log line to server.log
    server.log         the node's log; stdout.log holds what the JVM printed itself
    data/              the node's KRaft log dir (formatted once, kept across stop/start)

A single node keeps its files in the workdir itself; node ``i`` of a cluster in ``node-<i>/``.

``tls=TlsListeners(keystore, password, client_ca)`` adds the listeners production clusters run
to every node: SASL_SSL (TLS with the given broker certificate, then SCRAM-SHA-256/512 logins of
users ``add_scram_user`` creates through the broker's own admin tool) and, with ``client_ca``, SSL
with client certificates (mutual TLS). They are recorded, so a node started again keeps them.
PLAINTEXT stays the inter-broker listener and the one ``status``/``start`` probe.

Invariants:
- At most one cluster per workdir, of a fixed size: ``start`` returns the recorded cluster when
  every node is alive and the cluster lists all of them, and otherwise starts just the nodes
  that are not running (so it also brings back a node stopped alone).
- A PID is trusted only if ``/proc/<pid>/cmdline`` still names ``kafka.Kafka`` and that
  node's config, so a recycled PID is never signalled.
- Every node runs in its own session (process group): stopping the caller does not stop it.
"""
from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
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
CLUSTER_HEAP = "-Xmx384m"  # per node of a multi-node cluster (tests run three on two cores)

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


SCRAM_MECHANISMS = ("SCRAM-SHA-256", "SCRAM-SHA-512")


@dataclass(frozen=True)
class TlsListeners:
    """Secure listeners on every node, beside PLAINTEXT. Both serve the broker's private key and
    certificate chain from ``keystore`` (PKCS12, protected by ``password``; the certificate must
    name 127.0.0.1, the advertised host):
    - SASL_SSL: SCRAM-SHA-256/512 logins of the users that ``add_scram_user`` creates;
    - SSL, only with ``client_ca`` (a PEM file): a client must present a certificate it signed."""

    keystore: Path
    password: str
    client_ca: Path | None = None


@dataclass(frozen=True)
class KafkaNode:
    """One node (broker and controller) of a dev cluster; its files are in ``directory``."""

    node_id: int
    pid: int
    port: int
    controller_port: int
    directory: Path
    sasl_ssl_port: int | None = None
    ssl_port: int | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def log_file(self) -> Path:
        return self.directory / "server.log"


@dataclass(frozen=True)
class KafkaInfo:
    """A running dev cluster. ``bootstrap`` is ``host:port[,host:port...]`` for clients."""

    bootstrap: str
    nodes: tuple[KafkaNode, ...]
    workdir: Path
    version: str = KAFKA_VERSION
    tls: TlsListeners | None = None

    @property
    def pid(self) -> int:
        """The first node's PID (the only one of a single-node broker)."""
        return self.nodes[0].pid

    @property
    def pids(self) -> list[int]:
        return [node.pid for node in self.nodes]

    @property
    def log_file(self) -> Path:
        return self.nodes[0].log_file

    @property
    def sasl_ssl_bootstrap(self) -> str | None:
        """``host:port[,...]`` of the SASL_SSL listeners; None when the nodes have none."""
        return _addresses([node.sasl_ssl_port for node in self.nodes])

    @property
    def ssl_bootstrap(self) -> str | None:
        """``host:port[,...]`` of the SSL (client certificate) listeners; None when the nodes have none."""
        return _addresses([node.ssl_port for node in self.nodes])

    def node(self, node_id: int) -> KafkaNode:
        return next(n for n in self.nodes if n.node_id == node_id)


def default_workdir() -> Path:
    """The dev broker's workdir when none is given: the same from every directory."""
    state_home = os.environ.get("XDG_STATE_HOME", "")
    base = Path(state_home) if os.path.isabs(state_home) else Path.home() / ".local" / "state"
    return base / "edm" / "kafka"


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
    """The cluster recorded in ``workdir`` if every node is alive and it answers requests."""
    info = _read_state(_workdir(workdir))
    if info is None or not all(_is_ours(node) for node in info.nodes) or not _ready(info):
        return None
    return info


def start(workdir: Path | None = None, *, nodes: int | None = None,
          tls: TlsListeners | None = None, timeout_s: float = 120.0) -> KafkaInfo:
    """Start a dev cluster of ``nodes`` nodes in ``workdir`` (default: the size recorded there,
    else 1), or return the one already running there; nodes that are not running are started,
    with the secure listeners of ``tls``, else of the ones recorded there (a running node keeps
    its listeners).

    Blocks until every node answers a metadata request listing all the nodes; raises
    ``DevKafkaError`` with the tail of a node's log when it dies or the cluster is not ready
    within ``timeout_s``. Synchronous: call it from a thread when an event loop is running.
    """
    workdir = _workdir(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    recorded = _read_state(workdir)
    count = _node_count(workdir, recorded, nodes)
    alive = [n for n in recorded.nodes if _is_ours(n)] if recorded is not None else []
    if recorded is not None and len(alive) == count:
        # Alive: either ready, or still starting (a concurrent start): wait for it either way.
        _wait_ready(recorded, {}, timeout_s)
        return recorded
    libs = fetch_jars()
    tls = tls or (recorded.tls if recorded is not None else None)
    ports = _ports(recorded, count, bool(alive))
    taken = {p for pair in ports for p in pair}
    sasl_ssl_ports = _listener_ports(recorded, count, taken, "sasl_ssl_port", tls is not None)
    ssl_ports = _listener_ports(recorded, count, taken, "ssl_port", tls is not None and tls.client_ca is not None)
    voters = ",".join(f"{i}@127.0.0.1:{controller}" for i, (_, controller) in enumerate(ports, 1))
    running = {n.node_id: n for n in alive}
    cluster_id = _recorded_cluster_id(workdir, count)
    procs: dict[int, subprocess.Popen] = {}
    members: list[KafkaNode] = []
    try:
        for index, (port, controller_port) in enumerate(ports):
            node_id = index + 1
            if node_id in running:
                members.append(running[node_id])
                continue
            directory = _node_dir(workdir, count, node_id)
            directory.mkdir(parents=True, exist_ok=True)
            node = KafkaNode(node_id, 0, port, controller_port, directory, sasl_ssl_ports[index], ssl_ports[index])
            _write_configs(node, voters, count, tls)
            if not (directory / "data" / "meta.properties").exists():
                _format_storage(directory, libs, cluster_id)
            proc = _launch(directory, libs, HEAP if count == 1 else CLUSTER_HEAP)
            procs[node_id] = proc
            members.append(dataclasses.replace(node, pid=proc.pid))
        info = KafkaInfo(bootstrap=",".join(n.address for n in members), nodes=tuple(members),
                         workdir=workdir, tls=tls)
        _write_state(info)
        _wait_ready(info, procs, timeout_s)
    except BaseException:
        _terminate([proc.pid for proc in procs.values()], 5.0)
        raise
    return info


def add_scram_user(info: KafkaInfo, user: str, password: str, mechanism: str = "SCRAM-SHA-512") -> None:
    """Create (or replace) ``user``'s SCRAM credentials for ``mechanism`` with the broker's own
    admin tool (``kafka-configs --alter --add-config``, over PLAINTEXT), as on a production
    cluster. Returns when the controller has stored them; a node applies them a moment later."""
    if mechanism not in SCRAM_MECHANISMS:
        raise DevKafkaError(f"unknown SCRAM mechanism {mechanism!r}; use {' or '.join(SCRAM_MECHANISMS)}")
    if not password or any(c in password for c in ",[]="):
        raise DevKafkaError("a dev Kafka SCRAM password must be non-empty and hold none of , [ ] = "
                            "(the admin tool's syntax)")
    libs = fetch_jars()
    proc = subprocess.run(
        ["java", "-Xmx256m", "-cp", f"{libs}/*", "kafka.admin.ConfigCommand",
         "--bootstrap-server", info.bootstrap, "--alter", "--entity-type", "users", "--entity-name", user,
         "--add-config", f"{mechanism}=[password={password}]"],
        stdin=subprocess.DEVNULL, capture_output=True, text=True)
    if proc.returncode != 0:
        raise DevKafkaError(f"creating the SCRAM user {user!r} on the dev Kafka at {info.bootstrap} "
                            f"failed:\n{_tail_text(proc.stdout + proc.stderr, 20)}")


def stop(workdir: Path | None = None, *, node: int | None = None, kill: bool = False,
         timeout_s: float = 30.0) -> bool:
    """Stop every node of ``workdir``'s cluster (or only node ``node``): SIGTERM (SIGKILL at
    once with ``kill``: a crash), then SIGKILL after ``timeout_s``; waits for the exits.

    Returns False when none of them was running. Data and ports are kept for the next start
    (state.json stays; a PID is no longer trusted once its process is gone).
    """
    workdir = _workdir(workdir)
    info = _read_state(workdir)
    if info is None:
        return False
    targets = [n for n in info.nodes if node is None or n.node_id == node]
    if node is not None and not targets:
        raise DevKafkaError(f"the dev Kafka in {workdir} has no node {node}; its nodes are "
                            f"{', '.join(str(n.node_id) for n in info.nodes)}")
    running = [n.pid for n in targets if _is_ours(n)]
    # All at once: a node stopped after the quorum is gone would wait out its shutdown timeout.
    _terminate(running, 0.0 if kill else timeout_s)
    return bool(running)


# --- internals -------------------------------------------------------------------------------

def _workdir(workdir: Path | None) -> Path:
    return (workdir or default_workdir()).resolve()


def _node_dir(workdir: Path, count: int, node_id: int) -> Path:
    return workdir if count == 1 else workdir / f"node-{node_id}"


def _node_count(workdir: Path, recorded: KafkaInfo | None, nodes: int | None) -> int:
    """The cluster's size: ``nodes``, which must match the size recorded in ``workdir``."""
    if nodes is not None and nodes < 1:
        raise DevKafkaError(f"a dev Kafka cluster needs at least one node, not {nodes}")
    if recorded is None:
        return nodes or 1
    if nodes is not None and nodes != len(recorded.nodes):
        raise DevKafkaError(
            f"the dev Kafka in {workdir} has {len(recorded.nodes)} node(s), not {nodes}: stop it "
            f"and delete {workdir} to start a {nodes}-node one there, or use another directory (--dir)")
    return len(recorded.nodes)


def _require_tools() -> None:
    missing = missing_tools()
    if missing:
        raise DevKafkaError(
            f"the dev Kafka broker needs {' and '.join(missing)} on PATH: install a JDK (17+) "
            "and Maven, or point edm at an existing broker (EDM_KAFKA_BOOTSTRAP / bootstrap_servers)")


def _read_state(workdir: Path) -> KafkaInfo | None:
    try:
        raw = json.loads((workdir / "state.json").read_text())
        if "nodes" not in raw:  # written by a single-node version of this module
            raw["nodes"] = [{"node_id": 1, "pid": raw.pop("pid"), "port": raw.pop("port"),
                             "controller_port": raw.pop("controller_port"), "directory": raw["workdir"]}]
        nodes = tuple(KafkaNode(**{**n, "directory": Path(n["directory"])}) for n in raw.pop("nodes"))
        tls = raw.pop("tls", None)
        if tls is not None:
            tls = TlsListeners(Path(tls["keystore"]), tls["password"],
                               Path(tls["client_ca"]) if tls.get("client_ca") else None)
        return KafkaInfo(**{**raw, "workdir": Path(raw["workdir"]), "nodes": nodes, "tls": tls})
    except (FileNotFoundError, ValueError, TypeError, KeyError):
        return None


def _write_state(info: KafkaInfo) -> None:
    raw = asdict(info)
    raw["workdir"] = str(info.workdir)
    for node in raw["nodes"]:
        node["directory"] = str(node["directory"])
    if info.tls is not None:
        raw["tls"] = {"keystore": str(info.tls.keystore), "password": info.tls.password,
                      "client_ca": str(info.tls.client_ca) if info.tls.client_ca else None}
    tmp = info.workdir / "state.json.tmp"
    tmp.write_text(json.dumps(raw, indent=2) + "\n")
    tmp.replace(info.workdir / "state.json")


def _is_ours(node: KafkaNode) -> bool:
    """The recorded PID is a live (non-zombie) kafka.Kafka process of this node's config."""
    try:
        cmdline = Path(f"/proc/{node.pid}/cmdline").read_bytes().split(b"\0")
        stat = Path(f"/proc/{node.pid}/stat").read_text()
    except OSError:
        return False
    if stat.rsplit(")", 1)[-1].split()[0] in ("Z", "X"):
        return False
    return b"kafka.Kafka" in cmdline and str(node.directory / "server.properties").encode() in cmdline


def _free_port(taken: set[int]) -> int:
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port not in taken:
            taken.add(port)
            return port


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


def _ports(recorded: KafkaInfo | None, count: int, any_alive: bool) -> list[tuple[int, int]]:
    """(client port, controller port) per node. The previous ones when free (clients keep
    their address), and always while a node runs (the quorum knows the others by them)."""
    if recorded is not None:
        previous = [(n.port, n.controller_port) for n in recorded.nodes]
        if any_alive or all(_port_free(p) and _port_free(c) for p, c in previous):
            return previous
    taken: set[int] = set()
    return [(_free_port(taken), _free_port(taken)) for _ in range(count)]


def _listener_ports(recorded: KafkaInfo | None, count: int, taken: set[int], field: str,
                    wanted: bool) -> list[int | None]:
    """Each node's port of one secure listener (``field`` of ``KafkaNode``), None when not
    ``wanted``: the recorded ones when every node had one (a running node keeps its port;
    a stopped one's is reused when free), else new ones, none of ``taken``."""
    if not wanted:
        return [None] * count
    if recorded is not None:
        previous = [getattr(n, field) for n in recorded.nodes]
        if all(p is not None and (_is_ours(n) or _port_free(p)) for p, n in zip(previous, recorded.nodes)):
            taken.update(previous)
            return previous
    return [_free_port(taken) for _ in range(count)]


def _addresses(ports: list[int | None]) -> str | None:
    return None if not ports or None in ports else ",".join(f"127.0.0.1:{p}" for p in ports)


def _write_configs(node: KafkaNode, voters: str, count: int, tls: TlsListeners | None) -> None:
    directory = node.directory
    replicas, min_isr = str(min(3, count)), str(min(2, count))
    listeners = [f"{name}://127.0.0.1:{port}" for name, port in (
        ("PLAINTEXT", node.port), ("SASL_SSL", node.sasl_ssl_port), ("SSL", node.ssl_port)) if port is not None]
    settings = {
        "process.roles": "broker,controller",
        "node.id": str(node.node_id),
        "controller.quorum.voters": voters,
        "listeners": ",".join([*listeners, f"CONTROLLER://127.0.0.1:{node.controller_port}"]),
        "advertised.listeners": ",".join(listeners),
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,SASL_SSL:SASL_SSL,SSL:SSL",
        "log.dirs": str(directory / "data"),
        "num.partitions": "1",
        # Topics are created by edm (ensure_topics) with declared partition counts; an
        # auto-created topic would hide a missing declaration.
        "auto.create.topics.enable": "false",
        "default.replication.factor": replicas,
        "min.insync.replicas": min_isr,
        "offsets.topic.replication.factor": replicas,
        "offsets.topic.num.partitions": "4",
        "transaction.state.log.replication.factor": replicas,
        "transaction.state.log.min.isr": min_isr,
        "transaction.state.log.num.partitions": "4",
        "share.coordinator.state.topic.replication.factor": replicas,
        "share.coordinator.state.topic.min.isr": min_isr,
        "group.initial.rebalance.delay.ms": "0",
        # A restarted node must wait out its previous registration's session before it is
        # unfenced: keep that short so restarts take seconds, not ~10 s more.
        "broker.heartbeat.interval.ms": "500",
        "broker.session.timeout.ms": "4000",
        "num.network.threads": "2",
        "num.io.threads": "4" if count == 1 else "2",
    }
    if tls is not None:
        settings.update(_tls_settings(tls))
    (directory / "server.properties").write_text(
        "".join(f"{key}={value}\n" for key, value in settings.items()))
    (directory / "log4j2.properties").write_text(f"""\
status = warn
appender.file.type = File
appender.file.name = FILE
appender.file.fileName = {directory / 'server.log'}
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = FILE
logger.statechange.name = state.change.logger
logger.statechange.level = WARN
logger.request.name = kafka.request.logger
logger.request.level = WARN
""")


def _tls_settings(tls: TlsListeners) -> dict[str, str]:
    scram = "org.apache.kafka.common.security.scram.ScramLoginModule required;"
    settings = {
        "sasl.enabled.mechanisms": ",".join(SCRAM_MECHANISMS),
        **{f"listener.name.sasl_ssl.{m.lower()}.sasl.jaas.config": scram for m in SCRAM_MECHANISMS},
    }
    for listener in ("sasl_ssl", "ssl") if tls.client_ca is not None else ("sasl_ssl",):
        prefix = f"listener.name.{listener}.ssl."
        settings.update({prefix + "keystore.type": "PKCS12", prefix + "keystore.location": str(tls.keystore.resolve()),
                         prefix + "keystore.password": tls.password, prefix + "key.password": tls.password})
    if tls.client_ca is not None:
        settings.update({"listener.name.ssl.ssl.client.auth": "required",
                         "listener.name.ssl.ssl.truststore.type": "PEM",
                         "listener.name.ssl.ssl.truststore.location": str(tls.client_ca.resolve())})
    return settings


def _recorded_cluster_id(workdir: Path, count: int) -> str:
    """The cluster id a node already formatted carries (a node formatted anew must join the
    same cluster), else a new one."""
    for node_id in range(1, count + 1):
        meta = _node_dir(workdir, count, node_id) / "data" / "meta.properties"
        with contextlib.suppress(OSError):
            for line in meta.read_text().splitlines():
                key, _, value = line.partition("=")
                if key.strip() == "cluster.id" and value.strip():
                    return value.strip()
    # Kafka's Uuid string form: URL-safe base64 without padding; it avoids a leading '-'.
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not text.startswith("-"):
            return text


def _format_storage(directory: Path, libs: Path, cluster_id: str) -> None:
    shutil.rmtree(directory / "data", ignore_errors=True)
    proc = subprocess.run(
        ["java", HEAP, "-Dlog4j2.configurationFile=" + str(directory / "log4j2.properties"),
         "-cp", f"{libs}/*", "kafka.tools.StorageTool", "format",
         "-t", cluster_id, "-c", str(directory / "server.properties")],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, cwd=directory)
    if proc.returncode != 0:
        raise DevKafkaError(f"formatting the Kafka storage in {directory / 'data'} failed:\n"
                            f"{_tail_text(proc.stdout + proc.stderr, 20)}")


def _launch(directory: Path, libs: Path, heap: str) -> subprocess.Popen:
    with open(directory / "stdout.log", "ab") as stdout:
        return subprocess.Popen(
            ["java", heap, "-Xms128m", "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20",
             "-Djava.awt.headless=true",
             f"-Dlog4j2.configurationFile={directory / 'log4j2.properties'}",
             f"-Dkafka.logs.dir={directory}",
             "-cp", f"{libs}/*", "kafka.Kafka", str(directory / "server.properties")],
            stdin=subprocess.DEVNULL, stdout=stdout, stderr=subprocess.STDOUT,
            start_new_session=True, cwd=directory)


def _wait_ready(info: KafkaInfo, procs: dict[int, subprocess.Popen], timeout_s: float) -> None:
    """Until ``_ready``; ``procs``: the nodes this call started (others are watched by PID)."""
    deadline = time.monotonic() + timeout_s
    while True:
        for node in info.nodes:
            proc = procs.get(node.node_id)
            exited = proc.poll() if proc is not None else (None if _is_ours(node) else -1)
            if exited is not None:
                raise DevKafkaError(
                    f"the Kafka {_which(info, node)} (pid {node.pid}) exited during startup "
                    f"(status {exited}); last lines of its logs:\n{_log_tail(node.directory)}")
        if _ready(info):
            return
        if time.monotonic() > deadline:
            tails = "\n".join(_log_tail(node.directory, 30 // len(info.nodes)) for node in info.nodes)
            raise DevKafkaError(
                f"the Kafka {'cluster' if len(info.nodes) > 1 else 'broker'} (pid(s) "
                f"{', '.join(map(str, info.pids))}) was not ready at {info.bootstrap} within "
                f"{timeout_s:.0f} s; last lines of its logs:\n{tails}")
        # Connection refused returns at once: pace the probes instead of spinning.
        time.sleep(0.2)


def _which(info: KafkaInfo, node: KafkaNode) -> str:
    return "broker" if len(info.nodes) == 1 else f"node {node.node_id}"


def _ready(info: KafkaInfo) -> bool:
    """Every node answers a metadata request listing every node as a live (unfenced) broker."""
    return all(_brokers_seen(node.address) >= len(info.nodes) for node in info.nodes)


def _brokers_seen(address: str) -> int:
    """How many live brokers the node at ``address`` lists; 0 when it does not answer."""
    from aiokafka.client import AIOKafkaClient
    from aiokafka.errors import KafkaError

    host, _, port = address.rpartition(":")
    try:
        # A plain connect first: cheap, and keeps aiokafka from logging every refused attempt.
        socket.create_connection((host, int(port)), timeout=2.0).close()
    except OSError:
        return 0

    async def probe() -> int:
        client = AIOKafkaClient(bootstrap_servers=address, request_timeout_ms=5000,
                                client_id="edm-dev-probe")
        try:
            await client.bootstrap()
            return len(client.cluster.brokers())
        except KafkaError:
            return 0
        finally:
            await client.close()

    return asyncio.run(probe())


def _terminate(pids: list[int], timeout_s: float) -> None:
    """SIGTERM the process groups of ``pids`` (none when ``timeout_s`` is 0), SIGKILL them after
    ``timeout_s``, wait for the exits."""
    for sig, wait_s in ((signal.SIGTERM, timeout_s), (signal.SIGKILL, 10.0)):
        if wait_s <= 0:
            continue
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, sig)
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if all(_exited(pid) for pid in pids):
                return
            time.sleep(0.1)
    left = [pid for pid in pids if not _exited(pid)]
    if left:
        raise DevKafkaError(f"the Kafka broker(s) (pid {', '.join(map(str, left))}) did not exit "
                            "after SIGKILL")


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
