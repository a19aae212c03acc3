"""What serving costs and how continuous batching scales: many streaming clients over the Unix socket.

    python benchmarks/serve_bench.py [--arch search-params-50M quickstart] [--clients 1 2 4 8 16]
                                     [--parallel 8] [--threads 2] [--workdir DIR]

For each arch it builds a random-init bundle (speed does not depend on the
weights' values) and serves its `--precision` graph, fp32 by default: `search-params-50M` is what `merino-edge search --params 50M`
picks (32k vocabulary), `quickstart` the architecture the quickstart found on
this machine (E128xR2xL1 | E256xR2xL1 | E256xR2xL1, vocabulary 1024, projection
128, 512 positions).  Every generation is greedy with eos ignored.

- overhead: one client streaming `/v1/completions` over the socket vs
  `Generator.generate` in-process (tokens/s end to end; the target is < 5 %);
- concurrency: `merino-edge serve --parallel 1` (served in turn) and
  `--parallel N` (continuous batching), both up at once and run back to back
  at each client count (so a change in the machine's load hits both), with 1,
  2, 4, 8, 16 clients of
  the official `openai` client streaming `--requests-per-client` completions
  one after another.  Prompts differ from the first token on and the prefix
  cache is off, so every request pays its whole prefill.  max_tokens varies
  per request (0.5x-1.5x `--load-tokens`, seeded) and the clients start spread
  over one single-client request's time, so they do not all arrive at the same
  step.  Reported: aggregate generated tokens/s (all tokens / wall time), TTFT
  and inter-token latency (gaps between text chunks) p50 / p95, as the client
  sees them.

Targets (50M arch): tokens/s at 8 clients >= 4x the 1-client figure; TTFT p95
at 8 clients <= 2x the 1-client TTFT plus one prefill.  Prints a table and
writes benchmarks/results/serve_bench.json with the machine's load average.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

from merino_edge.arch import ArchSpec, Block
from merino_edge.fileio import write_json_atomic
from merino_edge.host import cpu_model
from merino_edge.runtime.socket_path import MAX_SOCKET_PATH

sys.path.insert(0, str(Path(__file__).resolve().parent))
from runtime_bench import ARCHS as RUNTIME_ARCHS  # noqa: E402
from runtime_bench import build_bundle, build_tokenizer, merino_edge_versions  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "serve_bench.json"
PROMPT = "def read_config(path):\n    \"\"\"Read the settings file at path and return a dict.\"\"\"\n"
ARCHS = {
    "search-params-50M": RUNTIME_ARCHS["search-params-50M"],
    "quickstart": ArchSpec(blocks=(Block(128, 2.0, 1), Block(256, 2.0, 1), Block(256, 2.0, 1)), vocab_size=1024, proj_dim=128, max_positions=512),
}


def in_process(bundle: Path, args) -> dict:
    from merino_edge.bundle import Bundle
    from merino_edge.runtime import Generator, SamplingParams, create_backend
    from merino_edge.tokenizer import Tokenizer

    b = Bundle.load(bundle)
    generator = Generator(create_backend(b, "ort", threads=args.threads, precision=args.precision), Tokenizer(b.tokenizer_path))
    params = SamplingParams(max_tokens=args.new_tokens, temperature=0, ignore_eos=True)
    generator.generate(PROMPT, params)  # warm-up
    runs = [generator.generate(PROMPT, params) for _ in range(args.repeats)]
    return {"tokens_per_s": statistics.median(r.completion_tokens / r.timings.total_s for r in runs),
            "ttft_ms": statistics.median(r.timings.ttft_s for r in runs) * 1000}


def openai_client(sock: Path):
    from openai import OpenAI

    http = httpx.Client(transport=httpx.HTTPTransport(uds=str(sock)), base_url="http://localhost", timeout=600)
    return OpenAI(base_url="http://localhost/v1", api_key="unused", http_client=http, max_retries=0)


def stream_once(client, model: str, prompt: str, max_tokens: int) -> dict:
    """One streamed completion as the client sees it: tokens, seconds to the first text and to the end, gaps between text chunks."""
    sent = time.perf_counter()
    chunks = client.completions.create(model=model, prompt=prompt, max_tokens=max_tokens, temperature=0, stream=True,
                                       stream_options={"include_usage": True}, extra_body={"ignore_eos": True})
    arrivals, tokens = [], 0
    for chunk in chunks:
        if chunk.choices and chunk.choices[0].text:
            arrivals.append(time.perf_counter())
        if chunk.usage:
            tokens = chunk.usage.completion_tokens
    end = time.perf_counter()
    return {"tokens": tokens, "ttft": (arrivals[0] if arrivals else end) - sent, "total": end - sent,
            "gaps": [b - a for a, b in zip(arrivals, arrivals[1:], strict=False)]}


def _pct(values: list[float], p: float) -> float:
    values = sorted(values)
    k = (len(values) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


class Server:
    """`merino-edge serve` in a subprocess on a socket in `work`."""

    def __init__(self, bundle: Path, work: Path, threads: int, parallel: int, precision: str):
        self.sock = work / f"bench-{parallel}.sock"
        assert len(str(self.sock)) <= MAX_SOCKET_PATH, "choose a shorter --workdir"
        cmd = [sys.executable, "-m", "merino_edge.cli", "serve", str(bundle), "--socket", str(self.sock), "--threads", str(threads),
               "--metrics-addr", "off", "--queue-size", "64", "--parallel", str(parallel), "--prefix-cache-mib", "0",
               "--precision", precision]
        self.proc = subprocess.Popen(cmd, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 300
        while True:
            try:
                with httpx.Client(transport=httpx.HTTPTransport(uds=str(self.sock)), base_url="http://localhost") as c:
                    if c.get("/health").status_code == 200:
                        break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError("the server did not come up")
            time.sleep(0.2)
        self.client = openai_client(self.sock)
        self.model = self.client.models.list().data[0].id

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(60)


def load(server: Server, clients: int, args, spread_s: float, seed: int) -> dict:
    """`clients` clients, each streaming `args.requests_per_client` completions in turn; their starts spread over `spread_s`."""
    rng = random.Random(seed)
    plans = [[(f"# task {c}.{j}\n{PROMPT}", max(1, round(args.load_tokens * rng.uniform(0.5, 1.5)))) for j in range(args.requests_per_client)]
             for c in range(clients)]
    results, lock = [], threading.Lock()

    def work(c: int) -> None:
        client = openai_client(server.sock)
        time.sleep(spread_s * c / clients)
        for prompt, max_tokens in plans[c]:
            r = stream_once(client, server.model, prompt, max_tokens)
            with lock:
                results.append(r)

    threads = [threading.Thread(target=work, args=(c,)) for c in range(clients)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    ttfts = [r["ttft"] for r in results]
    gaps = [g for r in results for g in r["gaps"]]
    return {"clients": clients, "requests": len(results), "tokens": sum(r["tokens"] for r in results), "wall_s": wall,
            "tokens_per_s": sum(r["tokens"] for r in results) / wall,
            "ttft_p50_ms": _pct(ttfts, 50) * 1000, "ttft_p95_ms": _pct(ttfts, 95) * 1000,
            "itl_p50_ms": _pct(gaps, 50) * 1000 if gaps else None, "itl_p95_ms": _pct(gaps, 95) * 1000 if gaps else None}


def bench_arch(name: str, work: Path, sock_dir: Path, args) -> dict:
    arch = ARCHS[name]
    tokenizer = build_tokenizer(work / f"tokenizer-{arch.vocab_size}.model", arch.vocab_size)
    _, bundle = build_bundle(name, arch, tokenizer, work)
    inproc = in_process(bundle, args)
    servers = {parallel: Server(bundle, sock_dir, args.threads, parallel, args.precision) for parallel in sorted({1, args.parallel})}
    modes = {}
    try:
        for parallel, server in servers.items():
            for _ in range(2):  # warm-up
                stream_once(server.client, server.model, PROMPT, args.load_tokens)
            single = [stream_once(server.client, server.model, PROMPT, args.new_tokens) for _ in range(args.repeats)]
            modes[parallel] = {"socket": {"tokens_per_s": statistics.median(r["tokens"] / r["total"] for r in single),
                                          "ttft_ms": statistics.median(r["ttft"] for r in single) * 1000}, "load": []}
        spread = args.load_tokens / modes[1]["socket"]["tokens_per_s"]  # one single-client request's time
        for n in args.clients:  # the modes back to back at every client count, so a change in the machine's load hits both
            for parallel, server in servers.items():
                modes[parallel]["load"].append(load(server, n, args, spread, seed=n))
            print(f"{name}: {n} clients done", file=sys.stderr)
    finally:
        for server in servers.values():
            server.stop()
    socket = modes[1]["socket"]
    return {"arch": name, "params": arch.params(), "bundle": str(bundle), "in_process": inproc, "socket_sse": socket,
            "overhead": 1 - socket["tokens_per_s"] / inproc["tokens_per_s"],
            "modes": {str(k): v for k, v in modes.items()}}


def targets(result: dict, parallel: int) -> dict:
    """The issue's targets at 8 clients against 1 client, in the batched mode (one prefill ~ the single-client TTFT)."""
    runs = {r["clients"]: r for r in result["modes"][str(parallel)]["load"]}
    if 1 not in runs or 8 not in runs:
        return {}
    one, eight = runs[1], runs[8]
    prefill_ms = result["modes"][str(parallel)]["socket"]["ttft_ms"]
    return {"speedup_8_clients": eight["tokens_per_s"] / one["tokens_per_s"], "speedup_target": 4.0,
            "ttft_p95_8_clients_ms": eight["ttft_p95_ms"], "ttft_target_ms": 2 * one["ttft_p50_ms"] + prefill_ms}


