"""What serving costs: tokens/s through the Unix socket and SSE vs the same generation in-process,
and time to first token with 1, 4 and 16 concurrent clients.

    python benchmarks/serve_bench.py [--bundle DIR] [--threads 2] [--new-tokens 128] [--workdir DIR]

Without --bundle it builds the random-init FP32 bundle of the architecture
`merino-edge search` picks at its default budget (as benchmarks/runtime_bench.py
does; speed does not depend on the weights' values).  Every generation is greedy
with eos ignored, so each produces exactly --new-tokens tokens.

- in-process: `Generator.generate` on the ONNX Runtime backend, `--repeats` times;
- socket: `merino-edge serve` in a subprocess, one client streaming
  `/v1/completions` over the socket, tokens counted from the SSE chunks and
  timed on the client (request sent -> last chunk);
- TTFT under load: N clients each streaming `--requests-per-client` short
  requests at once (requests are served in turn, so TTFT grows with N).

Overhead = 1 - (socket tokens/s) / (in-process tokens/s), end to end (the
target is under 5 %).  Prints a table and writes benchmarks/results/serve_bench.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

from merino_edge.fileio import write_json_atomic
from merino_edge.host import cpu_model
from merino_edge.runtime.socket_path import MAX_SOCKET_PATH

sys.path.insert(0, str(Path(__file__).resolve().parent))
from runtime_bench import ARCHS, build_bundle, build_tokenizer, merino_edge_versions  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "serve_bench.json"
PROMPT = "def read_config(path):\n    \"\"\"Read the settings file at path and return a dict.\"\"\"\n"


def in_process(bundle: Path, args) -> dict:
    from merino_edge.bundle import Bundle
    from merino_edge.runtime import Generator, SamplingParams, create_backend
    from merino_edge.tokenizer import Tokenizer

    b = Bundle.load(bundle)
    generator = Generator(create_backend(b, "ort", threads=args.threads), Tokenizer(b.tokenizer_path))
    params = SamplingParams(max_tokens=args.new_tokens, temperature=0, ignore_eos=True)
    generator.generate(PROMPT, params)  # warm-up
    runs = [generator.generate(PROMPT, params) for _ in range(args.repeats)]
    return _summary([(r.completion_tokens, r.timings.total_s, r.timings.ttft_s) for r in runs])


def _summary(runs: list[tuple[int, float, float]]) -> dict:
    return {
        "tokens_per_s": statistics.median(n / total for n, total, _ in runs),
        "ttft_ms": statistics.median(ttft for _, _, ttft in runs) * 1000,
        "tokens": runs[0][0],
        "runs": len(runs),
    }


def stream_once(client: httpx.Client, max_tokens: int) -> tuple[int, float, float]:
    """(tokens, seconds to the last chunk, seconds to the first text) of one streamed completion."""
    body = {"prompt": PROMPT, "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True}}
    sent = time.perf_counter()
    first = None
    tokens = 0
    with client.stream("POST", "/v1/completions", json=body) as r:
        for line in r.iter_lines():
            if not line.startswith("data: {"):
                continue
            event = json.loads(line[6:])
            if first is None and event["choices"] and event["choices"][0]["text"]:
                first = time.perf_counter()
            if event.get("usage"):
                tokens = event["usage"]["completion_tokens"]
    return tokens, time.perf_counter() - sent, (first or time.perf_counter()) - sent


def concurrent_ttft(sock: Path, clients: int, requests: int, max_tokens: int) -> dict:
    ttfts, lock = [], threading.Lock()

    def work():
        with _client(sock) as c:
            for _ in range(requests):
                _, _, ttft = stream_once(c, max_tokens)
                with lock:
                    ttfts.append(ttft)

    threads = [threading.Thread(target=work) for _ in range(clients)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    ttfts.sort()
    return {"clients": clients, "requests": len(ttfts), "ttft_p50_ms": _pct(ttfts, 50) * 1000, "ttft_p95_ms": _pct(ttfts, 95) * 1000,
            "requests_per_s": len(ttfts) / wall}


def _pct(sorted_values: list[float], p: float) -> float:
    k = (len(sorted_values) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (k - lo)


def _client(sock: Path) -> httpx.Client:
    return httpx.Client(transport=httpx.HTTPTransport(uds=str(sock)), base_url="http://localhost", timeout=600)


def through_socket(bundle: Path, args, work: Path) -> tuple[dict, list[dict]]:
    sock = work / "serve-bench.sock"
    assert len(str(sock)) <= MAX_SOCKET_PATH, "choose a shorter --workdir"
    cmd = [sys.executable, "-m", "merino_edge.cli", "serve", str(bundle), "--socket", str(sock), "--threads", str(args.threads),
           "--metrics-addr", "off", "--queue-size", "64"]
    server = subprocess.Popen(cmd, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                with _client(sock) as c:
                    if c.get("/health").status_code == 200:
                        break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline or server.poll() is not None:
                raise RuntimeError("the server did not come up")
            time.sleep(0.2)
        with _client(sock) as c:
            stream_once(c, args.new_tokens)  # warm-up
            single = _summary([stream_once(c, args.new_tokens) for _ in range(args.repeats)])
        loads = [concurrent_ttft(sock, n, args.requests_per_client, args.load_tokens) for n in (1, 4, 16)]
    finally:
        server.terminate()
        server.wait(60)
    return single, loads


def table(inproc: dict, socket: dict, overhead: float, loads: list[dict]) -> str:
    lines = [f"{'path':<40}{'tokens/s':>10}{'TTFT ms':>10}",
             f"{'in-process (Generator, ORT)':<40}{inproc['tokens_per_s']:>10.1f}{inproc['ttft_ms']:>10.1f}",
             f"{'Unix socket + SSE (merino-edge serve)':<40}{socket['tokens_per_s']:>10.1f}{socket['ttft_ms']:>10.1f}",
             f"overhead of serving: {overhead * 100:.2f} % (target < 5 %)", "",
             f"{'concurrent clients':<20}{'requests':>10}{'TTFT p50 ms':>13}{'TTFT p95 ms':>13}{'req/s':>8}"]
    for r in loads:
        lines.append(f"{r['clients']:<20}{r['requests']:>10}{r['ttft_p50_ms']:>13.1f}{r['ttft_p95_ms']:>13.1f}{r['requests_per_s']:>8.2f}")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", help="bundle to serve (default: build the search-default arch's)")
    parser.add_argument("--arch", default="search-default-60GFLOPs", choices=sorted(ARCHS), help="arch to build when no --bundle")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--load-tokens", type=int, default=16, help="tokens per request in the concurrency runs")
    parser.add_argument("--requests-per-client", type=int, default=4)
    parser.add_argument("--workdir", help="keep the built bundle here (default: a temp dir)")
    parser.add_argument("--json", default=str(RESULTS))
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="serve-bench-") as tmp:
        work = Path(args.workdir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        if args.bundle:
            bundle = Path(args.bundle)
        else:
            _, bundle = build_bundle(args.arch, ARCHS[args.arch], build_tokenizer(work / "tokenizer.model"), work)
        inproc = in_process(bundle, args)
        socket, loads = through_socket(bundle, args, Path(tmp))
    overhead = 1 - socket["tokens_per_s"] / inproc["tokens_per_s"]
    print(table(inproc, socket, overhead, loads))
    result = {
        "schema_version": 1,
        "machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "threads": args.threads},
        "versions": merino_edge_versions(),
        "bundle": str(bundle) if args.bundle else args.arch,
        "new_tokens": args.new_tokens,
        "in_process": inproc,
        "socket_sse": socket,
        "overhead": overhead,
        "concurrency": loads,
    }
    write_json_atomic(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
