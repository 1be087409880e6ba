"""OpenAI <-> Ollama conversion (pure functions)."""
import base64
import json
import struct

import pytest

from webui_api.gateway import convert
from webui_api.errors import BadRequest

FINAL = {"model": "llama3.2:latest", "created_at": "x", "message": {"role": "assistant", "content": ""},
         "done": True, "done_reason": "stop", "total_duration": 123456789, "load_duration": 1234567,
         "prompt_eval_duration": 2345678, "eval_duration": 34567890, "prompt_eval_count": 5, "eval_count": 16}


def line(content, **extra):
    return {"model": "llama3.2:latest", "message": {"role": "assistant", "content": content, **extra}, "done": False}


def test_sampling_parameters_map_into_options():
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "temperature": 0.2, "top_p": 0.9,
            "seed": 7, "stop": "END", "frequency_penalty": 0.5, "presence_penalty": 0.1, "max_tokens": 8,
            "top_k": 20, "stream": True}
    out = convert.openai_to_ollama_chat(body)
    assert out["options"] == {"temperature": 0.2, "top_p": 0.9, "seed": 7, "stop": ["END"],
                              "frequency_penalty": 0.5, "presence_penalty": 0.1, "num_predict": 8, "top_k": 20}
    assert out["stream"] is True and out["model"] == "m" and out["messages"] == [{"role": "user", "content": "hi"}]


def test_stream_false_is_explicit_and_no_empty_options():
    out = convert.openai_to_ollama_chat({"model": "m", "messages": []})
    assert out == {"model": "m", "messages": [], "stream": False}


def test_option_precedence_and_max_completion_tokens():
    out = convert.openai_to_ollama_chat({
        "model": "m", "messages": [], "params": {"temperature": 0.1, "num_ctx": 4096, "system": "ignored here"},
        "temperature": 0.5, "max_tokens": 10, "max_completion_tokens": 20, "options": {"temperature": 0.9},
        "keep_alive": "5m"})
    assert out["options"] == {"temperature": 0.9, "num_ctx": 4096, "num_predict": 20}
    assert out["keep_alive"] == "5m"


@pytest.mark.parametrize("response_format, expected", [
    ({"type": "json_object"}, "json"),
    ({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}}, {"type": "object"}),
    ({"type": "text"}, None),
])
def test_response_format(response_format, expected):
    out = convert.openai_to_ollama_chat({"model": "m", "messages": [], "response_format": response_format})
    assert out.get("format") == expected


