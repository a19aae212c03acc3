"""Load and abuse: 16 concurrent clients, 400 requests, a quarter of them malformed or hung up mid-stream, 4 decoding together."""

from __future__ import annotations

import asyncio
import itertools
import json
import time

import httpx
import psutil
import pytest
from server_harness import ServerProcess

pytestmark = pytest.mark.slow

CLIENTS = 16
TOTAL = 400
MAX_BODY = 64 * 1024

# Malformed requests: (name, path, raw body).  Each must get a 4xx with an OpenAI error body.
MALFORMED = [
    ("broken JSON", "/v1/completions", b'{"prompt": "x", "max_tokens": 4'),
    ("wrong type", "/v1/completions", b'{"prompt": "x", "max_tokens": "ten"}'),
    ("wrong type (chat)", "/v1/chat/completions", b'{"messages": 5}'),
    ("huge max_tokens", "/v1/completions", b'{"prompt": "x", "max_tokens": 1000000000}'),
    ("prompt over the context", "/v1/completions", json.dumps({"prompt": "the words of a long prompt " * 60, "max_tokens": 1}).encode()),
    ("invalid UTF-8", "/v1/chat/completions", b'{"messages": [{"role": "user", "content": "\xc3\x28\xff"}]}'),
    ("oversized body", "/v1/completions", json.dumps({"prompt": "y" * (MAX_BODY + 4096)}).encode()),
    ("bad sampling value", "/v1/completions", b'{"prompt": "x", "temperature": -1}'),
    ("unknown field", "/v1/chat/completions", b'{"messages": [{"role": "user", "content": "hi"}], "max_tokenz": 3}'),
]
DISCONNECT = ("disconnect mid-stream", "/v1/completions", json.dumps({"prompt": "x", "max_tokens": 100, "ignore_eos": True, "stream": True}).encode())


def _good(i: int) -> tuple[str, dict]:
    sampling = {"max_tokens": 4 + i % 5, "temperature": 0.0} if i % 2 else {"max_tokens": 4 + i % 5, "temperature": 0.8, "seed": i}
    if i % 4 < 2:
        return "/v1/completions", {"prompt": f"def f{i}(x):", "stream": i % 4 == 1, **sampling}
    stream = i % 4 == 3
    extra = {"stream_options": {"include_usage": True}} if stream else {}
    return "/v1/chat/completions", {"messages": [{"role": "user", "content": f"question {i}"}], "stream": stream, **extra, **sampling}


def _plan() -> list[tuple]:
    bad = list(itertools.islice(itertools.cycle([*MALFORMED, DISCONNECT]), TOTAL // 4))
    plan = [("good", "good", *_good(i)) for i in range(TOTAL - len(bad))]
    for k, item in enumerate(bad):  # spread the bad ones through the run
        plan.insert(k * 4 + 1, ("bad", *item))
    return plan


async def _send(client: httpx.AsyncClient, kind, name, path, body) -> dict:
    if kind == "good":
        if not body["stream"]:
            r = await client.post(path, json=body)
            data = r.json()
            ok = r.status_code == 200 and data["choices"][0]["finish_reason"] in ("stop", "length") and data["usage"]["completion_tokens"] >= 1
            return {"kind": kind, "status": r.status_code, "ok": ok}
        async with client.stream("POST", path, json=body) as r:
            events = [line async for line in r.aiter_lines() if line]
        finishes = [json.loads(e[6:])["choices"][0]["finish_reason"] for e in events[:-1] if json.loads(e[6:])["choices"]]
        ok = r.status_code == 200 and events[-1] == "data: [DONE]" and finishes[-1] in ("stop", "length")
        return {"kind": kind, "status": r.status_code, "ok": ok}
    if name == DISCONNECT[0]:
        async with client.stream("POST", path, content=body) as r:
            async for line in r.aiter_lines():
                if line:
                    break  # hang up after the first chunk
        return {"kind": "disconnect", "status": r.status_code, "ok": True}
    r = await client.post(path, content=body, headers={"content-type": "application/json"})
    error = r.json().get("error", {}) if r.headers.get("content-type", "").startswith("application/json") else {}
    return {"kind": kind, "name": name, "status": r.status_code, "ok": 400 <= r.status_code < 500 and bool(error.get("message")) and "type" in error}


async def _run(socket_path, plan) -> list[dict]:
    queue = asyncio.Queue()
    for item in plan:
        queue.put_nowait(item)
    results = []

    async def client_loop():
        async with httpx.AsyncClient(transport=httpx.AsyncHTTPTransport(uds=str(socket_path)), base_url="http://localhost", timeout=120) as client:
            while not queue.empty():
                results.append(await _send(client, *queue.get_nowait()))

    await asyncio.gather(*(client_loop() for _ in range(CLIENTS)))
    return results


def test_load_and_abuse(tiny_bundle, tmp_path_factory):
    server = ServerProcess(tiny_bundle, tmp_path_factory.mktemp("load"), "--max-body-bytes", str(MAX_BODY), "--queue-size", "32", "--parallel", "4")
    try:
        proc = psutil.Process(server.pid)
        asyncio.run(_run(server.socket, [("good", "good", *_good(i)) for i in range(16)]))  # warm up
        fds_before, rss_before = proc.num_fds(), proc.memory_info().rss
        m0 = server.metrics()

        started = time.perf_counter()
        results = asyncio.run(_run(server.socket, _plan()))
        elapsed = time.perf_counter() - started

        assert len(results) == TOTAL
        assert [r for r in results if r["status"] >= 500] == []
        assert [r for r in results if not r["ok"]] == []
        good = sum(r["kind"] == "good" for r in results)
        bad = sum(r["kind"] == "bad" for r in results)
        hung_up = sum(r["kind"] == "disconnect" for r in results)
        assert (good, bad + hung_up) == (300, 100)

        with server.client() as c:
            assert c.get("/health").json()["status"] == "ready"
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and proc.num_fds() > fds_before:
            time.sleep(0.1)
        m1 = server.metrics()
        delta = {k: m1[k] - m0[k] for k in m1 if k.startswith("merino_edge_requests_total")}
        rss_growth = proc.memory_info().rss - rss_before
        print(f"\nload: {TOTAL} requests from {CLIENTS} clients in {elapsed:.1f} s; outcomes {delta}; "
              f"open fds {fds_before} -> {proc.num_fds()}; RSS {rss_before / 2**20:.1f} MiB -> +{rss_growth / 2**20:.1f} MiB")
        assert proc.num_fds() <= fds_before  # no socket leaked
        assert m1["merino_edge_running_requests"] == 0 and m1["merino_edge_queue_depth"] == 0  # no slot leaked
        assert delta['merino_edge_requests_total{outcome="failed"}'] == 0
        assert delta['merino_edge_requests_total{outcome="invalid"}'] == bad
        assert delta['merino_edge_requests_total{outcome="completed"}'] + delta['merino_edge_requests_total{outcome="cancelled"}'] == good + hung_up
        assert delta['merino_edge_requests_total{outcome="completed"}'] >= good
        assert rss_growth < 64 * 2**20
    finally:
        assert server.stop() == 0, server.log()
