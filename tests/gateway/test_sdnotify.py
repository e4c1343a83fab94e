"""sd_notify: the messages themselves, and the real daemon telling a fake systemd that it is
ready, reloading and stopping (a UNIX datagram socket in tmp_path as $NOTIFY_SOCKET)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway import sdnotify
from tests.gateway.test_daemon import PORTGATE, write_config


class FakeSystemd:
    """The receiving end of $NOTIFY_SOCKET."""

    def __init__(self, address: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.sock.settimeout(0.2)

    def messages(self) -> list[dict[str, str]]:
        """Everything received so far, each as its fields."""
        found: list[dict[str, str]] = []
        while True:
            try:
                data = self.sock.recv(4096)
            except (TimeoutError, BlockingIOError):
                return found
            found.append(dict(line.split("=", 1) for line in data.decode().split("\n")))

    def wait_for(self, key: str, timeout: float = 15.0) -> dict[str, str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            fields = dict(line.split("=", 1) for line in data.decode().split("\n"))
            if key in fields:
                return fields
        raise AssertionError(f"no {key} within {timeout} s")

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def systemd(tmp_path: Path) -> Iterator[tuple[FakeSystemd, str]]:
    path = str(tmp_path / "notify.sock")
    fake = FakeSystemd(path)
    try:
        yield fake, path
    finally:
        fake.close()


def test_without_notify_socket_nothing_is_sent() -> None:
    assert sdnotify.ready(environ={}) is False
    assert sdnotify.notify("READY=1", environ={"NOTIFY_SOCKET": ""}) is False
    assert sdnotify.notify("READY=1", environ={"NOTIFY_SOCKET": "vsock:2:1234"}) is False


def test_a_missing_socket_is_not_an_error(tmp_path: Path) -> None:
    assert sdnotify.stopping(environ={"NOTIFY_SOCKET": str(tmp_path / "gone.sock")}) is False


def test_ready_sends_ready_and_status(systemd: tuple[FakeSystemd, str]) -> None:
    fake, path = systemd
    assert sdnotify.ready("serving 3 mapping(s)", environ={"NOTIFY_SOCKET": path})
    assert fake.messages() == [{"READY": "1", "STATUS": "serving 3 mapping(s)"}]


def test_reloading_carries_the_monotonic_clock(systemd: tuple[FakeSystemd, str]) -> None:
    fake, path = systemd
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert sdnotify.reloading(environ={"NOTIFY_SOCKET": path})
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    [message] = fake.messages()
    assert message["RELOADING"] == "1"
    assert before <= int(message["MONOTONIC_USEC"]) <= after


def test_a_newline_in_a_status_cannot_forge_a_field(systemd: tuple[FakeSystemd, str]) -> None:
    fake, path = systemd
    sdnotify.status("bad\nREADY=1", environ={"NOTIFY_SOCKET": path})
    assert fake.messages() == [{"STATUS": "bad READY=1"}]


def test_abstract_socket_names_start_with_an_at_sign() -> None:
    name = f"portgate-test-{os.getpid()}-{time.monotonic_ns()}"
    fake = FakeSystemd("\0" + name)
    try:
        assert sdnotify.stopping(environ={"NOTIFY_SOCKET": "@" + name})
        assert fake.messages() == [{"STOPPING": "1", "STATUS": "stopping"}]
    finally:
        fake.close()


def test_the_daemon_notifies_ready_reloading_and_stopping(
    tmp_path: Path, systemd: tuple[FakeSystemd, str]
) -> None:
    fake, path = systemd
    config = write_config(tmp_path)
    log_path = tmp_path / "daemon.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [*PORTGATE, "run", "--config", str(config)],
            stdout=log,
            stderr=log,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "NOTIFY_SOCKET": path},
        )
    try:
        ready = fake.wait_for("READY")
        assert ready["STATUS"] == "serving 0 mapping(s)"
        # ready means ready: the admin socket answers at once
        status = subprocess.run(
            [*PORTGATE, "status", "--socket", str(tmp_path / "control.sock")],
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        )
        assert status.returncode == 0, status.stderr

        proc.send_signal(signal.SIGHUP)
        reloading = fake.wait_for("RELOADING")
        assert int(reloading["MONOTONIC_USEC"]) > 0
        assert fake.wait_for("READY")["READY"] == "1"
        assert "reloaded" in log_path.read_text()

        proc.send_signal(signal.SIGTERM)
        assert fake.wait_for("STOPPING")["STOPPING"] == "1"
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
