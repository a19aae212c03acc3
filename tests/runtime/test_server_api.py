"""The server through real clients: the official openai client and curl over the Unix socket, the CLI client."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import httpx
import openai
import pytest
from fastapi.testclient import TestClient
from server_harness import ServerProcess, free_port

from merino_edge.bundle import Bundle
from merino_edge.runtime.client import ApiClient, run_chat
from merino_edge.runtime.metrics import ServerMetrics
from merino_edge.runtime.server import ServerState, create_app

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tiny_bundle, tmp_path_factory):
    proc = ServerProcess(tiny_bundle, tmp_path_factory.mktemp("api"))
    yield proc
    assert proc.stop() == 0, proc.log()


@pytest.fixture(scope="module")
def model_id(server) -> str:
    with server.client() as c:
        return c.get("/v1/models").json()["data"][0]["id"]


def wait_for(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_openai_chat_streaming_equals_non_streaming(server, model_id):
    client = server.openai()
    messages = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "What is a list in Python?"}]
    whole = client.chat.completions.create(model=model_id, messages=messages, max_tokens=12, temperature=0)
    assert whole.object == "chat.completion" and whole.model == model_id
    choice = whole.choices[0]
    assert choice.message.role == "assistant" and choice.finish_reason in ("stop", "length")
    assert 1 <= whole.usage.completion_tokens <= 12 and whole.usage.prompt_tokens > 10
    assert whole.usage.total_tokens == whole.usage.prompt_tokens + whole.usage.completion_tokens

    chunks = list(client.chat.completions.create(model=model_id, messages=messages, max_tokens=12, temperature=0, stream=True,
                                                 stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == choice.message.content  # greedy: the same answer either way
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == choice.finish_reason
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert all(c.usage is None for c in chunks[:-1])  # OpenAI: usage only in the extra last chunk


def test_openai_completion_streaming_equals_non_streaming(server, model_id):
    client = server.openai()
    whole = client.completions.create(model=model_id, prompt="def parse(text):", max_tokens=10, temperature=0)
    assert whole.object == "text_completion" and whole.choices[0].finish_reason in ("stop", "length")
    assert whole.usage.completion_tokens <= 10
    chunks = list(client.completions.create(model=model_id, prompt="def parse(text):", max_tokens=10, temperature=0, stream=True))
    assert "".join(c.choices[0].text for c in chunks) == whole.choices[0].text
    assert all(c.usage is None for c in chunks)  # no usage unless asked for
    seeded = [client.completions.create(model=model_id, prompt="import", max_tokens=8, temperature=1.0, seed=7).choices[0].text for _ in range(2)]
    assert seeded[0] == seeded[1]


def test_openai_errors_and_models(server, model_id):
    client = server.openai()
    assert [m.id for m in client.models.list()] == [model_id]
    assert client.models.retrieve(model_id).id == model_id
    with pytest.raises(openai.BadRequestError, match="'temperature' must be in"):
        client.completions.create(model=model_id, prompt="x", max_tokens=2, temperature=5)
    with pytest.raises(openai.BadRequestError, match="maximum context length is 128 tokens") as err:
        client.chat.completions.create(model=model_id, messages=[{"role": "user", "content": "hi"}], max_tokens=500)
    assert err.value.code == "context_length_exceeded"
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        client.completions.create(model="gpt-4o", prompt="x", max_tokens=2)


def test_curl_over_the_unix_socket(server):
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    curl = ["curl", "-sS", "--unix-socket", str(server.socket)]
    body = json.dumps({"prompt": "Hello", "max_tokens": 4, "temperature": 0})
    answer = json.loads(subprocess.run([*curl, "-H", "content-type: application/json", "-d", body, "http://localhost/v1/completions"],
                                       capture_output=True, text=True, check=True).stdout)
    assert answer["usage"]["completion_tokens"] <= 4 and "text" in answer["choices"][0]
    stream = json.dumps({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4, "stream": True})
    out = subprocess.run([*curl, "-N", "-d", stream, "http://localhost/v1/chat/completions"], capture_output=True, text=True, check=True).stdout
    events = [line for line in out.splitlines() if line]
    assert all(e.startswith("data: ") for e in events) and events[-1] == "data: [DONE]"
    assert json.loads(events[-2][6:])["choices"][0]["finish_reason"] in ("stop", "length")
    health = subprocess.run([*curl, "-w", "%{http_code}", "-o", "/dev/null", "http://localhost/health"], capture_output=True, text=True)
    assert health.stdout == "200"


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "param"),
    [
        ("POST", "/v1/completions", b'{"prompt": "x", ', 400, None),
        ("POST", "/v1/completions", b'{"prompt": "\xff\xfe"}', 400, None),
        ("POST", "/v1/completions", b'["prompt"]', 400, None),
        ("POST", "/v1/completions", b'{"prompt": "x", "max_tokens": "ten"}', 400, "max_tokens"),
        ("POST", "/v1/completions", b'{"prompt": "x", "max_token": 3}', 400, "max_token"),
        ("POST", "/v1/completions", b'{"prompt": "x", "top_p": 0}', 400, "top_p"),
        ("POST", "/v1/completions", b'{"prompt": "x", "n": 2}', 400, "n"),
        ("POST", "/v1/completions", b'{"prompt": [1, 2, 99999]}', 400, "prompt"),
        ("POST", "/v1/completions", b'{"prompt": "x", "stream_options": {"include_usage": true}}', 400, "stream_options"),
        ("POST", "/v1/chat/completions", b'{"messages": "hi"}', 400, "messages"),
        ("POST", "/v1/chat/completions", b'{"messages": [{"role": "wizard", "content": "hi"}]}', 400, "messages[0].role"),
        ("POST", "/v1/chat/completions", b'{"messages": [{"role": "user", "content": "hi"}], "stop": ["a", "b", "c", "d", "e"]}', 400, "stop"),
        ("GET", "/v1/completions", None, 405, None),
        ("POST", "/v1/embeddings", b"{}", 404, None),
        ("POST", "/v1/completions", b'{"prompt": "' + b"a" * (1 << 20) + b'"}', 413, None),
    ],
)
def test_bad_requests_get_openai_error_bodies(server, method, path, body, status, param):
    with server.client() as c:
        r = c.request(method, path, content=body)
        assert r.status_code == status, r.text
        error = r.json()["error"]
        assert set(error) == {"message", "type", "param", "code"} and error["message"] and error["param"] == param
        assert c.get("/health").status_code == 200


def test_prompt_over_the_context_is_refused_before_queueing(server):
    with server.client() as c:
        r = c.post("/v1/completions", json={"prompt": "word " * 400, "max_tokens": 1})
        assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"


def test_disconnect_cancels_the_generation_and_frees_the_slot(server):
    before = server.metrics()
    with server.client() as c, c.stream("POST", "/v1/completions",
                                        json={"prompt": "x", "max_tokens": 120, "ignore_eos": True, "stream": True}) as r:
        next(r.iter_lines())  # the first chunk arrived: the generation runs; now hang up
    assert wait_for(lambda: server.metrics()['merino_edge_requests_total{outcome="cancelled"}'] > before['merino_edge_requests_total{outcome="cancelled"}'])
    after = server.metrics()
    assert after["merino_edge_running_requests"] == 0
    assert after["merino_edge_generation_tokens_total"] - before["merino_edge_generation_tokens_total"] < 120


def test_complete_command(server):
    run = subprocess.run([sys.executable, "-m", "merino_edge.cli", "complete", "for i in", "--socket", str(server.socket), "--max-tokens", "6",
                          "--temperature", "0"], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    with ApiClient(server.socket) as client:
        assert run.stdout == "".join(client.complete("for i in", max_tokens=6, temperature=0)) + "\n"
    missing = subprocess.run([sys.executable, "-m", "merino_edge.cli", "complete", "x", "--socket", str(server.socket) + ".nope"],
                             capture_output=True, text=True, timeout=60)
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1 and "no server socket" in missing.stderr


class _CtrlCOnFirstAnswer(io.StringIO):
    """A terminal whose user presses Ctrl-C as the first answer starts to print."""

    def __init__(self):
        super().__init__()
        self.pressed = False

    def write(self, text):
        if self.getvalue().endswith("model> ") and text and not self.pressed:
            self.pressed = True
            raise KeyboardInterrupt
        return super().write(text)


def test_chat_keeps_the_conversation_resets_and_survives_ctrl_c(server):
    lines = iter(["tell me a long story", "hello", "/reset", "hi again"])

    def read(prompt):
        try:
            return next(lines)
        except StopIteration:
            raise EOFError from None

    out = _CtrlCOnFirstAnswer()
    with ApiClient(server.socket) as client:
        messages = run_chat(client, system="Be brief.", read=read, out=out, max_tokens=40, temperature=0, ignore_eos=True)
    text = out.getvalue()
    assert "[stopped]" in text and "(conversation cleared)" in text
    assert [m["role"] for m in messages] == ["system", "user", "assistant"] and messages[1]["content"] == "hi again"

    chat = subprocess.run([sys.executable, "-m", "merino_edge.cli", "chat", "--socket", str(server.socket), "--max-tokens", "4"],
                          input="hi\n/reset\nbye\n", capture_output=True, text=True, timeout=60)
    assert chat.returncode == 0, chat.stderr
    assert chat.stdout.count("model> ") == 2 and "(conversation cleared)" in chat.stdout


def test_health_is_503_while_loading_then_200(tiny_bundle):
    # The test client speaks to the app as a TCP client would, with Host "testserver".
    state = ServerState(Bundle.load(tiny_bundle), ServerMetrics(), tcp_hosts=frozenset({"testserver"}))
    with TestClient(create_app(state)) as client:
        r = client.get("/health")
        assert r.status_code == 503 and r.json()["status"] == "loading"
        r = client.post("/v1/completions", json={"prompt": "x", "max_tokens": 2})
        assert r.status_code == 503 and r.json()["error"]["code"] == "model_not_ready"
        state.load("ort", threads=1)
        assert client.get("/health").json() == {"status": "ready", "model": state.model_id, "queue_depth": 0, "running": 0}
        assert client.post("/v1/completions", json={"prompt": "x", "max_tokens": 2}).status_code == 200
    assert state.status == "shutting_down"


def test_tcp_key_queue_limit_and_graceful_sigterm(tiny_bundle, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("tcp")
    port = free_port()
    srv = ServerProcess(tiny_bundle, workdir, "--tcp", f"127.0.0.1:{port}", "--api-key", "s3cret", "--queue-size", "1", "--parallel", "1", "--shutdown-grace", "20")
    try:
        body = {"prompt": "x", "max_tokens": 4}
        assert httpx.post(f"http://127.0.0.1:{port}/v1/completions", json=body).status_code == 401
        assert httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200  # probes need no key
        ok = httpx.post(f"http://127.0.0.1:{port}/v1/completions", json=body, headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200 and ok.json()["usage"]["completion_tokens"] <= 4
        with srv.client() as c:
            assert c.post("/v1/completions", json=body).status_code == 200  # the socket needs no key

        # Served in turn, one generation runs and one waits: of eight arriving at once, some find the queue full.
        def post(i, out):
            with srv.client() as c:
                out[i] = c.post("/v1/completions", json={"prompt": "x", "max_tokens": 100, "ignore_eos": True})

        answers = {}
        threads = [threading.Thread(target=post, args=(i, answers)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        codes = sorted(r.status_code for r in answers.values())
        assert 429 in codes and set(codes) == {200, 429}, codes
        assert all(r.json()["error"]["code"] == "queue_full" for r in answers.values() if r.status_code == 429)

        # SIGTERM during a stream: it still finishes, then the server exits 0 and removes its socket.
        results = {}
        with srv.client(timeout=60) as c, c.stream("POST", "/v1/completions", json={"prompt": "x", "max_tokens": 100, "ignore_eos": True, "stream": True}) as r:
            lines = r.iter_lines()
            next(lines)
            srv.proc.send_signal(signal.SIGTERM)
            results["first"] = [line for line in lines if line][-1]
        assert results == {"first": "data: [DONE]"}
        assert srv.proc.wait(60) == 0, srv.log()
        assert not srv.socket.exists()
    finally:
        srv.stop()


def test_non_loopback_tcp_without_a_key_is_refused(tiny_bundle, tmp_path):
    run = subprocess.run([sys.executable, "-m", "merino_edge.cli", "serve", str(tiny_bundle), "--socket", str(tmp_path / "s.sock"),
                          "--tcp", "0.0.0.0:8080", "--metrics-addr", "off"], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "MERINO_EDGE_API_KEY": ""})
    assert run.returncode == 2 and run.stderr.count("\n") == 1 and "needs an API key" in run.stderr
    assert not (tmp_path / "s.sock").exists()
