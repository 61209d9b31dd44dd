"""Load-time templating of YAML scalars with Jinja2.

Rule (applied by ``spec.yaml_loader`` while it builds the document):

- Only scalars containing ``{{`` are rendered; bare expressions (no braces) are per-event
  expressions and are left alone.
- The context has one variable, ``env``: the process environment (or the mapping given to
  ``load_file``). Undefined variables are errors unless filtered through ``default(...)``.
- ``env`` is read-only and can only be read one variable at a time (``env.NAME``,
  ``env['NAME']``, ``'NAME' in env``): it has no methods, cannot be iterated, and printing it
  whole is an error, so neither a rendered value nor an error message ever holds the
  environment (secrets included).
- Rendering is sandboxed (no attribute access to internals, no mutating methods), so a
  template cannot run code, and bounded (``spec.limits`` with ``TEMPLATE_LIMITS``; at most
  ``MAX_STEPS`` loop iterations and calls and ``MAX_BUILT`` characters built in all, output
  included; no ``lipsum`` or ``namespace``), so a small file cannot exhaust memory or CPU:
  a template over the bounds is an error at its line.
- Re-typing: when a *plain or double-quoted* scalar is entirely one template
  (``"{{ env.P | default(8) }}"``), its rendered text is re-read as a YAML scalar, so numbers
  become ints and ``true`` a bool. A single-quoted scalar, or one where the template is only
  part of the text (``host-{{ env.H }}``), stays a string.
"""
from __future__ import annotations

import re
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, NoReturn

import yaml
from jinja2 import StrictUndefined, TemplateError, UndefinedError, nodes
from jinja2.compiler import CodeGenerator, Frame
from jinja2.exceptions import SecurityError, TemplateSyntaxError

from edm_runner.language.limits import BoundedSandbox, Bounds, LimitExceeded, Limits

TEMPLATE_LIMITS = Limits(max_string_length=100_000, max_items=100_000, setting="")
MAX_STEPS = 10_000  # loop iterations and calls per rendered scalar
MAX_BUILT = 1_000_000  # characters built per rendered scalar: operations, joins and output


@dataclass
class _Budget:
    """What one rendering has spent."""

    steps: int = 0
    built: int = 0


_BUDGET: ContextVar[_Budget] = ContextVar("template_budget")


def _spend(steps: int = 0, built: int = 0) -> None:
    budget = _BUDGET.get()
    budget.steps += steps
    budget.built += built
    if budget.steps > MAX_STEPS:
        raise LimitExceeded("the number of loop iterations and calls", budget.steps, MAX_STEPS,
                            "steps", "")
    if budget.built > MAX_BUILT:
        raise LimitExceeded("the number of characters built", budget.built, MAX_BUILT,
                            "characters", "")


class _TemplateBounds(Bounds):
    """Bounds whose checked sizes also count against the rendering's ``_Budget``."""

    def string(self, n: int, what: str = "the string's length") -> None:
        super().string(n, what)
        _spend(built=n)


class _BudgetedCode(CodeGenerator):
    """Jinja's code generator, except that loops and ``~`` go through the budget."""

    def visit_For(self, node: nodes.For, frame: Frame) -> None:
        node.iter = nodes.Call(nodes.EnvironmentAttribute("counted"), [node.iter], [], None, None,
                               lineno=node.iter.lineno)
        super().visit_For(node, frame)

    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:
        self.write("environment.concat((")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("))")


class _TemplateSandbox(BoundedSandbox):
    """The bounded sandbox of load-time templates, counting steps and characters built."""

    code_generator_class = _BudgetedCode
    bounds_class = _TemplateBounds

    def __init__(self) -> None:
        super().__init__(TEMPLATE_LIMITS, undefined=StrictUndefined, autoescape=False,
                         keep_trailing_newline=True, optimized=False)
        for name in ("lipsum", "namespace"):
            del self.globals[name]

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805
        _spend(steps=1)
        return super().call(__context, __obj, *args, **kwargs)

    @staticmethod
    def counted(items: Iterable) -> Iterable:
        for item in items:
            _spend(steps=1)
            yield item

    @staticmethod
    def concat(parts: tuple) -> str:
        texts = [str(p) for p in parts]
        size = sum(map(len, texts))
        TEMPLATE_BOUNDS.string(size, "the concatenated string's length")
        return "".join(texts)


_JINJA = _TemplateSandbox()
TEMPLATE_BOUNDS = _JINJA.bounds
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
    token = _BUDGET.set(_Budget())
    try:
        return _render(text, env)
    except LimitExceeded as e:
        raise TemplateProblem(f"template too large: {e}",
                              hint="templates fill in values from the environment; they may "
                                   "not build large values or loop long",
                              line=_template_line(e)) from None
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
        raise TemplateProblem(f"template failed: {type(e).__name__}: {e}",
                              line=_template_line(e)) from None
    finally:
        _BUDGET.reset(token)


def _render(text: str, env: Mapping[str, str]) -> str:
    """The rendered ``text``, its output counted against the budget as it is produced."""
    parts = []
    for part in _JINJA.from_string(text).generate(env=_Env(env)):
        TEMPLATE_BOUNDS.string(len(part), "the rendered text's length")
        parts.append(part)
    return "".join(parts)


def _template_line(exc: BaseException) -> int:
    """The template line where ``exc`` was raised (Jinja rewrites tracebacks to it), else 1."""
    tb, line = exc.__traceback__, 1
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == "<template>":
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


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