def table(results: list[dict], parallel: int) -> str:
    lines = []
    for res in results:
        lines += [f"{res['arch']} ({res['params'] / 1e6:.1f}M params): in-process {res['in_process']['tokens_per_s']:.1f} tok/s, "
                  f"socket {res['socket_sse']['tokens_per_s']:.1f} tok/s, overhead {res['overhead'] * 100:.1f} % (target < 5 %)",
                  f"{'parallel':>8}{'clients':>8}{'requests':>9}{'tok/s':>9}{'TTFT p50':>10}{'TTFT p95':>10}{'ITL p50':>9}{'ITL p95':>9}   (ms)"]
        for mode, data in res["modes"].items():
            for r in data["load"]:
                lines.append(f"{mode:>8}{r['clients']:>8}{r['requests']:>9}{r['tokens_per_s']:>9.1f}{r['ttft_p50_ms']:>10.1f}{r['ttft_p95_ms']:>10.1f}"
                             f"{r['itl_p50_ms'] or 0:>9.1f}{r['itl_p95_ms'] or 0:>9.1f}")
        t = res.get("targets")
        if t:
            lines.append(f"  --parallel {parallel}, 8 clients: {t['speedup_8_clients']:.2f}x the 1-client tok/s (target >= 4x); "
                         f"TTFT p95 {t['ttft_p95_8_clients_ms']:.0f} ms (target <= {t['ttft_target_ms']:.0f} ms)")
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", nargs="+", default=list(ARCHS), choices=sorted(ARCHS), help="archs to build and serve (default: both)")
    parser.add_argument("--clients", nargs="+", type=int, default=[1, 2, 4, 8, 16], help="concurrent clients (default 1 2 4 8 16)")
    parser.add_argument("--parallel", type=int, default=8, help="--parallel of the batched server, compared with --parallel 1 (default 8)")
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime threads (default 2)")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "int8", "int4", "auto"],
                        help="graph to serve (default fp32: decode bound by memory bandwidth, which batching amortizes; "
                             "int4 is bound by its dequantizing kernels on a small CPU)")
    parser.add_argument("--new-tokens", type=int, default=64, help="tokens of the single-stream overhead runs (default 64)")
    parser.add_argument("--repeats", type=int, default=3, help="single-stream runs (default 3)")
    parser.add_argument("--load-tokens", type=int, default=32, help="mean max_tokens of the concurrent requests (default 32)")
    parser.add_argument("--requests-per-client", type=int, default=3, help="requests each client sends in turn (default 3)")
    parser.add_argument("--workdir", help="keep the built bundles here (default: a temp dir)")
    parser.add_argument("--json", default=str(RESULTS))
    args = parser.parse_args(argv)

    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="serve-bench-") as tmp:
        work = Path(args.workdir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        results = []
        for name in args.arch:
            res = bench_arch(name, work, Path(tmp), args)
            res["targets"] = targets(res, args.parallel)
            results.append(res)
    load_after = os.getloadavg()
    print(table(results, args.parallel))
    print(f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f} ({os.cpu_count()} cores)")
    write_json_atomic(args.json, {
        "schema_version": 2,
        "machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "threads": args.threads, "load_average_before": load_before, "load_average_after": load_after},
        "versions": merino_edge_versions(),
        "settings": {k: v for k, v in vars(args).items() if k != "json"},
        "archs": results,
    })
    return 0


if __name__ == "__main__":
    sys.exit(main())
