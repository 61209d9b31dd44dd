"""Bounds on what per-event expressions and load-time templates may build.

A topology is untrusted input: one event or one small file must not take a process down.
Jinja's sandbox keeps code from escaping; this module keeps it from exhausting memory or CPU.
The operations whose result can be much larger than their inputs, or whose cost does not
follow their size, check the size of their result *before* computing it (Jinja's sandbox does
the same for ``range`` with ``MAX_RANGE`` and offers ``intercepted_binops`` for operators):

- sequence repetition (``'#' * n``, ``[x] * n``) and ``**`` on integers (the number of digits
  of the result is known from the operands, so ``10 ** (10 ** 10)`` is refused at once);
- printf widths and precisions (``'%9999s' % x``, the ``format`` filter) and ``str.format``
  fields (``'{:9999}'.format(x)``, through a ``SandboxedFormatter``);
- the string methods and filters that pad, fill, repeat or join: ``center``, ``ljust``,
  ``rjust``, ``zfill``, ``expandtabs``, ``replace``, ``translate``, ``join``, ``indent``,
  ``wordwrap``, ``batch``/``slice``, ``sum`` with a start, ``tojson`` with an indent;
- ``range``.

Every other operation builds at most what its operands hold, so what an expression builds is
bounded by (its length) x max(its inputs, the limits). A violation raises ``LimitExceeded``
naming the limit and the setting that raises it; it is an ordinary error of the expression, so
at run time it follows the pipeline's ``on_error``.

Sizes are counted by ``size_of``: a string's characters, a collection's items plus theirs, so
``[s] * n`` counts ``s`` ``n`` times (its ``join`` or ``string`` would write it ``n`` times).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping

from jinja2 import filters as jinja_filters
from jinja2.sandbox import ImmutableSandboxedEnvironment, SandboxedFormatter
from jinja2.utils import pass_environment, pass_eval_context

from edm_runner.errors import EdmError

__all__ = ["Limits", "LimitExceeded", "BoundedSandbox", "Bounds", "DEFAULT", "size_of"]


@dataclass(frozen=True)
class Limits:
    """The largest string (characters), collection (items) and integer (decimal digits) an
    expression may build. ``setting`` names where a user raises them (in messages)."""

    max_string_length: int = 1_000_000
    max_items: int = 100_000
    max_int_digits: int = 4_300  # Python's own limit for converting ints to and from text
    setting: str = "processing.expression_limits"

    @classmethod
    def from_config(cls, config: Any) -> "Limits":
        """The limits of a ``processing.expression_limits`` mapping; what is not a positive
        integer there (the schema reports it) keeps its default."""
        if not isinstance(config, Mapping):
            return DEFAULT
        return cls(**{name: value for name, value in config.items()
                      if name in _CONFIGURABLE and type(value) is int and value > 0})


_CONFIGURABLE = ("max_string_length", "max_items", "max_int_digits")

LIMITS_SCHEMA: dict = {
    "type": "object", "additionalProperties": False,
    "description": "Bounds on what one expression may build for one event, so that no event can "
                   "exhaust the service's memory or CPU: an event that would exceed them fails "
                   "with an error that follows on_error.",
    "properties": {
        "max_string_length": {"type": "integer", "minimum": 1, "description":
                              "Longest string (characters) an expression may build, and widest "
                              "format or padding (default 1000000)."},
        "max_items": {"type": "integer", "minimum": 1, "description":
                      "Most items of a list or range an expression may build (default 100000)."},
        "max_int_digits": {"type": "integer", "minimum": 1, "description":
                           "Most decimal digits of an integer computed with ** (default 4300)."},
    },
}


class LimitExceeded(EdmError):
    """An expression or template would build something larger than its ``Limits`` allow."""

    def __init__(self, what: str, size: int, limit: int, name: str, setting: str):
        raise_it = f"; raise {setting}.{name} if this is intended" if setting else ""
        super().__init__(f"{what} would be {size:,}, over the limit of {limit:,} ({name}{raise_it})")
        self.size, self.limit, self.name = size, limit, name


_SEQUENCES = (str, list, tuple)
_INTS = (int, bool)


def size_of(obj: Any, budget: int) -> int:
    """What ``obj`` holds: a string's characters, a collection's items plus what they hold,
    an int's digits, 1 for anything else. Counting stops once past ``budget``."""
    total, stack = 0, [obj]
    while stack and total <= budget:
        o = stack.pop()
        t = type(o)
        if t is str or t is bytes:
            total += len(o)
        elif t is list or t is tuple or t is set or t is frozenset:
            total += len(o)
            stack.extend(o)
        elif t is dict:
            total += len(o)
            stack.extend(o.keys())
            stack.extend(o.values())
        elif t is int:
            total += int(o.bit_length() * 0.30103) + 1
        else:
            total += 1
    return total


