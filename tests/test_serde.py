"""Serdes: formats, None for null keys and tombstones, schema validation, clear errors."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from edm_runner.serde import SerdeError, SerdeSpec, make_serde


def test_json_is_compact_keeps_order_and_unicode() -> None:
    s = make_serde(SerdeSpec("json"))
    data = s.encode({"b": 1, "a": [1.5, None, True, "é"]})
    assert data == '{"b":1,"a":[1.5,null,true,"é"]}'.encode()
    assert s.decode(data) == {"b": 1, "a": [1.5, None, True, "é"]}
    assert s.decode(b' {"x": 1}\n') == {"x": 1}
    assert s.encode("text") == b'"text"' and s.decode(b"3") == 3


@pytest.mark.parametrize("fmt", ["json", "string", "bytes"])
def test_none_stays_none_for_null_keys_and_tombstones(fmt: str) -> None:
    s = make_serde(SerdeSpec(fmt))
    assert s.encode(None) is None and s.decode(None) is None


def test_json_null_document_decodes_to_none() -> None:
    assert make_serde(SerdeSpec("json")).decode(b"null") is None


def test_string_and_bytes() -> None:
    s = make_serde(SerdeSpec("string"))
    assert s.encode("héllo") == "héllo".encode() and s.decode("héllo".encode()) == "héllo"
    b = make_serde(SerdeSpec("bytes"))
    assert b.encode(b"\x00\xff") == b"\x00\xff" and b.decode(b"\x00\xff") == b"\x00\xff"


@pytest.mark.parametrize("fmt,obj,needle", [
    ("json", float("nan"), "not JSON compliant"),
    ("json", {"k": object()}, "not JSON serializable"),
    ("string", {"a": 1}, "cannot encode dict"),
    ("bytes", "text", "format bytes expects bytes"),
])
def test_encode_errors_are_serde_errors(fmt: str, obj: object, needle: str) -> None:
    with pytest.raises(SerdeError, match=needle):
        make_serde(SerdeSpec(fmt)).encode(obj)


@pytest.mark.parametrize("obj", [True, 1, 1.0, float("nan")])
def test_the_string_format_takes_only_strings(obj: object) -> None:
    """No silent conversion: True would be "True", 1 and "1" one key, NaN "nan"."""
    with pytest.raises(SerdeError, match=f"cannot encode {type(obj).__name__} .* in format string: it takes "
                                         r"only strings; convert explicitly with `\| string` in the "
                                         r"expression, or declare the format json \(e.g. `key: json`\)"):
        make_serde(SerdeSpec("string")).encode(obj)


def test_cyclic_value_is_a_serde_error() -> None:
    cyclic: list = []
    cyclic.append(cyclic)
    with pytest.raises(SerdeError, match="cyclic"):
        make_serde(SerdeSpec("json")).encode(cyclic)


@pytest.mark.parametrize("data,needle", [(b"{", "invalid JSON"), (b"{}x", "Extra data"),
                                         (b"\xff", "invalid UTF-8")])
def test_decode_errors_are_serde_errors(data: bytes, needle: str) -> None:
    with pytest.raises(SerdeError, match=needle):
        make_serde(SerdeSpec("json")).decode(data)
    if needle == "invalid UTF-8":
        with pytest.raises(SerdeError, match=needle):
            make_serde(SerdeSpec("string")).decode(data)


def _schema(tmp_path: Path) -> Path:
    path = tmp_path / "order.json"
    path.write_text(json.dumps({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object", "required": ["id", "total"],
        "properties": {"id": {"type": "string"}, "total": {"type": "number", "minimum": 0}}}))
    return path


def test_schema_validates_on_decode_and_encode(tmp_path: Path) -> None:
    s = make_serde(SerdeSpec("json", _schema(tmp_path)))
    assert s.decode(b'{"id":"o1","total":3}') == {"id": "o1", "total": 3}
    assert s.encode({"id": "o1", "total": 3}) == b'{"id":"o1","total":3}'
    with pytest.raises(SerdeError, match=r"order.json at \(root\): None is not of type 'object'"):
        s.decode(None)  # a null value on a stream whose values are not tombstones
    with pytest.raises(SerdeError, match="None is not of type 'object'"):
        s.decode(b"null")
    with pytest.raises(SerdeError, match="None is not of type 'object'"):
        s.encode(None)
    with pytest.raises(SerdeError, match=r"order.json at total: -1 is less than the minimum of 0"):
        s.decode(b'{"id":"o1","total":-1}')
    with pytest.raises(SerdeError, match=r"order.json at \(root\): 'total' is a required property"):
        s.encode({"id": "o2"})


def test_tombstones_skip_the_schema_only_on_entity_streams(tmp_path: Path) -> None:
    from edm_runner.language.model import StreamSpec

    schema = SerdeSpec("json", _schema(tmp_path))
    entity = StreamSpec("users", "users", type="entity", value=schema)
    keyed = StreamSpec("orders", "orders", type="keyed", value=schema)
    assert entity.value.tombstones and not keyed.value.tombstones
    assert make_serde(entity.value).decode(None) is None and make_serde(entity.value).encode(None) is None
    with pytest.raises(SerdeError, match="None is not of type 'object'"):
        make_serde(keyed.value).decode(None)


@pytest.mark.parametrize("data", [b"NaN", b"-Infinity", b'{"x":NaN}', b"[Infinity]"])
def test_nan_and_infinity_are_not_json(data: bytes) -> None:
    with pytest.raises(SerdeError, match="is not JSON"):
        make_serde(SerdeSpec("json")).decode(data)


def test_stores_and_streams_share_one_json_codec(tmp_path: Path) -> None:
    """Store and changelog bytes are the `json` format's bytes; NaN is refused by both."""
    from edm_runner.state.api import decode_json, encode_json
    from edm_runner.state.task import TaskState

    s = make_serde(SerdeSpec("json"))
    for obj in ["é", 12, -3, 1.5, True, None, {"b": [1, None]}, [1e300]]:
        assert encode_json(obj) == (s.encode(obj) if obj is not None else b"null")
        assert decode_json(encode_json(obj)) == obj
    with TaskState.open(tmp_path / "task") as state:
        store = state.register("sums", "key_value")
        for bad in (float("nan"), {"x": float("inf")}):
            with pytest.raises(SerdeError, match="not JSON compliant"):
                store.put("k", bad)
        assert state.dirty_changelog_records() == []


def test_unreadable_or_invalid_schema_files(tmp_path: Path) -> None:
    with pytest.raises(SerdeError, match="cannot read event schema"):
        make_serde(SerdeSpec("json", tmp_path / "missing.json"))
    bad = tmp_path / "bad.json"
    bad.write_text('{"type": 12}')
    with pytest.raises(SerdeError, match="not a valid JSON Schema"):
        make_serde(SerdeSpec("json", bad))
