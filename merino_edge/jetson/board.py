"""Which Jetson is this: board, L4T and JetPack release, clock state.

Every function takes `root` (default "/") so tests can point it at a fixture tree.
Facts about any machine (CPU model, caches, usable CPUs) are in `merino_edge.host`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from merino_edge.host import read_text

# L4T (Jetson Linux) release -> JetPack release, from NVIDIA's JetPack archive.
L4T_TO_JETPACK = {
    "32.1.0": "4.2",
    "32.2.0": "4.2.1",
    "32.2.1": "4.2.2",
    "32.3.1": "4.3",
    "32.4.3": "4.4",
    "32.4.4": "4.4.1",
    "32.5.0": "4.5",
    "32.5.1": "4.5.1",
    "32.5.2": "4.5.1",
    "32.6.1": "4.6",
    "32.7.1": "4.6.1",
    "32.7.2": "4.6.2",
    "32.7.3": "4.6.3",
    "32.7.4": "4.6.4",
    "32.7.5": "4.6.5",
    "32.7.6": "4.6.6",
    "34.1.0": "5.0 DP",
    "34.1.1": "5.0.1 DP",
    "35.1.0": "5.0.2",
    "35.2.1": "5.1",
    "35.3.1": "5.1.1",
    "35.4.1": "5.1.2",
    "35.5.0": "5.1.3",
    "35.6.0": "5.1.4",
    "35.6.1": "5.1.5",
    "36.2.0": "6.0 DP",
    "36.3.0": "6.0",
    "36.4.0": "6.1",
    "36.4.3": "6.2",
    "36.4.4": "6.2.1",
}

_RELEASE = re.compile(r"#\s*R(\d+)\s*\(release\),\s*REVISION:\s*([\d.]+)")


@dataclass(frozen=True)
class Board:
    """A Jetson board as the device tree and /etc/nv_tegra_release describe it."""

    model: str  # e.g. "NVIDIA Jetson Orin Nano Developer Kit"
    l4t: str | None  # e.g. "36.3.0"
    jetpack: str | None  # e.g. "6.0"; None when the L4T release is not in the table

    @property
    def family(self) -> str:
        """Nano, Xavier, Orin or TX for a tegrastats format, 'unknown' otherwise."""
        for name in ("Orin", "Xavier", "Nano", "TX2", "TX1"):
            if name.lower() in self.model.lower():
                return name
        return "unknown"


def l4t_release(root: str | Path = "/") -> str | None:
    """The L4T release, e.g. '36.3.0', from /etc/nv_tegra_release (None when absent)."""
    text = read_text(Path(root) / "etc" / "nv_tegra_release")
    match = _RELEASE.search(text or "")
    if not match:
        return None
    major, revision = match.groups()
    parts = revision.split(".")
    return ".".join([major, *parts, *["0"] * (2 - len(parts))][:3])


def jetpack_release(l4t: str | None) -> str | None:
    """JetPack for an L4T release (None when unknown)."""
    return L4T_TO_JETPACK.get(l4t) if l4t else None


def detect_board(root: str | Path = "/") -> Board | None:
    """The Jetson board this runs on, or None on anything else."""
    model = (read_text(Path(root) / "proc" / "device-tree" / "model") or "").replace("\x00", "").strip()
    l4t = l4t_release(root)
    if not model and l4t is None:
        return None
    if model and "jetson" not in model.lower() and l4t is None:
        return None  # another ARM board with a device tree
    return Board(model=model or "unknown Jetson", l4t=l4t, jetpack=jetpack_release(l4t))


def clocks_locked(root: str | Path = "/") -> bool | None:
    """True when every online CPU runs at a fixed clock (what `jetson_clocks` sets); None if unknown."""
    cpus = sorted((Path(root) / "sys" / "devices" / "system" / "cpu").glob("cpu[0-9]*/cpufreq"))
    if not cpus:
        return None
    for freq in cpus:
        low, high = read_text(freq / "scaling_min_freq"), read_text(freq / "scaling_max_freq")
        if low is None or high is None:
            return None
        if low.strip() != high.strip():
            return False
    return True
