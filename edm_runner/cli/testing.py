"""`edm test`: runs the test files of topologies in process (``edm_runner.testing``).

Exit codes: 0 every case passed, 1 a case failed, 2 a test file (or its topology) is broken:
its problems as ``file:line:col: message`` like `edm validate`, never a traceback.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from edm_runner.cli.common import app, guarded, setup_logging


def _discover(paths: list[Path]) -> list[Path]:
    """Test files: a ``*.test.yaml`` as given; a topology file: the test files beside it that
    test it; a directory: every test file under it."""
    from edm_runner.errors import EdmError
    from edm_runner.testing.spec import SUFFIX, topology_of
    found: list[Path] = []
    for path in paths:
        if path.is_dir():  # hidden directories (.git, .venv, .edm) hold no tests of the user's
            found.extend(sorted(p for p in path.rglob(f"*{SUFFIX}")
                                if not any(part.startswith(".") for part in p.relative_to(path).parts[:-1])))
        elif path.name.endswith(SUFFIX):
            found.append(path)
        elif path.is_file():
            siblings = sorted(path.parent.glob(f"*{SUFFIX}"))
            found.extend(p for p in siblings if _tests(p, path, topology_of))
        else:
            raise EdmError(f"{path}: no such file or directory; give test files (*{SUFFIX}), topology "
                           "files or directories")
    return list(dict.fromkeys(found))


def _tests(test: Path, topology: Path, topology_of) -> bool:
    import yaml
    try:
        data = yaml.safe_load(test.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return True  # broken: report it
    return topology_of(test, data).resolve() == topology.resolve()


@app.command("test")
def test_command(
    paths: Annotated[Optional[list[Path]], typer.Argument(
        help="Test files (*.test.yaml), topology files (their tests beside them) or directories "
             "(default: the current directory).", show_default=False)] = None,
    junit_xml: Annotated[Optional[Path], typer.Option(
        "--junit-xml", help="Also write the results as JUnit XML (for CI systems).")] = None,
    write_schema: Annotated[Optional[Path], typer.Option(
        "--write-schema", help="Write the JSON Schema of test files to this file and exit.")] = None,
    log_level: Annotated[str, typer.Option(
        "--log-level", help="What the services log while tested (e.g. info shows `log` steps).")] = "error",
) -> None:
    """Run topology tests in process: one line per case, a diff for each failed expectation."""
    setup_logging(log_level)

    def body() -> int:
        from edm_runner.testing.cases import BrokenTest, run_file
        from edm_runner.testing.report import write_junit
        from edm_runner.testing.spec import load_test_file, render_json_schema
        if write_schema is not None:
            write_schema.write_text(render_json_schema(), encoding="utf-8")
            typer.echo(f"wrote {write_schema}")
            return 0
        started = time.perf_counter()
        files = _discover(paths or [Path(".")])
        if not files:
            typer.echo("no test files (*.test.yaml) found", err=True)
            return 2
        results, broken = [], []
        for path in files:
            test = load_test_file(path)
            if test.diagnostics:
                broken.append((path, test.diagnostics))
                continue
            try:
                for result in run_file(test):
                    results.append(result)
                    typer.echo(f"{'PASS' if result.passed else 'FAIL'} {result.file}::{result.name} "
                               f"({result.seconds * 1000:.0f} ms)")
                    for failure in result.failures:
                        typer.echo("  " + failure.format().replace("\n", "\n  "))
            except BrokenTest as error:
                broken.append((path, error.diagnostics))
        for _, diagnostics in broken:
            for diagnostic in diagnostics:
                typer.echo(diagnostic.format(), err=True)
        failed = sum(not r.passed for r in results)
        elapsed = time.perf_counter() - started
        typer.echo(f"{len(results) - failed} passed, {failed} failed, {len(broken)} broken file(s) "
                   f"in {elapsed:.2f} s")
        if junit_xml is not None:
            write_junit(junit_xml, results, broken, elapsed)
        return 2 if broken else 1 if failed else 0
    guarded(body)
