"""Python function references ``module:function``, resolved next to the topology file.

``resolve_function("scoring:risk", base_dir)`` imports ``scoring`` from ``base_dir`` (the
topology's directory) when it is there, else from the Python path, and returns ``risk``.
Dots are allowed on both sides: ``pkg.mod:Class.method``.

Invariants:
- A module found in ``base_dir`` is imported as a submodule of a synthetic package private
  to that directory, so two topologies in different directories can each have their own
  ``scoring.py`` without one shadowing the other; resolving the same reference twice returns
  the same object (the module is imported once).
- ``base_dir`` is appended (never prepended) to ``sys.path`` once, so a user module can
  ``import helpers`` from its own directory without ever shadowing an installed module.
- Every failure is a ``FunctionRefError`` saying what is wrong; an exception raised while the
  user's module is imported names the user's ``file:line``, never a traceback.
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.machinery
import importlib.util
import re
import sys
import traceback
from pathlib import Path
from typing import Any, Callable

from edm_runner.errors import EdmError

__all__ = ["FunctionRefError", "resolve_function", "parse_ref"]

_DOTTED = r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*"
_REF = re.compile(rf"({_DOTTED}):({_DOTTED})")


class FunctionRefError(EdmError):
    """A ``module:function`` reference cannot be resolved."""


def parse_ref(ref: str) -> tuple[str, str]:
    """Split ``module:function`` into (module, attribute path), or raise FunctionRefError."""
    match = _REF.fullmatch(ref.strip())
    if match is None:
        raise FunctionRefError(
            f"invalid function reference {ref!r}: expected module:function, e.g. scoring:risk")
    return match.group(1), match.group(2)


def resolve_function(ref: str, base_dir: Path) -> Callable:
    """The callable named by ``ref``, importing its module from ``base_dir`` first."""
    module_name, attr_path = parse_ref(ref)
    base_dir = Path(base_dir).resolve()
    module = _import(module_name, base_dir)
    target: Any = module
    for part in attr_path.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            available = sorted(n for n, v in vars(module).items()
                               if callable(v) and not n.startswith("_")
                               and getattr(v, "__module__", None) == module.__name__)
            hint = f" (it defines: {', '.join(available)})" if available else ""
            raise FunctionRefError(
                f"module {module_name!r} has no function {attr_path!r}{hint}") from None
    if not callable(target):
        raise FunctionRefError(f"{ref!r} is not callable (it is a {type(target).__name__})")
    return target


def _import(module_name: str, base_dir: Path) -> Any:
    top = module_name.split(".")[0]
    local = importlib.machinery.PathFinder.find_spec(top, [str(base_dir)]) is not None
    full_name = f"{_package_for(base_dir)}.{module_name}" if local else module_name
    try:
        return importlib.import_module(full_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (full_name == exc.name
                                     or full_name.startswith(exc.name + ".")):
            missing = exc.name.removeprefix(_package_for(base_dir) + ".")
            raise FunctionRefError(
                f"cannot import module {module_name!r} (looked in {base_dir} and the Python "
                f"path): No module named {missing!r}") from None
        raise _import_failure(module_name, base_dir, exc) from None
    except Exception as exc:  # the user's module raised while being imported
        raise _import_failure(module_name, base_dir, exc) from None


def _package_for(base_dir: Path) -> str:
    """A synthetic package whose path is ``base_dir``, registered once per directory."""
    digest = hashlib.sha1(str(base_dir).encode()).hexdigest()[:12]
    name = f"_edm_topology_{digest}"
    if name not in sys.modules:
        spec = importlib.machinery.ModuleSpec(name, None, is_package=True)
        spec.submodule_search_locations = [str(base_dir)]
        sys.modules[name] = importlib.util.module_from_spec(spec)
        if str(base_dir) not in sys.path:
            sys.path.append(str(base_dir))
    return name


def _import_failure(module_name: str, base_dir: Path, exc: BaseException) -> FunctionRefError:
    where = _user_location(exc, base_dir)
    at = f" at {where}" if where else ""
    return FunctionRefError(f"error while importing module {module_name!r}{at}: "
                            f"{type(exc).__name__}: {_message(exc)}")


def _message(exc: BaseException) -> str:
    if isinstance(exc, SyntaxError):
        return exc.msg
    return str(exc)


def _user_location(exc: BaseException, base_dir: Path) -> str | None:
    """``file:line`` of the innermost frame in the user's code (or of a syntax error)."""
    if isinstance(exc, SyntaxError) and exc.filename and exc.lineno:
        return f"{exc.filename}:{exc.lineno}"
    frames = traceback.extract_tb(exc.__traceback__)
    for frame in reversed(frames):
        if Path(frame.filename).is_relative_to(base_dir):
            return f"{frame.filename}:{frame.lineno}"
    for frame in reversed(frames):
        if not frame.filename.startswith("<frozen"):
            return f"{frame.filename}:{frame.lineno}"
    return None
