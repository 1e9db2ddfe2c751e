"""meshfed's workload program: the echo server and the calling client, one stdlib-only file.

On real clusters it is mounted from a ConfigMap into a stock Python image and run as
``python echo.py serve`` (echo pods) or ``python echo.py idle`` (client pods, which the suite execs
``python echo.py call URL --count N`` in). The embedded mesh imports it and runs the same functions
in-process behind its emulated sidecar.

The echo reply is JSON naming the cluster, pod, version, service and namespace that answered, the
caller identity the sidecar vouched for (``URI=`` of ``X-Forwarded-Client-Cert``) and the headers.
``call`` prints one JSON line per call: status, reply, latency, error.

``serve`` behaves like a well-kept server, so that a rollout loses no call through the test's own
program: ``GET /ready`` is its readiness (the pod's probe, which Istio rewrites through pilot-agent);
on SIGTERM it reports not ready, keeps answering for ``DRAIN_SECONDS`` (default 5, Istio's default
``terminationDrainDuration``) while the endpoint's removal reaches every proxy, closes each connection
after its answer, and then exits.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import socket
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import asdict, dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

PORT = 8080
READY_PATH = "/ready"
DRAIN_SECONDS = 5.0
Connect = Callable[[str, int, float], socket.socket]


@dataclass(frozen=True)
class EchoIdentity:
    cluster: str
    pod: str
    version: str
    service: str
    namespace: str

    @classmethod
    def from_environment(cls) -> EchoIdentity:
        return cls(
            cluster=os.environ.get("CLUSTER", ""),
            pod=os.environ.get("POD_NAME", socket.gethostname()),
            version=os.environ.get("VERSION", ""),
            service=os.environ.get("SERVICE", ""),
            namespace=os.environ.get("POD_NAMESPACE", ""),
        )


def caller_from_xfcc(header: str | None) -> str | None:
    """The caller's identity in ``X-Forwarded-Client-Cert``: the ``URI=`` of its last element."""
    if not header:
        return None
    last = header.split(",")[-1]
    for field in last.split(";"):
        key, _, value = field.partition("=")
        if key.strip().lower() == "uri":
            return value.strip().strip('"')
    return None


class EchoState:
    """What an echo answers; ``fail_with`` makes it answer that status (for outlier detection)."""

    def __init__(self, identity: EchoIdentity) -> None:
        self.identity = identity
        self.fail_with: int | None = None
        self.lock = threading.Lock()
        self.draining = threading.Event()  # set on SIGTERM: not ready, answers with Connection: close


def _handler(state: EchoState) -> type[BaseHTTPRequestHandler]:
    class EchoHandler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True
        server_version = "meshfed-echo"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _send(self, status: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            if state.draining.is_set():
                self.send_header("Connection", "close")
                self.close_connection = True
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            if self.path == READY_PATH:
                draining = state.draining.is_set()
                self._send(503 if draining else 200, {"ready": not draining})
                return
            with state.lock:
                fail_with = state.fail_with
            reply = asdict(state.identity)
            reply["caller"] = caller_from_xfcc(self.headers.get("X-Forwarded-Client-Cert"))
            reply["headers"] = {key.lower(): value for key, value in self.headers.items()}
            self._send(fail_with or 200, reply)

        def do_POST(self) -> None:
            # POST /fail/<status> makes the echo answer <status>; POST /fail/0 heals it.
            parts = self.path.strip("/").split("/")
            if len(parts) == 2 and parts[0] == "fail" and parts[1].isdigit():
                with state.lock:
                    state.fail_with = int(parts[1]) or None
                self._send(200, {"failWith": state.fail_with})
            else:
                self._send(404, {"error": f"no such action {self.path}"})

    return EchoHandler


class EchoServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], state: EchoState) -> None:
        super().__init__(address, _handler(state))
        self.state = state

    def drain_and_stop(self, seconds: float) -> None:
        """Report not ready, answer for ``seconds`` more (each connection closed after its answer), then stop."""
        self.state.draining.set()
        timer = threading.Timer(seconds, self.shutdown)
        timer.daemon = True
        timer.start()


def make_server(host: str, port: int, identity: EchoIdentity, fail_with: int | None = None) -> EchoServer:
    """The echo server; ``fail_with`` (env ``FAIL_WITH``) makes every answer that status, for outlier detection."""
    state = EchoState(identity)
    state.fail_with = fail_with
    return EchoServer((host, port), state)


def _direct(host: str, port: int, timeout: float) -> socket.socket:
    return socket.create_connection((host, port), timeout=timeout)


class _Connection(http.client.HTTPConnection):
    def __init__(self, host: str, port: int, timeout: float, connect: Connect) -> None:
        super().__init__(host, port, timeout=timeout)
        self._connect = connect

    def connect(self) -> None:
        self.sock = self._connect(self.host, self.port, self.timeout)  # type: ignore[arg-type]
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def call_once(
    url: str, *, timeout: float = 5.0, headers: dict[str, str] | None = None, connect: Connect = _direct
) -> dict[str, Any]:
    """One GET; never raises: a failure is an ``error`` text as the caller saw it."""
    parts = urllib.parse.urlsplit(url)
    host, port = parts.hostname or "", parts.port or 80
    started = time.perf_counter()
    result: dict[str, Any] = {"status": None, "reply": None, "body": "", "error": ""}
    connection = _Connection(host, port, timeout, connect)
    try:
        connection.request("GET", parts.path or "/", headers=headers or {})
        response = connection.getresponse()
        body = response.read().decode(errors="replace")
        result["status"] = response.status
        try:
            result["reply"] = json.loads(body)
        except ValueError:
            result["body"] = body[:2000]
    except socket.gaierror as error:
        result["error"] = f"could not resolve host {host}: {error.strerror}"
    except TimeoutError:
        result["error"] = f"timed out after {timeout:g}s"
    except (OSError, http.client.HTTPException) as error:
        result["error"] = f"{type(error).__name__}: {error}"
    finally:
        connection.close()
    result["latencyMs"] = round((time.perf_counter() - started) * 1000, 3)
    return result


def call(
    url: str, count: int, *, timeout: float = 5.0, headers: dict[str, str] | None = None, connect: Connect = _direct
) -> list[dict[str, Any]]:
    return [call_once(url, timeout=timeout, headers=headers, connect=connect) for _ in range(count)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="echo.py")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve")
    serve.add_argument("--port", type=int, default=PORT)
    commands.add_parser("idle")
    calls = commands.add_parser("call")
    calls.add_argument("url")
    calls.add_argument("--count", type=int, default=1)
    calls.add_argument("--timeout", type=float, default=5.0)
    calls.add_argument("--header", action="append", default=[], metavar="NAME:VALUE")
    args = parser.parse_args(argv)
    # As a container's PID 1 the program would ignore SIGTERM and every pod would take its whole
    # grace period (30 s) to stop: restarts and scale-downs would crawl.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    if args.command == "serve":
        fail_with = int(os.environ["FAIL_WITH"]) if os.environ.get("FAIL_WITH", "").isdigit() else None
        server = make_server("", args.port, EchoIdentity.from_environment(), fail_with)
        drain = float(os.environ.get("DRAIN_SECONDS") or DRAIN_SECONDS)
        signal.signal(signal.SIGTERM, lambda *_: server.drain_and_stop(drain))
        server.serve_forever()
        server.server_close()
    elif args.command == "idle":
        threading.Event().wait()
    else:
        headers = dict(h.split(":", 1) for h in args.header)
        for result in call(args.url, args.count, timeout=args.timeout, headers=headers):
            print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
