"""Per-event expressions: Jinja2 expression syntax compiled once to a plain Python function.

``compile_expression("value.total > 100")`` parses the source with Jinja2's parser (on an
``ImmutableSandboxedEnvironment``), translates the Jinja AST to Python source and compiles it
once. Calling the result costs about what the same logic written as a lambda costs, instead
of the ~8 us per call of Jinja's own ``compile_expression``.

Semantics (what users see):
- ``a.b`` on a dict is ``a.get('b')``: a missing field is ``None`` (never an error), and
  ``None.b`` is ``None`` too, so ``value.x is none`` works at any depth. ``value.x is defined``
  is true when the key exists (even with a null value). On other objects ``a.b`` is Jinja's
  sandboxed lookup: attribute, then item.
- ``a['b']`` / ``a[i]`` / ``a[i:j]``: item, then (for string keys) sandboxed attribute;
  missing -> ``None``.
- ``x | default(y)`` also replaces ``None`` (missing fields are ``None``, not Undefined).
- ``a ~ b`` concatenates ``str(a)`` and ``str(b)``; ``None`` becomes ``'None'`` as in Jinja.
- Free names: the parameters (``key``, ``value``, ``event``; some operators add ``aggregate``
  or ``other``: all are in ``PARAMETERS``), the declared functions, the metadata names of
  ``METADATA`` (compiled to attributes of the event parameter), ``range`` and ``dict``.
  Anything else is a compile-time ``ExpressionError``. A function may not take a name that
  the language already binds or reads as a keyword (``function_name_problem``).
- ``lambda`` is not part of the language: its use is refused with a message saying so.

Sandbox invariants (the guarantees of Jinja's ``ImmutableSandboxedEnvironment``):
- an attribute or item written as a literal may not start with ``_`` (compile-time error);
- every run-time attribute lookup on a non-dict object goes through the sandbox's
  ``is_safe_attribute`` (no ``_``-names, no internals, no mutating methods of
  list/dict/set), and ``str.format``/``format_map`` are replaced by sandboxed formatters;
- method calls and calls of computed values check ``is_safe_callable``;
- declared functions are the user's own trusted code and are called directly.
The compiled function holds no mutable state: it is safe to call from many events at once.
"""
from __future__ import annotations

import difflib
import functools
import keyword
import operator
import re
from typing import Any, Callable, Iterator, Mapping, NoReturn

from jinja2 import nodes
from jinja2.exceptions import SecurityError, TemplateSyntaxError
from jinja2.lexer import Token, TokenStream, ignored_tokens
from jinja2.parser import Parser
from jinja2.runtime import Undefined, new_context
from jinja2.utils import _PassArg

from edm_runner.errors import EdmError, EventError, UserCodeError
from edm_runner.language.limits import DEFAULT, BoundedSandbox, LimitExceeded, Limits

__all__ = ["ExpressionError", "compile_expression", "function_name_problem", "METADATA",
           "PARAMETERS", "SAFE_GLOBALS"]


class ExpressionError(EdmError):
    """An expression cannot be compiled. ``col`` is a 1-based character position inside the
    expression's source (``None`` when unknown), for mapping back into the YAML file."""

    def __init__(self, message: str, col: int | None = None):
        super().__init__(message)
        self.message = message
        self.col = col


# Metadata names -> Python source over the event parameter (``{e}``), an operators.api.Event:
# ``timestamp``, ``header_map`` (headers as dict str->str), ``origin`` (a Record or None).
METADATA: dict[str, str] = {
    "timestamp": "{e}.timestamp",
    "headers": "{e}.header_map",
    "topic": "(None if {e}.origin is None else {e}.origin.topic)",
    "partition": "(None if {e}.origin is None else {e}.origin.partition)",
    "offset": "(None if {e}.origin is None else {e}.origin.offset)",
}


def _unsafe(obj: Any, name: str) -> NoReturn:
    raise SecurityError(f"access to attribute {name!r} of {type(obj).__name__!r} object is unsafe")


def _default(value: Any, default_value: Any = "", boolean: bool = False) -> Any:
    """Jinja's ``default`` filter, also replacing None (a missing field is None here)."""
    if value is None or isinstance(value, Undefined) or (boolean and not value):
        return default_value
    return value


