"""Every client API through lkn against a real llama-server serving SmolLM2-135M on CPU, with
each API's official client: the ``openai`` SDK (chat with tools, Responses), the ``anthropic``
SDK (Messages, count_tokens) and the ``ollama`` client; llama.cpp's router API and
llama-server's own endpoints.

What is asserted is what lkn guarantees (shapes, a forced tool call of the right name with
parseable arguments, counts equal to the engine's own), never what a 135M model happens to say.
SmolLM2's chat template renders no tools: its forced calls are lkn's (``tool_calls = "auto"``).
"""
from __future__ import annotations

import json
from typing import Any

import pytest

from tests.conftest import Gateway, http, lua_str, smollm2_path, write_config

pytestmark = pytest.mark.engine

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]}}}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Any:
    tmp = tmp_path_factory.mktemp("apis")
    lua = f"""
server = {{ max_loaded_engines = 1, stop_grace_s = 5, log_dir = {lua_str(str(tmp / 'logs'))},
           engine_start_timeout_s = 120, token_margin = 16 }}
local smol = {lua_str(smollm2_path())}
models = {{
  {{ name = "smol", model_file = smol, gpu_layers = 0, default_max_tokens = 48,
    args = {{ "--threads", 1 }}, variants = {{ {{ ctx_size = 1024 }}, {{ ctx_size = 2048 }} }} }},
  {{ name = "smol-embed", model_file = smol, gpu_layers = 0, ctx_size = 512, embeddings = true,
    args = {{ "--threads", 1, "--pooling", "mean" }} }},
}}
"""
    gateway = Gateway(write_config(tmp, lua))
    yield gateway
    gateway.stop()


def post(gw: Gateway, path: str, body: dict[str, Any], **headers: str) -> Any:
    return http("POST", gw.base_url + path, json.dumps(body), headers=headers)


# ------------------------------------------------------------------ chat tool calls

def test_a_forced_tool_call_through_chat_is_a_parseable_call_of_that_tool(gw: Gateway) -> None:
    r = gw.client().chat.completions.create(model="smol", messages=ASK, tools=[WEATHER],
                                            tool_choice="required", max_tokens=48,
                                            temperature=0)
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls
    assert call.function.name == "get_weather" and call.id
    assert isinstance(json.loads(call.function.arguments), dict)


def test_a_forced_tool_call_streamed_assembles_to_the_same_kind_of_call(gw: Gateway) -> None:
    stream = gw.client().chat.completions.create(
        model="smol", messages=ASK, tools=[WEATHER], max_tokens=48, temperature=0,
        tool_choice={"type": "function", "function": {"name": "get_weather"}}, stream=True)
    names, args, finish = [], [], None
    for chunk in stream:
        if not chunk.choices:
            continue
        for tc in chunk.choices[0].delta.tool_calls or []:
            names.append(tc.function.name or "")
            args.append(tc.function.arguments or "")
        finish = chunk.choices[0].finish_reason or finish
    assert "".join(names) == "get_weather" and finish == "tool_calls"
    assert isinstance(json.loads("".join(args)), dict)


