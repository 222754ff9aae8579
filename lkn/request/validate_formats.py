"""Checks for response formats and reasoning fields (pure), so that a bad schema is a 400 from
lkn before any engine starts, instead of a grammar error (or a crash) deep in the engine.

``response_format`` is the OpenAI shape, which llama-server (it turns the schema into a grammar)
and SGLang (xgrammar) both take as it is: ``{"type": "text" | "json_object"}`` or
``{"type": "json_schema", "json_schema": {"name", "schema", "strict"}}``; llama-server's own
``{"type": "json_object", "schema": {...}}`` is accepted too. The schema check is structural:
every subschema is an object or a boolean, ``type`` names JSON types, keywords that hold
subschemas hold subschemas, ``required`` lists strings. It does not decide whether an engine's
grammar compiler supports every keyword.
"""
from __future__ import annotations

from typing import Any

from lkn.config import ModelConfig
from lkn.errors import BadRequest
from lkn.relay.thinking import CHANNELS, EFFORTS

TYPES = ("string", "number", "integer", "boolean", "object", "array", "null")
SUBSCHEMA = ("items", "additionalProperties", "not", "contains", "propertyNames", "if", "then",
             "else", "additionalItems", "unevaluatedProperties", "unevaluatedItems")
SUBSCHEMA_MAPS = ("properties", "patternProperties", "$defs", "definitions",
                  "dependentSchemas")
SUBSCHEMA_LISTS = ("anyOf", "oneOf", "allOf", "prefixItems")
COUNTS = ("minLength", "maxLength", "minItems", "maxItems", "minProperties", "maxProperties")
NUMBERS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf")
MAX_DEPTH = 64


def is_int(v: Any) -> bool:
    """An integer as JSON means it: ``true`` is not 1."""
    return isinstance(v, int) and not isinstance(v, bool)


def schema_problem(schema: Any, path: str, depth: int = 0) -> str | None:
    """The first structural problem of a JSON schema, or None."""
    if isinstance(schema, bool):
        return None
    if not isinstance(schema, dict):
        return f"{path} must be an object or a boolean"
    if depth > MAX_DEPTH:
        return f"{path} is nested more than {MAX_DEPTH} levels deep"
    kind = schema.get("type")
    if kind is not None:
        kinds = kind if isinstance(kind, list) else [kind]
        if not kinds or any(k not in TYPES for k in kinds):
            return f"{path}.type must be one of {', '.join(TYPES)} (or a list of them), " \
                   f"got {kind!r}"
    required = schema.get("required")
    if required is not None and not (isinstance(required, list)
                                     and all(isinstance(r, str) for r in required)):
        return f"{path}.required must be a list of property names"
    if "enum" in schema and not isinstance(schema["enum"], list):
        return f"{path}.enum must be a list"
    for key in COUNTS:
        if key in schema and (not is_int(schema[key]) or schema[key] < 0):
            return f"{path}.{key} must be a non-negative integer"
    for key in NUMBERS:
        v = schema.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
            return f"{path}.{key} must be a number"
    for key in ("pattern", "$ref", "format"):
        if key in schema and not isinstance(schema[key], str):
            return f"{path}.{key} must be a string"
    subs: list[tuple[str, Any]] = []
    for key in SUBSCHEMA:
        if key in schema:
            value = schema[key]
            if key == "items" and isinstance(value, list):  # draft-4 tuple form
                subs += [(f"{path}.items[{i}]", s) for i, s in enumerate(value)]
            else:
                subs.append((f"{path}.{key}", value))
    for key in SUBSCHEMA_MAPS:
        if key in schema:
            if not isinstance(schema[key], dict):
                return f"{path}.{key} must be an object of schemas"
            subs += [(f"{path}.{key}.{name}", s) for name, s in schema[key].items()]
    for key in SUBSCHEMA_LISTS:
        if key in schema:
            if not isinstance(schema[key], list) or not schema[key]:
                return f"{path}.{key} must be a non-empty list of schemas"
            subs += [(f"{path}.{key}[{i}]", s) for i, s in enumerate(schema[key])]
    for sub_path, sub in subs:
        problem = schema_problem(sub, sub_path, depth + 1)
        if problem:
            return problem
    return None