class _Sandbox(BoundedSandbox):
    """Jinja's immutable sandbox bounded by ``limits`` (``spec.limits``), except that reaching
    an unsafe attribute raises at once: Jinja returns an Undefined that renders as '' (e.g.
    ``"{0.__class__}".format(x)``)."""

    def __init__(self, limits: Limits):
        super().__init__(limits)
        self.filters["default"] = self.filters["d"] = _default

    def unsafe_undefined(self, obj: Any, attribute: str) -> NoReturn:
        _unsafe(obj, attribute)


@functools.lru_cache(maxsize=None)
def _env(limits: Limits) -> _Sandbox:
    """The sandbox of expressions compiled with ``limits`` (one per distinct limits)."""
    return _Sandbox(limits)


@functools.lru_cache(maxsize=None)
def _pass_args(env: _Sandbox) -> dict[_PassArg, Any]:
    """What pass_context / pass_eval_context / pass_environment filters and tests receive."""
    context = new_context(env, "<expression>", {}, {}, shared=True)
    return {_PassArg.context: context, _PassArg.eval_context: nodes.EvalContext(env),
            _PassArg.environment: env}


_ENV = _env(DEFAULT)
SAFE_GLOBALS: dict[str, Any] = {"range": _ENV.globals["range"], "dict": dict}
# Every parameter name an expression is compiled with (each operator passes a subset).
PARAMETERS = frozenset({"key", "value", "event", "aggregate", "other"})
# Names Jinja's parser reads as constants, never as a name.
_CONSTANTS = frozenset({"true", "false", "none", "True", "False", "None"})


def function_name_problem(name: str) -> str | None:
    """Why a declared function cannot be called ``name`` in expressions, else None: the name
    is private (``_``), a keyword, or one the language binds (parameters, metadata, globals),
    so calls could never reach the function or the function would hide that name."""
    if name.startswith("_"):
        return "starts with '_', which expressions treat as private"
    if keyword.iskeyword(name) or name in _CONSTANTS:
        return "is a keyword of the expression language"
    bound = sorted(PARAMETERS | METADATA.keys() | SAFE_GLOBALS.keys())
    if name in bound:
        return f"is already a name in expressions (the names are {', '.join(bound)})"
    return None



# ---- run-time helpers bound into compiled expressions ---------------------------------------

def _attr(obj: Any, name: str) -> Any:
    """``obj.name`` on a non-dict: sandboxed attribute, then item; missing -> None."""
    if obj is None:
        return None
    try:
        value = getattr(obj, name)
    except AttributeError:
        try:
            return obj[name]
        except (TypeError, LookupError):
            return None
    fmt = _ENV.wrap_str_format(value)
    if fmt is not None:
        return fmt
    if not _ENV.is_safe_attribute(obj, name, value):
        _unsafe(obj, name)
    return value


def _item(obj: Any, arg: Any) -> Any:
    """``obj[arg]``: item, then sandboxed attribute for string args; missing -> None."""
    if type(obj) is dict:
        return obj.get(arg)
    if obj is None:
        return None
    try:
        return obj[arg]
    except (TypeError, LookupError):
        if isinstance(arg, str):
            return _attr(obj, arg)
        return None


def _has(obj: Any, name: Any) -> bool:
    """``obj.name is defined``: the key exists (dicts) or a safe attribute/item exists."""
    if type(obj) is dict:
        return name in obj
    if obj is None:
        return False
    try:
        obj[name]
        return True
    except (TypeError, LookupError):
        pass
    if not isinstance(name, str):
        return False
    try:
        value = getattr(obj, name)
    except AttributeError:
        return False
    return _ENV.is_safe_attribute(obj, name, value)


def _method(obj: Any, name: str) -> Any:
    """``obj.name`` as the callee of a call: Jinja lookup (attribute first, also on dicts)."""
    value = _attr(obj, name)
    if value is None:
        raise TypeError(f"{type(obj).__name__!r} object has no method {name!r}")
    return value


