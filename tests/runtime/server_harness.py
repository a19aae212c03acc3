"""A real `merino-edge serve` in a subprocess, for the server tests (not a test module)."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def uds_client(sock: Path, **kw) -> httpx.Client:
    return httpx.Client(transport=httpx.HTTPTransport(uds=str(sock)), base_url="http://localhost", **kw)


class ServerProcess:
    """`python -m merino_edge.cli serve BUNDLE` on a socket in `workdir`, metrics on a free loopback port."""

    def __init__(self, bundle: Path, workdir: Path, *extra: str):
        self.socket = workdir / "api.sock"
        self.metrics_port = free_port()
        self.log_path = workdir / "serve.log"
        cmd = [sys.executable, "-m", "merino_edge.cli", "serve", str(bundle), "--socket", str(self.socket),
               "--metrics-addr", f"127.0.0.1:{self.metrics_port}", "--threads", "1", *extra]
        self._log = open(self.log_path, "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT)
        self._wait_ready()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text()

    def _wait_ready(self, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log()}")
            if self.socket.exists():
                try:
                    with uds_client(self.socket, timeout=2) as c:
                        if c.get("/health").status_code == 200:
                            return
                except httpx.TransportError:
                    pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"server not ready after {timeout} s:\n{self.log()}")

    def client(self, **kw) -> httpx.Client:
        return uds_client(self.socket, timeout=kw.pop("timeout", 30), **kw)

    def openai(self):
        from openai import OpenAI

        return OpenAI(base_url="http://localhost/v1", api_key="x", http_client=self.client())

    def metrics(self) -> dict[str, float]:
        """Every sample of /metrics by name plus labels, e.g. 'merino_edge_requests_total{outcome="completed"}'."""
        text = httpx.get(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10).text
        out = {}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
                out[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
        return out

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode
