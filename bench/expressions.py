"""Scenario ``expressions``: edm-compiled expressions vs hand-written Python lambdas.

Each case is one typical predicate or mapping, evaluated over the same realistic
JSON-decoded events both ways; the results are checked equal before anything is timed.
Per case, ``ratio`` = lambda time / edm time (throughput ratio, higher is better); the
scenario's ``ratio`` is the geometric mean of the per-case ratios.
"""
from __future__ import annotations

import json
import math
import random
from typing import Any, Callable

from bench import best_times
from edm_runner.brokers.base import Record
from edm_runner.operators.api import Event
from edm_runner.language.expressions import compile_expression

TARGET = 0.5
EVENTS = 1000


def risk(order: dict) -> float:
    """A declared function, as a topology's ``functions:`` would provide."""
    return round(order["total"] / 100, 2)


Fn = Callable[[str, Any, Event], Any]

# (name, expression, the same logic as a hand-written lambda)
CASES: list[tuple[str, str, Fn]] = [
    ("comparison", "value.total > 100",
     lambda key, value, event: value["total"] > 100),
    ("boolean", "value.status == 'paid' and (value.total > 50 or value.priority)",
     lambda key, value, event: value["status"] == "paid"
     and (value["total"] > 50 or value["priority"])),
    ("nested", "value.customer.address.country == 'BE'",
     lambda key, value, event: value["customer"]["address"]["country"] == "BE"),
    ("dict", "{'id': key, 'customer': value.customer.id, 'total': value.total}",
     lambda key, value, event: {"id": key, "customer": value["customer"]["id"],
                                "total": value["total"]}),
    ("upper", "value.customer.name | upper",
     lambda key, value, event: value["customer"]["name"].upper()),
    ("lower_concat", "value.channel | lower ~ ':' ~ key",
     lambda key, value, event: value["channel"].lower() + ":" + key),
    ("in_list", "value.customer.address.country in ['BE', 'NL', 'LU']",
     lambda key, value, event: value["customer"]["address"]["country"] in ("BE", "NL", "LU")),
    ("conditional", "'big' if value.total > 100 else 'small'",
     lambda key, value, event: "big" if value["total"] > 100 else "small"),
    ("arithmetic", "value.quantity * value.unit_price * (1 - value.discount_pct / 100)",
     lambda key, value, event: value["quantity"] * value["unit_price"]
     * (1 - value["discount_pct"] / 100)),
    ("sum_items", "value['items'] | map(attribute='price') | sum",
     lambda key, value, event: sum(item["price"] for item in value["items"])),
    ("default", "value.coupon | default('none')",
     lambda key, value, event: "none" if value.get("coupon") is None else value["coupon"]),
    ("function", "{'id': key, 'score': risk(value)}",
     lambda key, value, event: {"id": key, "score": risk(value)}),
    ("metadata", "timestamp - value.created_at > 60000",
     lambda key, value, event: event.timestamp - value["created_at"] > 60000),
]


def make_events(n: int, seed: int = 7) -> list[tuple[str, Any, Event]]:
    """Realistic order events, JSON-encoded then decoded as the runtime would."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        items = [{"sku": f"sku-{rng.randrange(500)}", "price": round(rng.uniform(1, 80), 2),
                  "qty": rng.randrange(1, 4)} for _ in range(rng.randrange(1, 6))]
        order = {
            "order_id": f"o-{i}",
            "status": rng.choice(["paid", "open", "shipped", "cancelled"]),
            "priority": rng.random() < 0.2,
            "channel": rng.choice(["Web", "App", "Store"]),
            "total": round(sum(it["price"] * it["qty"] for it in items), 2),
            "quantity": rng.randrange(1, 10),
            "unit_price": round(rng.uniform(1, 50), 2),
            "discount_pct": rng.choice([0, 5, 10, 25]),
            "created_at": 1_700_000_000_000 + i * 1000,
            "customer": {"id": f"c-{rng.randrange(1000)}", "name": rng.choice(["Ada", "Linus"]),
                         "address": {"city": "x", "country": rng.choice(["BE", "NL", "FR"])}},
            "items": items,
        }
        if rng.random() < 0.3:
            order["coupon"] = f"SAVE{rng.randrange(5, 30)}"
        raw = json.dumps(order).encode()
        value = json.loads(raw)
        key = value["order_id"]
        timestamp = value["created_at"] + rng.randrange(120_000)
        origin = Record("orders", i % 8, i // 8, key.encode(), raw, timestamp)
        rows.append((key, value, Event(key, value, timestamp, (), origin)))
    return rows


def _loop(fn: Fn, rows: list[tuple[str, Any, Event]]) -> Callable[[], None]:
    def run() -> None:
        for key, value, event in rows:
            fn(key, value, event)
    return run


def run() -> dict:
    rows = make_events(EVENTS)
    per_case = []
    for name, source, baseline in CASES:
        compiled = compile_expression(source, functions={"risk": risk})
        for key, value, event in rows:
            got, want = compiled(key, value, event), baseline(key, value, event)
            if got != want:
                raise AssertionError(f"{name}: {source!r} gave {got!r}, the lambda {want!r}")
        times = best_times({"edm": _loop(compiled, rows), "lambda": _loop(baseline, rows)})
        per_case.append({"case": name, "expression": source,
                         "edm_ns": round(times["edm"] / EVENTS * 1e9, 1),
                         "lambda_ns": round(times["lambda"] / EVENTS * 1e9, 1),
                         "ratio": round(times["lambda"] / times["edm"], 3)})
    geomean = math.exp(sum(math.log(c["ratio"]) for c in per_case) / len(per_case))
    edm_total = sum(c["edm_ns"] for c in per_case)
    lambda_total = sum(c["lambda_ns"] for c in per_case)
    return {"ratio": round(geomean, 3), "target": TARGET, "aggregate": "geometric_mean",
            "meets_target": geomean >= TARGET and min(c["ratio"] for c in per_case) >= TARGET,
            "events": EVENTS, "edm_total_ns": round(edm_total, 1),
            "lambda_total_ns": round(lambda_total, 1),
            "total_ratio": round(lambda_total / edm_total, 3), "cases": per_case}
