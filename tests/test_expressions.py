"""Expressions: Jinja2 syntax compiled to Python, with Jinja's sandbox guarantees."""
from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from jinja2.exceptions import SecurityError

from edm_runner.brokers.base import Record
from edm_runner.errors import EdmError, UserCodeError
from edm_runner.operators.api import Event
from edm_runner.language.expressions import (METADATA, PARAMETERS, SAFE_GLOBALS, ExpressionError,
                                         compile_expression, function_name_problem)
from edm_runner.language.limits import LimitExceeded, Limits

ORDER = {
    "id": "o-1",
    "total": 150.5,
    "n": 12,
    "name": "Ada",
    "status": "paid",
    "note": None,
    "tags": ["vip", "eu"],
    "items": [{"sku": "a", "price": 10.0, "qty": 2}, {"sku": "b", "price": 2.5, "qty": 4}],
    "customer": {"id": "c-9", "address": {"city": "Gent", "country": "BE"}},
}


ORIGIN = Record("orders", 0, 0, b"k-1", b"{}", 1_700_000_000_000)


def ev(src: str, value: Any = ORDER, key: Any = "k-1", event: Event | None = None,
       **functions: Any) -> Any:
    fn = compile_expression(src, functions=functions)
    return fn(key, value, event or Event(key, value, 1_700_000_000_000, (), ORIGIN))


@pytest.mark.parametrize("src, expected", [
    ("value.total > 100", True),
    ("value.total <= 100", False),
    ("1 < value.n < 13", True),
    ("value.n == 12 and value.status != 'open'", True),
    ("value.n > 20 or not value.tags", False),
    ("value.name | upper", "ADA"),
    ("value.name | lower ~ '!'", "ada!"),
    ("value.items | map(attribute='price') | sum", 12.5),
    ("value.items | map(attribute='qty') | list", [2, 4]),
    ("value.items | selectattr('price', 'gt', 5) | map(attribute='sku') | first", "a"),
    ("value.tags | join(',')", "vip,eu"),
    ("value.tags | length", 2),
    ("'big' if value.n > 10 else 'small'", "big"),
    ("'big' if value.n > 100", None),
    ("value.tags[0]", "vip"),
    ("value.tags[-1]", "eu"),
    ("value.tags[0:1]", ["vip"]),
    ("value.tags.1", "eu"),
    ("value['customer']['address'].city", "Gent"),
    ("value.customer.address.country", "BE"),
    ("key ~ '-x'", "k-1-x"),
    ("key ~ value.n ~ none", "k-112None"),
    ("value.status in ['paid', 'shipped']", True),
    ("value.status not in ('paid',)", False),
    ("value.n * 2 + value.total / 2 - 1", 98.25),
    ("value.n // 5 % 2 ** 2", 2),
    ("-value.n", -12),
    ("{'id': key, 'city': value.customer.address.city, 'n': [value.n, 1]}",
     {"id": "k-1", "city": "Gent", "n": [12, 1]}),
    ("(value.n, key)", (12, "k-1")),
    ("range(3) | list", [0, 1, 2]),
    ("dict(a=value.n)", {"a": 12}),
    ("dict(class=value.status)", {"class": "paid"}),
    ("value.items() | list | length", 9),
    ("value.name.upper()", "ADA"),
    ("value.n is divisibleby 4", True),
    ("value.n is number and value.name is string", True),
    ("value.tags is in [['vip', 'eu']]", True),
    ("true and none is none", True),
])
def test_constructs(src: str, expected: Any) -> None:
    assert ev(src) == expected


@pytest.mark.parametrize("src, expected", [
    ("value.missing", None),
    ("value.missing is none", True),
    ("value.missing.deeper.still is none", True),
    ("value.note is none", True),
    ("value.note is defined", True),      # the key exists, with a null value
    ("value.missing is defined", False),
    ("value.missing is undefined", True),
    ("value.customer.address.zip is defined", False),
    ("value.customer.missing.zip is defined", False),
    ("value['customer'] is defined", True),
    ("key is defined", True),
    ("value.tags[5]", None),
    ("value.total + value.missing", TypeError),
    ("[value.items[0], {}] | map(attribute='qty') | list", [2, None]),
    ("value.items | map(attribute='weight') | select | list", []),
    ("value.missing | default('n/a')", "n/a"),
    ("value.note | default('n/a')", "n/a"),
    ("value.status | default('n/a')", "paid"),
    ("value.missing or 'fallback'", "fallback"),
])
def test_missing_fields_are_none(src: str, expected: Any) -> None:
    if expected is TypeError:
        with pytest.raises(TypeError, match="NoneType"):
            ev(src)
    else:
        assert ev(src) == expected


