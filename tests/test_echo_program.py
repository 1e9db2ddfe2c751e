"""The workload program as a real server: readiness, and a drain on SIGTERM that loses no call."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from meshfed.workloads import echo

PROGRAM = Path(echo.__file__)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _get(port: int, path: str) -> tuple[int, str]:
    import http.client

    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        response.read()
        return response.status, response.getheader("Connection") or ""
    finally:
        connection.close()


def test_sigterm_drains_then_exits() -> None:
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, str(PROGRAM), "serve", "--port", str(port)],
        env={"DRAIN_SECONDS": "1.5", "CLUSTER": "cluster-a"},
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                assert _get(port, echo.READY_PATH) == (200, "")
                break
            except OSError:
                assert time.monotonic() < deadline, "the echo server never listened"
                time.sleep(0.05)
        server.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        # Draining: not ready any more, but every call is still answered, its connection then closed.
        assert _get(port, echo.READY_PATH) == (503, "close")
        assert _get(port, "/") == (200, "close")
        assert server.poll() is None
        started = time.monotonic()
        assert server.wait(timeout=5) == 0
        assert time.monotonic() - started < 2.5
    finally:
        server.kill()


def test_a_client_call_names_what_it_saw() -> None:
    result = echo.call_once(f"http://127.0.0.1:{_free_port()}/", timeout=1)
    assert result["status"] is None and "ConnectionRefusedError" in result["error"]
    assert json.dumps(result)  # one JSON line, as `echo.py call` prints it
