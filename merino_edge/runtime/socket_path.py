"""Where the API socket lives, and binding it safely.

The API listens on a Unix domain socket, by default
`$XDG_RUNTIME_DIR/merino-edge/api.sock`, else `/run/merino-edge/api.sock`
(the directory systemd's `RuntimeDirectory=merino-edge` creates).  The socket
is created with mode 0660 so that only the service user and its group may talk
to the model; the parent directory is created when missing.  A socket left by a
crashed run (nobody accepts on it) is replaced; a live one, or a path that is
not a socket at all, is refused.

At a board's boot an address may not be assigned yet, and a port or socket may
still be held by the instance that is stopping: those failures raise
`UnavailableError` and `retry_transient` tries again for a while; everything
else (a path that is no socket, no permission, a malformed address) is the
configuration's fault and raises `InputError`.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import os
import socket
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from merino_edge.errors import InputError, UnavailableError

T = TypeVar("T")

SOCKET_MODE = 0o660
DIR_MODE = 0o750
# sun_path is 108 bytes on Linux, including the terminating NUL.
MAX_SOCKET_PATH = 107
DEFAULT_BIND_RETRY_S = 10.0
TRANSIENT_ERRNOS = frozenset({errno.EADDRINUSE, errno.EADDRNOTAVAIL})


def default_socket_path(environ: dict[str, str] | None = None) -> Path:
    """`$XDG_RUNTIME_DIR/merino-edge/api.sock`, else `/run/merino-edge/api.sock`."""
    env = os.environ if environ is None else environ
    runtime_dir = env.get("XDG_RUNTIME_DIR")
    base = Path(runtime_dir) if runtime_dir else Path("/run")
    return base / "merino-edge" / "api.sock"


def _socket_is_live(path: Path) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1.0)
        probe.connect(str(path))
    except OSError:
        return False
    else:
        return True
    finally:
        probe.close()


def bind_unix_socket(path: str | Path, mode: int = SOCKET_MODE) -> socket.socket:
    """A listening-ready Unix socket bound at `path` with `mode` (see the module docstring)."""
    path = Path(path)
    if len(os.fsencode(str(path))) > MAX_SOCKET_PATH:
        raise InputError(f"socket path {path} is longer than the {MAX_SOCKET_PATH} bytes a Unix socket allows; choose a shorter --socket")
    try:
        path.parent.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create the socket directory {path.parent}: {exc.strerror}") from None
    if path.exists() or path.is_symlink():
        if not stat.S_ISSOCK(path.lstat().st_mode):
            raise InputError(f"{path} exists and is not a socket; refusing to replace it (choose another --socket)")
        if _socket_is_live(path):
            raise UnavailableError(f"another server is already listening on {path}")
        path.unlink()  # stale socket from a crashed run
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o777 & ~mode)  # the file is born with `mode`, no window with wider rights
    try:
        sock.bind(str(path))
    except OSError as exc:
        sock.close()
        raise InputError(f"cannot bind the socket {path}: {exc.strerror}") from None
    finally:
        os.umask(old_umask)
    os.chmod(path, mode)
    return sock


def remove_socket(path: str | Path, inode: int | None = None) -> None:
    """Delete the socket file at `path`, unless it is no socket or (given `inode`) not the one we bound."""
    path = Path(path)
    with contextlib.suppress(FileNotFoundError):
        st = path.lstat()
        if stat.S_ISSOCK(st.st_mode) and (inode is None or st.st_ino == inode):
            path.unlink()


def parse_host_port(text: str, what: str) -> tuple[str, int]:
    """`HOST:PORT` (`[v6]:PORT` for IPv6) -> (host, port); InputError naming `what` otherwise."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not host or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise InputError(f"{what} must be HOST:PORT (e.g. 127.0.0.1:9464), got {text!r}")
    return host.strip("[]"), int(port_text)


def is_loopback(host: str) -> bool:
    """True for `localhost` and loopback IP addresses."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def bind_tcp_socket(host: str, port: int, purpose: str = "listen") -> socket.socket:
    """A TCP socket bound at (host, port), IPv4 or IPv6 by the address; errors say "cannot {purpose} on HOST:PORT"."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        error = UnavailableError if exc.errno == socket.EAI_AGAIN else InputError
        raise error(f"cannot resolve {host!r}: {exc.strerror}") from None
    family, _, _, _, address = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise bind_error(f"cannot {purpose} on {host}:{port}", exc) from None
    return sock


def bind_error(what: str, exc: OSError) -> InputError | UnavailableError:
    """UnavailableError for an address in use or not (yet) assigned, InputError for the rest."""
    reason = {errno.EADDRINUSE: "the address is in use", errno.EADDRNOTAVAIL: "the address is not assigned to this machine (yet)"}
    error = UnavailableError if exc.errno in TRANSIENT_ERRNOS else InputError
    return error(f"{what}: {reason.get(exc.errno, exc.strerror)}")


def retry_transient(bind: Callable[[], T], retry_s: float = DEFAULT_BIND_RETRY_S) -> T:
    """`bind()`, called again every half second while it raises UnavailableError, for up to `retry_s` seconds."""
    deadline = time.monotonic() + retry_s
    while True:
        try:
            return bind()
        except UnavailableError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.5)
