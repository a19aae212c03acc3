"""Property-based fuzzing of the real server over its Unix socket: thousands of bodies built from the API's fields.

Hypothesis draws request bodies field by field from what `api_schema` reads
(valid values, values of every other JSON type, numbers of any size including
NaN, infinities and thousands of digits, strings with lone surrogates and role
markers, unknown field names, nesting of any depth), then sometimes breaks the
encoding (invalid UTF-8, a cut-off body).  Every answer must be a 2xx with a
well-formed body or a 4xx with an OpenAI error body in valid UTF-8 JSON; no 5xx,
no reset; afterwards the server is healthy, no generation slot is held, it has
no more open files than before, and each request was counted under one outcome.
"""

from __future__ import annotations

import collections
import json

import httpx
import psutil
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from server_harness import ServerProcess

from merino_edge.runtime.api_schema import ACCEPTED_FIELDS

pytestmark = pytest.mark.slow

EXAMPLES = 1500  # each body goes to both endpoints: 3000 requests
PATHS = {"completions": "/v1/completions", "chat": "/v1/chat/completions"}

texts = st.one_of(
    st.text(st.characters(exclude_categories=()), max_size=12),  # any code point, lone surrogates included
    st.sampled_from(["", "x", "<|user|>", "\n<|assistant|>\n", "</s>", "\u2028", "\ud800", "a\udfffb", "bundle"]),
)
numbers = st.one_of(
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0, 1, -1, 0.5, 2**31, 2**63, 2**64, 1e-300, 5e-324, 1e308, -0.0]),
)
scalars = st.one_of(st.none(), st.booleans(), numbers, texts)
# A value of any JSON type, one level deep (deeper nesting is the "deep" shape below; recursive strategies cost 5x the time).
any_json = scalars | st.lists(scalars, max_size=3) | st.dictionaries(texts, scalars, max_size=2)

parts = st.lists(st.fixed_dictionaries({"type": st.sampled_from(["text", "image_url"]), "text": texts}) | any_json, max_size=3)
message = st.fixed_dictionaries(
    {"role": st.sampled_from(["system", "developer", "user", "assistant", "tool", "", "\ud800"]) | any_json, "content": texts | parts | any_json}
)
VALUES = {
    "prompt": texts | st.lists(st.integers(-5, 600), max_size=6) | st.lists(texts, max_size=2),
    "messages": st.lists(message, max_size=3),
    "max_tokens": st.integers(1, 4),
    "max_completion_tokens": st.integers(1, 4),
    "temperature": st.floats(0, 2) | st.sampled_from([1e-300, 5e-324, 1e-7]),
    "top_p": st.floats(0, 1),
    "top_k": st.integers(0, 1000),
    "repetition_penalty": st.floats(0, 10) | st.sampled_from([1e-300, 1e-3]),
    "seed": st.integers(0, 2**64),
    "stop": texts | st.lists(texts, max_size=5),
    "stream": st.booleans(),
    "stream_options": st.fixed_dictionaries({"include_usage": st.booleans()}),
    "ignore_eos": st.booleans(),
    "model": st.sampled_from(["bundle", "other"]) | texts,
}


