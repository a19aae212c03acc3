"""The API socket: where it goes, its mode, and what happens to whatever is already at its path."""

from __future__ import annotations

import socket
import stat
import threading
import time

import pytest

from merino_edge.errors import InputError, UnavailableError
from merino_edge.runtime.server import own_hosts
from merino_edge.runtime.socket_path import (
    bind_tcp_socket,
    bind_unix_socket,
    default_socket_path,
    is_loopback,
    parse_host_port,
    remove_socket,
    retry_transient,
)


def test_default_path_follows_xdg_runtime_dir():
    assert str(default_socket_path({"XDG_RUNTIME_DIR": "/run/user/1000"})) == "/run/user/1000/merino-edge/api.sock"
    assert str(default_socket_path({})) == "/run/merino-edge/api.sock"


def test_socket_gets_mode_0660_and_its_directory_is_created(tmp_path):
    path = tmp_path / "run" / "merino-edge" / "api.sock"
    sock = bind_unix_socket(path)
    try:
        assert stat.S_ISSOCK(path.stat().st_mode) and stat.S_IMODE(path.stat().st_mode) == 0o660
        assert path.parent.is_dir()
    finally:
        sock.close()
    remove_socket(path, inode=path.stat().st_ino + 1)  # another server's socket is left alone
    assert path.exists()
    remove_socket(path)
    assert not path.exists()


def test_stale_socket_is_replaced_but_a_live_one_refused(tmp_path):
    path = tmp_path / "api.sock"
    live = bind_unix_socket(path)
    live.listen()
    with pytest.raises(UnavailableError, match="already listening"):  # transient: the old server may be stopping
        bind_unix_socket(path)
    live.close()  # the file stays behind, as after a crash
    assert path.exists()
    again = bind_unix_socket(path)
    again.close()


def test_a_path_that_is_not_a_socket_is_refused_and_kept(tmp_path):
    path = tmp_path / "api.sock"
    path.write_text("precious")
    with pytest.raises(InputError, match="not a socket"):
        bind_unix_socket(path)
    assert path.read_text() == "precious"


def test_too_long_a_path_is_refused_with_the_limit(tmp_path):
    with pytest.raises(InputError, match="107 bytes"):
        bind_unix_socket(tmp_path / ("x" * 120) / "api.sock")


def test_addresses():
    assert parse_host_port("127.0.0.1:9464", "--metrics-addr") == ("127.0.0.1", 9464)
    assert parse_host_port("[::1]:8080", "--tcp") == ("::1", 8080)
    with pytest.raises(InputError, match="--tcp must be HOST:PORT"):
        parse_host_port("localhost", "--tcp")
    assert is_loopback("localhost") and is_loopback("::1") and is_loopback("127.0.0.5")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.20")


def test_socket_accepts_connections(tmp_path):
    path = tmp_path / "api.sock"
    server = bind_unix_socket(path)
    server.listen()
    with socket.socket(socket.AF_UNIX) as client:
        client.connect(str(path))
        conn, _ = server.accept()
        client.sendall(b"ping")
        assert conn.recv(4) == b"ping"
        conn.close()
    server.close()


def test_a_port_in_use_is_transient_and_retried_until_it_is_free():
    holder = bind_tcp_socket("127.0.0.1", 0)
    holder.listen()
    port = holder.getsockname()[1]
    with pytest.raises(UnavailableError, match="in use"):
        retry_transient(lambda: bind_tcp_socket("127.0.0.1", port), retry_s=0.6)
    threading.Timer(0.7, holder.close).start()  # the previous instance lets go while we retry
    started = time.monotonic()
    sock = retry_transient(lambda: bind_tcp_socket("127.0.0.1", port), retry_s=10)
    sock.close()
    assert 0.6 < time.monotonic() - started < 5


def test_an_address_not_assigned_here_is_transient():
    with pytest.raises(UnavailableError, match="not assigned"):
        bind_tcp_socket("192.0.2.1", 0)  # TEST-NET-1: never on this machine


def test_own_hosts_name_the_listener_with_its_port():
    hosts = own_hosts("127.0.0.1", 8080)
    assert {"127.0.0.1:8080", "localhost:8080", "[::1]:8080"} <= hosts
    assert "evil.example:8080" not in hosts and "127.0.0.1" not in hosts and "localhost:80" not in hosts
    assert "localhost" in own_hosts("127.0.0.1", 80)
    assert "[::1]:9000" in own_hosts("::1", 9000)
