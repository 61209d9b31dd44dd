"""Bad input never escapes as anything but ConfigError: mutated copies of the examples and of
the invalid corpus (deterministic seed) either load or fail with diagnostics."""
from __future__ import annotations

import random
import shutil
from pathlib import Path

from edm_runner.errors import ConfigError
from edm_runner.language import load_file

ROOT = Path(__file__).resolve().parent.parent
NOISE = ["", "[]", "{}", "-1", "null", "true", '"{{ env.X }}"', "{{", "x: y", "[a, {b: c}]", "- a",
         ":", "'", "&a", "*a", "!!binary x", "1.5", "value.__class__", '"{{ 1/0 }}"', "\t"]


def _mutate(lines: list[str], rng: random.Random) -> list[str]:
    lines = list(lines)
    for _ in range(rng.randint(1, 3)):
        if not lines:
            break
        i = rng.randrange(len(lines))
        roll = rng.random()
        if roll < 0.2:
            del lines[i]
        elif roll < 0.4:
            lines.insert(i, rng.choice(lines))
        elif ":" in lines[i]:
            lines[i] = lines[i][: lines[i].index(":") + 1] + " " + rng.choice(NOISE)
        else:
            lines[i] += rng.choice(NOISE)
    return lines


def test_mutated_topologies_fail_only_with_diagnostics(tmp_path: Path) -> None:
    rng = random.Random(20240601)
    examples = sorted(p for p in (ROOT / "topologies").rglob("*.yaml") if not p.name.endswith(".test.yaml"))
    corpus = sorted((ROOT / "tests" / "invalid").glob("*.yaml"))
    outcomes = {"valid": 0, "invalid": 0}
    for n in range(400):
        source = rng.choice(examples if n % 2 else corpus)
        folder = tmp_path / source.parent.name
        if not folder.exists():
            shutil.copytree(source.parent, folder)  # keeps schemas, modules and services beside it
        target = folder / f"mutant-{n}.yaml"
        lines = source.read_bytes().decode("utf-8", errors="replace").splitlines()
        target.write_text("\n".join(_mutate(lines, rng)) + "\n")
        try:
            load_file(target, env={})
            outcomes["valid"] += 1
        except ConfigError as error:
            assert error.diagnostics and all(d.line >= 1 and d.col >= 1 for d in error.diagnostics)
            outcomes["invalid"] += 1
    assert outcomes["invalid"] > 100 and outcomes["valid"] >= 5  # both paths exercised