# %[(name)][flags][width][.precision][length]type
_PRINTF = re.compile(r"%(?:\([^)]*\))?[-#0 +]*(\*|\d+)?(?:\.(\*|\d+))?[hlL]?(.?)", re.S)
_DIGITS = re.compile(r"\d+")


class Bounds:
    """The checks of one ``Limits``; the bounded operations call them before building.
    ``env`` is the sandbox that ``str.format`` fields are looked up with."""

    def __init__(self, limits: Limits, env: ImmutableSandboxedEnvironment):
        self.limits = limits
        self.env = env

    # -- the limits ---------------------------------------------------------------------------

    def string(self, n: int, what: str = "the string's length") -> None:
        if n > self.limits.max_string_length:
            raise LimitExceeded(what, n, self.limits.max_string_length, "max_string_length",
                                self.limits.setting)

    def items(self, n: int, what: str = "the number of items") -> None:
        if n > self.limits.max_items:
            raise LimitExceeded(what, n, self.limits.max_items, "max_items", self.limits.setting)

    def text_of(self, obj: Any, what: str) -> None:
        """``obj`` written out as text (joined, printed) stays within ``max_string_length``."""
        self.string(size_of(obj, self.limits.max_string_length), what)

    def width(self, n: Any, what: str = "a width") -> None:
        if type(n) in _INTS:
            self.string(n, what)

    # -- operators ----------------------------------------------------------------------------

    def mul(self, a: Any, b: Any) -> Any:
        """``a * b``; sequence repetition is checked first."""
        if type(b) in _INTS and type(a) in _SEQUENCES:
            self._repeat(a, b)
        elif type(a) in _INTS and type(b) in _SEQUENCES:
            self._repeat(b, a)
        return a * b

    def _repeat(self, seq: Any, n: int) -> None:
        if n <= 1:
            return
        if type(seq) is str:
            self.string(len(seq) * n, "the repeated string's length")
            return
        self.items(len(seq) * n, "the repeated list's number of items")
        self.string(size_of(seq, self.limits.max_string_length) * n,
                    "the size of the repeated list's contents")

    def pow(self, a: Any, b: Any) -> Any:
        """``a ** b``; for integers the result's digits are checked before computing it."""
        if type(a) in _INTS and type(b) in _INTS and b > 1 and abs(a) > 1:
            digits = b * math.log10(abs(a))
            if digits > self.limits.max_int_digits:
                raise LimitExceeded("the number of digits of the power", math.ceil(digits),
                                    self.limits.max_int_digits, "max_int_digits",
                                    self.limits.setting)
        return a ** b

    def mod(self, a: Any, b: Any) -> Any:
        """``a % b``; for a string, printf formatting, its widths are checked first."""
        if type(a) is str:
            self.printf(a, b)
        return a % b

    def printf(self, fmt: str, args: Any) -> None:
        """The widths and precisions of ``fmt % args`` (``*`` takes them from ``args``)."""
        if "%" not in fmt:
            return
        values = list(args) if type(args) is tuple else [args]
        index = 0
        for m in _PRINTF.finditer(fmt):
            for field in (m[1], m[2]):
                if field == "*":
                    self.width(values[index] if index < len(values) else 0,
                               "a width or precision of the format")
                    index += 1
                elif field:
                    self._digits(field)
            if m[3] != "%":
                index += 1

    def _digits(self, text: str) -> None:
        self.string(int(text) if len(text) <= 18 else 10 ** 18,
                    "a width or precision of the format")

    def format_spec(self, spec: str) -> None:
        """A ``str.format`` field's spec: its width and precision (every number in it)."""
        for digits in _DIGITS.findall(spec):
            self._digits(digits)

    def range(self, *args: int) -> range:
        """``range`` with at most ``max_items`` items."""
        rng = range(*args)
        self.items(len(rng), "the range's number of items")
        return rng

    # -- string methods -----------------------------------------------------------------------

    def check_method(self, fn: Any, args: tuple, kwargs: dict) -> None:
        """Check a call of a growing ``str`` method (``'x'.center(n)``, ...) before it runs."""
        target = getattr(fn, "__self__", None)
        if type(target) is not str:
            return
        check = _STR_METHODS.get(getattr(fn, "__name__", ""))
        if check is not None:
            check(self, target, *args, **kwargs)

    def call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """``fn(*args, **kwargs)`` for a callable the sandbox allows: a growing ``str`` method
        is checked first, and ``str.format``/``format_map`` (as the sandbox wraps them) are
        formatted with every field's spec checked."""
        method = getattr(fn, "__wrapped__", fn)
        target = getattr(method, "__self__", None)
        if type(target) is str:
            name = getattr(method, "__name__", "")
            if name == "format":
                return self.format(target, args, kwargs)
            if name == "format_map" and len(args) == 1 and not kwargs:
                return self.format(target, (), args[0])
            self.check_method(method, args, kwargs)
        return fn(*args, **kwargs)

    def format(self, fmt: str, args: tuple, kwargs: Mapping[str, Any]) -> str:
        """``fmt.format(*args, **kwargs)`` under the sandbox, each field's spec checked."""
        return _BoundedFormatter(self).vformat(fmt, args, kwargs)


