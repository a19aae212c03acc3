"""Prometheus telemetry of the server, served on its own TCP address.

Prometheus cannot scrape a Unix socket, so `/metrics` listens on TCP (default
127.0.0.1:9464): prometheus-client's ASGI app, served by the API's own server
on a listener of its own (`with_metrics`), so its connections are bounded and
timed out like the API's, with a registry of its own (nothing global).  Names follow Prometheus conventions:
`merino_edge_` prefix, base units, `_total` counters.  Labels are a small fixed
set (request outcome, sensor and rail names from the board); nothing a client
sends, and never prompt text, becomes part of a metric.

On a Jetson, `TegrastatsMetrics` turns the latest tegrastats sample into
gauges (temperatures, power rails, RAM, CPU/GPU/EMC load).  Elsewhere, or
before the first sample, those series are absent rather than zero, so a
dashboard shows "no data" instead of a cold, idle, powerless board.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, ProcessCollector, make_asgi_app
from prometheus_client.core import GaugeMetricFamily

from merino_edge import __version__

PREFIX = "merino_edge"
DEFAULT_METRICS_ADDR = "127.0.0.1:9464"
# Request outcomes: finished normally, stopped by the client or shutdown, refused as invalid (4xx),
# refused for lack of room (queue full, loading, shutting down), failed inside the server (5xx).
OUTCOMES = ("completed", "cancelled", "invalid", "rejected", "failed")

TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
INTER_TOKEN_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.25, 0.5, 1.0)
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32)
REQUEST_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 60.0, 120.0, 300.0)
MIB = 1024 * 1024


class ServerMetrics:
    """The server's metrics in their own registry; methods are thread-safe (prometheus-client locks)."""

    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        ProcessCollector(namespace=PREFIX, registry=r)  # merino_edge_process_resident_memory_bytes, open fds, CPU seconds
        self.ttft = Histogram(
            f"{PREFIX}_time_to_first_token_seconds", "Time from a request's arrival to its first generated token.", buckets=TTFT_BUCKETS, registry=r
        )
        self.inter_token = Histogram(
            f"{PREFIX}_inter_token_latency_seconds", "Time between consecutive generated tokens of a request.", buckets=INTER_TOKEN_BUCKETS, registry=r
        )
        self.request_duration = Histogram(
            f"{PREFIX}_request_duration_seconds", "End-to-end time of completed requests, arrival to last token.", buckets=REQUEST_BUCKETS, registry=r
        )
        self.queue_wait = Histogram(
            f"{PREFIX}_queue_wait_seconds", "Time a request waited in the queue before its generation began.", buckets=TTFT_BUCKETS, registry=r
        )
        self.prompt_tokens = Counter(f"{PREFIX}_prompt_tokens", "Prompt tokens processed (prefill).", registry=r)
        self.generation_tokens = Counter(f"{PREFIX}_generation_tokens", "Tokens generated.", registry=r)
        self.requests = Counter(f"{PREFIX}_requests", "Requests answered, by outcome.", ["outcome"], registry=r)
        for outcome in OUTCOMES:
            self.requests.labels(outcome)  # every outcome is present from the start, at 0
        self.queue_depth = Gauge(f"{PREFIX}_queue_depth", "Requests waiting for the generator.", registry=r)
        self.running = Gauge(f"{PREFIX}_running_requests", "Requests being generated now (sequences in the running batch).", registry=r)
        self.batch_size = Histogram(
            f"{PREFIX}_decode_batch_size", "Sequences advanced by one decode step (one graph call).", buckets=BATCH_BUCKETS, registry=r
        )
        self.kv_slots = Gauge(f"{PREFIX}_kv_slots", "KV-cache slots: sequences that can decode together (--parallel).", registry=r)
        self.kv_slots_in_use = Gauge(f"{PREFIX}_kv_slots_in_use", "KV-cache slots held by running sequences.", registry=r)
        self.prefix_hits = Counter(f"{PREFIX}_prefix_cache_hits", "Prefills that started from a cached prefix.", registry=r)
        self.prefix_misses = Counter(f"{PREFIX}_prefix_cache_misses", "Prefills with no cached prefix to start from.", registry=r)
        self.prefix_tokens = Counter(f"{PREFIX}_prefix_cache_reused_tokens", "Prompt tokens whose K/V came from the prefix cache.", registry=r)
        self.prefix_bytes = Gauge(f"{PREFIX}_prefix_cache_bytes", "Memory held by the prefix cache.", registry=r)
        self.ready = Gauge(f"{PREFIX}_ready", "1 once the model is loaded and requests are served, else 0.", registry=r)
        self.info = Info(f"{PREFIX}_model", "The model being served and how.", registry=r)

    def set_model(self, model: str, backend: str, precision: str) -> None:
        self.info.info({"model": model, "backend": backend, "precision": precision, "version": __version__})

    def outcome(self, outcome: str) -> None:
        self.requests.labels(outcome).inc()

    def prefix_lookup(self, reused_tokens: int) -> None:
        """Count one prefix-cache lookup that reused this many tokens (0: a miss)."""
        if reused_tokens:
            self.prefix_hits.inc()
            self.prefix_tokens.inc(reused_tokens)
        else:
            self.prefix_misses.inc()


