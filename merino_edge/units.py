"""Quantities with units on the command line: "64M" params, "60G" FLOPs, "1Gi" bytes, "30ms".

Suffixes K, M, G, T are decimal (1e3 ...), Ki, Mi, Gi, Ti binary (2**10 ...);
a trailing "B" is allowed for bytes ("512MiB").  Durations take ns, us, ms, s
(a bare number is milliseconds).  Anything else, a negative value or a value
that is not finite raises InputError naming the flag and the text it got.
"""

from __future__ import annotations

import math
import re

from merino_edge.errors import InputError

_SCALE = {"": 1, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
_MS = {"": 1.0, "ns": 1e-6, "us": 1e-3, "ms": 1.0, "s": 1e3}
_NUMBER = re.compile(r"\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*([A-Za-z]*)\s*")


def _split(text: str, what: str) -> tuple[float, str]:
    match = _NUMBER.fullmatch(str(text))
    if not match:
        raise InputError(f"{what}: {text!r} is not a number with an optional unit")
    value = float(match.group(1))
    if not math.isfinite(value) or value < 0:
        raise InputError(f"{what}: {text!r} must be a non-negative number")
    return value, match.group(2)


def _scaled(text: str, what: str, allow_bytes: bool) -> int:
    value, unit = _split(text, what)
    if allow_bytes and unit.endswith("B"):
        unit = unit[:-1]
    if unit not in _SCALE:
        kinds = "K, M, G, T (decimal) or Ki, Mi, Gi, Ti (binary)" + (", optionally followed by B" if allow_bytes else "")
        raise InputError(f"{what}: {text!r} has an unknown unit {unit!r} (use {kinds})")
    return int(round(value * _SCALE[unit]))


def parse_count(text: str, what: str = "value") -> int:
    """A count such as parameters or FLOPs: "64M" -> 64_000_000, "1.5Gi" -> 1_610_612_736."""
    return _scaled(text, what, allow_bytes=False)


def parse_bytes(text: str, what: str = "value") -> int:
    """A size in bytes: "1G" -> 10**9, "512MiB" -> 512 * 2**20."""
    return _scaled(text, what, allow_bytes=True)


def parse_ms(text: str, what: str = "value") -> float:
    """A duration in milliseconds: "30ms" -> 30.0, "0.5s" -> 500.0, "30" -> 30.0."""
    value, unit = _split(text, what)
    if unit not in _MS:
        raise InputError(f"{what}: {text!r} has an unknown time unit {unit!r} (use ns, us, ms or s)")
    return value * _MS[unit]


def parse_percent(text: str, what: str = "value") -> float:
    """A percentage, as a fraction: "5%" -> 0.05, "2.5" -> 0.025; below 100."""
    value, unit = _split(str(text).strip().removesuffix("%"), what)
    if unit or value >= 100:
        raise InputError(f"{what}: {text!r} is not a percentage below 100, e.g. 5%")
    return value / 100


def format_count(value: float, digits: int = 3) -> str:
    """Decimal engineering form: 60_000_000_000 -> "60G", 52_400_000 -> "52.4M"."""
    for suffix, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.{digits}g}{suffix}"
    return f"{value:.{digits}g}"
