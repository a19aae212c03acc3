"""The server against hostile input and other local users: a real `merino-edge serve`, raw sockets, small limits."""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import subprocess
import sys
import time

import httpx
import pytest
from server_harness import ServerProcess, free_port

from merino_edge.bundle import MANIFEST, Bundle
from merino_edge.runtime import Generator, SamplingParams
from merino_edge.runtime.api_schema import APIError
from merino_edge.runtime.client import sse_data
from merino_edge.runtime.metrics import ServerMetrics
from merino_edge.runtime.scheduler import GenerationQueue, Job
from merino_edge.runtime.server import ServerState

pytestmark = pytest.mark.slow

LIMITS = ("--header-timeout", "1", "--body-timeout", "1", "--idle-timeout", "1", "--max-connections", "6")


@pytest.fixture(scope="module")
def server(tiny_bundle, tmp_path_factory):
    port = free_port()
    proc = ServerProcess(tiny_bundle, tmp_path_factory.mktemp("hostile"), "--tcp", f"127.0.0.1:{port}", *LIMITS)
    proc.port = port
    yield proc
    assert proc.stop() == 0, proc.log()


def connect(server) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(str(server.socket))
    sock.settimeout(10)
    return sock


def read_until_closed(sock: socket.socket) -> tuple[bytes, float]:
    """Everything the server sends until it closes, and how long that took."""
    started, raw = time.monotonic(), b""
    while chunk := sock.recv(65536):
        raw += chunk
    return raw, time.monotonic() - started


def outcomes(server) -> float:
    return sum(v for k, v in server.metrics().items() if k.startswith("merino_edge_requests_total{"))


def test_tcp_without_a_key_takes_only_its_own_host_and_json(server):
    url = f"http://127.0.0.1:{server.port}"
    body = {"prompt": "x", "max_tokens": 1}
    ok = httpx.post(f"{url}/v1/completions", json=body)
    assert ok.status_code == 200
    rebinding = httpx.post(f"{url}/v1/completions", json=body, headers={"Host": "attacker.example"})
    assert rebinding.status_code == 403 and rebinding.json()["error"]["code"] == "invalid_host"
    assert httpx.get(f"{url}/v1/models", headers={"Host": f"attacker.example:{server.port}"}).status_code == 403
    form = httpx.post(f"{url}/v1/completions", content=json.dumps(body), headers={"Content-Type": "text/plain", "Origin": "http://attacker.example"})
    assert form.status_code == 415 and form.json()["error"]["code"] == "unsupported_media_type"
    assert httpx.post(f"http://localhost:{server.port}/v1/completions", json=body).status_code == 200
    assert httpx.get(f"{url}/health").status_code == 200
    assert httpx.get(f"{url}/health", headers={"Host": "attacker.example"}).json()["error"]["code"] == "invalid_host"  # no status for a rebinding page
    with server.client() as c:  # the Unix socket is guarded by its file mode, not by these checks
        assert c.post("/v1/completions", content=json.dumps(body), headers={"Host": "anything", "Content-Type": "text/plain"}).status_code == 200


@pytest.mark.parametrize("sent", [b"", b"POST /v1/completions HTTP/1.1\r\nHost: localhost\r\n"], ids=["nothing", "half a head"])
def test_a_connection_without_a_complete_request_head_is_closed(server, sent):
    sock = connect(server)
    sock.sendall(sent)
    raw, waited = read_until_closed(sock)
    sock.close()
    assert raw == b"" and 0.8 < waited < 5


def test_the_metrics_listener_keeps_the_same_deadline_and_still_answers(server):
    sock = socket.create_connection(("127.0.0.1", server.metrics_port), timeout=10)
    sock.sendall(b"GET /metrics HTTP/1.1\r\n")  # half a head, then nothing
    raw, waited = read_until_closed(sock)
    sock.close()
    assert raw == b"" and 0.8 < waited < 5
    assert "merino_edge_requests_total" in httpx.get(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=10).text


def test_a_body_that_does_not_arrive_in_time_gets_408_and_the_connection_closes(server):
    sock = connect(server)
    sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"pro")
    raw, waited = read_until_closed(sock)
    sock.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408") and json.loads(body)["error"]["code"] == "request_timeout"
    assert 0.8 < waited < 5


