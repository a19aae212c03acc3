"""How many connections the server holds, and how long it waits for each part of a request.

uvicorn bounds concurrent connections (`limit_concurrency`: a request beyond
it gets 503) and the idle time between requests on a kept-alive connection
(`timeout_keep_alive`), but it has no deadline for the request head: a client
that connects and sends nothing, or half a header, holds a file descriptor
forever.  `head_timeout.HeadTimeoutProtocol` adds that deadline; the body's
deadline is the server's (it answers 408).  The same limits apply to the Unix
socket and the TCP listener.  This module is light (the CLI reads its defaults
for `--help`); uvicorn is imported only by `uvicorn_options`.
"""

from __future__ import annotations

from dataclasses import dataclass

from merino_edge.errors import InputError


@dataclass(frozen=True)
class ConnectionLimits:
    """Defaults sized for a board: a few local clients, a few generations at a time, LimitNOFILE=4096."""

    max_connections: int = 64  # open connections; a request beyond them gets 503
    header_timeout: float = 10.0  # seconds from connecting (or the previous answer) to a complete request head
    body_timeout: float = 30.0  # seconds from the head to the complete body; later gets 408
    idle_timeout: float = 5.0  # seconds a kept-alive connection may sit idle between requests

    def __post_init__(self) -> None:
        if self.max_connections < 1:
            raise InputError(f"--max-connections must be >= 1, got {self.max_connections}")
        for name in ("header_timeout", "body_timeout", "idle_timeout"):
            if not getattr(self, name) > 0:
                raise InputError(f"--{name.replace('_', '-')} must be > 0 seconds, got {getattr(self, name)}")

    def uvicorn_options(self) -> dict:
        """Keywords for `uvicorn.Config`."""
        from merino_edge.runtime.head_timeout import HeadTimeoutProtocol

        protocol = type("HeadTimeoutProtocol", (HeadTimeoutProtocol,), {"header_timeout": self.header_timeout})
        return {"http": protocol, "limit_concurrency": self.max_connections, "timeout_keep_alive": self.idle_timeout}
