"""Request validation: what is accepted, normalized and refused, with OpenAI's error fields."""

from __future__ import annotations

import pytest

from merino_edge.runtime.api_responses import ResponseWriter, sse
from merino_edge.runtime.api_schema import APIError, parse_chat_request, parse_completion_request, parse_json_body


def test_completion_request_normalizes_prompts_and_sampling():
    req = parse_completion_request({"prompt": ["hello"], "max_tokens": 5, "temperature": 0, "stop": "\n", "top_k": 4, "seed": 3, "user": "u"}, 512)
    assert req.prompt == "hello" and req.max_tokens == 5 and not req.stream
    assert req.sampling == {"temperature": 0.0, "stop": ("\n",), "top_k": 4, "seed": 3}
    assert parse_completion_request({"prompt": [5, 6, 7]}, 512).prompt == [5, 6, 7]
    assert parse_completion_request({"prompt": "x", "n": 1, "echo": False, "logprobs": None, "max_tokens": None}, 512).max_tokens is None


def test_chat_request_reads_text_parts_and_developer_role():
    req = parse_chat_request({
        "messages": [{"role": "developer", "content": "Be brief."}, {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}],
        "max_completion_tokens": 7, "stream": True, "stream_options": {"include_usage": True},
    })
    assert req.messages == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "ab"}]
    assert req.max_tokens == 7 and req.stream and req.include_usage


@pytest.mark.parametrize(
    ("body", "param", "message"),
    [
        ({"prompt": "x", "temperature": "hot"}, "temperature", "must be a number"),
        ({"prompt": "x", "temperature": float("nan")}, "temperature", "must be a number"),
        ({"prompt": "x", "max_tokens": True}, "max_tokens", "must be an integer"),
        ({"prompt": "x", "max_tokens": 0}, "max_tokens", "between 1 and"),
        ({"prompt": "x", "top_p": 1.5}, "top_p", r"\(0.0, 1.0\]"),
        ({"prompt": "x", "seed": -1}, "seed", "between 0 and"),
        ({"prompt": "x", "stop": ["a", ""]}, "stop", "must not be empty"),
        ({"prompt": "x", "presence_penalty": 0.5}, "presence_penalty", "not supported"),
        ({"prompt": "x", "best_of": 3}, "best_of", "not supported"),
        ({"prompt": "x", "stream": "yes"}, "stream", "must be a boolean"),
        ({"prompt": "x", "max_tokns": 3}, "max_tokns", "Unrecognized request argument"),
        ({"prompt": ["a", "b"]}, "prompt", "one prompt per request"),
        ({"prompt": [1, 600]}, "prompt", "outside the vocabulary"),
        ({"prompt": {"text": "x"}}, "prompt", "string or a list of token ids"),
        ({}, "prompt", "'prompt' is required"),
    ],
)
def test_bad_completion_fields_name_the_parameter(body, param, message):
    with pytest.raises(APIError, match=message) as err:
        parse_completion_request(body, 512)
    assert err.value.status == 400 and err.value.param == param
    assert err.value.body()["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": []}, "messages"),
        ({"messages": ["hi"]}, "messages[0]"),
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0].role"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]}, "messages[0].content"),
        ({"messages": [{"role": "user", "content": None}]}, "messages[0].content"),
        ({"messages": [{"role": "user", "content": "x"}], "max_tokens": 3, "max_completion_tokens": 3}, "max_tokens"),
        ({"messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function"}]}, "tools"),
        ({"messages": [{"role": "user", "content": "x"}], "stream": True, "stream_options": {"include_usage": 1}}, "stream_options.include_usage"),
    ],
)
def test_bad_chat_fields_name_the_parameter(body, param):
    with pytest.raises(APIError) as err:
        parse_chat_request(body)
    assert err.value.status == 400 and err.value.param == param


@pytest.mark.parametrize(("raw", "message"), [(b"\xff{}", "not valid UTF-8"), (b"{", "not valid JSON"), (b"[1]", "must be a JSON object")])
def test_bodies_that_are_not_json_objects(raw, message):
    with pytest.raises(APIError, match=message):
        parse_json_body(raw)


def test_stream_chunks_follow_openai_usage_semantics():
    writer = ResponseWriter("chat", "m", include_usage=True)
    assert sse({"a": "é"}) == 'data: {"a":"é"}\n\n'.encode()
    first = writer.chunk(None, role=True)
    assert b'"delta":{"role":"assistant","content":""}' in first and b'"usage":null' in first
    last = writer.usage_chunk(3, 4)
    assert b'"choices":[]' in last and b'"total_tokens":7' in last
    plain = ResponseWriter("completions", "m").chunk("hi", "stop")
    assert b'"usage"' not in plain and b'"object":"text_completion"' in plain