def test_an_idle_kept_alive_connection_is_closed(server):
    sock = connect(server)
    sock.sendall(b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n")
    raw, waited = read_until_closed(sock)
    sock.close()
    assert raw.startswith(b"HTTP/1.1 200") and 0.8 < waited < 5


def _health_status(server) -> int:
    with server.client() as c:
        return c.get("/health").status_code


def test_connections_beyond_the_limit_get_503_and_the_server_recovers(server):
    idle = [connect(server) for _ in range(6)]
    try:
        with server.client() as c:
            assert c.get("/health").status_code == 503
    finally:
        for s in idle:
            s.close()
    deadline = time.monotonic() + 10  # the server notices the hang-ups at its own pace on a busy machine
    while (status := _health_status(server)) == 503 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert status == 200


def test_every_hostile_body_is_one_400_with_a_valid_body_and_one_outcome(server):
    bodies = [
        b"[" * 100_000 + b"]" * 100_000,
        b'{"prompt": "x", "user": ' + b"[" * 5000 + b"]" * 5000 + b"}",
        b'{"prompt": "x", "max_tokens": ' + b"9" * 5000 + b"}",
        b'{"prompt": "a\\ud800b"}',
        b'{"messages": [{"role": "user", "content": "\\udc00"}]}',
        b'{"prompt": "x", "model": "\\ud800"}',
        b'{"prompt": "x", "\\ud800": 1}',
        b'{"prompt": "x", "stop": ["\\udfff"]}',
        b'{"prompt": "x", "repetition_penalty": 1e-300}',
    ]
    before = outcomes(server)
    with server.client() as c:
        for body in bodies:
            path = "/v1/chat/completions" if b"messages" in body else "/v1/completions"
            r = c.post(path, content=body, headers={"Content-Type": "application/json"})
            assert r.status_code == 400, (body[:60], r.text)
            error = json.loads(r.content.decode("utf-8"))["error"]
            assert error["type"] == "invalid_request_error" and error["message"]
        greedy = c.post("/v1/completions", json={"prompt": "The", "max_tokens": 6, "temperature": 0, "ignore_eos": True}).json()
        tiny = c.post("/v1/completions", content=b'{"prompt": "The", "max_tokens": 6, "temperature": 5e-324, "ignore_eos": true, "seed": 3}',
                      headers={"Content-Type": "application/json"}).json()
    assert tiny["choices"][0]["text"] == greedy["choices"][0]["text"]  # below the minimum temperature: greedy, not NaN draws
    assert outcomes(server) - before == len(bodies) + 2
    assert server.metrics()['merino_edge_requests_total{outcome="failed"}'] == 0


def test_a_bundle_pointing_outside_itself_is_refused_before_any_socket(tiny_bundle, tmp_path):
    bundle = shutil.copytree(tiny_bundle, tmp_path / "bundle")
    manifest = json.loads((bundle / MANIFEST).read_text())
    manifest["tokenizer"]["file"] = "../../etc/tokenizer.model"
    (bundle / MANIFEST).write_text(json.dumps(manifest))
    sock = tmp_path / "api.sock"
    run = subprocess.run([sys.executable, "-m", "merino_edge.cli", "serve", str(bundle), "--socket", str(sock), "--metrics-addr", "off"],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 2 and run.stderr.count("\n") == 1, run.stderr
    assert "tokenizer.file '../../etc/tokenizer.model' points outside the bundle" in run.stderr
    assert not sock.exists()


def test_a_metrics_port_in_use_is_retried_then_exits_75_for_systemd_to_restart(tiny_bundle, tmp_path):
    holder = socket.create_server(("127.0.0.1", 0))
    port = holder.getsockname()[1]
    try:
        run = subprocess.run([sys.executable, "-m", "merino_edge.cli", "serve", str(tiny_bundle), "--socket", str(tmp_path / "api.sock"),
                              "--metrics-addr", f"127.0.0.1:{port}", "--bind-retry", "1"], capture_output=True, text=True, timeout=60)
    finally:
        holder.close()
    assert run.returncode == 75, run.stderr
    assert run.stderr.strip().splitlines()[-1] == f"merino-edge: error: cannot serve metrics on 127.0.0.1:{port}: the address is in use"
    assert not (tmp_path / "api.sock").exists()


def test_sigterm_while_loading_keeps_the_server_down(tiny_bundle):
    state = ServerState(Bundle.load(tiny_bundle), ServerMetrics())
    state.stop_serving()  # what SIGTERM does, here before the load ends
    state.load("ort", threads=1)
    assert state.status == "shutting_down" and state.metrics.registry.get_sample_value("merino_edge_ready") == 0
    state.close()


def test_the_queue_limit_holds_while_the_worker_is_idle(tiny_bundle):
    bundle = Bundle.load(tiny_bundle)
    generator = Generator.from_bundle(bundle, "ort", threads=1)

    async def burst() -> list[int]:
        queue = GenerationQueue(generator, SamplingParams, ServerMetrics(), max_waiting=1)
        codes = []
        for _ in range(4):
            try:
                queue.submit(Job([5, 6], {"max_tokens": 50, "ignore_eos": True}, 2))
                codes.append(200)
            except APIError as exc:
                codes.append(exc.status)
        queue.close()
        return codes

    assert asyncio.run(burst()) == [200, 200, 429, 429]  # one runs (or is about to), one waits


def test_the_client_splits_server_sent_events_on_newlines_only():
    line = 'data: {"choices":[{"text":"a\u2028b\u0085c\u2029d"}]}'
    chunks = [line[:10], line[10:] + "\n", "\ndata: [DONE]\r", "\n\n"]
    events = list(sse_data(chunks))
    assert events == [line[len("data: ") :], "[DONE]"]
    assert json.loads(events[0])["choices"][0]["text"] == "a\u2028b\u0085c\u2029d"
