"""The JSON Schema compatibility checker (edm_runner.language.compat): a table of schema pairs
(previous version, new version) with the verdict under every mode, after the rules Confluent
Schema Registry applies to JSON Schema, and the checks around it."""
from __future__ import annotations

from typing import Any

import pytest

from edm_runner.language.compat import MODES, breaking_changes, open_objects, readable


def obj(props: dict, **kw: Any) -> dict:
    """An open object (additionalProperties absent)."""
    return {"type": "object", "properties": props, **kw}


def closed(props: dict, **kw: Any) -> dict:
    return {"type": "object", "properties": props, "additionalProperties": False, **kw}


S, INT, N, B = {"type": "string"}, {"type": "integer"}, {"type": "number"}, {"type": "boolean"}
ARR = lambda items, **kw: {"type": "array", "items": items, **kw}  # noqa: E731

# (id, previous, new, BACKWARD ok (new reads old), FORWARD ok (old reads new), a kind the break names)
PAIRS: list[tuple[str, Any, Any, bool, bool, str]] = [
    ("identical", closed({"a": S}), closed({"a": S}), True, True, ""),
    ("only-annotations-change", obj({"a": S}, title="x"), obj({"a": {**S, "description": "d"}}, title="y"),
     True, True, ""),
    # properties and content models
    ("optional-property-added-to-open-model", obj({"a": S}), obj({"a": S, "b": S}), False, True,
     "PROPERTY_ADDED_TO_OPEN_CONTENT_MODEL"),
    ("empty-schema-property-added-to-open-model", obj({"a": S}), obj({"a": S, "b": {}}), True, True, ""),
    ("optional-property-added-to-closed-model", closed({"a": S}), closed({"a": S, "b": S}), True, False,
     "PROPERTY_REMOVED_FROM_CLOSED_CONTENT_MODEL"),
    ("required-property-added-to-closed-model", closed({"a": S}), closed({"a": S, "b": S}, required=["b"]),
     False, False, "REQUIRED_PROPERTY_ADDED"),
    ("required-property-with-default-added", closed({"a": S}),
     closed({"a": S, "b": {**S, "default": "x"}}, required=["b"]), False, False, "REQUIRED_PROPERTY_ADDED"),
    ("property-removed-from-open-model", obj({"a": S, "b": S}), obj({"a": S}), True, False,
     "PROPERTY_ADDED_TO_OPEN_CONTENT_MODEL"),
    ("property-removed-from-closed-model", closed({"a": S, "b": S}), closed({"a": S}), False, True,
     "PROPERTY_REMOVED_FROM_CLOSED_CONTENT_MODEL"),
    ("closing-an-open-model", obj({"a": S}), closed({"a": S}), False, True, "ADDITIONAL_PROPERTIES_REMOVED"),
    ("opening-a-closed-model", closed({"a": S}), obj({"a": S}), True, False, "ADDITIONAL_PROPERTIES_REMOVED"),
    ("additional-properties-schema-added-to-open", obj({"a": S}), obj({"a": S}, additionalProperties=S),
     False, True, "ADDITIONAL_PROPERTIES_NARROWED"),
    ("additional-properties-schema-widened", obj({"a": S}, additionalProperties=INT),
     obj({"a": S}, additionalProperties=N), True, False, "TYPE_NARROWED"),
    ("property-added-covered-by-partial-model", obj({"a": S}, additionalProperties=S),
     obj({"a": S, "b": S}, additionalProperties=S), True, True, ""),
    ("property-added-not-covered-by-partial-model", obj({"a": S}, additionalProperties=S),
     obj({"a": S, "b": INT}, additionalProperties=S), False, False, "TYPE_CHANGED"),
    ("pattern-property-covers-removed-property", obj({"a": S, "x-b": S}, patternProperties={"^x-": S}),
     obj({"a": S}, patternProperties={"^x-": S}), True, True, ""),
    ("required-made-optional", closed({"a": S}, required=["a"]), closed({"a": S}), True, False,
     "REQUIRED_ATTRIBUTE_ADDED"),
    ("optional-made-required", closed({"a": S}), closed({"a": S}, required=["a"]), False, True,
     "REQUIRED_ATTRIBUTE_ADDED"),
    # types
    ("integer-widened-to-number", obj({"a": INT}), obj({"a": N}), True, False, "TYPE_NARROWED"),
    ("number-narrowed-to-integer", obj({"a": N}), obj({"a": INT}), False, True, "TYPE_NARROWED"),
    ("string-changed-to-integer", obj({"a": S}), obj({"a": INT}), False, False, "TYPE_CHANGED"),
    ("null-allowed", obj({"a": S}), obj({"a": {"type": ["string", "null"]}}), True, False, "TYPE_CHANGED"),
    ("null-no-longer-allowed", obj({"a": {"type": ["string", "null"]}}), obj({"a": S}), False, True,
     "TYPE_CHANGED"),
    ("type-added-to-untyped", obj({"a": {}}), obj({"a": S}), False, True, "TYPE_NARROWED"),
    ("schema-added-where-none", True, closed({"a": S}), False, True, "TYPE_NARROWED"),
    # enums and const
    ("enum-value-added", {"enum": ["a", "b"]}, {"enum": ["a", "b", "c"]}, True, False, "ENUM_NARROWED"),
    ("enum-value-removed", {"enum": ["a", "b"]}, {"enum": ["a"]}, False, True, "ENUM_NARROWED"),
    ("enum-value-replaced", {"enum": ["a", "b"]}, {"enum": ["a", "c"]}, False, False, "ENUM_NARROWED"),
    ("enum-added", S, {"type": "string", "enum": ["a"]}, False, True, "ENUM_ADDED"),
    ("const-to-enum", {"const": "a"}, {"enum": ["a", "b"]}, True, False, "ENUM_NARROWED"),
    # bounds
    ("max-length-decreased", {**S, "maxLength": 10}, {**S, "maxLength": 5}, False, True, "MAXLENGTH_DECREASED"),
    ("min-length-removed", {**S, "minLength": 2}, S, True, False, "MINLENGTH_ADDED"),
    ("pattern-added", S, {**S, "pattern": "^[a-z]+$"}, False, True, "PATTERN_ADDED"),
    ("minimum-increased", {**N, "minimum": 0}, {**N, "minimum": 1}, False, True, "MINIMUM_INCREASED"),
    ("maximum-added", N, {**N, "maximum": 100}, False, True, "MAXIMUM_ADDED"),
    ("multiple-of-reduced", {**INT, "multipleOf": 10}, {**INT, "multipleOf": 5}, True, False, "MULTIPLE_OF"),
    # arrays
    ("items-type-narrowed", ARR(N), ARR(INT), False, True, "TYPE_NARROWED"),
    ("items-property-added-to-closed", ARR(closed({"a": S})), ARR(closed({"a": S, "b": S})), True, False,
     "PROPERTY_REMOVED_FROM_CLOSED_CONTENT_MODEL"),
    ("max-items-added", ARR(S), ARR(S, maxItems=3), False, True, "MAXITEMS_ADDED"),
    ("unique-items-added", ARR(S), ARR(S, uniqueItems=True), False, True, "UNIQUE_ITEMS_ADDED"),
    ("tuple-item-added-to-closed", {"type": "array", "prefixItems": [S], "items": False},
     {"type": "array", "prefixItems": [S, INT], "items": False}, True, False, "ITEM_REMOVED_FROM_CLOSED"),
    ("tuple-item-added-to-open", {"type": "array", "prefixItems": [S]},
     {"type": "array", "prefixItems": [S, INT]}, False, True, "TYPE_NARROWED"),
    # nested objects
    ("nested-property-removed-from-closed", closed({"c": closed({"id": S, "tier": S})}),
     closed({"c": closed({"id": S})}), False, True, "PROPERTY_REMOVED_FROM_CLOSED_CONTENT_MODEL"),
    ("nested-required-added", closed({"c": closed({"id": S})}), closed({"c": closed({"id": S}, required=["id"])}),
     False, True, "REQUIRED_ATTRIBUTE_ADDED"),
    # $ref within the document
    ("ref-target-narrowed", {"$defs": {"m": N}, "type": "object", "properties": {"a": {"$ref": "#/$defs/m"}}},
     {"$defs": {"m": INT}, "type": "object", "properties": {"a": {"$ref": "#/$defs/m"}}}, False, True,
     "TYPE_NARROWED"),
    ("ref-inlined-unchanged",
     {"definitions": {"m": S}, "type": "object", "properties": {"a": {"$ref": "#/definitions/m"}}},
     obj({"a": S}), True, True, ""),
    ("recursive-schema-unchanged",
     {"$defs": {"n": closed({"v": INT, "next": {"$ref": "#/$defs/n"}})}, "$ref": "#/$defs/n"},
     {"$defs": {"n": closed({"v": INT, "next": {"$ref": "#/$defs/n"}})}, "$ref": "#/$defs/n"}, True, True, ""),
    ("recursive-schema-narrowed",
     {"$defs": {"n": closed({"v": N, "next": {"$ref": "#/$defs/n"}})}, "$ref": "#/$defs/n"},
     {"$defs": {"n": closed({"v": INT, "next": {"$ref": "#/$defs/n"}})}, "$ref": "#/$defs/n"}, False, True,
     "TYPE_NARROWED"),
    # anyOf / oneOf / allOf
    ("one-of-branch-added", {"oneOf": [S, INT]}, {"oneOf": [S, INT, B]}, True, False, "TYPE_CHANGED"),
    ("one-of-branch-removed", {"oneOf": [S, INT]}, {"oneOf": [S]}, False, True, "TYPE_CHANGED"),
    ("type-to-any-of", S, {"anyOf": [S, {"type": "null"}]}, True, False, "TYPE_CHANGED"),
    ("all-of-merged-like-one-object", {"allOf": [closed({"a": S}), {"required": ["a"]}]},
     closed({"a": S}, required=["a"]), True, True, ""),
    ("all-of-branch-adds-required", closed({"a": S}), {"allOf": [closed({"a": S}), {"required": ["a"]}]},
     False, True, "REQUIRED_ATTRIBUTE_ADDED"),
    # keywords edm cannot reason about
    ("not-added", S, {**S, "not": {"const": ""}}, False, True, "KEYWORD_CHANGED"),
]


