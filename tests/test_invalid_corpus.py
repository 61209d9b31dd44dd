"""The invalid corpus: every file under tests/invalid/ whose first line is `# expect: ...`
holds one mistake; loading it must fail with exactly the expected diagnostics.

Header lines (leading comments):
- ``# expect: [FILE:]LINE:COL: TEXT`` -- a diagnostic at that position whose message or hint
  contains TEXT. FILE (relative to the case's directory) defaults to the case file itself.
- ``# no-code`` -- load with ``no_code=True``.
Templates see an empty environment.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from edm_runner.errors import ConfigError, Diagnostic
from edm_runner.language import load_file

CORPUS = Path(__file__).parent / "invalid"
EXPECT = re.compile(r"#\s*expect:\s*(?:(?P<file>[^\s:]+):)?(?P<line>\d+):(?P<col>\d+):\s*(?P<text>.+?)\s*$")


@dataclass(frozen=True)
class Expected:
    file: Path
    line: int
    col: int
    text: str

    def matches(self, d: Diagnostic) -> bool:
        return (Path(d.file).resolve() == self.file and (d.line, d.col) == (self.line, self.col)
                and (self.text in d.message or self.text in d.hint))


def _header(path: Path) -> list[str]:
    lines = path.read_bytes().decode("utf-8", errors="replace").splitlines()
    header = []
    for line in lines:
        if not line.startswith("#"):
            break
        header.append(line)
    return header


def _cases() -> list[Path]:
    return sorted(p for p in CORPUS.rglob("*.yaml") if _header(p)[:1] and EXPECT.match(_header(p)[0]))


CASES = _cases()


def test_the_corpus_is_large_enough() -> None:
    assert len(CASES) >= 45
    assert sum(1 for p in CASES if p.parent.name.startswith("business-")) >= 8


@pytest.mark.parametrize("path", CASES, ids=lambda p: str(p.relative_to(CORPUS)))
def test_invalid_file(path: Path) -> None:
    header = _header(path)
    expected = []
    for line in header:
        if m := EXPECT.match(line):
            file = (path.parent / m["file"]).resolve() if m["file"] else path.resolve()
            expected.append(Expected(file, int(m["line"]), int(m["col"]), m["text"]))
    no_code = "# no-code" in header
    with pytest.raises(ConfigError) as info:
        load_file(path, no_code=no_code, env={})
    got = list(info.value.diagnostics)
    shown = "\n".join(d.format() for d in got)
    assert len(got) == len(expected), f"expected {len(expected)} diagnostic(s), got:\n{shown}"
    for want in expected:
        match = next((d for d in got if want.matches(d)), None)
        assert match is not None, f"no diagnostic matches {want}; got:\n{shown}"
        got.remove(match)