def _caller(env: _Sandbox) -> Callable[..., Any]:
    """Calls of computed callables (methods, items) under the sandbox's rules and bounds."""
    call = env.bounds.call

    def _call(fn: Any, *args: Any, **kwargs: Any) -> Any:
        if not env.is_safe_callable(fn):
            raise SecurityError(f"{fn!r} is not safely callable")
        return call(fn, *args, **kwargs)

    return _call


def _map_fields(seq: Any, name: str) -> Iterator[Any]:
    """``seq | map(attribute=name)`` with edm's field semantics (missing -> None)."""
    for item in seq:
        yield item.get(name) if type(item) is dict else _item(item, name)


# Everything compiled code can reach besides its parameters: it runs with no builtins.
_HELPERS: dict[str, Any] = {
    "_type": type, "_dict": dict, "_slice": slice, "_str": str, "_len": len, "_sum": sum,
    "_list": list, "_map": map, "_map_fields": _map_fields, "_retry": (LookupError, TypeError),
    "_attr": _attr, "_item": _item, "_has": _has, "_method": _method,
    "_num": frozenset({int, float, bool, type(None)}),
}


# ---- source positions ------------------------------------------------------------------------

class _Tokens:
    """Tokenizes ``source`` once, remembering each token's character offset, and feeds the
    parser through a stream that records the offset of the token it is looking at."""

    def __init__(self, source: str):
        self.source = source
        self.offsets: list[tuple[int, str, str]] = []  # (offset, type, raw text)
        self.current = 0  # offset of the token the parser is looking at
        self._raw: list[tuple[int, str, str]] = []  # what Jinja's lexer yields
        offset = 0
        try:
            for lineno, kind, text in _ENV.lexer.tokeniter(source, None, None, "variable"):
                self._raw.append((lineno, kind, text))
                self.offsets.append((offset, kind, text))
                offset += len(text)
        except TemplateSyntaxError as exc:
            raise ExpressionError(_syntax_message(exc), offset + 1) from None

    def stream(self) -> TokenStream:
        significant = [o for o, kind, _ in self.offsets if kind not in ignored_tokens]

        def positioned() -> Iterator[Token]:
            for index, token in enumerate(_ENV.lexer.wrap(iter(self._raw))):
                self.current = significant[index] if index < len(significant) else len(self.source)
                yield token
            self.current = len(self.source)

        return TokenStream(positioned(), None, None)

    def free_name_col(self, name: str) -> int | None:
        """1-based position of the first ``name`` token that is not an attribute (``a.name``)."""
        previous = ""
        for offset, kind, raw in self.offsets:
            if kind == "name" and raw == name and previous != ".":
                return offset + 1
            if kind not in ignored_tokens:
                previous = raw
        return None

    def col_of(self, text: str) -> int | None:
        """1-based position of the first name or string token whose value is ``text``."""
        for offset, kind, raw in self.offsets:
            if (kind == "name" and raw == text) or (kind == "string" and raw[1:-1] == text):
                return offset + 1
        return None


def _syntax_message(exc: TemplateSyntaxError) -> str:
    # Jinja speaks of templates and print statements, and appends offsets we report as col.
    message = re.sub(r" at \d+$", "", exc.message or "invalid syntax")
    message = message.replace("'end of template'", "end of the expression")
    message = message.replace("end of print statement", "end of the expression")
    return f"invalid expression: {message}"


# ---- translation -----------------------------------------------------------------------------

_BINOPS = {nodes.Add: "+", nodes.Sub: "-", nodes.Mul: "*", nodes.Div: "/", nodes.FloorDiv: "//",
           nodes.Mod: "%", nodes.Pow: "**", nodes.And: "and", nodes.Or: "or"}
_UNOPS = {nodes.Not: "not ", nodes.Neg: "-", nodes.Pos: "+"}
_CMPOPS = {"eq": "==", "ne": "!=", "gt": ">", "gteq": ">=", "lt": "<", "lteq": "<=",
           "in": "in", "notin": "not in"}
_LITERALS = (str, int, float, bool, type(None))
# Filters whose whole meaning fits in a Python expression, saving a call per event.
_INLINE_FILTERS = {"upper": "_str({}).upper()", "lower": "_str({}).lower()",
                   "length": "_len({})", "count": "_len({})", "sum": "_sum({})",
                   "list": "_list({})"}


