"""Files between stages: atomic writes, and JSON reads whose errors say which file is wrong.

Every artifact (profile, arch, manifests, checkpoints' side files) is written
through a temporary file in the same directory, flushed to disk and renamed
over the target, so a crash never leaves half a file under the real name.
stdlib only: every stage imports it, the board included.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from merino_edge.errors import InputError


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