class TegrastatsMetrics:
    """A custom collector: gauges from `source.latest()` (a tegrastats `Sample`, or None)."""

    def __init__(self, source):
        self.source = source

    def describe(self):
        return []  # families depend on the board; nothing to pre-declare

    def collect(self):
        sample = self.source.latest()
        if sample is None:
            return
        yield from _labelled(f"{PREFIX}_jetson_temperature_celsius", "Temperature by sensor (tegrastats).", "sensor", sample.temperatures_c)
        yield from _labelled(
            f"{PREFIX}_jetson_power_watts", "Instantaneous power by rail (tegrastats).", "rail", {k: v / 1000 for k, v in sample.power_mw.items()}
        )
        cores = {str(i): load / 100 for i, load in enumerate(sample.cpu_load) if load is not None}
        yield from _labelled(f"{PREFIX}_jetson_cpu_load_ratio", "CPU load by core, 0..1 (tegrastats).", "core", cores)
        scalars = [
            ("ram_used_bytes", "RAM in use, shared by CPU and GPU.", sample.ram_used_mb, MIB),
            ("ram_total_bytes", "RAM of the board.", sample.ram_total_mb, MIB),
            ("swap_used_bytes", "Swap in use.", sample.swap_used_mb, MIB),
            ("gpu_load_ratio", "GPU (GR3D) load, 0..1.", sample.gpu_load, 0.01),
            ("emc_load_ratio", "Memory controller (EMC) load, 0..1.", sample.emc_load, 0.01),
            ("gpu_frequency_hertz", "GPU clock.", sample.gpu_freq_mhz, 1e6),
            ("emc_frequency_hertz", "Memory controller clock.", sample.emc_freq_mhz, 1e6),
        ]
        for name, doc, value, scale in scalars:
            if value is not None:
                yield GaugeMetricFamily(f"{PREFIX}_jetson_{name}", f"{doc} (tegrastats)", value=value * scale)


def _labelled(name: str, doc: str, label: str, values: dict):
    if values:
        family = GaugeMetricFamily(name, doc, labels=[label])
        for key, value in values.items():
            family.add_metric([key], value)
        yield family


def with_metrics(api, registry: CollectorRegistry, listener: tuple[str, int]):
    """One ASGI app for every listener: connections to the metrics `listener` (host, port) get `registry`'s
    exposition (any path), the rest `api`.  A wildcard listener takes whatever local address a connection reached."""
    metrics = make_asgi_app(registry=registry)
    host, port = listener
    wildcard = host in ("0.0.0.0", "::")

    async def app(scope, receive, send):
        local = scope.get("server")
        if scope["type"] == "http" and local is not None and local[1] == port and (wildcard or local[0] == host):
            return await metrics(scope, receive, send)
        return await api(scope, receive, send)

    return app


def start_tegrastats(metrics: ServerMetrics, interval_ms: int = 1000):
    """On a Jetson with tegrastats, feed its samples into `metrics`; returns the collector (stop it) or None."""
    import shutil

    from merino_edge.jetson.board import detect_board
    from merino_edge.jetson.tegrastats import TegrastatsCollector

    if detect_board() is None or shutil.which("tegrastats") is None:
        return None
    collector = TegrastatsCollector(interval_ms).start()
    metrics.registry.register(TegrastatsMetrics(collector))
    return collector

