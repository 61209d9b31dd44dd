"""Resource bombs (tests/bombs/): a small file or one event must not exhaust edm.

Each payload meets a real `edm` child process whose memory is capped well below what the
payload would take (RLIMIT_AS for `edm validate`; RLIMIT_DATA for `edm run`, whose LMDB maps
are large but file-backed) and whose CPU time is capped too: finishing with the expected
error proves the bound, not a timing.
"""
from __future__ import annotations

import json
import re
import uuid
from pathlib import Path

import pytest

from bombs.measure import LOAD, event_cases, limits, prepare_event_run, run

GIB = 1 << 30
EXPECT = re.compile(r"#\s*expect:\s*(\d+):(\d+):\s*(.+?)\s*$")


@pytest.mark.parametrize("path", LOAD, ids=lambda p: p.name)
def test_validate_refuses_the_bomb_at_its_place(path: Path, tmp_path: Path) -> None:
    m = EXPECT.match(path.read_text().splitlines()[0])
    assert m, f"{path.name} has no `# expect: LINE:COL: TEXT` first line"
    line, col, text = m.groups()
    code, out, _, _ = run(["validate", str(path)], tmp_path,
                          preexec=limits(address_space=GIB, cpu_s=20))
    assert code == 1, out
    assert "Traceback" not in out and "MemoryError" not in out, out
    located = [s for s in out.splitlines() if s.startswith(f"{path}:{line}:{col}: ")]
    assert any(text in s for s in located), f"no {line}:{col}: ...{text}... in:\n{out}"


@pytest.fixture
def broker(broker_url: str) -> list[str]:
    """The edm options that run a test on the embedded broker, then on a real Kafka broker."""
    return ["--broker", broker_url]


def test_each_event_bomb_is_dead_lettered_and_the_runner_goes_on(tmp_path: Path,
                                                                 broker: list[str]) -> None:
    cases = event_cases()
    topology = prepare_event_run(tmp_path, cases, broker, prefix=f"t{uuid.uuid4().hex[:8]}-")
    code, out, _, _ = run(["validate", str(topology)], tmp_path)
    assert code == 0, out  # none of them is a constant: only the event makes them explode

    code, out, _, _ = run(["run", str(topology), "--until-idle", *broker], tmp_path,
                          preexec=limits(data=GIB, cpu_s=60))
    assert code == 0, out

    code, out, _, _ = run(["consume", "dlq", "-t", str(topology), "--from-beginning", *broker],
                          tmp_path)
    assert code == 0, out
    dead = {bytes.fromhex(r["key"]["hex"]).decode() if isinstance(r["key"], dict) else r["key"]:
            r["headers"] for r in map(json.loads, out.splitlines())}
    assert set(dead) == set(cases), out
    for name, case in cases.items():
        error = dead[name]["edm.error"]
        assert error.startswith("LimitExceeded: ") and case["error"] in error, (name, error)
        assert "processing.expression_limits." in error, error
    code, out, _, _ = run(["consume", "out", "-t", str(topology), "--from-beginning", *broker],
                          tmp_path)
    assert [json.loads(line)["key"] for line in out.splitlines()] == ["ok"], out


def test_a_raised_limit_lets_the_event_through(tmp_path: Path) -> None:
    cases = {"repeat": {"expression": "{'bar': ('#' * value.n) | length}", "event": {"n": 2_000_000}}}
    topology = prepare_event_run(tmp_path, cases)
    text = topology.read_text().replace("pipelines:", "processing:\n  expression_limits: "
                                                      "{max_string_length: 3000000}\npipelines:", 1)
    topology.write_text(text)
    code, out, _, _ = run(["run", str(topology), "--until-idle"], tmp_path)
    assert code == 0, out
    code, out, _, _ = run(["consume", "out", "-t", str(topology), "--from-beginning"], tmp_path)
    assert {json.loads(line)["key"]: json.loads(line)["value"] for line in out.splitlines()} == \
        {"repeat": {"bar": 2_000_000}, "ok": {"case": "ok"}}, out


def test_templates_within_the_bounds_render_as_before() -> None:
    from edm_runner.language.templating import render

    assert render("{% for i in range(3) %}{{ i ~ '-' }}{% endfor %}{{ 'ab' * 2 }}"
                  "{{ '%03d' % 7 }}{{ 2 ** 10 }}", {}) == "0-1-2-abab0071024"