def test_dynamic_item_access() -> None:
    assert ev("value[value.which]", {"which": "a", "a": 1}) == 1
    assert ev("value.tags[value.n - 12]") == "vip"
    assert ev("value[key]", {"k-1": "yes"}) == "yes"


def test_non_dict_values_use_attribute_lookup() -> None:
    record = Record("orders", 3, 42, b"k", b"v", 5)
    assert ev("value.topic ~ '/' ~ value.partition", record) == "orders/3"
    assert ev("value.offset is defined and value.nothing is undefined", record) is True
    assert ev("value.upper()", "abc") == "ABC"


def test_metadata_names() -> None:
    origin = Record("orders", 2, 7, b"k", b"v", 1)
    event = Event("k", ORDER, 99, (("source", b"app"), ("trace", b"t-1")), origin)
    fn = compile_expression("[timestamp, headers.source, topic, partition, offset]")
    assert fn("k", ORDER, event) == [99, "app", "orders", 2, 7]
    # Events built by the runtime itself (no broker record behind them).
    assert fn("k", ORDER, Event("k", ORDER, 1, (), None)) == [1, None, None, None, None]
    assert ev("event.timestamp > 10") is True


def test_params_and_metadata_can_be_off() -> None:
    fn = compile_expression("value ~ aggregate", params=("value", "aggregate"), metadata_param=None)
    assert fn("a", "b") == "ab"
    with pytest.raises(ExpressionError, match="unknown name 'timestamp'"):
        compile_expression("timestamp", params=("value",), metadata_param=None)
    with pytest.raises(ValueError, match="PARAMETERS"):  # one list of every parameter name
        compile_expression("acc", params=("acc",), metadata_param=None)


@pytest.mark.parametrize("name", sorted(PARAMETERS | METADATA.keys() | SAFE_GLOBALS.keys()
                                        | {"if", "lambda", "none", "true", "False", "_f"}))
def test_a_function_cannot_take_a_name_expressions_bind(name: str) -> None:
    assert function_name_problem(name)
    with pytest.raises(ValueError):
        compile_expression("1", functions={name: len})


def test_lambdas_are_refused_by_name() -> None:
    for src, col in [("(lambda x: x)(value)", 2), ("value | map(lambda v: v)", 13)]:
        with pytest.raises(ExpressionError, match="lambdas are not part of the expression language") as info:
            compile_expression(src)
        assert info.value.col == col
    assert compile_expression("value.lambda")("k", {"lambda": 1}, None) == 1


def test_declared_functions_called_once_per_event() -> None:
    calls: list[Any] = []

    def risk(v: dict) -> int:
        calls.append(v["id"])
        return v["n"] * 2

    # A missing field after the call must not evaluate the call twice.
    fn = compile_expression("{'score': risk(value), 'zip': value.missing.zip}",
                            functions={"risk": risk})
    assert fn("k", ORDER, None) == {"score": 24, "zip": None}
    assert calls == ["o-1"]
    assert ev("value.items | map(attribute='price') | map('round') | list",
              risk=risk) == [10.0, 2.0]


def test_errors_raised_by_the_expression_propagate() -> None:
    with pytest.raises(TypeError):
        ev("value.missing > 3")
    with pytest.raises(ZeroDivisionError):
        ev("value.n / 0")


def test_compiled_function_is_reentrant() -> None:
    fn = compile_expression("{'id': value.id, 'double': value.n * 2}")
    results: list[Any] = []

    def work(i: int) -> None:
        results.extend(fn("k", {"id": i, "n": i}, None) == {"id": i, "double": 2 * i}
                       for _ in range(2000))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 8000 and all(results)


@pytest.mark.parametrize("src, col", [
    ("value.__class__", 7),
    ("value['__class__']", 7),
    ("''.__class__.__mro__", 4),
    ("value.x.__globals__", 9),
    ("range.__self__", 7),
    ("value._private", 7),
    ("value.__class__ is defined", 7),
    ("value.items.__len__()", 13),
])
def test_private_names_rejected_at_compile_time(src: str, col: int) -> None:
    with pytest.raises(ExpressionError, match="names starting with '_' are private") as info:
        compile_expression(src)
    assert info.value.col == col