def _ok(previous: Any, new: Any, mode: str) -> bool:
    return not breaking_changes([previous], new, mode)


def test_the_table_is_large_enough() -> None:
    assert len(PAIRS) >= 40
    assert len({p[0] for p in PAIRS}) == len(PAIRS)


@pytest.mark.parametrize("name, previous, new, backward, forward, kind", PAIRS, ids=[p[0] for p in PAIRS])
def test_verdict_under_every_mode(name: str, previous: Any, new: Any, backward: bool, forward: bool,
                                  kind: str) -> None:
    expected = {"BACKWARD": backward, "FORWARD": forward, "FULL": backward and forward, "NONE": True}
    for mode in MODES:
        want = expected[mode.removesuffix("_TRANSITIVE")]
        assert _ok(previous, new, mode) is want, (mode, [b.problem for b in breaking_changes([previous], new, mode)])
    if kind:
        kinds = {b.problem.kind for b in breaking_changes([previous], new, "FULL")}
        assert any(kind in k for k in kinds), kinds


def test_a_break_names_the_path_what_why_and_fix() -> None:
    previous = closed({"customer": closed({"id": S, "tier": {"enum": ["gold", "silver"]}})})
    new = closed({"customer": closed({"id": S, "tier": {"enum": ["gold"]}})})
    (brk,) = breaking_changes([previous], new, "BACKWARD")
    assert brk.problem.path == "$.customer.tier"
    what, why, fix = brk.render("version 1")
    assert what == "the new schema no longer allows \"silver\" (in version 1's enum)"
    assert why.startswith("BACKWARD requires consumers using the new schema to read the events already written "
                          "with version 1, which may hold \"silver\"")
    assert "keep the value" in fix
    assert brk.new_at == ("properties", "customer", "properties", "tier", "enum")


