"""Facts about the machine this runs on, whatever it is: CPU model, usable CPUs, last-level cache.

Every function that reads /proc or /sys takes `root` (default "/") so tests can
point it at a fixture tree.  What is only about a Jetson lives in `jetson.board`.
"""

from __future__ import annotations

import os
import platform
import re
from pathlib import Path


def read_text(path: Path) -> str | None:
    """A small system file's text, None when it cannot be read."""
    try:
        return path.read_text(errors="replace")
    except OSError:
        return None


def cpu_model(root: str | Path = "/") -> str:
    """The CPU's marketing name from /proc/cpuinfo, or the machine type."""
    text = read_text(Path(root) / "proc" / "cpuinfo") or ""
    for key in ("model name", "Model", "Hardware"):
        match = re.search(rf"^{key}\s*:\s*(.+)$", text, re.MULTILINE)
        if match:
            return match.group(1).strip()
    return platform.processor() or platform.machine() or "unknown CPU"


def last_level_cache_bytes(root: str | Path = "/") -> int | None:
    """Size of the largest CPU cache of cpu0 from sysfs (e.g. '491520K'), None when unknown."""
    sizes = []
    for entry in (Path(root) / "sys" / "devices" / "system" / "cpu" / "cpu0" / "cache").glob("index*/size"):
        match = re.fullmatch(r"(\d+)([KMG]?)", (read_text(entry) or "").strip())
        if match:
            sizes.append(int(match.group(1)) << {"": 0, "K": 10, "M": 20, "G": 30}[match.group(2)])
    return max(sizes) if sizes else None


def usable_cpus() -> int:
    """CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1