@pytest.mark.parametrize("src, message", [
    ('"{0.__class__}".format(value)', "'__class__'"),
    ("'{0.items.__self__}'.format(value)", "'__self__'"),
    ("'{x.__class__}'.format_map({'x': value})", "'__class__'"),
    ("value.pop('n')", "'pop'"),
    ("value.update({'n': 1})", "'update'"),
    ("value.tags.append(1)", "'append'"),
    ("value.items | map(attribute=value.attr) | list", "'__init__'"),
    ("value.status | attr('__class__')", "'__class__'"),
])
def test_runtime_sandbox(src: str, message: str) -> None:
    data = {"attr": "__init__", **ORDER}
    with pytest.raises(SecurityError, match=message):
        compile_expression(src)("k", data, None)
    assert data["n"] == 12 and data["tags"] == ["vip", "eu"]  # nothing mutated


def test_dynamic_private_names() -> None:
    class Obj:
        attr = "__init__"

    with pytest.raises(SecurityError, match="'__init__'"):
        compile_expression("value[value.attr]")("k", Obj(), None)
    # On a dict a computed key is plain data: a missing one is None, never an attribute.
    assert compile_expression("value[value.attr]")("k", {"attr": "__init__"}, None) is None


def test_unsafe_callables_refused() -> None:
    class Store:
        def delete(self) -> None:
            raise AssertionError("must not be called")

        delete.alters_data = True  # type: ignore[attr-defined]

    with pytest.raises(SecurityError, match="not safely callable"):
        compile_expression("value.delete()")("k", Store(), None)


def test_unknown_names() -> None:
    with pytest.raises(ExpressionError) as info:
        compile_expression("value.n > limit", functions={"risk": len})
    assert info.value.col == 11
    assert "unknown name 'limit'" in str(info.value)
    assert "key, value, event" in str(info.value)
    assert "functions declared under functions:" in str(info.value)
    for name in ("__builtins__", "open", "lipsum", "cycler", "namespace", "self"):
        with pytest.raises(ExpressionError, match="unknown name"):
            compile_expression(f"{name}")


@pytest.mark.parametrize("src, col, message", [
    ("value.total >", 14, "unexpected end of the expression"),
    ("value.total > > 1", 15, "unexpected '>'"),
    ("value.x value", 9, "unexpected 'value' after the end of the expression"),
    ("value.x }} y", 9, "after the end of the expression"),
    ("'abc", 1, "unexpected char"),
    ("value.(", 8, "expected name or number"),
    ("value.name | uper", 14, "unknown filter 'uper'; did you mean 'upper'?"),
    ("value.n is evn", 12, "unknown test 'evn'"),
    ("   ", 1, "empty expression"),
])
def test_syntax_errors_have_a_column(src: str, col: int, message: str) -> None:
    with pytest.raises(ExpressionError) as info:
        compile_expression(src)
    assert message in str(info.value)
    assert info.value.col == col
    assert isinstance(info.value, EdmError)


def test_deep_nesting_is_an_expression_error() -> None:
    with pytest.raises(ExpressionError, match="too deeply nested"):
        compile_expression("(" * 5000 + "1" + ")" * 5000)


def test_invalid_parameters_are_programming_errors() -> None:
    with pytest.raises(ValueError):
        compile_expression("x", params=("_x",))
    with pytest.raises(ValueError):
        compile_expression("x", params=("value",), metadata_param="event")


ROOT = Path(__file__).resolve().parents[1]


def test_bench_cases_compute_what_their_lambdas_compute() -> None:
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from bench.expressions import CASES, make_events, risk

    rows = make_events(300)
    for name, source, baseline in CASES:
        fn = compile_expression(source, functions={"risk": risk})
        assert [fn(*row) for row in rows] == [baseline(*row) for row in rows], name