def test_transitive_modes_check_every_version_of_the_history() -> None:
    v1 = closed({"a": S, "b": S})          # b removed in v2 (compatible under BACKWARD), added back as integer
    v2 = closed({"a": S})
    v3 = closed({"a": S, "b": INT})
    assert not breaking_changes([v1, v2], v3, "BACKWARD")
    transitive = breaking_changes([v1, v2], v3, "BACKWARD_TRANSITIVE")
    assert [(b.version, b.problem.path, b.problem.kind) for b in transitive] == [(1, "$.b", "TYPE_CHANGED")]
    assert breaking_changes([v1, v2], v3, "FULL_TRANSITIVE")
    assert not breaking_changes([v1, v2], v3, "NONE")
    assert not breaking_changes([], v3, "FULL_TRANSITIVE")


def test_readable_is_writer_then_reader() -> None:
    producer = closed({"id": S, "total": N}, required=["id"])
    consumer = closed({"id": S, "total": INT}, required=["id"])
    (problem,) = readable(producer, consumer)
    assert (problem.path, problem.kind) == ("$.total", "TYPE_NARROWED")
    assert not readable(consumer, producer)


def test_open_objects_lists_every_open_model() -> None:
    schema = {"$defs": {"addr": obj({"zip": S})}, "type": "object", "additionalProperties": False,
              "properties": {"customer": obj({"address": {"$ref": "#/$defs/addr"}}),
                             "lines": ARR(closed({"sku": S})), "tags": ARR(S)}}
    assert open_objects(schema) == ["$.customer", "$.customer.address"]
    assert open_objects(closed({"a": S})) == []
    assert open_objects(S) == []
