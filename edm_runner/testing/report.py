"""The results of `edm test` as JUnit XML, the format CI systems read."""
from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from edm_runner.errors import Diagnostic
from edm_runner.testing.cases import CaseResult


def write_junit(path: Path, results: list[CaseResult], broken: list[tuple[Path, list[Diagnostic]]],
                seconds: float) -> None:
    """One ``testsuite`` per test file, one ``testcase`` per case (a ``failure`` with every
    unmet expectation); a broken file is a suite with one ``error`` testcase."""
    root = ET.Element("testsuites", name="edm test", time=f"{seconds:.3f}")
    suites: dict[str, ET.Element] = {}
    for result in results:
        suite = suites.get(result.file)
        if suite is None:
            suite = suites[result.file] = ET.SubElement(root, "testsuite", name=result.file)
        case = ET.SubElement(suite, "testcase", classname=result.file, name=result.name,
                             file=result.file, line=str(result.line), time=f"{result.seconds:.3f}")
        if result.failures:
            failure = ET.SubElement(case, "failure", message=result.failures[0].format().splitlines()[0])
            failure.text = "\n\n".join(f.format() for f in result.failures)
    for file, diagnostics in broken:
        suite = ET.SubElement(root, "testsuite", name=str(file))
        case = ET.SubElement(suite, "testcase", classname=str(file), name="(test file)", file=str(file))
        error = ET.SubElement(case, "error", message=diagnostics[0].format().splitlines()[0] if diagnostics else "")
        error.text = "\n".join(d.format() for d in diagnostics)
    for suite in root:
        cases = list(suite)
        suite.set("tests", str(len(cases)))
        suite.set("failures", str(sum(1 for c in cases if c.find("failure") is not None)))
        suite.set("errors", str(sum(1 for c in cases if c.find("error") is not None)))
    for name in ("tests", "failures", "errors"):
        root.set(name, str(sum(int(s.get(name)) for s in root)))
    ET.ElementTree(root).write(path, encoding="utf-8", xml_declaration=True)
