"""Parse `tegrastats` lines (Nano/TX, Xavier and Orin formats) and collect them live.

The formats differ by board and release: Nano prints `POM_5V_IN 2545/2547`
rails without units, Orin `VDD_IN 3913mW/3922mW`; older boards print
`EMC_FREQ 0%`, newer ones `EMC_FREQ 0%@2133` and `GR3D_FREQ 0%@[510]`;
JetPack 5.1+ starts each line with a timestamp.  `parse_line` reads all of them
into one `Sample`.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

from merino_edge.errors import InputError, MissingDependencyError

_TIMESTAMP = re.compile(r"^(\d{2}-\d{2}-\d{4} \d{2}:\d{2}:\d{2})\s+")
_RAM = re.compile(r"\bRAM (\d+)/(\d+)MB")
_SWAP = re.compile(r"\bSWAP (\d+)/(\d+)MB(?: \(cached (\d+)MB\))?")
_CPU = re.compile(r"\bCPU \[([^\]]*)\]")
_CPU_OLD = re.compile(r"\bcpu \[([^\]]*)\]@(\d+)")
_ENGINE = r"\b{name} (\d+)%(?:@\[?([\d,]+)\]?)?"
_EMC = re.compile(_ENGINE.format(name="(?:EMC_FREQ|EMC)"))
_GR3D = re.compile(_ENGINE.format(name="(?:GR3D_FREQ|GR3D)"))
_TEMP = re.compile(r"\b([A-Za-z][\w]*)@(-?\d+(?:\.\d+)?)C\b")
_RAIL = re.compile(r"\b([A-Z][A-Z0-9_]*) (\d+)(?:mW)?/(\d+)(?:mW)?(?=\s|$)")
_NOT_RAILS = {"RAM", "SWAP", "IRAM"}
_SENSOR_OFF_C = -100.0  # tegrastats prints -256C for a sensor that is powered down


@dataclass(frozen=True)
class Sample:
    """One tegrastats line. Loads in %, frequencies in MHz, memory in MB, power in mW."""

    ram_used_mb: int
    ram_total_mb: int
    swap_used_mb: int | None = None
    swap_total_mb: int | None = None
    swap_cached_mb: int | None = None
    cpu_load: tuple[float | None, ...] = ()  # per core; None when the core is off
    cpu_freq_mhz: tuple[int | None, ...] = ()
    emc_load: float | None = None
    emc_freq_mhz: int | None = None
    gpu_load: float | None = None  # GR3D
    gpu_freq_mhz: int | None = None
    temperatures_c: dict[str, float] = field(default_factory=dict)
    power_mw: dict[str, int] = field(default_factory=dict)  # instantaneous, per rail
    power_avg_mw: dict[str, int] = field(default_factory=dict)  # running average, per rail
    timestamp: str | None = None


def _cores(text: str, shared_freq: int | None) -> tuple[tuple, tuple]:
    loads, freqs = [], []
    for core in text.split(","):
        core = core.strip()
        if core == "off" or not core:
            loads.append(None)
            freqs.append(None)
            continue
        load, _, freq = core.partition("@")
        loads.append(float(load.rstrip("%")))
        freqs.append(int(freq) if freq else shared_freq)
    return tuple(loads), tuple(freqs)


def _engine(pattern: re.Pattern, line: str) -> tuple[float | None, int | None]:
    match = pattern.search(line)
    if not match:
        return None, None
    freqs = [int(f) for f in (match.group(2) or "").split(",") if f]
    return float(match.group(1)), (max(freqs) if freqs else None)


def parse_line(line: str) -> Sample:
    """Parse one tegrastats line; InputError when it has no RAM field (not tegrastats)."""
    line = line.strip()
    ram = _RAM.search(line)
    if not ram:
        raise InputError(f"not a tegrastats line (no RAM field): {line[:80]!r}")
    stamp = _TIMESTAMP.match(line)
    swap = _SWAP.search(line)
    cpu = _CPU.search(line)
    if cpu:
        loads, freqs = _cores(cpu.group(1), None)
    else:
        old = _CPU_OLD.search(line)
        loads, freqs = _cores(old.group(1), int(old.group(2))) if old else ((), ())
    emc_load, emc_freq = _engine(_EMC, line)
    gpu_load, gpu_freq = _engine(_GR3D, line)
    temps = {name: float(value) for name, value in _TEMP.findall(line) if float(value) > _SENSOR_OFF_C}
    rails = [(name, int(now), int(avg)) for name, now, avg in _RAIL.findall(line) if name not in _NOT_RAILS]
    return Sample(
        ram_used_mb=int(ram.group(1)),
        ram_total_mb=int(ram.group(2)),
        swap_used_mb=int(swap.group(1)) if swap else None,
        swap_total_mb=int(swap.group(2)) if swap else None,
        swap_cached_mb=int(swap.group(3)) if swap and swap.group(3) else None,
        cpu_load=loads,
        cpu_freq_mhz=freqs,
        emc_load=emc_load,
        emc_freq_mhz=emc_freq,
        gpu_load=gpu_load,
        gpu_freq_mhz=gpu_freq,
        temperatures_c=temps,
        power_mw={name: now for name, now, _ in rails},
        power_avg_mw={name: avg for name, _, avg in rails},
        timestamp=stamp.group(1) if stamp else None,
    )


def parse_lines(lines) -> Iterator[Sample]:
    """Parse every tegrastats line of an iterable, skipping blank lines."""
    for line in lines:
        if line.strip():
            yield parse_line(line)


class TegrastatsCollector:
    """Runs `tegrastats --interval N` in the background and keeps the latest sample.

    Use as a context manager or call `start()` / `stop()`; `latest()` is None until
    the first line arrives.  `command` names the executable (default: tegrastats on PATH).
    """

    def __init__(self, interval_ms: int = 1000, command: str = "tegrastats"):
        if interval_ms < 1:
            raise InputError(f"tegrastats interval must be >= 1 ms, got {interval_ms}")
        self.interval_ms = int(interval_ms)
        self.command = command
        self._latest: Sample | None = None
        self._count = 0
        self._lock = threading.Lock()
        self._proc: subprocess.Popen | None = None
        self._thread: threading.Thread | None = None
        self._new = threading.Condition(self._lock)

    def start(self) -> TegrastatsCollector:
        exe = shutil.which(self.command)
        if exe is None:
            raise MissingDependencyError(f"{self.command} not found: tegrastats exists only on a Jetson (JetPack's nvidia-l4t-tools)")
        self._proc = subprocess.Popen([exe, "--interval", str(self.interval_ms)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self._thread = threading.Thread(target=self._read, name="tegrastats", daemon=True)
        self._thread.start()
        return self

    def _read(self) -> None:
        for line in self._proc.stdout:
            try:
                sample = parse_line(line)
            except InputError:
                continue  # a banner or warning line
            with self._new:
                self._latest = sample
                self._count += 1
                self._new.notify_all()

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def latest(self) -> Sample | None:
        with self._lock:
            return self._latest

    def wait(self, samples: int = 1, timeout: float | None = None) -> Sample | None:
        """Block until `samples` lines have arrived in all (or timeout); return the latest."""
        with self._new:
            self._new.wait_for(lambda: self._count >= samples, timeout)
            return self._latest

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._proc is not None and self._proc.stdout:
            self._proc.stdout.close()

    def __enter__(self) -> TegrastatsCollector:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