def check_response_format(body: dict[str, Any]) -> None:
    rf = body.get("response_format")
    if rf is None:
        return
    if not isinstance(rf, dict):
        raise BadRequest("'response_format' must be an object", param="response_format")
    kind = rf.get("type")
    if kind not in ("text", "json_object", "json_schema"):
        raise BadRequest(f"response_format.type must be one of text, json_object, json_schema, "
                         f"got {kind!r}", param="response_format.type")
    schema, path = rf.get("schema"), "response_format.schema"
    if kind == "json_schema":
        spec = rf.get("json_schema")
        if not isinstance(spec, dict):
            raise BadRequest("response_format.json_schema must be an object with a 'schema'",
                             param="response_format.json_schema")
        name = spec.get("name")
        if name is not None and not isinstance(name, str):
            raise BadRequest("response_format.json_schema.name must be a string",
                             param="response_format.json_schema.name")
        if "schema" not in spec:
            raise BadRequest("response_format.json_schema.schema is required",
                             param="response_format.json_schema.schema")
        schema, path = spec["schema"], "response_format.json_schema.schema"
    elif schema is None:
        return
    problem = schema_problem(schema, path)
    if problem:
        raise BadRequest(f"invalid JSON schema: {problem}", param=path)


def check_reasoning_fields(body: dict[str, Any]) -> None:
    separate = body.get("separate_thinking")
    if separate is not None and not isinstance(separate, bool):
        raise BadRequest(f"'separate_thinking' must be a boolean, got {separate!r}",
                         param="separate_thinking")
    effort = body.get("reasoning_effort")
    if effort is not None and effort not in EFFORTS:
        raise BadRequest(f"'reasoning_effort' must be one of {', '.join(EFFORTS)}, "
                         f"got {effort!r}", param="reasoning_effort")
    alias = body.get("reasoning")
    inner = alias.get("effort") if isinstance(alias, dict) else alias
    if alias is not None and inner is not None and inner not in EFFORTS:
        raise BadRequest(f"'reasoning' must be one of {', '.join(EFFORTS)} (or an object with "
                         f"'effort'), got {alias!r}", param="reasoning")
    channels = body.get("include_channels")
    if channels is not None and not (isinstance(channels, list)
                                     and all(c in CHANNELS for c in channels)):
        raise BadRequest(f"'include_channels' must be a list of {', '.join(CHANNELS)}, "
                         f"got {channels!r}", param="include_channels")
    instructions = body.get("developer_instructions")
    if instructions is not None and not isinstance(instructions, str):
        raise BadRequest("'developer_instructions' must be a string",
                         param="developer_instructions")
    kwargs = body.get("chat_template_kwargs")
    if kwargs is not None and not isinstance(kwargs, dict):
        raise BadRequest("'chat_template_kwargs' must be an object", param="chat_template_kwargs")


# Engines that run on this box. Given an http(s) (or file:) URL in a media part, llama-server
# and SGLang fetch it themselves, from lkn's network: a client could make lkn's box call its
# neighbours or a cloud metadata service. Only ``data:`` URLs go to them. A remote upstream
# ("upstream", config "remote") fetches from its own network: its URLs pass.
LOCAL_ENGINES = ("llamacpp", "sglang", "command")
MEDIA_PARTS = ("image_url", "video_url", "audio_url")  # SGLang takes all three


def media_engine(model: ModelConfig) -> str:
    """The engine kind a model's media URLs are judged by: a model whose backends include a
    local engine is local (the balancer's pick must not decide whether a request is valid)."""
    kinds = [m.engine for m in model.engine_models]
    return next((k for k in kinds if k in LOCAL_ENGINES), kinds[0] if kinds else model.engine)


def check_media_urls(body: dict[str, Any], engine: str) -> None:
    """Chat content parts with a URL for an engine of kind ``engine`` (a model's ``engine`` or an
    engine client's ``kind``): on a local engine only ``data:`` URLs pass."""
    messages = body.get("messages")
    if engine not in LOCAL_ENGINES or not isinstance(messages, list):
        return
    for i, message in enumerate(messages):
        content = message.get("content") if isinstance(message, dict) else None
        if not isinstance(content, list):
            continue
        for j, part in enumerate(content):
            kind = part.get("type") if isinstance(part, dict) else None
            if kind not in MEDIA_PARTS:
                continue
            media = part.get(kind)
            url = media.get("url") if isinstance(media, dict) else media
            param = f"messages[{i}].content[{j}].{kind}" + (".url" if isinstance(media, dict)
                                                             else "")
            if not isinstance(url, str) or url[:5].lower() != "data:":
                raise BadRequest(f"{param} must be a data: URL (data:image/png;base64,...): "
                                 f"this model's engine runs on lkn's host and does not fetch "
                                 f"URLs for clients", param=param, code="invalid_image_url")
