"""Telemetry: a real Prometheus scrapes the server; tegrastats gauges appear only with samples."""

from __future__ import annotations

import shutil
import subprocess
import time

import httpx
import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from server_harness import ServerProcess, free_port
from shared_paths import ROOT

from merino_edge.jetson.tegrastats import parse_line
from merino_edge.runtime.metrics import ServerMetrics, TegrastatsMetrics

ORIN_NANO_LINE = (ROOT / "tests" / "jetson" / "data" / "tegrastats_orin_nano.txt").read_text().splitlines()[1]


class _LatestSample:
    """What the server reads from a TegrastatsCollector: the latest sample, or None before the first."""

    def __init__(self, sample):
        self.sample = sample

    def latest(self):
        return self.sample


def _jetson_samples(source) -> dict[str, float]:
    """The tegrastats series the server's registry exposes, by name and label value."""
    metrics = ServerMetrics()
    metrics.registry.register(TegrastatsMetrics(source))
    out = {}
    for family in text_string_to_metric_families(generate_latest(metrics.registry).decode()):
        for s in family.samples:
            if s.name.startswith("merino_edge_jetson_"):
                out[s.name + "".join(f"[{v}]" for v in s.labels.values())] = s.value
    return out


def test_tegrastats_gauges_in_base_units():
    got = _jetson_samples(_LatestSample(parse_line(ORIN_NANO_LINE)))
    assert got["merino_edge_jetson_temperature_celsius[gpu]"] == 64.937
    assert got["merino_edge_jetson_power_watts[VDD_IN]"] == pytest.approx(9.112)
    assert got["merino_edge_jetson_gpu_load_ratio"] == pytest.approx(0.99)
    assert got["merino_edge_jetson_ram_used_bytes"] == 3170 * 1024 * 1024
    assert got["merino_edge_jetson_ram_total_bytes"] == 7620 * 1024 * 1024
    assert got["merino_edge_jetson_cpu_load_ratio[0]"] == pytest.approx(0.45)
    assert "merino_edge_jetson_cpu_load_ratio[4]" not in got  # an offline core has no series
    assert "merino_edge_jetson_emc_load_ratio" not in got  # Orin Nano prints no EMC field


def test_no_tegrastats_sample_means_absent_series_not_zeros():
    assert _jetson_samples(_LatestSample(None)) == {}


@pytest.mark.slow
def test_real_prometheus_scrapes_the_generated_token_count(tiny_bundle, tmp_path_factory):
    prometheus = shutil.which("prometheus")
    if prometheus is None:
        pytest.skip("Debian's prometheus is not installed (.ci/run installs it where it can)")
    workdir = tmp_path_factory.mktemp("prom")
    server = ServerProcess(tiny_bundle, workdir)
    web = f"127.0.0.1:{free_port()}"
    (workdir / "prometheus.yml").write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        f"scrape_configs: [{{job_name: merino-edge, static_configs: [{{targets: ['127.0.0.1:{server.metrics_port}']}}]}}]\n"
    )
    prom = subprocess.Popen([prometheus, f"--config.file={workdir / 'prometheus.yml'}", f"--storage.tsdb.path={workdir / 'tsdb'}",
                             f"--web.listen-address={web}", "--log.level=warn"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        generated = 0
        with server.client() as c:
            for i in range(5):
                r = c.post("/v1/completions", json={"prompt": f"secret prompt {i}", "max_tokens": 3 + i, "temperature": 0})
                generated += r.json()["usage"]["completion_tokens"]
        assert "secret" not in httpx.get(f"http://127.0.0.1:{server.metrics_port}/metrics").text

        def query(promql: str):
            r = httpx.get(f"http://{web}/api/v1/query", params={"query": promql}, timeout=5)
            return r.json()["data"]["result"]

        deadline, seen = time.monotonic() + 60, None
        while time.monotonic() < deadline:
            try:
                result = query("merino_edge_generation_tokens_total")
            except httpx.TransportError:
                result = []  # Prometheus is still starting
            seen = float(result[0]["value"][1]) if result else None
            if seen == generated:
                break
            time.sleep(0.5)
        assert seen == generated
        assert float(query('merino_edge_requests_total{outcome="completed"}')[0]["value"][1]) == 5
        assert query("merino_edge_model_info")[0]["metric"]["backend"] == "ort"
    finally:
        prom.terminate()
        prom.wait(30)
        assert server.stop() == 0
