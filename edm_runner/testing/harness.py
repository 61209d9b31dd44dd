"""A topology on the in-process driver, driven and read by stream and store name: what each
case of `edm test` runs on (``cases``), and the entry point for tests written in Python
(pytest), so both go through one mechanism.

    with Harness.load(Path("topology.yaml")) as h:
        h.produce("orders", {"customer": "ann", "total": 300}, key="o-1", timestamp=1_000)
        assert h.records("large-orders")[0]["value"] == {"order": "o-1", ...}
        assert h.store("counts") == {"ann": 1}
        assert h.stats.late == 0

Invariants:
- A harness owns fresh state: a ``TestDriver`` (new log, counters, partitioners, mocks) with
  its LMDB stores in a temporary directory removed by ``close`` (unless ``state_dir`` is
  given, which is then left in place).
- Keys and values are what `edm produce` reads and `edm consume` prints (JSON; bytes as
  ``{"base64": ...}``), encoded and decoded with the stream's declared formats and without
  its schema, so a test can write an invalid event; ``bytes`` given in Python (a key, a value,
  a header value) are written as they are.
- ``records`` returns every record written to a stream since the harness began (the test's
  own included), in the order written; ``store`` reads what ``edm state`` reads, after
  committing what was processed.
"""
from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from edm_runner.errors import EdmError
from edm_runner.language import load_file
from edm_runner.language.model import BusinessTopology, StreamSpec, Topology
from edm_runner.records import Headers
from edm_runner.runtime.stats import RunStats
from edm_runner.serde.lines import plain_serdes
from edm_runner.serde.printable import from_json, header_from_json, header_to_json, to_json
from edm_runner.state.offline import key_text, open_readonly
from edm_runner.testing.driver import TestDriver


class NotDeclared(EdmError):
    """A stream, store or partition the topology does not have; ``hint`` names what it has."""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.hint = hint


