"""Function references ``module:function`` resolved next to the topology file."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from edm_runner.errors import EdmError
from edm_runner.language.functions import FunctionRefError, parse_ref, resolve_function


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_resolves_function_next_to_topology(tmp_path: Path) -> None:
    write(tmp_path / "scoring.py", "def risk(v):\n    return v['n'] * 2\n")
    risk = resolve_function("scoring:risk", tmp_path)
    assert risk({"n": 4}) == 8
    assert resolve_function("scoring:risk", tmp_path) is risk  # imported once


def test_dotted_module_and_attribute_path(tmp_path: Path) -> None:
    write(tmp_path / "pkg" / "__init__.py", "")
    write(tmp_path / "pkg" / "rules.py",
          "from . import consts\n"
          "class Scorer:\n"
          "    @staticmethod\n"
          "    def score(v):\n"
          "        return v + consts.OFFSET\n")
    write(tmp_path / "pkg" / "consts.py", "OFFSET = 100\n")
    assert resolve_function("pkg.rules:Scorer.score", tmp_path)(1) == 101


def test_user_module_can_import_its_siblings(tmp_path: Path) -> None:
    write(tmp_path / "edm_test_helpers_x1.py", "def double(x):\n    return 2 * x\n")
    write(tmp_path / "logic.py", "import edm_test_helpers_x1\n"
                                 "def f(x):\n    return edm_test_helpers_x1.double(x)\n")
    assert resolve_function("logic:f", tmp_path)(21) == 42


def test_same_module_name_in_two_directories_does_not_collide(tmp_path: Path) -> None:
    write(tmp_path / "a" / "scoring.py", "def risk(v):\n    return 'a'\n")
    write(tmp_path / "b" / "scoring.py", "def risk(v):\n    return 'b'\n")
    assert resolve_function("scoring:risk", tmp_path / "a")(None) == "a"
    assert resolve_function("scoring:risk", tmp_path / "b")(None) == "b"


def test_local_module_never_shadows_an_installed_one(tmp_path: Path) -> None:
    write(tmp_path / "json.py", "def dumps(v):\n    return 'local'\n")
    assert resolve_function("json:dumps", tmp_path)(1) == "local"
    assert sys.modules["json"] is json and json.dumps(1) == "1"


def test_falls_back_to_the_python_path(tmp_path: Path) -> None:
    assert resolve_function("os.path:join", tmp_path)("a", "b") == "a/b"


@pytest.mark.parametrize("ref", ["scoring", "scoring:", ":risk", "scoring:risk:x", "a-b:c",
                                 "scoring:risk()", "1mod:f", ""])
def test_bad_format(ref: str, tmp_path: Path) -> None:
    with pytest.raises(FunctionRefError, match="expected module:function"):
        resolve_function(ref, tmp_path)


def test_parse_ref() -> None:
    assert parse_ref("pkg.mod:Cls.fn") == ("pkg.mod", "Cls.fn")


def test_missing_module(tmp_path: Path) -> None:
    with pytest.raises(FunctionRefError) as info:
        resolve_function("edm_no_such_module:risk", tmp_path)
    message = str(info.value)
    assert "cannot import module 'edm_no_such_module'" in message
    assert f"looked in {tmp_path.resolve()}" in message
    assert "No module named 'edm_no_such_module'" in message
    assert isinstance(info.value, EdmError)


def test_missing_submodule_of_local_package(tmp_path: Path) -> None:
    write(tmp_path / "pkg" / "__init__.py", "")
    with pytest.raises(FunctionRefError, match="No module named 'pkg.nope'"):
        resolve_function("pkg.nope:f", tmp_path)


def test_missing_function_lists_what_exists(tmp_path: Path) -> None:
    write(tmp_path / "scoring.py", "import os\nLIMIT = 3\n"
                                   "def risk(v):\n    pass\ndef grade(v):\n    pass\n")
    with pytest.raises(FunctionRefError) as info:
        resolve_function("scoring:rsk", tmp_path)
    assert str(info.value) == ("module 'scoring' has no function 'rsk' "
                               "(it defines: grade, risk)")


def test_not_callable(tmp_path: Path) -> None:
    write(tmp_path / "scoring.py", "LIMIT = 3\n")
    with pytest.raises(FunctionRefError, match=r"'scoring:LIMIT' is not callable \(it is a int\)"):
        resolve_function("scoring:LIMIT", tmp_path)


def test_exception_while_importing_names_the_user_line(tmp_path: Path) -> None:
    path = write(tmp_path / "broken.py", "X = 1\n\ndef f():\n    pass\n\nY = 1 / 0\n")
    with pytest.raises(FunctionRefError) as info:
        resolve_function("broken:f", tmp_path)
    assert str(info.value) == (f"error while importing module 'broken' at {path.resolve()}:6: "
                               "ZeroDivisionError: division by zero")
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_exception_in_a_helper_module_names_the_innermost_user_line(tmp_path: Path) -> None:
    helper = write(tmp_path / "edm_test_helper_x2.py",
                   "def boom():\n    raise ValueError('bad config')\n")
    write(tmp_path / "entry.py", "import edm_test_helper_x2\nedm_test_helper_x2.boom()\n")
    with pytest.raises(FunctionRefError) as info:
        resolve_function("entry:f", tmp_path)
    assert f"{helper.resolve()}:2: ValueError: bad config" in str(info.value)


def test_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path / "typo.py", "def f(:\n    pass\n")
    with pytest.raises(FunctionRefError) as info:
        resolve_function("typo:f", tmp_path)
    assert f"at {path.resolve()}:1: SyntaxError: " in str(info.value)


def test_missing_dependency_of_the_user_module(tmp_path: Path) -> None:
    path = write(tmp_path / "needs.py", "\nimport edm_missing_dependency_zz\n")
    with pytest.raises(FunctionRefError) as info:
        resolve_function("needs:f", tmp_path)
    assert str(info.value) == (
        f"error while importing module 'needs' at {path.resolve()}:2: "
        "ModuleNotFoundError: No module named 'edm_missing_dependency_zz'")


def test_failed_import_is_retried(tmp_path: Path) -> None:
    write(tmp_path / "flaky.py", "raise RuntimeError('not yet')\n")
    with pytest.raises(FunctionRefError, match="RuntimeError: not yet"):
        resolve_function("flaky:f", tmp_path)
    write(tmp_path / "flaky.py", "def f():\n    return 'ok'\n")
    assert resolve_function("flaky:f", tmp_path)() == "ok"
