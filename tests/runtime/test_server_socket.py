"""The API socket: where it goes, its mode, and what happens to whatever is already at its path."""

from __future__ import annotations

import socket
import stat

import pytest

from merino_edge.errors import InputError
from merino_edge.runtime.socket_path import bind_unix_socket, default_socket_path, is_loopback, parse_host_port, remove_socket


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
    with pytest.raises(InputError, match="already listening"):
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
