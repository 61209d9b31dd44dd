"""Run the real `edm` CLI in a subprocess, as a user would."""
from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TOPOLOGIES = ROOT / "topologies"


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str

    def lines(self) -> list[dict]:
        return [json.loads(line) for line in self.stdout.splitlines() if line.strip()]


def edm(*args: str | Path, stdin: str | None = None, timeout: float = 120, cwd: Path | None = None,
        env: dict[str, str] | None = None) -> Result:
    proc = subprocess.run([sys.executable, "-m", "edm_runner", *map(str, args)], input=stdin,
                          capture_output=True, text=True, timeout=timeout, cwd=cwd or ROOT, env=env)
    return Result(proc.returncode, proc.stdout, proc.stderr)


def ok(*args: str | Path, **kwargs) -> Result:
    result = edm(*args, **kwargs)
    assert result.code == 0, f"edm {' '.join(map(str, args))} exited {result.code}\n{result.stderr}"
    return result