def test_a_tool_result_sent_back_is_answered(gw: Gateway) -> None:
    messages: list[dict[str, Any]] = [
        *ASK, {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny, 20 C"}]
    r = gw.client().chat.completions.create(model="smol", messages=messages, tools=[WEATHER],
                                            max_tokens=24, temperature=0)
    assert r.choices[0].message.content and r.usage.completion_tokens > 0


# ------------------------------------------------------------------ models and router API

def test_models_carry_status_context_and_capabilities(gw: Gateway) -> None:
    gw.client().chat.completions.create(model="smol", messages=ASK, max_tokens=2)
    models = {m["id"]: m for m in http("GET", gw.base_url + "/v1/models").json()["data"]}
    assert models["smol"]["status"] == "loaded" and models["smol"]["context_length"] == 2048
    assert "tools" in models["smol"]["capabilities"]
    assert models["smol-embed"]["status"] == "unloaded"
    assert "embeddings" in models["smol-embed"]["capabilities"]
    router = {m["id"]: m for m in http("GET", gw.base_url + "/models").json()["data"]}
    assert router["smol"]["status"] == {"value": "loaded"}


def test_router_load_and_unload_change_the_status(gw: Gateway) -> None:
    assert post(gw, "/models/load", {"model": "smol-embed"}).json() == {"success": True}
    router = {m["id"]: m for m in http("GET", gw.base_url + "/models").json()["data"]}
    assert router["smol-embed"]["status"]["value"] == "loaded"
    assert post(gw, "/models/unload", {"model": "smol-embed"}).json() == {"success": True}
    router = {m["id"]: m for m in http("GET", gw.base_url + "/models").json()["data"]}
    assert router["smol-embed"]["status"]["value"] == "unloaded"
    missing = post(gw, "/models/load", {"model": "nope"})
    assert missing.status_code == 404 and missing.json()["error"]["source"] == "lkn"


# ------------------------------------------------------------------ llama-server's own

def test_tokenize_detokenize_and_apply_template_through_the_scheduler(gw: Gateway) -> None:
    tokens = post(gw, "/tokenize", {"model": "smol", "content": "Hello world"})
    assert tokens.status_code == 200 and tokens.headers["x-lkn-model"] == "smol"
    ids = tokens.json()["tokens"]
    assert ids and all(isinstance(t, int) for t in ids)
    text = post(gw, "/detokenize", {"model": "smol", "tokens": ids}).json()["content"]
    assert text.strip() == "Hello world"
    prompt = post(gw, "/apply-template", {"model": "smol", "messages": ASK}).json()["prompt"]
    assert "What is the weather in Paris?" in prompt
    props = http("GET", gw.base_url + "/props?model=smol").json()
    assert props["default_generation_settings"]["n_ctx"] >= 1024


def test_infill_is_the_engines_own_answer(gw: Gateway, llama: Any) -> None:
    # SmolLM2 has no fill-in-the-middle tokens: llama-server refuses, and that answer (its
    # status, its OpenAI-shaped body) is relayed as the engine's, not as lkn's.
    body = {"model": "smol", "input_prefix": "def add(a, b):\n    return ",
            "input_suffix": "\n", "n_predict": 8}
    r = post(gw, "/infill", body)
    assert r.status_code == 501 and r.headers["x-lkn-error-source"] == "engine"
    assert "infill" in r.json()["error"]["message"].lower()
    assert r.headers["x-lkn-model"] == "smol"


def test_llama_server_endpoints_refuse_what_the_model_cannot(gw: Gateway) -> None:
    no_rerank = post(gw, "/v1/rerank", {"model": "smol", "query": "q", "documents": ["a"]})
    assert no_rerank.status_code == 400 and "reranking = true" in no_rerank.json()["error"]["message"]
    assert post(gw, "/tokenize", {"content": "x"}).status_code == 400
    assert post(gw, "/tokenize", {"model": "nope", "content": "x"}).status_code == 404


# ------------------------------------------------------------------ OpenAI Responses

FLAT_WEATHER = {"type": "function", "name": "get_weather", "description": "The weather in a city",
                "parameters": WEATHER["function"]["parameters"]}


def test_responses_create_and_stream_agree(gw: Gateway) -> None:
    client = gw.client()
    whole = client.responses.create(model="smol", input="Name a color.", max_output_tokens=16,
                                    temperature=0)
    assert whole.status in ("completed", "incomplete") and whole.output_text
    assert whole.usage.input_tokens > 0 and whole.usage.output_tokens > 0
    deltas, last = [], None
    with client.responses.stream(model="smol", input="Name a color.", max_output_tokens=16,
                                 temperature=0) as stream:
        for event in stream:
            if event.type == "response.output_text.delta":
                deltas.append(event.delta)
            last = event
    # a 16-token cut ends in response.incomplete (the SDK's get_final_response wants
    # response.completed, as with OpenAI's own API)
    assert last is not None and last.type in ("response.completed", "response.incomplete")
    assert last.response.status == whole.status
    assert "".join(deltas) == last.response.output_text == whole.output_text


def test_responses_forced_function_call_then_its_output_continues_the_response(
        gw: Gateway) -> None:
    import openai
    client = gw.client()
    first = client.responses.create(model="smol", input="What is the weather in Paris?",
                                    tools=[FLAT_WEATHER], tool_choice="required",
                                    max_output_tokens=48, temperature=0)
    (call,) = [item for item in first.output if item.type == "function_call"]
    assert call.name == "get_weather" and isinstance(json.loads(call.arguments), dict)
    second = client.responses.create(
        model="smol", previous_response_id=first.id, max_output_tokens=16, temperature=0,
        input=[{"type": "function_call_output", "call_id": call.call_id,
                "output": "sunny, 20 C"}])
    assert second.output_text and second.previous_response_id == first.id
    with pytest.raises(openai.BadRequestError) as missing:
        client.responses.create(model="smol", input="Hi", previous_response_id="resp_nope")
    assert "resp_nope" in str(missing.value)
    with pytest.raises(openai.BadRequestError):
        client.responses.create(model="smol", input="Hi", tools=[{"type": "web_search"}])


# ------------------------------------------------------------------ Anthropic Messages

@pytest.fixture(scope="module")
def claude(gw: Gateway) -> Any:
    import anthropic
    with anthropic.Anthropic(base_url=gw.base_url, api_key="x", max_retries=0,
                             timeout=120) as client:
        yield client


def test_messages_create_stream_and_count_tokens_agree(gw: Gateway, claude: Any) -> None:
    client = claude
    messages = [{"role": "user", "content": "Name a color."}]
    greedy = {"temperature": 0}  # this SDK's create() has no temperature argument
    whole = client.messages.create(model="smol", max_tokens=16, messages=messages,
                                   system="Answer briefly.", extra_body=greedy)
    assert whole.role == "assistant" and whole.stop_reason in ("end_turn", "max_tokens")
    text = "".join(b.text for b in whole.content if b.type == "text")
    assert text
    with client.messages.stream(model="smol", max_tokens=16, messages=messages,
                                system="Answer briefly.", extra_body=greedy) as stream:
        streamed = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert streamed == text and final.usage.output_tokens == whole.usage.output_tokens
    counted = client.messages.count_tokens(model="smol", messages=messages,
                                           system="Answer briefly.")
    assert counted.input_tokens == whole.usage.input_tokens  # the engine's own count


def test_messages_forced_tool_use_then_its_result_is_answered(gw: Gateway, claude: Any) -> None:
    client = claude
    tool = {"name": "get_weather", "description": "The weather in a city",
            "input_schema": WEATHER["function"]["parameters"]}
    first = client.messages.create(model="smol", max_tokens=48, tools=[tool],
                                   tool_choice={"type": "any"}, messages=ASK,
                                   extra_body={"temperature": 0})
    assert first.stop_reason == "tool_use"
    (use,) = [b for b in first.content if b.type == "tool_use"]
    assert use.name == "get_weather" and isinstance(use.input, dict)
    with client.messages.stream(model="smol", max_tokens=48, tools=[tool], messages=ASK,
                                tool_choice={"type": "tool", "name": "get_weather"}) as stream:
        streamed = stream.get_final_message()
    assert [b.name for b in streamed.content if b.type == "tool_use"] == ["get_weather"]
    answer = client.messages.create(model="smol", max_tokens=16, tools=[tool], messages=[
        *ASK, {"role": "assistant", "content": [b.model_dump() for b in first.content]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id,
                                      "content": "sunny, 20 C"}]}])
    assert any(b.type == "text" and b.text for b in answer.content)