def test_image_parts_become_base64_images():
    msg = {"role": "user", "content": [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
        {"type": "image_url", "image_url": "BBBB"}]}
    out = convert.openai_to_ollama_chat({"model": "m", "messages": [msg]})["messages"][0]
    assert out == {"role": "user", "content": "What is this?", "images": ["AAAA", "BBBB"]}
    with pytest.raises(BadRequest):
        convert.openai_to_ollama_chat({"model": "m", "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]}]})


def test_tools_and_tool_call_round_trip_messages():
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    messages = [
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Oslo\"}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}]
    out = convert.openai_to_ollama_chat({"model": "m", "messages": messages, "tools": tools, "tool_choice": "auto"})
    assert out["tools"] == tools and "tool_choice" not in out
    assistant, tool = out["messages"][1], out["messages"][2]
    assert assistant == {"role": "assistant", "content": "", "tool_calls": [
        {"function": {"name": "get_weather", "arguments": {"city": "Oslo"}}, "id": "call_1"}]}
    assert tool == {"role": "tool", "content": "sunny", "tool_call_id": "call_1", "tool_name": "get_weather"}


@pytest.mark.parametrize("body", [{"model": "m"}, {"model": "m", "messages": "hi"},
                                  {"model": "m", "messages": [{"content": "no role"}]},
                                  {"model": "m", "messages": [{"role": "assistant", "tool_calls": [
                                      {"function": {"name": "f", "arguments": "{bad"}}]}]}])
def test_bad_bodies_are_bad_requests(body):
    with pytest.raises(BadRequest):
        convert.openai_to_ollama_chat(body)


def test_usage_matches_open_webui_keys():
    usage = convert.usage_from_ollama(FINAL)
    assert usage["prompt_tokens"] == 5 and usage["completion_tokens"] == 16 and usage["total_tokens"] == 21
    assert usage["response_token/s"] == 462.86 and usage["prompt_token/s"] == 2131.58
    assert usage["approximate_total"] == "0h0m0s" and usage["input_tokens"] == 5
    assert convert.usage_from_ollama({"eval_count": 3})["response_token/s"] == "N/A"


def test_non_stream_completion():
    answer = dict(FINAL, message={"role": "assistant", "content": "Hello!"})
    out = convert.ollama_to_openai_completion(answer, "my-preset", "chatcmpl-abc", 1700)
    assert out["id"] == "chatcmpl-abc" and out["model"] == "my-preset" and out["object"] == "chat.completion"
    assert out["created"] == 1700
    assert out["choices"] == [{"index": 0, "logprobs": None, "finish_reason": "stop",
                               "message": {"role": "assistant", "content": "Hello!"}}]
    length = convert.ollama_to_openai_completion(dict(answer, done_reason="length"), "m", "c", 1)
    assert length["choices"][0]["finish_reason"] == "length"
    assert convert.new_completion_id().startswith("chatcmpl-")


def test_non_stream_tool_calls_and_thinking():
    answer = dict(FINAL, message={"role": "assistant", "content": "", "thinking": "hmm",
                                  "tool_calls": [{"function": {"name": "f", "arguments": {"a": 1}}}]})
    choice = convert.ollama_to_openai_completion(answer, "m", "c", 1)["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    call = choice["message"]["tool_calls"][0]
    assert call["type"] == "function" and call["id"].startswith("call_")
    assert json.loads(call["function"]["arguments"]) == {"a": 1}
    assert choice["message"]["reasoning_content"] == "hmm" and choice["message"]["content"] is None


def test_stream_chunks_share_id_and_created_and_end_with_usage():
    conv = convert.OllamaStreamConverter("llama3.2:latest", "chatcmpl-x", 1700, include_usage=True)
    chunks = conv.feed(line("Hel")) + conv.feed(line("lo")) + conv.feed(FINAL) + conv.finish()
    assert {c["id"] for c in chunks} == {"chatcmpl-x"} and {c["created"] for c in chunks} == {1700}
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": "Hel"}
    assert chunks[1]["choices"][0]["delta"] == {"content": "lo"}
    assert chunks[2]["choices"][0]["finish_reason"] == "stop" and chunks[2]["choices"][0]["delta"] == {}
    assert chunks[3]["choices"] == [] and chunks[3]["usage"]["total_tokens"] == 21
    assert all(c["usage"] is None for c in chunks[:3])
    assert len(chunks) == 4 and all(c["object"] == "chat.completion.chunk" for c in chunks)


def test_stream_without_include_usage_puts_usage_on_final_chunk():
    conv = convert.OllamaStreamConverter("m", "c", 1)
    chunks = conv.feed(line("a")) + conv.feed(dict(FINAL, done_reason="length"))
    assert chunks[-1]["choices"][0]["finish_reason"] == "length" and chunks[-1]["usage"]["eval_count"] == 16
    assert "usage" not in chunks[0]


def test_stream_tool_calls():
    conv = convert.OllamaStreamConverter("m", "c", 1)
    calls = [{"function": {"name": "f", "arguments": {"x": "y"}}}]
    chunks = conv.feed(line("", tool_calls=calls)) + conv.feed(FINAL)
    delta = chunks[0]["choices"][0]["delta"]
    assert delta["role"] == "assistant" and delta["tool_calls"][0]["index"] == 0
    assert delta["tool_calls"][0]["function"] == {"name": "f", "arguments": "{\"x\": \"y\"}"}
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


def test_stream_error_line_and_truncated_stream():
    conv = convert.OllamaStreamConverter("m", "c", 1)
    chunks = conv.feed(line("a")) + conv.feed({"error": "model crashed"}) + conv.feed(line("ignored"))
    assert chunks[-1] == {"error": {"message": "model crashed", "type": "upstream_error",
                                    "code": "upstream_error"}}
    assert len(chunks) == 2
    assert conv.finish() == []
    cut = convert.OllamaStreamConverter("m", "c", 1)
    cut.feed(line("a"))
    assert "error" in cut.finish()[0]


def test_empty_answer_still_starts_with_role():
    conv = convert.OllamaStreamConverter("m", "c", 1)
    chunks = conv.feed(FINAL)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert chunks[1]["choices"][0]["finish_reason"] == "stop"


def test_sse_format():
    assert convert.sse({"a": "é"}) == 'data: {"a":"é"}\n\n'.encode()
    assert convert.SSE_DONE == b"data: [DONE]\n\n"


def test_embeddings_to_openai():
    out = convert.ollama_embed_to_openai({"embeddings": [[0.5, 0.25], [1.0, 0.0]], "prompt_eval_count": 3}, "e")
    assert out["object"] == "list" and out["model"] == "e" and out["usage"]["prompt_tokens"] == 3
    assert [d["index"] for d in out["data"]] == [0, 1] and out["data"][0]["embedding"] == [0.5, 0.25]
    packed = convert.ollama_embed_to_openai({"embeddings": [[0.5, 0.25]]}, "e", "base64")["data"][0]["embedding"]
    assert struct.unpack("<2f", base64.b64decode(packed)) == (0.5, 0.25)
