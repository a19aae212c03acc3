"""Power mode (`nvpmodel`) and clock locking (`jetson_clocks`) on a Jetson.

Queries work as any user; changes need root.  Off a Jetson every call raises
IncompatibleError saying so, instead of a missing-command traceback.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from merino_edge.errors import IncompatibleError, MerinoError, MissingDependencyError
from merino_edge.jetson.board import detect_board


@dataclass(frozen=True)
class PowerMode:
    """An nvpmodel mode: its id and its name (e.g. 0, 'MAXN' or 2, '15W')."""

    id: int
    name: str


def _tool(name: str, root: str | Path) -> str:
    if detect_board(root) is None:
        raise IncompatibleError(f"{name}: this machine is not a Jetson (no Jetson in /proc/device-tree/model, no /etc/nv_tegra_release)")
    path = shutil.which(name)
    if path is None:
        raise MissingDependencyError(f"{name} not found on PATH: it comes with JetPack (nvidia-l4t-tools)")
    return path


def _as_root(name: str) -> None:
    if os.geteuid() != 0:
        raise MerinoError(f"{name} changes the board's clocks and needs root: run this command with sudo")


def _run(argv: list[str]) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        raise MerinoError(f"{' '.join(argv)} failed (exit {done.returncode}): {done.stderr.strip() or done.stdout.strip()}")
    return done.stdout


def parse_nvpmodel_query(text: str) -> PowerMode:
    """Parse `nvpmodel -q` output ('NV Power Mode: 15W' then the mode id)."""
    match = re.search(r"NV Power Mode:\s*(\S+)\s*\n\s*(\d+)", text)
    if not match:
        raise MerinoError(f"could not read the power mode from nvpmodel -q: {text.strip()[:120]!r}")
    return PowerMode(id=int(match.group(2)), name=match.group(1))


def power_mode(root: str | Path = "/") -> PowerMode:
    """The current nvpmodel mode."""
    return parse_nvpmodel_query(_run([_tool("nvpmodel", root), "-q"]))


def set_power_mode(mode: int, root: str | Path = "/") -> PowerMode:
    """Switch to nvpmodel mode `mode` (root only) and return the mode now in force."""
    tool = _tool("nvpmodel", root)
    _as_root("nvpmodel -m")
    _run([tool, "-m", str(int(mode))])
    return power_mode(root)


def lock_clocks(root: str | Path = "/") -> None:
    """Pin CPU, GPU and EMC clocks at their maximum (`jetson_clocks`), saving the old state first."""
    tool = _tool("jetson_clocks", root)
    _as_root("jetson_clocks")
    _run([tool, "--store"])
    _run([tool])


def unlock_clocks(root: str | Path = "/") -> None:
    """Restore the clocks saved by `lock_clocks` (`jetson_clocks --restore`)."""
    tool = _tool("jetson_clocks", root)
    _as_root("jetson_clocks --restore")
    _run([tool, "--restore"])
