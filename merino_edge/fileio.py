"""Files between stages: atomic writes, JSON reads whose errors say which file is wrong, one schema check.

Every artifact (profile, arch, manifests, checkpoints' side files) is written
through a temporary file in the same directory, flushed to disk and renamed
over the target, so a crash never leaves half a file under the real name.
Every format's `from_json` starts with `check_schema`: a file of another
version or from another tool is an `IncompatibleError`.
stdlib only: every stage imports it, the board included.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from merino_edge.errors import IncompatibleError, InputError


def write_bytes_atomic(path: str | Path, data: bytes) -> Path:
    """Write `data` to `path` (parents created) through a temp file, fsync and `os.replace`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_json_atomic(path: str | Path, data: dict, indent: int = 2) -> Path:
    """Write `data` as JSON to `path`, atomically."""
    return write_bytes_atomic(path, (json.dumps(data, indent=indent) + "\n").encode())


def read_json(path: str | Path, what: str, missing: str | None = None):
    """The parsed JSON file at `path`; InputError naming `what` when it is missing or not JSON."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise InputError(missing or f"{what} not found: {path}") from None
    except (OSError, ValueError) as exc:
        raise InputError(f"{what} {path} is not valid JSON ({exc})") from None


def check_schema(
    data, what: str, version: int, *, oldest: int | None = None, kind: tuple[str, str] | None = None, required: bool = True, fix: str = ""
) -> int:
    """The schema version of `data`, a JSON object of format `what` that this merino-edge reads.

    Reads versions `oldest` (default: `version`) to `version`.  `kind` is the
    (key, value) that marks files of this format; `required=False` takes a
    missing version as `version`.  Not an object: InputError.  Another tool's
    file or another version: IncompatibleError, with `fix` (or, for a newer
    file, "upgrade merino-edge") as what to do.
    """
    if not isinstance(data, dict):
        raise InputError(f"{what}: expected a JSON object")
    if kind is not None and data.get(kind[0]) != kind[1]:
        raise IncompatibleError(f"{what}: not a {kind[1]} file ({kind[0]} {data.get(kind[0])!r})")
    found = data.get("schema_version", None if required else version)
    oldest = version if oldest is None else oldest
    if isinstance(found, bool) or not isinstance(found, int) or not oldest <= found <= version:
        reads = f"{version}" if oldest == version else f"{oldest} to {version}"
        hint = "upgrade merino-edge" if isinstance(found, int) and found > version else fix
        raise IncompatibleError(f"{what}: schema_version {found!r} is not supported (this merino-edge reads {reads})" + (f"; {hint}" if hint else ""))
    return found