def test_messages_errors_are_anthropic_shaped(gw: Gateway, claude: Any) -> None:
    import anthropic
    client = claude
    with pytest.raises(anthropic.NotFoundError) as missing:
        client.messages.create(model="nope", max_tokens=8, messages=ASK)
    assert missing.value.body["error"]["type"] == "not_found_error"
    assert missing.value.response.headers["x-lkn-error-source"] == "lkn"
    bad = post(gw, "/v1/messages", {"model": "smol", "messages": ASK})  # no max_tokens
    assert bad.status_code == 400 and bad.json()["type"] == "error"
    assert bad.json()["error"]["type"] == "invalid_request_error"


# ------------------------------------------------------------------ Ollama

@pytest.fixture(scope="module")
def llama(gw: Gateway) -> Any:
    import ollama
    client = ollama.Client(host=gw.base_url, timeout=120)
    yield client
    client._client.close()


def test_ollama_chat_generate_and_embed(gw: Gateway, llama: Any) -> None:
    client = llama
    opts = {"num_predict": 12, "temperature": 0}
    whole = client.chat(model="smol:latest", messages=ASK, options=opts, stream=False)
    assert whole.done and whole.message.role == "assistant" and whole.message.content
    assert whole.eval_count and whole.prompt_eval_count
    parts = [c.message.content for c in client.chat(model="smol", messages=ASK, options=opts,
                                                    stream=True)]
    assert "".join(parts) == whole.message.content
    generated = client.generate(model="smol", prompt="The capital of France is", options=opts)
    assert generated.done and generated.response
    raw = client.generate(model="smol", prompt="The capital of France is", raw=True,
                          options=opts)
    assert raw.response
    vectors = client.embed(model="smol-embed", input=["a cat", "a dog"])
    assert len(vectors.embeddings) == 2 and len(vectors.embeddings[0]) > 8