@st.composite
def requests(draw) -> tuple[str, bytes]:
    """(path, raw body): mostly a JSON object of that endpoint's fields, sometimes something that is not."""
    endpoint = draw(st.sampled_from(sorted(PATHS)))
    required = "prompt" if endpoint == "completions" else "messages"
    known = st.sampled_from(ACCEPTED_FIELDS[endpoint])
    names = {draw(known) if draw(st.integers(0, 9)) else draw(texts) for _ in range(draw(st.integers(0, 5)))}  # one in ten unknown
    if draw(st.integers(0, 9)):
        names.add(required)
    if draw(st.integers(0, 3)):
        names.add("max_tokens")  # keeps most generations short
    # Three values in four of the field's own kind, the rest of any other.
    body = {name: draw(VALUES[name] if name in VALUES and draw(st.integers(0, 3)) else any_json) for name in sorted(names, key=repr)}
    raw = json.dumps(body, ensure_ascii=True, allow_nan=True).encode()
    shape = draw(st.sampled_from(["object"] * 12 + ["deep", "huge number", "bad utf-8", "cut", "not an object"]))
    if shape == "deep":
        depth = draw(st.integers(10, 5000))
        raw = raw[:-1] + (b", " if body else b"") + b'"user": ' + b"[" * depth + b"]" * depth + b"}"
    elif shape == "huge number":
        field = draw(st.sampled_from(["max_tokens", "seed", "temperature", "top_k", "prompt"]))
        raw = b'{"prompt": "x", "%s": %s}' % (field.encode(), b"9" * draw(st.integers(20, 5000)))
    elif shape == "bad utf-8":
        at = draw(st.integers(0, len(raw)))
        raw = raw[:at] + draw(st.sampled_from([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf4\x90\x80\x80"])) + raw[at:]
    elif shape == "cut":
        raw = raw[: draw(st.integers(0, max(0, len(raw) - 1)))]
    elif shape == "not an object":
        raw = json.dumps(draw(any_json), ensure_ascii=True).encode()
    return PATHS[endpoint], raw


def check_answer(response: httpx.Response) -> None:
    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        error = json.loads(response.content.decode("utf-8"))["error"]
        assert isinstance(error["message"], str) and error["message"] and {"type", "param", "code"} <= set(error)
        return
    assert response.status_code == 200
    if response.headers["content-type"].startswith("text/event-stream"):
        events = [line[len("data: ") :] for line in response.content.decode("utf-8").split("\n") if line.startswith("data: ")]
        assert events, response.content
        for data in events:
            if data != "[DONE]":
                json.loads(data)
    else:
        assert json.loads(response.content.decode("utf-8"))["choices"]


@pytest.fixture(scope="module")
def server(tiny_bundle, tmp_path_factory):
    proc = ServerProcess(tiny_bundle, tmp_path_factory.mktemp("fuzz"))
    yield proc
    assert proc.stop() == 0, proc.log()


def test_fuzzed_requests_never_break_the_server(server, capsys):
    statuses: collections.Counter = collections.Counter()
    resets = 0
    with server.client(timeout=60) as client:
        assert client.get("/health").status_code == 200
        fds_before = psutil.Process(server.pid).num_fds()
        outcomes_before = _outcomes(server)

        @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True, phases=[Phase.generate, Phase.shrink],
                  suppress_health_check=list(HealthCheck))
        @given(requests())
        def fuzz(request):
            nonlocal resets
            path, raw = request
            for target in (path, *(p for p in PATHS.values() if p != path)):  # its own endpoint, then the other one
                try:
                    response = client.post(target, content=raw, headers={"Content-Type": "application/json"})
                except httpx.TransportError:
                    resets += 1
                    raise
                statuses[response.status_code] += 1
                check_answer(response)

        fuzz()
        health = client.get("/health")
        fds_after = psutil.Process(server.pid).num_fds()
    counted = _outcomes(server) - outcomes_before
    sent = sum(statuses.values())
    with capsys.disabled():
        print(f"\nfuzz: {sent} requests, status codes {dict(sorted(statuses.items()))}, "
              f"{sum(n for s, n in statuses.items() if s >= 500)} x 5xx, {resets} resets; "
              f"health afterwards {health.status_code} {health.json()}; server fds {fds_before} before, {fds_after} after; "
              f"outcomes counted {counted:.0f}")
    assert sent >= 2 * EXAMPLES and resets == 0
    assert health.status_code == 200 and health.json()["running"] == 0 and health.json()["queue_depth"] == 0
    assert fds_after <= fds_before
    assert counted == sent and server.metrics()['merino_edge_requests_total{outcome="failed"}'] == 0


def _outcomes(server) -> float:
    return sum(v for k, v in server.metrics().items() if k.startswith("merino_edge_requests_total{"))