class _BoundedFormatter(SandboxedFormatter):
    def __init__(self, bounds: Bounds):
        super().__init__(bounds.env)
        self.bounds = bounds

    def format_field(self, value: Any, format_spec: str) -> Any:
        self.bounds.format_spec(format_spec)
        return super().format_field(value, format_spec)


def _pad(b: Bounds, s: str, width: Any = 0, *_: Any, **__: Any) -> None:
    b.width(width, "the padded string's length")


def _expandtabs(b: Bounds, s: str, tabsize: Any = 8, *_: Any, **__: Any) -> None:
    if type(tabsize) in _INTS:
        b.string(len(s) + s.count("\t") * tabsize, "the string's length with tabs expanded")


def _replace(b: Bounds, s: str, old: Any = "", new: Any = "", count: Any = -1, *_: Any,
             **__: Any) -> None:
    if type(old) is str and type(new) is str and len(new) > len(old):
        n = s.count(old) if old else len(s) + 1
        if type(count) in _INTS and count >= 0:
            n = min(n, count)
        b.string(len(s) + n * (len(new) - len(old)), "the string's length after replace")


def _translate(b: Bounds, s: str, table: Any = None, *_: Any, **__: Any) -> None:
    if isinstance(table, Mapping):
        longest = max((len(v) for v in table.values() if type(v) is str), default=1)
        b.string(len(s) * longest, "the translated string's length")


def _join(b: Bounds, sep: str, items: Any = (), *_: Any, **__: Any) -> None:
    if type(items) in (list, tuple):
        b.string(size_of(items, b.limits.max_string_length) + len(sep) * len(items),
                 "the joined string's length")


_STR_METHODS: dict[str, Callable[..., None]] = {
    "center": _pad, "ljust": _pad, "rjust": _pad, "zfill": _pad, "expandtabs": _expandtabs,
    "replace": _replace, "translate": _translate, "join": _join,
}


# -- filters ---------------------------------------------------------------------------------

