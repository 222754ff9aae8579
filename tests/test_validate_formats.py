"""Response formats and reasoning fields: what lkn rejects before any engine sees the request."""
from __future__ import annotations

from typing import Any

import pytest

from lkn.errors import BadRequest
from lkn.request.validate import validate_chat

MSG = [{"role": "user", "content": "hi"}]
PERSON = {"type": "object", "properties": {"name": {"type": "string"},
                                           "age": {"type": "integer", "minimum": 0}},
          "required": ["name"], "additionalProperties": False}


def chat(**fields: Any) -> dict[str, Any]:
    return {"model": "m", "messages": MSG, **fields}


@pytest.mark.parametrize("fmt", [
    {"type": "text"},
    {"type": "json_object"},
    {"type": "json_object", "schema": PERSON},  # llama-server's own form
    {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON, "strict": True}},
    {"type": "json_schema", "json_schema": {"schema": {
        "anyOf": [{"type": ["string", "null"]}, {"$ref": "#/$defs/x"}],
        "$defs": {"x": {"type": "array", "items": {"enum": [1, 2]}, "minItems": 1}}}}},
    {"type": "json_schema", "json_schema": {"schema": True}},
])
def test_valid_formats_pass(fmt: dict[str, Any]) -> None:
    validate_chat(chat(response_format=fmt))


@pytest.mark.parametrize("fmt,param,words", [
    ("json", "response_format", "must be an object"),
    ({"type": "yaml"}, "response_format.type", "must be one of"),
    ({"type": "json_schema"}, "response_format.json_schema", "must be an object"),
    ({"type": "json_schema", "json_schema": {"name": "x"}},
     "response_format.json_schema.schema", "is required"),
    ({"type": "json_schema", "json_schema": {"name": 3, "schema": {}}},
     "response_format.json_schema.name", "must be a string"),
    ({"type": "json_schema", "json_schema": {"schema": {"type": "str"}}},
     "response_format.json_schema.schema", "schema.type must be one of"),
    ({"type": "json_schema", "json_schema": {"schema": {
        "type": "object", "properties": {"a": {"type": "object", "properties": {"b": 5}}}}}},
     "response_format.json_schema.schema", "schema.properties.a.properties.b must be"),
    ({"type": "json_schema", "json_schema": {"schema": {"required": "name"}}},
     "response_format.json_schema.schema", "required must be a list"),
    ({"type": "json_schema", "json_schema": {"schema": {"anyOf": []}}},
     "response_format.json_schema.schema", "anyOf must be a non-empty list"),
    ({"type": "json_schema", "json_schema": {"schema": {"maxLength": -1}}},
     "response_format.json_schema.schema", "maxLength must be a non-negative integer"),
    ({"type": "json_object", "schema": {"items": "x"}}, "response_format.schema",
     "schema.items must be an object or a boolean"),
])
def test_invalid_formats_are_400_naming_the_place(fmt: Any, param: str, words: str) -> None:
    with pytest.raises(BadRequest) as info:
        validate_chat(chat(response_format=fmt))
    assert info.value.param == param
    assert words in str(info.value)


def test_a_schema_nested_too_deep_is_rejected_not_a_recursion_error() -> None:
    schema: dict[str, Any] = {"type": "string"}
    for _ in range(200):
        schema = {"type": "array", "items": schema}
    with pytest.raises(BadRequest, match="nested more than"):
        validate_chat(chat(response_format={"type": "json_schema",
                                            "json_schema": {"schema": schema}}))


@pytest.mark.parametrize("fields", [
    {"separate_thinking": False}, {"reasoning": "high"}, {"reasoning": {"effort": "low"}},
    {"reasoning_effort": "none"}, {"include_channels": ["analysis", "final"]},
    {"chat_template_kwargs": {"enable_thinking": True}},
])
def test_valid_reasoning_fields_pass(fields: dict[str, Any]) -> None:
    validate_chat(chat(**fields))


@pytest.mark.parametrize("fields,param", [
    ({"separate_thinking": "no"}, "separate_thinking"),
    ({"reasoning": "max"}, "reasoning"),
    ({"reasoning": {"effort": "lots"}}, "reasoning"),
    ({"reasoning_effort": "HIGH"}, "reasoning_effort"),
    ({"include_channels": ["thoughts"]}, "include_channels"),
    ({"include_channels": "final"}, "include_channels"),
    ({"chat_template_kwargs": "enable_thinking"}, "chat_template_kwargs"),
    ({"developer_instructions": ["be terse"]}, "developer_instructions"),
])
def test_invalid_reasoning_fields_are_400(fields: dict[str, Any], param: str) -> None:
    with pytest.raises(BadRequest) as info:
        validate_chat(chat(**fields))
    assert info.value.param == param