class Harness:
    """``services`` (one microservice, or those of a business topology) on a fresh driver.
    ``clock_ms``: the wall clock the sinks check record timestamps against (default: now),
    moved only by ``advance``; ``functions`` / ``apis``: mocks, as ``TestDriver`` takes them;
    ``name``: what messages call the topology (default: its file)."""

    def __init__(self, services: Topology | BusinessTopology | Sequence[Topology], *,
                 clock_ms: int | None = None, state_dir: Path | None = None,
                 functions: Mapping[str, Callable[..., Any]] | None = None,
                 apis: Mapping[str, Callable[[dict[str, Any]], Any]] | None = None,
                 name: str | None = None) -> None:
        if isinstance(services, (Topology, BusinessTopology)):
            name = name or str(services.source_file)
        if isinstance(services, BusinessTopology):
            services = services.services
        self.services: list[Topology] = [services] if isinstance(services, Topology) else list(services)
        self.name = name or " and ".join(str(t.source_file) for t in self.services)
        self.streams: dict[str, StreamSpec] = {}
        for topology in self.services:
            for stream, spec in topology.streams.items():
                self.streams.setdefault(stream, spec)
        self._tmp = None if state_dir is not None else tempfile.mkdtemp(prefix="edm-test-")
        clock = clock_ms if clock_ms is not None else time.time_ns() // 1_000_000
        self.driver = TestDriver(self.services, state_dir or Path(self._tmp), clock_ms=clock,
                                 functions=functions, apis=apis)

    @classmethod
    def load(cls, path: Path, **options: Any) -> "Harness":
        """The topology file ``path`` (``ConfigError`` when it is invalid) on a fresh driver."""
        return cls(load_file(path), **options)

    def __enter__(self) -> "Harness":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Closes the stores (and removes the temporary state directory)."""
        self.driver.close()
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    def stream(self, name: str) -> StreamSpec:
        spec = self.streams.get(name)
        if spec is None:
            raise NotDeclared(f"stream '{name}' is not declared by {self.name}",
                              f"declared streams: {', '.join(sorted(self.streams))}")
        return spec

    # -- driving --------------------------------------------------------------------------------

    def produce(self, stream: str, value: Any, key: Any = None, *, timestamp: int | None = None,
                headers: Mapping[str, Any] | None = None, partition: int | None = None) -> None:
        """Writes one record to ``stream`` (partition: the key's, as every producer; timestamp:
        the wall clock) and processes it with everything it causes. ``EventError`` when the
        stream's format cannot encode it; nothing is processed once the driver ``failed``."""
        spec = self.stream(stream)
        key_serde, value_serde = plain_serdes(spec.key, spec.value)
        key_bytes = key if isinstance(key, bytes) else from_json(key, key_serde)
        value_bytes = value if isinstance(value, bytes) else from_json(value, value_serde)
        encoded: Headers = tuple((k, v if isinstance(v, bytes) else header_from_json(v))
                                 for k, v in (headers or {}).items())
        if partition is not None and partition >= spec.partitions:
            raise NotDeclared(f"partition {partition} of stream '{stream}' does not exist: "
                              f"it has {spec.partitions}")
        if self.driver.failed is not None:
            return
        self.driver.produce(spec.topic, key_bytes, value_bytes,
                            self.driver.clock_ms if timestamp is None else timestamp, encoded, partition)

    def advance(self, ms: int) -> None:
        """Moves the wall clock ``ms`` forward."""
        self.driver.advance(ms)

    @property
    def failed(self) -> EdmError | Exception | None:
        """The error processing stopped with (an event failed under ``on_error: fail``), or None."""
        return self.driver.failed

    # -- reading --------------------------------------------------------------------------------

    def records(self, stream: str) -> list[dict[str, Any]]:
        """Every record written to ``stream`` so far, in order: ``{key, value, headers,
        timestamp, partition}`` (and ``error``, the text of a dead letter's ``edm.error``)."""
        spec = self.stream(stream)
        key_serde, value_serde = plain_serdes(spec.key, spec.value)
        out = []
        for written in self.driver.written:
            r = written.record
            if r.topic != spec.topic:
                continue
            headers = {k: header_to_json(v) for k, v in r.headers}
            record = {"key": to_json(r.key, key_serde), "value": to_json(r.value, value_serde),
                      "headers": headers, "timestamp": r.timestamp_ms, "partition": r.partition}
            if "edm.error" in headers:
                record["error"] = headers["edm.error"]
            out.append(record)
        return out

    def store(self, name: str) -> dict[str, Any]:
        """The contents of store or table ``name``, key text (``state.offline.key_text``) ->
        value; a window or session store: key text -> its windows ``[{start, value}]``
        (``{start, end, value}`` for sessions), in stored order. Commits first."""
        owners = [t for t in self.services if name in t.stores or name in t.tables or name in t.global_tables]
        if not owners:
            raise NotDeclared(f"stores: '{name}' is not a store or table of {self.name}")
        self.driver.close()
        try:
            entries: dict[str, Any] = {}
            for topology in owners:
                try:
                    state = open_readonly(self.driver.state_dir, topology.name)
                except EdmError:
                    continue  # nothing ran yet
                with state:
                    for _, entry in state.scan(name) if name in state.store_names() else ():
                        text = key_text(entry.key)
                        if entry.start is None:
                            entries[text] = entry.value
                        else:
                            window = {"start": entry.start, "value": entry.value}
                            if entry.end is not None:
                                window = {"start": entry.start, "end": entry.end, "value": entry.value}
                            entries.setdefault(text, []).append(window)
            return entries
        finally:
            self.driver.reopen()

    @property
    def stats(self) -> RunStats:
        """The services' counters (``late``, ``skipped``, ``dead_lettered`` and their
        ``*_by_pipeline``), as ``edm run`` counts them in its operators."""
        return RunStats({s.name: s.stats for s in self.driver.services})