def test_ollama_tools_and_history_with_a_tool_call(gw: Gateway, llama: Any) -> None:
    client = llama
    answer = client.chat(model="smol", options={"num_predict": 16, "temperature": 0},
                         tools=[WEATHER], messages=[
                             *ASK, {"role": "assistant", "content": "", "tool_calls": [
                                 {"function": {"name": "get_weather",
                                               "arguments": {"city": "Paris"}}}]},
                             {"role": "tool", "content": "sunny, 20 C",
                              "tool_name": "get_weather"}])
    assert answer.done and answer.message.content


def test_ollama_listings_and_keep_alive(gw: Gateway, llama: Any) -> None:
    import time

    client = llama
    names = {m.model for m in client.list().models}
    assert {"smol:latest", "smol-embed:latest"} <= names  # tagged, as Ollama names them
    shown = client.show("smol")
    assert shown.details.family == "llama" and "completion" in (shown.capabilities or [])
    assert http("GET", gw.base_url + "/api/version").json()["version"]
    loaded = client.generate(model="smol", prompt="", keep_alive=-1)
    assert loaded.done_reason == "load"
    (running,) = [m for m in client.ps().models if m.model == "smol:latest"]
    assert running.expires_at.year > 2200  # kept: -1 is for ever
    client.chat(model="smol", messages=ASK, options={"num_predict": 2}, keep_alive=0)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(m.model == "smol:latest"
                                              for m in client.ps().models):
        time.sleep(0.2)
    assert not [m for m in client.ps().models if m.model == "smol:latest"]  # 0: unloaded once idle


def test_ollama_errors_are_ollama_shaped(gw: Gateway, llama: Any) -> None:
    import ollama
    client = llama
    with pytest.raises(ollama.ResponseError) as missing:
        client.chat(model="nope", messages=ASK)
    assert missing.value.status_code == 404 and "nope" in missing.value.error
    bad = post(gw, "/api/chat", {"model": "smol", "messages": "hi"})
    assert bad.status_code == 400 and isinstance(bad.json()["error"], str)


# ------------------------------------------------------------------ every API is counted

def test_metrics_count_each_request_under_its_api(gw: Gateway, claude: Any, llama: Any) -> None:
    gw.client().chat.completions.create(model="smol", messages=ASK, max_tokens=2)
    claude.messages.create(model="smol", max_tokens=2, messages=ASK)
    gw.client().responses.create(model="smol", input="Hi", max_output_tokens=2)
    llama.chat(model="smol", messages=ASK, options={"num_predict": 2})
    metrics = http("GET", gw.base_url + "/metrics").text
    for api in ("openai", "anthropic", "responses", "ollama"):
        assert (f'lkn_requests_total{{api="{api}",key="",model="smol",route="chat",'
                f'status="200"}}') in metrics