def _never_a_sequence(node: nodes.Expr) -> bool:
    """True when ``node`` evaluates to a number or a bool, or raises, but never to a string,
    list or tuple (so ``*`` with it cannot repeat a sequence beyond its operand's size)."""
    if isinstance(node, nodes.Const):
        return type(node.value) in (int, float, bool)
    if isinstance(node, (nodes.Sub, nodes.Div, nodes.FloorDiv, nodes.Neg, nodes.Pos,
                         nodes.Compare, nodes.Not, nodes.Test)):
        return True
    if isinstance(node, nodes.Mul):
        return _never_a_sequence(node.left) and _never_a_sequence(node.right)
    return False


def _map_field(node: nodes.Filter) -> str | None:
    """The field of ``seq | map(attribute='field')`` (one plain name), else None."""
    if node.name != "map" or node.args or node.dyn_args or node.dyn_kwargs \
            or len(node.kwargs) != 1:
        return None
    kw = node.kwargs[0]
    if kw.key != "attribute" or not isinstance(kw.value, nodes.Const):
        return None
    field = kw.value.value
    return field if isinstance(field, str) and field.isidentifier() else None


class _Translator:
    """Jinja expression AST -> one Python expression string plus the values it closes over.

    Two modes. The exact mode implements the semantics of the module docstring. The ``fast``
    mode reads every field as a plain subscript (``value['total']``): on JSON data it gives
    the same result whenever it raises nothing, and a missing key or a non-container raises
    LookupError/TypeError, upon which the compiled function re-evaluates in exact mode.
    Attributes of the event parameter (an object, not JSON) stay exact in both modes.
    """

    def __init__(self, tokens: _Tokens, names: dict[str, str], functions: Mapping[str, Callable],
                 event_param: str | None, env: _Sandbox):
        self.tokens = tokens
        self.env = env
        self.names = names  # free name -> Python source
        self.event_param = event_param
        self.fast = False
        self.calls_functions = False  # re-evaluation would repeat the user's side effects
        self.bindings: dict[str, Any] = dict(_HELPERS)
        for name, fn in functions.items():
            self.bindings[f"_fn_{name}"] = fn
        for name in SAFE_GLOBALS:
            self.bindings[f"_g_{name}"] = env.globals[name]
        bounds = env.bounds
        self.bindings.update(_call=_caller(env), _mul=bounds.mul, _pow=bounds.pow, _mod=bounds.mod)
        self.temps = 0
        self.bound: dict[tuple[str, str], list[str]] = {}

    def fail(self, message: str, near: str | None = None) -> NoReturn:
        raise ExpressionError(message, self.tokens.col_of(near) if near is not None else None)

    def temp(self) -> str:
        self.temps += 1
        return f"_t{self.temps}"

    def bind(self, prefix: str, value: Any) -> str:
        name = f"{prefix}{len(self.bindings)}"
        self.bindings[name] = value
        return name

    def check_name(self, name: Any) -> None:
        if isinstance(name, str) and name.startswith("_"):
            self.fail(f"access to {name!r} is not allowed: names starting with '_' are private",
                      name)

    def visit(self, node: nodes.Node) -> str:
        method = getattr(self, f"visit_{type(node).__name__}", None)
        if method is None:
            self.fail(f"{type(node).__name__} is not supported in expressions")
        return method(node)

    def visit_Const(self, node: nodes.Const) -> str:
        if type(node.value) in _LITERALS:
            return repr(node.value)
        return self.bind("_c", node.value)

    def visit_Name(self, node: nodes.Name) -> str:
        source = self.names.get(node.name)
        if source is None:
            allowed = ", ".join(self.names)
            self.fail(f"unknown name {node.name!r}; expressions can use {allowed} and the "
                      "functions declared under functions:", node.name)
        return source

    def visit_Getattr(self, node: nodes.Getattr) -> str:
        obj = self.visit(node.node)
        self.check_name(node.attr)
        if self.fast and obj != self.event_param:
            return f"{obj}[{node.attr!r}]"
        return self._lookup(obj, repr(node.attr), "_attr")

    def visit_Getitem(self, node: nodes.Getitem) -> str:
        obj = self.visit(node.node)
        if isinstance(node.arg, nodes.Slice):
            parts = [self.visit(p) if p is not None else "None"
                     for p in (node.arg.start, node.arg.stop, node.arg.step)]
            if self.fast:
                return f"{obj}[{':'.join(parts)}]"
            return f"_item({obj}, _slice({', '.join(parts)}))"
        if isinstance(node.arg, nodes.Const) and type(node.arg.value) in _LITERALS:
            self.check_name(node.arg.value)
            key = repr(node.arg.value)
            return f"{obj}[{key}]" if self.fast else self._lookup(obj, key, "_item")
        arg = self.visit(node.arg)
        return f"{obj}[{arg}]" if self.fast else f"_item({obj}, {arg})"

    def _lookup(self, obj: str, key: str, slow: str) -> str:
        # JSON values are dicts: skip the helper call for them.
        if obj.isidentifier():
            return f"({obj}.get({key}) if _type({obj}) is _dict else {slow}({obj}, {key}))"
        t = self.temp()
        return f"({t}.get({key}) if _type({t} := {obj}) is _dict else {slow}({t}, {key}))"

    def visit_BinExpr(self, node: nodes.BinExpr) -> str:
        return f"({self.visit(node.left)} {_BINOPS[type(node)]} {self.visit(node.right)})"

    visit_Add = visit_Sub = visit_Div = visit_FloorDiv = visit_And = visit_Or = visit_BinExpr

    # The operators that can build far more than their operands go through ``spec.limits``;
    # ``*`` and ``%`` inline the common case (numbers) and call the bounded version otherwise.

    def visit_Mul(self, node: nodes.Mul) -> str:
        left, right = self.visit(node.left), self.visit(node.right)
        known = [_never_a_sequence(n) for n in (node.left, node.right)]
        if all(known) or any(isinstance(n, nodes.Const) and type(n.value) is float
                             for n in (node.left, node.right)):
            return f"({left} * {right})"  # no sequence can be repeated
        if known[0] and isinstance(node.left, nodes.Const):
            t = self.temp()
            return f"({left} * {t} if _type({t} := {right}) in _num else _mul({left}, {t}))"
        if known[1]:
            t = self.temp()
            return f"({t} * {right} if _type({t} := {left}) in _num else _mul({t}, {right}))"
        a, b = self.temp(), self.temp()  # left is evaluated first, then right, once each
        return (f"(({a} * {b} if _type({b} := {right}) in _num else _mul({a}, {b}))"
                f" if _type({a} := {left}) in _num else _mul({a}, {right}))")

    def visit_Mod(self, node: nodes.Mod) -> str:
        left, right = self.visit(node.left), self.visit(node.right)
        if isinstance(node.left, nodes.Const) and type(node.left.value) in (int, float):
            return f"({left} % {right})"
        t = self.temp()
        return f"({t} % {right} if _type({t} := {left}) in _num else _mod({t}, {right}))"

    def visit_Pow(self, node: nodes.Pow) -> str:
        return f"_pow({self.visit(node.left)}, {self.visit(node.right)})"

    def visit_UnaryExpr(self, node: nodes.UnaryExpr) -> str:
        return f"({_UNOPS[type(node)]}{self.visit(node.node)})"

    visit_Not = visit_Neg = visit_Pos = visit_UnaryExpr

    def visit_Compare(self, node: nodes.Compare) -> str:
        parts = [self.visit(node.expr)]
        for operand in node.ops:
            parts += [_CMPOPS[operand.op], self.visit(operand.expr)]
        return f"({' '.join(parts)})"

    def visit_Concat(self, node: nodes.Concat) -> str:
        # '%s' is str() of each element, in one operation.
        parts = [self.visit(n) for n in node.nodes]
        return f"({'%s' * len(parts)!r} % ({''.join(p + ', ' for p in parts)}))"

    def visit_CondExpr(self, node: nodes.CondExpr) -> str:
        otherwise = self.visit(node.expr2) if node.expr2 is not None else "None"
        return f"({self.visit(node.expr1)} if {self.visit(node.test)} else {otherwise})"

    def visit_List(self, node: nodes.List) -> str:
        return f"[{', '.join(self.visit(i) for i in node.items)}]"

    def visit_Tuple(self, node: nodes.Tuple) -> str:
        return f"({''.join(self.visit(i) + ', ' for i in node.items)})"

    def visit_Dict(self, node: nodes.Dict) -> str:
        items = ", ".join(f"{self.visit(p.key)}: {self.visit(p.value)}" for p in node.items)
        return f"{{{items}}}"

    def arguments(self, node: nodes.Call | nodes.Filter | nodes.Test, first: list[str]) -> str:
        args = first + [self.visit(a) for a in node.args]
        args += [f"**{{{kw.key!r}: {self.visit(kw.value)}}}" if keyword.iskeyword(kw.key)
                 else f"{kw.key}={self.visit(kw.value)}" for kw in node.kwargs]
        if node.dyn_args is not None:
            args.append(f"*{self.visit(node.dyn_args)}")
        if node.dyn_kwargs is not None:
            args.append(f"**{self.visit(node.dyn_kwargs)}")
        return ", ".join(args)

    def visit_Call(self, node: nodes.Call) -> str:
        callee = node.node
        if isinstance(callee, nodes.Name) and self.names.get(callee.name, "").startswith(
                ("_fn_", "_g_")):
            # Declared functions and safe globals are trusted: call them directly.
            self.calls_functions |= self.names[callee.name].startswith("_fn_")
            return f"{self.visit(callee)}({self.arguments(node, [])})"
        if isinstance(callee, nodes.Getattr):
            obj = self.visit(callee.node)
            self.check_name(callee.attr)
            fn = f"_method({obj}, {callee.attr!r})"
        else:
            fn = self.visit(callee)
        return f"_call({self.arguments(node, [fn])})"

    def _bound(self, kind: str, table: Mapping[str, Callable], name: str) -> list[str]:
        """The Python name of filter/test ``name`` plus any context argument it needs first."""
        if (kind, name) in self.bound:
            return self.bound[kind, name]
        fn = table.get(name)
        if fn is None:
            close = difflib.get_close_matches(name, list(table), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            self.fail(f"unknown {kind} {name!r}{hint}", name)
        if getattr(fn, "jinja_async_variant", False):
            fn = fn.__wrapped__  # the sync implementation, minus the is-async dispatch
        pass_arg = _PassArg.from_obj(fn)
        ref = self.bind(f"_{kind[0]}_{name}_", fn)
        bound = [ref] if pass_arg is None else [ref, self.bind("_p", _pass_args(self.env)[pass_arg])]
        self.bound[kind, name] = bound
        return bound

    def visit_Filter(self, node: nodes.Filter) -> str:
        plain = not (node.args or node.kwargs or node.dyn_args or node.dyn_kwargs)
        if plain and node.name in _INLINE_FILTERS:
            return _INLINE_FILTERS[node.name].format(self.visit(node.node))
        field = _map_field(node)
        if field is not None:
            self.check_name(field)
            if self.fast:
                getter = self.bind("_c", operator.itemgetter(field))
                return f"_map({getter}, {self.visit(node.node)})"
            return f"_map_fields({self.visit(node.node)}, {field!r})"
        if node.name not in ("default", "d"):
            fn, *first = self._bound("filter", self.env.filters, node.name)
            return f"{fn}({self.arguments(node, first + [self.visit(node.node)])})"
        # default() exists for missing fields: read its input leniently, even in fast mode.
        subject = self.lenient(node.node)
        if isinstance(node.node, (nodes.Getattr, nodes.Getitem, nodes.Name)) \
                and len(node.args) == 1 and not (node.kwargs or node.dyn_args or node.dyn_kwargs):
            # A field or a name is never Undefined, so default(x) is just a None check.
            t = self.temp()
            return f"({self.visit(node.args[0])} if ({t} := {subject}) is None else {t})"
        fn, *first = self._bound("filter", self.env.filters, node.name)
        return f"{fn}({self.arguments(node, first + [subject])})"

    def lenient(self, node: nodes.Expr) -> str:
        """``node``, where a missing last field is None instead of a fast-mode KeyError."""
        if not self.fast:
            return self.visit(node)
        if isinstance(node, nodes.Getattr):
            obj = self.visit(node.node)
            self.check_name(node.attr)
            return self._lookup(obj, repr(node.attr), "_attr")
        if isinstance(node, nodes.Getitem) and isinstance(node.arg, nodes.Const) \
                and type(node.arg.value) in _LITERALS:
            obj = self.visit(node.node)
            self.check_name(node.arg.value)
            return self._lookup(obj, repr(node.arg.value), "_item")
        return self.visit(node)

    def visit_Test(self, node: nodes.Test) -> str:
        if node.name in ("defined", "undefined") and not node.args and not node.kwargs:
            defined = self._defined(node.node)
            return defined if node.name == "defined" else f"(not {defined})"
        if node.name == "none" and not node.args:
            return f"({self.lenient(node.node)} is None)"
        fn, *first = self._bound("test", self.env.tests, node.name)
        return f"{fn}({self.arguments(node, first + [self.visit(node.node)])})"

    def _defined(self, node: nodes.Expr) -> str:
        if isinstance(node, nodes.Getattr):
            obj = self.visit(node.node)
            self.check_name(node.attr)
            return f"_has({obj}, {node.attr!r})"
        if isinstance(node, nodes.Getitem) and not isinstance(node.arg, nodes.Slice):
            if isinstance(node.arg, nodes.Const):
                self.check_name(node.arg.value)
            return f"_has({self.visit(node.node)}, {self.visit(node.arg)})"
        self.visit(node)  # still reject unknown names inside
        return "True"


def _free_names(params: tuple[str, ...], functions: Mapping[str, Callable],
                metadata_param: str | None) -> dict[str, str]:
    names = {p: p for p in params}
    for name in functions:
        names.setdefault(name, f"_fn_{name}")
    if metadata_param is not None:
        for name, template in METADATA.items():
            names.setdefault(name, template.format(e=metadata_param))
    for name in SAFE_GLOBALS:
        names.setdefault(name, f"_g_{name}")
    return names


def _closed(node: nodes.Node) -> bool:
    """True when ``node`` reads no input: no parameter, metadata or function, only literals
    and the safe globals."""
    return all(n.name in SAFE_GLOBALS for n in node.find_all(nodes.Name)) and not (
        isinstance(node, nodes.Name) and node.name not in SAFE_GLOBALS)


def _refuse_constant_bombs(node: nodes.Node, translator: _Translator) -> None:
    """Evaluate (bounded) each largest part of the expression that reads no input, so that a
    part that can only exceed the limits (``'#' * 10**10``) is a compile-time error, located
    at the smallest such part. Other errors are left to run time, where they concern events."""
    if isinstance(node, (nodes.Const, nodes.Name)):
        return
    if not _constant(node, translator):
        for child in node.iter_child_nodes():
            _refuse_constant_bombs(child, translator)
        return
    exc = _exceeds(node, translator)
    if exc is None:
        return
    # The innermost part that exceeds them (a descendant comes after its ancestors here).
    culprit = node
    for inner in node.find_all(nodes.Expr):
        if _constant(inner, translator) and _exceeds(inner, translator):
            culprit = inner
    callee = culprit.node if isinstance(culprit, nodes.Call) else None
    near = culprit.name if isinstance(culprit, nodes.Filter) else callee.attr \
        if isinstance(callee, nodes.Getattr) else callee.name if isinstance(callee, nodes.Name) else None
    translator.fail(str(exc), near)


def _constant(node: nodes.Node, translator: _Translator) -> bool:
    return not isinstance(node, (nodes.Const, nodes.Name)) and _closed(node) and \
        hasattr(translator, f"visit_{type(node).__name__}")


def _exceeds(node: nodes.Node, translator: _Translator) -> LimitExceeded | None:
    """The ``LimitExceeded`` that evaluating the constant ``node`` raises, else None."""
    source = translator.visit(node)
    namespace: dict[str, Any] = {"__builtins__": {}}
    try:
        exec(compile(f"def _const({', '.join(translator.bindings)}):\n    return {source}\n",
                     "<constant>", "exec"), namespace)
        namespace["_const"](*translator.bindings.values())
    except LimitExceeded as exc:
        return exc
    except Exception:
        pass
    return None


def compile_expression(source: str, *, params: tuple[str, ...] = ("key", "value", "event"),
                       functions: Mapping[str, Callable] = {},
                       metadata_param: str | None = "event", user_errors: bool = False,
                       limits: Limits = DEFAULT) -> Callable:
    """Compile ``source`` once into a function taking ``params`` positionally.

    Raises ``ExpressionError`` (with ``col`` when known) for syntax errors, unknown names,
    filters or tests, private (``_``) attribute/item literals and unsupported constructs.
    ``params`` and ``functions`` names come from edm and the validated topology, so invalid
    ones are a programming error (ValueError). With ``user_errors`` (the runtime's setting)
    calling the result raises ``UserCodeError`` (the original exception inside) for anything
    the expression or a function it calls raises; otherwise the original exception.
    ``limits`` bound what the expression may build (``spec.limits``); a part of the expression
    that reads no input and exceeds them is refused here (``ExpressionError``).
    """
    for name in params:
        if name not in PARAMETERS:
            raise ValueError(f"{name!r} is not one of the expression PARAMETERS")
    for name in functions:
        if not name.isidentifier() or function_name_problem(name):
            raise ValueError(f"invalid expression function name {name!r}")
    if metadata_param is not None and metadata_param not in params:
        raise ValueError(f"metadata_param {metadata_param!r} is not one of {params}")
    if not source.strip():
        raise ExpressionError("empty expression; write e.g. value.total > 100", 1)

    tokens = _Tokens(source)
    if (col := tokens.free_name_col("lambda")) is not None:
        raise ExpressionError("lambdas are not part of the expression language: write the "
                              "expression itself (e.g. value.total * 2), or declare a Python "
                              "function under functions: and call it", col)
    parser = Parser(_ENV, source, state="variable")
    parser.stream = tokens.stream()
    try:
        tree = parser.parse_expression()
        if not parser.stream.eos:
            raise ExpressionError(
                f"unexpected {parser.stream.current.value!r} after the end of the expression",
                tokens.current + 1)
    except TemplateSyntaxError as exc:
        raise ExpressionError(_syntax_message(exc), tokens.current + 1) from None
    except RecursionError:
        raise ExpressionError("expression is too deeply nested") from None

    translator = _Translator(tokens, _free_names(params, functions, metadata_param), functions,
                             metadata_param, _env(limits))
    try:
        _refuse_constant_bombs(tree, translator)
        exact = translator.visit(tree)
        if not translator.calls_functions:
            translator.fast = True
            fast = translator.visit(tree)
    except RecursionError:
        raise ExpressionError("expression is too deeply nested") from None
    bindings = translator.bindings
    signature = ", ".join(params)
    if translator.calls_functions:
        body = f"        return {exact}\n"
    else:
        # _exact runs outside the except block so its errors carry no fast-path context.
        body = (f"        try:\n"
                f"            return {fast}\n"
                f"        except _retry:\n"
                f"            pass\n"
                f"        return _exact({signature})\n")
    if user_errors:
        # Whatever the expression raises is the user's (on_error applies); the outer try
        # costs nothing until something raises.
        body = ("        try:\n" + "".join(f"    {line}\n" for line in body.splitlines()) +
                "        except _EventError:\n"
                "            raise\n"
                "        except _Exception as exc:\n"
                "            raise _UserCodeError(exc) from exc\n")
    code = (f"def _make({', '.join(bindings)}):\n"
            f"    def _exact({signature}):\n"
            f"        return {exact}\n"
            f"    def _expression({signature}):\n"
            f"{body}"
            f"    return _expression\n")
    namespace: dict[str, Any] = {"__builtins__": {}, "_EventError": EventError, "_Exception": Exception,
                                 "_UserCodeError": UserCodeError}
    try:
        exec(compile(code, f"<expression {source!r}>", "exec"), namespace)
    except (RecursionError, MemoryError, SyntaxError) as exc:
        # Python's own limits (e.g. 200 nested parentheses) are lower than Jinja's.
        raise ExpressionError(f"expression is too deeply nested ({exc})") from None
    fn = namespace["_make"](*bindings.values())
    fn.__qualname__ = fn.__name__ = "expression"
    fn.__doc__ = source
    return fn
