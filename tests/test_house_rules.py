"""The rules of the house, run as tests so that CI (the README's test command) enforces them.

See docs/design/house-rules.md for each rule and why. The import contracts live in
pyproject.toml ([tool.importlinter]), the lint rules there too ([tool.ruff]). Known violations
are listed explicitly (import-linter's ``ignore_imports``, ``PRINTS_OR_EXITS_ALLOWED`` below),
each marked "issue 9: to remove": the lists only shrink; an entry that no longer matches fails.
"""
from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path


ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "edm_runner"
BIN = Path(sys.executable).parent


def _tool(name: str, *args: str) -> None:
    """Run a console script of the venv from the project root; fail with its output."""
    done = subprocess.run([str(BIN / name), *args], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, f"{name} {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"


def test_import_contracts_hold():
    """spec, operators, graph, serde, brokers, state and runtime import one way (lint-imports).
    "No matches for ignored import X": X is gone, delete its line from pyproject.toml (the
    ratchet only shrinks). A broken contract: move the code, do not add an ignore."""
    _tool("lint-imports", "--no-cache")


def test_ruff_finds_nothing():
    """E, F, W, B with lines up to 120 columns ([tool.ruff] in pyproject.toml)."""
    _tool("ruff", "check", "--no-cache", "--output-format", "concise", ".")


# --- Nothing below the CLI prints or exits -------------------------------------------------------

# Today's occurrences, "path: what" -> count. issue 9: to remove (the list only shrinks).
PRINTS_OR_EXITS_ALLOWED: dict[str, int] = {}

_CALLS = {"print", "exit", "quit"}
_ATTRIBUTES = {("sys", "exit"), ("sys", "stdout"), ("sys", "stderr"), ("sys", "__stdout__"),
               ("sys", "__stderr__"), ("os", "_exit"), ("os", "abort")}


def prints_or_exits(source: str) -> list[str]:
    """What in ``source`` writes to the terminal or ends the process, one entry per occurrence."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _CALLS:
            found.append(f"{node.func.id}()")
        elif isinstance(node, ast.Name) and node.id == "SystemExit":
            found.append("SystemExit")
        elif (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
              and (node.value.id, node.attr) in _ATTRIBUTES):
            found.append(f"{node.value.id}.{node.attr}")
        elif isinstance(node, ast.ImportFrom) and node.module in ("sys", "os"):
            found += [f"{node.module}.{alias.name}" for alias in node.names
                      if (node.module, alias.name) in _ATTRIBUTES]
    return found


def _below_cli() -> dict[str, int]:
    counts: dict[str, int] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(ROOT).as_posix()
        if relative.startswith("edm_runner/cli"):
            continue
        for what in prints_or_exits(path.read_text()):
            key = f"{relative}: {what}"
            counts[key] = counts.get(key, 0) + 1
    return counts


def test_the_scan_sees_prints_and_exits():
    source = ("import sys, os\nfrom sys import stderr\nprint('x')\nsys.exit(1)\n"
              "sys.stderr.write('x')\nraise SystemExit(2)\nos._exit(3)\n")
    assert sorted(prints_or_exits(source)) == sorted(
        ["sys.stderr", "print()", "sys.exit", "sys.stderr", "SystemExit", "os._exit"])


def test_nothing_below_the_cli_prints_or_exits():
    """Only the CLI talks to the terminal and chooses the exit code; the packages below it
    return values, raise EdmError and report progress through callbacks."""
    found = _below_cli()
    new = {key: n for key, n in found.items() if n > PRINTS_OR_EXITS_ALLOWED.get(key, 0)}
    assert not new, f"print/exit below the CLI (raise an EdmError or return a value instead): {new}"
    gone = {key: n for key, n in PRINTS_OR_EXITS_ALLOWED.items() if found.get(key, 0) < n}
    assert not gone, f"fixed, so shrink PRINTS_OR_EXITS_ALLOWED to today's counts: {gone}"


# --- The runtime never asks a broker for its type -----------------------------------------------



def broker_type_checks(source: str) -> list[str]:
    """Every ``isinstance``/``issubclass`` in ``source`` whose class argument names a broker
    class (a name ending in ``Broker``: LocalBroker, KafkaBroker, ...), as ``call(Name)``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                and node.func.id in ("isinstance", "issubclass") and len(node.args) == 2):
            continue
        classes = node.args[1].elts if isinstance(node.args[1], ast.Tuple) else [node.args[1]]
        for cls in classes:
            name = cls.id if isinstance(cls, ast.Name) else cls.attr if isinstance(cls, ast.Attribute) else ""
            if name.endswith("Broker"):
                found.append(f"{node.func.id}({name})")
    return found


def test_the_scan_sees_broker_type_checks():
    source = ("from edm_runner.brokers import kafka\nisinstance(b, LocalBroker)\n"
              "issubclass(type(b), (int, kafka.KafkaBroker))\nisinstance(b, dict)\n")
    assert broker_type_checks(source) == ["isinstance(LocalBroker)", "issubclass(KafkaBroker)"]


def test_the_runtime_never_checks_a_brokers_type():
    """The runtime chooses what depends on the broker by what the broker declares it can do
    (``Broker.supports_assignor``, ``atomic_append``, ``transactions``), never by its class:
    a third broker, or a wrapper of one, must not fall into the wrong commit path silently."""
    found: dict[str, int] = {}
    for path in sorted((PACKAGE / "runtime").rglob("*.py")):
        checks = broker_type_checks(path.read_text())
        if checks:
            found[path.relative_to(ROOT).as_posix()] = len(checks)
    assert not found, f"isinstance/issubclass on a broker class in the runtime (declare a capability instead): {found}"


# --- Validating a file needs neither Kafka nor LMDB ------------------------------------------------

_VALIDATE = """
import json, sys
sys.argv = ["edm", "validate", *sys.argv[1:]]
from edm_runner.cli import main
try:
    main()
    code = 0
except SystemExit as exit:
    code = exit.code
print(json.dumps({"exit": code, "loaded": [m for m in ("aiokafka", "lmdb") if m in sys.modules]}))
"""


def test_validate_imports_neither_aiokafka_nor_lmdb():
    """`edm validate` reads a file: it must not pay for (or need) the Kafka client or LMDB (nor
    for a test file of `edm test`, whose driver needs LMDB)."""
    topology = ROOT / "topologies" / "quickstart" / "topology.yaml"
    test = ROOT / "topologies" / "quickstart" / "topology.test.yaml"
    done = subprocess.run([sys.executable, "-c", _VALIDATE, str(topology), str(test)], cwd=ROOT,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result == {"exit": 0, "loaded": []}, done.stdout
