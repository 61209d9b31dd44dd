"""What `edm run` shows on a terminal (rich: restore bars, the live status line), and the rule
that only the CLI prints or exits."""
from __future__ import annotations

import ast
import os
import pty
import shutil
import subprocess
import sys
from pathlib import Path

from cli_helpers import ROOT, TOPOLOGIES, ok


def _run_on_a_terminal(*args: str | Path, cwd: Path) -> tuple[int, str]:
    """Runs edm with stderr on a pseudo-terminal; (exit code, what the terminal received)."""
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "edm_runner", *map(str, args)], cwd=cwd,
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=slave,
                            env={**os.environ, "TERM": "xterm-256color", "COLUMNS": "160"})
    os.close(slave)
    received = bytearray()
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        received += chunk
    os.close(master)
    return proc.wait(timeout=120), received.decode("utf-8", "replace")


def test_run_on_a_terminal_draws_the_restore_and_the_status_line(tmp_path: Path) -> None:
    shutil.copytree(TOPOLOGIES / "user-counts", tmp_path / "user-counts")
    topology = tmp_path / "user-counts" / "topology.yaml"
    ok("produce", "user-events", "-t", topology, "-f", tmp_path / "user-counts" / "user-events.jsonl")
    ok("run", topology, "--until-idle")
    shutil.rmtree(tmp_path / "user-counts" / ".edm" / "state" / "user-counts")

    code, terminal = _run_on_a_terminal("run", topology, "--until-idle", cwd=tmp_path)
    assert code == 0, terminal
    assert "restoring user-counts task(s)" in terminal and "100%" in terminal, terminal
    assert "[edm] in 0 " in terminal, terminal  # the status line (everything was processed before)
    assert "user-counts: 0 in, 0 out" in terminal, terminal  # the summary after it
    assert "running user-counts on" in terminal, terminal  # log lines print above the live lines


# Below the CLI nothing prints or exits: errors are raised, progress goes to a callback.
_FORBIDDEN_CALLS = {"print", "exit", "quit", "sys.exit", "os._exit", "sys.stdout.write", "sys.stderr.write",
                    "sys.stdout.flush", "sys.stderr.flush"}


def _name(node: ast.expr) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_name(node.value)}.{node.attr}"
    return ""


def test_nothing_below_the_cli_prints_or_exits() -> None:
    found = []
    package = ROOT / "edm_runner"
    for path in sorted(package.rglob("*.py")):
        if path.relative_to(package).parts[0] in ("cli", "__main__.py"):
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            where = f"{path.relative_to(ROOT)}:{getattr(node, 'lineno', 0)}"
            if isinstance(node, ast.Call) and _name(node.func) in _FORBIDDEN_CALLS:
                found.append(f"{where}: {_name(node.func)}()")
            elif isinstance(node, ast.Raise) and node.exc is not None and any(
                    isinstance(n, ast.Name) and n.id == "SystemExit" for n in ast.walk(node.exc)):
                found.append(f"{where}: raise SystemExit")
            elif isinstance(node, ast.Attribute) and node.attr in ("stdout", "stderr") and _name(node.value) == "sys":
                found.append(f"{where}: sys.{node.attr}")
    assert not found, "below the CLI:\n" + "\n".join(found)