def test_bench_refuses_unknown_scenarios() -> None:
    proc = subprocess.run([sys.executable, "-m", "bench", "no-such-scenario"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "unknown scenario(s) no-such-scenario; available: " in proc.stderr
    assert "expressions" in proc.stderr.split("available: ")[1]


# -- resource bounds (spec.limits) -------------------------------------------------------------

@pytest.mark.parametrize("source, value, expected", [
    ("value.s * value.n", {"s": "ab", "n": 3}, "ababab"),
    ("value.n * value.s", {"s": "ab", "n": 2}, "abab"),
    ("value.l * 2", {"l": [1]}, [1, 1]),
    ("3 * value.s", {"s": "x"}, "xxx"),
    ("value.a * value.b", {"a": 2, "b": 1.5}, 3.0),
    ("value.a * 2.5", {"a": "x"}, None),  # TypeError: str * float, as in Python
    ("value.a ** 3", {"a": 2}, 8),
    ("value.a ** -1", {"a": 2}, 0.5),
    ("value.a % 3", {"a": 7}, 1),
    ("'%5s|%-3d|%.2f' % (value.s, value.a, value.f)", {"s": "ab", "a": 7, "f": 1.234},
     "   ab|7  |1.23"),
    ("'%*d' % (value.a, 1)", {"a": 3}, "  1"),
    ("'{:>5}{:.1f}'.format(value.s, value.f)", {"s": "ab", "f": 2.25}, "   ab2.2"),
    ("value.s | center(6)", {"s": "ab"}, "  ab  "),
    ("value.s.zfill(4)", {"s": "7"}, "0007"),
    ("value.l | join(',')", {"l": ["a", "b"]}, "a,b"),
    ("value.s | replace('a', 'xyz')", {"s": "aba"}, "xyzbxyz"),
    ("range(value.a) | list", {"a": 3}, [0, 1, 2]),
])
def test_bounded_operations_keep_their_meaning(source: str, value: dict, expected: object) -> None:
    fn = compile_expression(source)
    if expected is None:
        with pytest.raises(TypeError):
            fn(None, value, None)
    else:
        assert fn(None, value, None) == expected


@pytest.mark.parametrize("source, value, limit", [
    ("value.s * value.n", {"s": "#", "n": 10**10}, "max_string_length"),
    ("[value.s] * value.n", {"s": "#", "n": 10**6}, "max_items"),
    ("value.n ** value.n", {"n": 10**10}, "max_int_digits"),
    ("('%' ~ value.n ~ 's') % 1", {"n": 10**10}, "max_string_length"),
    ("('{:' ~ value.n ~ '}').format(1)", {"n": 10**10}, "max_string_length"),
    ("'{:{}}'.format(1, value.n)", {"n": 10**10}, "max_string_length"),
    ("'x'.rjust(value.n)", {"n": 10**10}, "max_string_length"),
    ("'x' | indent(value.n)", {"n": 10**10}, "max_string_length"),
    ("range(value.n)", {"n": 10**9}, "max_items"),
    ("([value.s] * 1000) | join", {"s": "x" * 10_000}, "max_string_length"),
])
def test_what_would_exceed_the_limits_raises_limit_exceeded(source: str, value: dict,
                                                            limit: str) -> None:
    with pytest.raises(LimitExceeded, match=f"{limit}; raise processing.expression_limits.{limit}"):
        compile_expression(source)(None, value, None)
    with pytest.raises(UserCodeError, match=f"^LimitExceeded: .*{limit}"):
        compile_expression(source, user_errors=True)(None, value, None)


@pytest.mark.parametrize("source, col", [
    ("'#' * 10**10", None), ("10 ** (10 ** 10)", None), ("'x' | center(10**10)", 7),
    ("value.a ~ ('%9999999999s' | format(1))", 29), ("{'a': range(10**9)}", 7),
    ("'{:9999999999}'.format(1)", 17),
])
def test_a_constant_part_over_the_limits_is_a_compile_error(source: str, col: int | None) -> None:
    with pytest.raises(ExpressionError, match="over the limit of") as info:
        compile_expression(source)
    assert info.value.col == col


def test_the_limits_are_configurable() -> None:
    source = "value.s * value.n"
    with pytest.raises(LimitExceeded):
        compile_expression(source)(None, {"s": "ab", "n": 600_000}, None)
    fn = compile_expression(source, limits=Limits(max_string_length=2_000_000))
    assert len(fn(None, {"s": "ab", "n": 600_000}, None)) == 1_200_000
    with pytest.raises(ExpressionError, match="the repeated string's length would be 20"):
        compile_expression("'#' * 20", limits=Limits(max_string_length=10))
