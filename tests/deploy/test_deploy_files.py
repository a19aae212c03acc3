"""deploy/: Prometheus config and alert rules pass promtool; every metric they and the dashboard use exists."""

from __future__ import annotations

import configparser
import json
import re
import shutil
import subprocess

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from shared_paths import ROOT

from merino_edge.jetson.tegrastats import parse_line
from merino_edge.runtime.metrics import ServerMetrics, TegrastatsMetrics
from merino_edge.runtime.socket_path import default_socket_path

DEPLOY = ROOT / "deploy"
PROMETHEUS = DEPLOY / "prometheus"
RULES = PROMETHEUS / "merino-edge-rules.yml"
DASHBOARD = DEPLOY / "grafana" / "merino-edge-dashboard.json"
UNIT = DEPLOY / "systemd" / "merino-edge.service"
METRIC = re.compile(r"\b(merino_edge_[a-z0-9_]+)")

needs_promtool = pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool (Debian's prometheus package) is not installed")


class _OrinNano:
    def latest(self):
        line = (ROOT / "tests" / "jetson" / "data" / "tegrastats_orin_nano.txt").read_text().splitlines()[1]
        return parse_line(line)


def _exported_names() -> set[str]:
    """Every series name the server can export (with a tegrastats sample, so the Jetson gauges count)."""
    metrics = ServerMetrics()
    metrics.registry.register(TegrastatsMetrics(_OrinNano()))
    names = set()
    for family in text_string_to_metric_families(generate_latest(metrics.registry).decode()):
        names.update(s.name for s in family.samples)
    names.update(["merino_edge_jetson_emc_load_ratio", "merino_edge_jetson_emc_frequency_hertz", "merino_edge_jetson_gpu_frequency_hertz"])
    return names  # (the last three: boards other than the Orin Nano print EMC and GPU clocks)


def _promtool(*args) -> subprocess.CompletedProcess:
    return subprocess.run(["promtool", *args], capture_output=True, text=True, cwd=PROMETHEUS, timeout=60)


@needs_promtool
def test_alert_rules_pass_promtool_check_and_unit_tests():
    check = _promtool("check", "rules", RULES.name)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "SUCCESS: 8 rules found" in check.stdout
    unit = _promtool("test", "rules", "tests/merino-edge-rules.test.yml")
    assert unit.returncode == 0, unit.stdout + unit.stderr


@needs_promtool
def test_fleet_scrape_config_passes_promtool():
    check = _promtool("check", "config", "prometheus.yml")
    assert check.returncode == 0, check.stdout + check.stderr


def test_rules_and_dashboard_use_only_exported_metrics():
    exported = _exported_names()
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    used = {name for text in [RULES.read_text(), *exprs] for name in METRIC.findall(text)}
    assert used - exported == set()
    # The dashboard covers latency, throughput, queueing, memory and the board's sensors.
    for name in ["time_to_first_token_seconds_bucket", "inter_token_latency_seconds_bucket", "request_duration_seconds_bucket",
                 "generation_tokens_total", "prompt_tokens_total", "requests_total", "queue_depth", "running_requests",
                 "process_resident_memory_bytes", "jetson_temperature_celsius", "jetson_power_watts", "jetson_gpu_load_ratio",
                 "decode_batch_size_bucket", "kv_slots_in_use", "prefix_cache_hits_total"]:
        assert any(f"merino_edge_{name}" in e for e in exprs), name


def test_dashboard_panels_are_placed_and_queried():
    dashboard = json.loads(DASHBOARD.read_text())
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        assert {"x", "y", "w", "h"} <= set(panel["gridPos"])
        if panel["type"] != "row":
            assert panel["targets"] and all(t["expr"] for t in panel["targets"])


def test_systemd_unit_runs_as_its_own_user_with_the_default_socket():
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str
    unit.read_string(UNIT.read_text().replace("\\\n", " "))
    service = unit["Service"]
    assert service["User"] == service["Group"] == "merino-edge"
    assert service["RuntimeDirectory"] == "merino-edge" and service["RuntimeDirectoryMode"] == "0750"
    socket = re.search(r"--socket (\S+)", service["ExecStart"]).group(1)
    assert socket == str(default_socket_path({})) == f"/run/{service['RuntimeDirectory']}/api.sock"
    assert service["KillSignal"] == "SIGTERM" and service["RestartPreventExitStatus"] == "2"
    sysusers = (DEPLOY / "systemd" / "merino-edge.sysusers.conf").read_text()
    assert re.search(r"^u merino-edge ", sysusers, re.M)
