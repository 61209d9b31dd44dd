"""Load-time templating of YAML scalars with Jinja2.

Rule (applied by ``spec.source`` while it builds the document):

- Only scalars containing ``{{`` are rendered; bare expressions (no braces) are per-event
  expressions and are left alone.
- The context has one variable, ``env``: the process environment (or the mapping given to
  ``load_file``). Undefined variables are errors unless filtered through ``default(...)``.
- ``env`` is read-only and can only be read one variable at a time (``env.NAME``,
  ``env['NAME']``, ``'NAME' in env``): it has no methods, cannot be iterated, and printing it
  whole is an error, so neither a rendered value nor an error message ever holds the
  environment (secrets included).
- Rendering is sandboxed (no attribute access to internals, no mutating methods), so a
  template cannot run code.
- Re-typing: when a *plain or double-quoted* scalar is entirely one template
  (``"{{ env.P | default(8) }}"``), its rendered text is re-read as a YAML scalar, so numbers
  become ints and ``true`` a bool. A single-quoted scalar, or one where the template is only
  part of the text (``host-{{ env.H }}``), stays a string.
"""
from __future__ import annotations

import re
from typing import Any, Mapping, NoReturn

import yaml
from jinja2 import StrictUndefined, TemplateError, UndefinedError
from jinja2.exceptions import SecurityError, TemplateSyntaxError
from jinja2.sandbox import ImmutableSandboxedEnvironment

_JINJA = ImmutableSandboxedEnvironment(undefined=StrictUndefined, autoescape=False,
                                       keep_trailing_newline=True)
_WHOLE = re.compile(r"\s*\{\{(?:(?!\{\{|\}\}).)*\}\}\s*", re.S)


class TemplateProblem(Exception):
    """A template that cannot be rendered; ``message`` and ``hint`` are user-facing, ``line``
    is the 1-based line of the template's text where the problem is (1 when unknown)."""

    def __init__(self, message: str, hint: str = "", line: int = 1):
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.line = line


class _WholeEnvironment(Exception):
    """A template tried to turn ``env`` as a whole into text."""


class _Env:
    """The template variable ``env``: lookup of one variable at a time, nothing else."""

    __slots__ = ("_vars",)

    def __init__(self, variables: Mapping[str, str]):
        self._vars = dict(variables)

    def __getitem__(self, name: str) -> str:
        return self._vars[name]

    def __contains__(self, name: object) -> bool:
        return name in self._vars

    def _refuse(self, *_: object) -> NoReturn:
        raise _WholeEnvironment()

    # Neither printed nor listed (its names are not shown either).
    __str__ = __repr__ = __format__ = __iter__ = __len__ = _refuse  # type: ignore[assignment]


def is_template(text: str) -> bool:
    return "{{" in text


def render(text: str, env: Mapping[str, str]) -> str:
    """Render ``text`` with context ``env``; raises ``TemplateProblem``."""
    try:
        return _JINJA.from_string(text).render(env=_Env(env))
    except _WholeEnvironment:
        raise TemplateProblem("a template can read single environment variables, not the "
                              "whole environment",
                              hint="read one variable, e.g. {{ env.HOME }}") from None
    except UndefinedError as e:
        name = _undefined_name(str(e))
        var = name.removeprefix("env.")
        raise TemplateProblem(
            f"undefined variable '{name}' in template",
            hint=(f"set the environment variable {var} or give a default: "
                  f"{{{{ {name} | default('...') }}}}") if name.startswith("env.")
            else "the only template variable is 'env' (the environment), e.g. {{ env.HOME }}",
        ) from None
    except TemplateSyntaxError as e:
        raise TemplateProblem(f"template syntax error: {e.message}",
                              hint="templates look like {{ env.NAME | default('value') }}",
                              line=e.lineno or 1) from None
    except SecurityError as e:
        raise TemplateProblem(f"template refused by the sandbox: {e}",
                              hint="templates may only read env variables and apply filters") from None
    except TemplateError as e:
        raise TemplateProblem(f"template error: {e}") from None
    except Exception as e:  # a filter called with bad arguments, e.g. int('x')
        raise TemplateProblem(f"template failed: {type(e).__name__}: {e}") from None


def retype(original: str, style: str | None, rendered: str) -> Any:
    """The value of a rendered scalar, by the rule in the module docstring."""
    if style not in (None, '"') or not _WHOLE.fullmatch(original):
        return rendered
    try:
        value = yaml.safe_load(rendered)
    except yaml.YAMLError:
        return rendered
    if value is None and rendered.strip() == "":
        return rendered
    return value if isinstance(value, (str, int, float, bool)) or value is None else rendered


def _undefined_name(message: str) -> str:
    m = re.search(r"'[\w.]*_Env object' has no (?:attribute|element) '([^']*)'", message)
    if m:
        return f"env.{m.group(1)}"
    m = re.search(r"'([^']*)' is undefined", message)
    return m.group(1) if m else message
