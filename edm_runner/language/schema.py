"""The topology JSON Schema (draft 2020-12), assembled from the operator registry.

``topology_schema()`` is the published schema (editors, ``schemas/topology.schema.json``);
pipeline steps there are a ``oneOf`` over the registered operators. The validator uses
``validation_schema()``, identical except that step items are only "a mapping": steps are
checked one by one (``spec.validate``) so a wrong step gets one precise message instead of
one error per operator.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from edm_runner.operators.registry import operators
from edm_runner.language.durations import DURATION_SCHEMA, POSITIVE_DURATION_SCHEMA
from edm_runner.language.http import PATTERN_WORDS as HTTP_PATTERN_WORDS, http_schema
from edm_runner.language.compat import DEFAULT_MODE, MODE_MEANINGS, MODES
from edm_runner.language.limits import LIMITS_SCHEMA
from edm_runner.language.model import MAX_ATTEMPTS, MAX_IN_FLIGHT

SCHEMA_ID = "https://edm.dev/schemas/topology.schema.json"
NAME_PATTERN = "^[a-z0-9][a-z0-9._-]*$"
TOPIC_PATTERN = "^[A-Za-z0-9._-]{1,249}$"
IDENTIFIER_PATTERN = "^[A-Za-z_][A-Za-z0-9_]*$"
_DOTTED = r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*"
PYTHON_REF_PATTERN = f"^{_DOTTED}:{_DOTTED}$"
INSTANCE_PATTERN = "^([A-Za-z0-9][A-Za-z0-9._-]{0,248})?$"
TASK_PATTERN = "^[0-9]+_[0-9]+$"

# What each pattern means, for messages.
PATTERN_WORDS = {
    NAME_PATTERN: "lowercase letters, digits, '.', '_' and '-', starting with a letter or digit",
    TOPIC_PATTERN: "letters, digits, '.', '_' and '-' (at most 249 characters)",
    IDENTIFIER_PATTERN: "a Python identifier (letters, digits and '_', not starting with a digit)",
    PYTHON_REF_PATTERN: "'module:function', e.g. 'scoring:risk'",
    INSTANCE_PATTERN: "letters, digits, '.', '_' and '-', starting with a letter or digit (empty: none)",
    TASK_PATTERN: "a task id '<sub-topology>_<partition>' as `edm describe` prints it, e.g. '0_3'",
    **HTTP_PATTERN_WORDS,
}

FORMATS = ["json", "string", "bytes"]


def _obj(properties: dict, description: str, required: list[str] | None = None) -> dict:
    schema: dict[str, Any] = {"type": "object", "description": description,
                              "properties": properties, "additionalProperties": False}
    if required:
        schema["required"] = required
    return schema


def _str(description: str, **extra: Any) -> dict:
    return {"type": "string", "description": description, **extra}


def _int(description: str, minimum: int = 1) -> dict:
    return {"type": "integer", "minimum": minimum, "description": description}


def _defs(step_items: dict) -> dict:
    stream_ref = {"type": "string", "minLength": 1, "description": "The name of a declared stream."}
    expression = {"type": "string", "minLength": 1,
                  "description": "A per-event expression (Jinja2 expression syntax) over key, value, event."}
    serde = {
        "description": "Encoding: a format name, or {format, schema} with a JSON Schema file "
                       "(relative to the topology file) that values must satisfy.",
        "oneOf": [
            {"enum": FORMATS},
            _obj({"format": {"enum": FORMATS, "description": "Encoding (default json)."},
                  "schema": _str("Path of a JSON Schema file, relative to the topology file.",
                                 minLength=1)},
                 "A format with an event schema."),
        ],
    }
    on_error = {
        "description": "What happens to an event that fails: fail (stop, the default), skip, "
                       "or {dead_letter: stream}.",
        "oneOf": [
            {"enum": ["fail", "skip"]},
            _obj({"dead_letter": {"$ref": "#/$defs/stream_ref"}},
                 "Write failing events to a declared stream.", ["dead_letter"]),
        ],
    }
    sink = {
        "description": "Where events go: a declared stream, or {select, streams} choosing one "
                       "of streams per event.",
        "oneOf": [
            {"$ref": "#/$defs/stream_ref"},
            _obj({"select": {"$ref": "#/$defs/expression"},
                  "streams": {"type": "array", "minItems": 1,
                              "items": {"$ref": "#/$defs/stream_ref"},
                              "description": "The streams select may name."}},
                 "A per-event choice of stream.", ["select", "streams"]),
        ],
    }
    steps = {"type": "array", "items": step_items,
             "description": "Steps applied in order; each is {operator: config}."}
    stream = _obj({
        "topic": _str("Topic name (default: the stream's name).", pattern=TOPIC_PATTERN),
        "partitions": _int("Partition count (default 1)."),
        "type": {"enum": ["unkeyed", "keyed", "entity"],
                 "description": "unkeyed, keyed (default) or entity (compacted: latest value per key)."},
        "key": {"$ref": "#/$defs/serde"},
        "value": {"$ref": "#/$defs/serde"},
        "on_error": {"$ref": "#/$defs/on_error"},
        "replication_factor": _int("Replication factor when edm creates the topic."),
        "retention_ms": _int("Retention of the topic in milliseconds (-1: infinite).", minimum=-1),
        "config": {"type": "object", "additionalProperties": {"type": "string"},
                   "description": "Extra topic configuration (string values)."},
        "compatibility": {"enum": list(MODES),
                          "description": f"How the key and value schemas may evolve (`edm schema check`), as in "
                                         f"Confluent Schema Registry (default {DEFAULT_MODE}): "
                                         + "; ".join(f"{m}: {w}" for m, w in MODE_MEANINGS.items()) + "."},
    }, "A stream: a topic with its encoding.")
    branch = _obj({
        "when": {"$ref": "#/$defs/expression"},
        "otherwise": {"const": True, "description": "The branch taken when no `when` holds (last)."},
        "steps": {"$ref": "#/$defs/steps"},
        "to": {"$ref": "#/$defs/sink"},
    }, "One branch: events for which `when` holds (first match wins) go through steps to `to`.",
        ["to"])
    store = _obj({
        "type": {"enum": ["key_value", "window", "session"],
                 "description": "key_value (default), window (windowed aggregations) or session "
                                "(session windows)."},
        "changelog": {"type": "boolean",
                      "description": "Keep the store in the compacted topic "
                                     "`<service>-<store>-changelog` (default true)."},
        "retention": {"$ref": "#/$defs/duration",
                      "description": "Window and session stores: how long old windows are kept "
                                     "(default: window size + grace, at least one day)."},
        "standby_replicas": _int("Hot replicas on other instances, tailing the changelog "
                                 "(default: processing.standby_replicas, else 0).", minimum=0),
    }, "A state store, named by the step that uses it (`store: NAME`).")
    table = _obj({
        "from": {"$ref": "#/$defs/stream_ref",
                 "description": "The entity stream the table materializes."},
        "description": _str("What the table holds."),
    }, "A table: the latest value per key of an entity stream; a null value deletes the key.",
        ["from"])
    pipeline = _obj({
        "description": _str("What the pipeline does."),
        "from": {"description": "The stream(s) the pipeline reads, or one table (the pipeline "
                                "then sees the table's changes).",
                 "oneOf": [{"$ref": "#/$defs/stream_ref"},
                           {"type": "array", "minItems": 1, "items": {"$ref": "#/$defs/stream_ref"}}]},
        "steps": {"$ref": "#/$defs/steps"},
        "to": {"$ref": "#/$defs/sink"},
        "branch": {"type": "array", "minItems": 1, "items": {"$ref": "#/$defs/branch"},
                   "description": "Routes each event to the first branch whose `when` holds."},
        "on_error": {"$ref": "#/$defs/on_error"},
        "processing": _obj({
            "ordering": {"enum": ["partition", "key", "none"],
                         "description": "partition (default): one event of a task at a time, in offset order; "
                                        "key: one event in flight per record key, many keys at once (the "
                                        "outputs of a key keep its order); none: any order. The committed "
                                        "offset never passes an unfinished event."},
            "max_in_flight": {**_int("Events of one task in flight at once (default 100).", minimum=1),
                              "maximum": MAX_IN_FLIGHT},
            "attempts": {**_int("Deliveries of an event before its failure follows on_error (default 1: no "
                                "retry); each attempt carries the header edm.delivery.attempt.", minimum=1),
                         "maximum": MAX_ATTEMPTS},
            "retry_backoff_ms": _int("Wait before the second attempt, doubled per attempt, with jitter "
                                     "(default 100).", minimum=0),
        }, "How many events of a task the pipeline works on at once, and retries (consuming as a queue: "
           "ordering key or none with attempts). A pipeline with anything but partition ordering and one "
           "attempt writes no store before its first group_by or repartition."),
    }, "A pipeline: reads streams, applies steps, writes to a sink or branches.", ["from"])
    security = _obj({
        "protocol": {"enum": ["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"],
                     "description": "PLAINTEXT (the default), SSL (TLS), SASL_PLAINTEXT or SASL_SSL "
                                    "(a login over TLS: what production clusters use)."},
        "sasl_mechanism": {"enum": ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"],
                           "description": "The SASL login (default PLAIN)."},
        "username": _str("SASL user name (SASL_* protocols).", minLength=1),
        "password": _str("SASL password; keep it out of the file: \"{{ env.KAFKA_PASSWORD }}\".",
                         minLength=1),
        "ssl_cafile": _str("CA certificate (PEM) that signed the brokers' certificates (default: the "
                           "system's CAs); relative to the topology file."),
        "ssl_certfile": _str("Client certificate (PEM), for brokers that authenticate clients by TLS; "
                             "relative to the topology file."),
        "ssl_keyfile": _str("The client certificate's private key (PEM); relative to the topology file."),
        "ssl_key_password": _str("Password of an encrypted ssl_keyfile: \"{{ env.KAFKA_KEY_PASSWORD }}\"."),
    }, "How to connect securely to Kafka.")
    security["if"] = {"properties": {"protocol": {"enum": ["SASL_PLAINTEXT", "SASL_SSL"]}},
                      "required": ["protocol"]}
    security["then"] = {"required": ["username", "password"]}
    broker = {
        "type": "object",
        "description": "The broker: {kind: local} (embedded, the default) or {kind: kafka, ...}.",
        "required": ["kind"],
        "properties": {"kind": {"enum": ["local", "kafka"]}},
        "allOf": [
            {"if": {"properties": {"kind": {"const": "local"}}},
             "then": _obj({"kind": {"const": "local"},
                           "path": _str("Directory of the embedded broker (default: the state dir).")},
                          "The embedded broker (an LMDB log).")},
            {"if": {"properties": {"kind": {"const": "kafka"}}},
             "then": _obj({"kind": {"const": "kafka"},
                           "bootstrap_servers": _str("host:port[,host:port...]", minLength=1),
                           "client_id": _str("Client id."),
                           "security": security,
                           "producer": {"type": "object", "description": "Extra producer settings."},
                           "consumer": {"type": "object", "description": "Extra consumer settings."}},
                          "Apache Kafka.", ["bootstrap_servers"])},
        ],
    }
    processing = _obj({
        "guarantee": {"enum": ["at_least_once", "exactly_once"],
                      "description": "Processing guarantee (default at_least_once)."},
        "commit_interval_ms": _int("How often offsets are committed (default 100)."),
        "max_batch": _int("Most events processed per batch (default 1000)."),
        "start": {"enum": ["earliest", "latest"],
                  "description": "Where the service starts reading its input streams when its group has "
                                 "no committed offset for them (its first start, or partitions added "
                                 "later): earliest (the default: every event already there) or latest "
                                 "(only events written after it first starts). Tables and global tables "
                                 "always read their whole source; `edm reset` starts over from the beginning."},
        "expression_limits": LIMITS_SCHEMA,
        "shutdown_grace": {**DURATION_SCHEMA,
                           "description": "How long a SIGTERM may take: finish the batch, commit, write "
                                          "checkpoints, close the stores (default 30s)."},
        "instance_id": _str("This instance's static group membership id (e.g. the pod name): a restart "
                            "within the session timeout causes no rebalance. `edm run --instance-id` "
                            "and EDM_INSTANCE_ID take precedence.", pattern=INSTANCE_PATTERN),
        "standby_replicas": _int("Hot replicas of every store on other instances (default 0); a store's "
                                 "own `standby_replicas` takes precedence.", minimum=0),
        "assignment": _obj({
            "strategy": {"enum": ["balanced", "round_robin", "static", "custom"],
                         "description": "balanced (default: even, sticky, actives where state is "
                                        "freshest), round_robin, static (tasks pinned to instance "
                                        "ids) or custom (a Python class)."},
            "static": _obj({
                "instances": {"type": "object", "description": "Instance id -> task ids it runs "
                                                               "(as `edm describe` prints them).",
                              "propertyNames": {"pattern": INSTANCE_PATTERN},
                              "additionalProperties": {"type": "array", "uniqueItems": True,
                                                       "items": _str("A task id <sub>_<partition>.",
                                                                     pattern=TASK_PATTERN)}},
                "reassign_after": {"$ref": "#/$defs/duration",
                                   "description": "How long an absent instance's tasks wait before "
                                                  "moving to the others (default: forever)."},
            }, "Tasks pinned to instance ids.", ["instances"]),
            "custom": _obj({"python": _str("A class 'module:Class' with assign(tasks, members, previous).",
                                           pattern=PYTHON_REF_PATTERN)},
                           "A custom assignor class.", ["python"]),
        }, "How tasks are spread over the instances of the service (Kafka)."),
    }, "How events are processed.")
    per_instance = "Per instance: every `edm run` process has its own budget"
    resource = _obj({
        "description": _str("What the resource stands for (an API, a plan)."),
        "rate": _obj({"requests": _int("Requests per `per`."),
                      "per": {**POSITIVE_DURATION_SCHEMA, "description": "The interval (default 1s)."},
                      "burst": _int("Requests that may go at once after a quiet time (default 1: evenly "
                                    "spaced).")},
                     f"Requests per interval (a token bucket). {per_instance}.", ["requests"]),
        "max_in_flight": _int(f"Most requests open at once. {per_instance}."),
        "quota": _obj({"requests": _int("Requests per period."),
                       "per": {**POSITIVE_DURATION_SCHEMA,
                               "description": "The period, aligned on the UTC clock (default 1d)."}},
                      f"Requests per period; when used up, calls wait for the next period. {per_instance}; "
                      "the count of the current period survives a restart (kept in the state directory).",
                      ["requests"]),
        "divide_by_instances": _int("Divide every budget above by this many instances, to keep a "
                                    "cluster-wide budget with that many instances running (default 1)."),
    }, "Limits shared by the `call` steps that name the resource. Every limit is per instance "
       "(per `edm run` process); set divide_by_instances to split a cluster-wide budget.")
    function = _obj({"python": _str("A Python function 'module:function', resolved next to the file.",
                                    pattern=PYTHON_REF_PATTERN),
                     "stores": {"type": "array", "items": {"type": "string", "pattern": NAME_PATTERN},
                                "uniqueItems": True,
                                "description": "Declared stores the function reads and writes: it is "
                                               "called with `stores=` (store name -> the current task's store)."}},
                    "A Python function usable in expressions.", ["python"])
    microservice = _obj({
        "kind": {"const": "microservice", "description": "`microservice`: this file is one service."},
        "name": _str("The service name: its consumer group and the prefix of its internal topics.",
                     pattern=NAME_PATTERN),
        "description": _str("What the service does."),
        "broker": {"$ref": "#/$defs/broker"},
        "processing": {"$ref": "#/$defs/processing"},
        "streams": {"type": "object", "description": "Streams by name.",
                    "propertyNames": {"pattern": TOPIC_PATTERN},
                    "additionalProperties": {"$ref": "#/$defs/stream"}},
        "functions": {"type": "object", "description": "Python functions by name.",
                      "propertyNames": {"pattern": IDENTIFIER_PATTERN},
                      "additionalProperties": {"$ref": "#/$defs/function"}},
        "stores": {"type": "object", "description": "State stores by name.",
                   "propertyNames": {"pattern": NAME_PATTERN},
                   "additionalProperties": {"$ref": "#/$defs/store"}},
        "tables": {"type": "object",
                   "description": "Tables by name, each partitioned like its stream (names are "
                                  "shared with streams and global tables).",
                   "propertyNames": {"pattern": TOPIC_PATTERN},
                   "additionalProperties": {"$ref": "#/$defs/table"}},
        "global_tables": {"type": "object",
                          "description": "Global tables by name: every partition on every instance, "
                                         "loaded before processing starts.",
                          "propertyNames": {"pattern": TOPIC_PATTERN},
                          "additionalProperties": {"$ref": "#/$defs/table"}},
        "pipelines": {"type": "object", "description": "Pipelines by name.",
                      "propertyNames": {"pattern": NAME_PATTERN},
                      "additionalProperties": {"$ref": "#/$defs/pipeline"}},
        "http": {"$ref": "#/$defs/http"},
        "resources": {"type": "object",
                      "description": "Rate limits, in-flight caps and quotas by name, shared by the `call` "
                                     "steps that name them (per instance).",
                      "propertyNames": {"pattern": NAME_PATTERN},
                      "additionalProperties": {"$ref": "#/$defs/resource"}},
    }, "One microservice.", ["kind", "name"])
    business = _obj({
        "kind": {"const": "business", "description": "`business`: this file lists services."},
        "name": _str("The business topology's name.", pattern=NAME_PATTERN),
        "description": _str("What the services do together."),
        "broker": {"$ref": "#/$defs/broker"},
        "services": {"type": "array", "minItems": 1,
                     "items": _str("Path of a microservice file, relative to this file.", minLength=1),
                     "description": "The microservice files."},
        "external_streams": {"type": "array", "items": _str("A topic name.", pattern=TOPIC_PATTERN),
                             "description": "Topics written by systems outside this business topology."},
    }, "Several microservices sharing streams (each stream has exactly one writer).",
        ["kind", "name", "services"])
    return {"stream_ref": stream_ref, "expression": expression, "duration": DURATION_SCHEMA,
            "serde": serde, "on_error": on_error, "sink": sink, "steps": steps, "stream": stream,
            "store": store, "table": table, "branch": branch, "pipeline": pipeline,
            "broker": broker, "processing": processing, "function": function, "resource": resource,
            "http": http_schema(),
            "microservice": microservice, "business": business}


def _step_choices() -> dict:
    ops = operators()
    if not ops:
        return {"type": "object", "description": "A step (no operators are registered)."}
    return {"oneOf": [_obj({name: op.schema}, op.description or f"The {name} operator.", [name])
                      for name, op in sorted(ops.items())]}


def _assemble(step_items: dict) -> dict:
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_ID,
        "title": "edm topology",
        "description": "A microservice topology (kind: microservice) or a business topology "
                       "(kind: business).",
        "type": "object",
        "required": ["kind"],
        "properties": {"kind": {"enum": ["microservice", "business"]}},
        "if": {"properties": {"kind": {"const": "business"}}},
        "then": {"$ref": "#/$defs/business"},
        "else": {"$ref": "#/$defs/microservice"},
        "$defs": _defs(step_items),
    }


def topology_schema() -> dict:
    """The published topology schema (draft 2020-12), steps as a oneOf over operators."""
    return _assemble(_step_choices())


def validation_schema() -> dict:
    """The schema the validator runs: steps are only required to be mappings."""
    return _assemble({"type": "object", "description": "A step: {operator: config}."})


def render_schema() -> str:
    return json.dumps(topology_schema(), indent=2, sort_keys=False) + "\n"


def write_schema(path: Path) -> None:
    """Write the published schema to ``path`` (what `edm schema` does)."""
    path.write_text(render_schema(), encoding="utf-8")