def _bounded_filters(b: Bounds) -> dict[str, Callable[..., Any]]:
    """Jinja's growing filters, each checking its result's size first (same signatures)."""
    f = jinja_filters

    def center(value: Any, width: int = 80) -> str:
        b.width(width, "the centered string's length")
        return f.do_center(value, width)

    def indent(s: Any, width: Any = 4, first: bool = False, blank: bool = False) -> str:
        text = str(s)
        pad = width if type(width) in _INTS else len(str(width))
        b.string(len(text) + (text.count("\n") + 1) * max(pad, 0), "the indented string's length")
        return f.do_indent(s, width, first, blank)

    def format(value: Any, *args: Any, **kwargs: Any) -> str:
        b.printf(str(value), kwargs if kwargs else args)
        return f.do_format(value, *args, **kwargs)

    @pass_eval_context
    def join(eval_ctx: Any, value: Iterable, d: str = "", attribute: Any = None) -> str:
        items = value if type(value) in (list, tuple) else list(_take(value, b))
        _join(b, str(d), items)
        return f.sync_do_join(eval_ctx, items, d, attribute)

    @pass_environment
    def sum(environment: Any, iterable: Iterable, attribute: Any = None, start: Any = 0) -> Any:
        if type(start) in _SEQUENCES:
            items = list(_take(iterable, b))
            b.text_of([start, items], "the size of the sum")
            iterable = items
        return f.sync_do_sum(environment, iterable, attribute, start)

    def batch(value: Iterable, linecount: int, fill_with: Any = None) -> Any:
        if fill_with is not None:
            b.items(linecount, "a batch's number of items")
        return f.do_batch(value, linecount, fill_with)

    def slice(value: Iterable, slices: int, fill_with: Any = None) -> Any:
        b.items(slices, "the number of slices")
        return f.sync_do_slice(value, slices, fill_with)

    @pass_eval_context
    def replace(eval_ctx: Any, s: str, old: str, new: str, count: Any = None) -> str:
        _replace(b, str(s), old, new, -1 if count is None else count)
        return f.do_replace(eval_ctx, s, old, new, count)

    @pass_eval_context
    def tojson(eval_ctx: Any, value: Any, indent: Any = None) -> Any:
        if type(indent) in _INTS:
            b.string(size_of(value, b.limits.max_string_length) * (1 + max(indent, 0)),
                     "the JSON text's length")
        return f.do_tojson(eval_ctx, value, indent)

    @pass_environment
    def wordwrap(environment: Any, s: str, width: int = 79, break_long_words: bool = True,
                 wrapstring: Any = None, break_on_hyphens: bool = True) -> str:
        if type(wrapstring) is str and type(width) in _INTS and width > 0:
            b.string(len(s) + (len(s) // width + 1) * len(wrapstring),
                     "the wrapped string's length")
        return f.do_wordwrap(environment, s, width, break_long_words, wrapstring,
                             break_on_hyphens)

    return {"center": center, "indent": indent, "format": format, "join": join, "sum": sum,
            "batch": batch, "slice": slice, "replace": replace, "tojson": tojson,
            "wordwrap": wordwrap}


def _take(items: Iterable, b: Bounds) -> Iterable:
    """``items``, refusing more than ``max_items`` of them."""
    for n, item in enumerate(items):
        if n >= b.limits.max_items:
            b.items(n + 1, "the number of items")
        yield item


# -- environments ----------------------------------------------------------------------------

class BoundedSandbox(ImmutableSandboxedEnvironment):
    """Jinja's immutable sandbox whose growing operations are bounded by ``limits``: the
    intercepted ``*``, ``**`` and ``%``, calls of growing ``str`` methods, ``str.format``,
    the growing filters and ``range``."""

    intercepted_binops = frozenset({"*", "**", "%"})
    bounds_class = Bounds

    def __init__(self, limits: Limits, **options: Any):
        super().__init__(**options)
        self.bounds = self.bounds_class(limits, self)
        self.filters.update(_bounded_filters(self.bounds))
        self.globals["range"] = self.bounds.range
        self._binops = {"*": self.bounds.mul, "**": self.bounds.pow, "%": self.bounds.mod}

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        return self._binops[operator](left, right)

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805
        __self.bounds.check_method(__obj, args, kwargs)
        return super().call(__context, __obj, *args, **kwargs)

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        if super().wrap_str_format(value) is None:
            return None
        fmt, bounds = value.__self__, self.bounds

        def bounded_format(*args: Any, **kwargs: Any) -> str:
            if value.__name__ == "format_map":
                if kwargs or len(args) != 1:
                    raise TypeError("format_map() takes exactly one argument")
                return bounds.format(fmt, (), args[0])
            return bounds.format(fmt, args, kwargs)

        bounded_format.__wrapped__ = value  # type: ignore[attr-defined]  # see Bounds.call
        return bounded_format


DEFAULT = Limits()
