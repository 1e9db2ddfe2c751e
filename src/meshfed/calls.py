"""A call's result and its symptom, classified from what the caller sees, the same way on every backend.

The caller is an application behind a sidecar: Envoy answers it with HTTP 503 and a body naming the
upstream failure, or 403 ``RBAC: access denied``; a caller without a sidecar sees the raw socket
error. Envoy's wording varies across versions (istio/istio#32501, #52356, #50459, #32523, #41666,
#37096); the patterns below take every known spelling. TLS tokens are checked before reset reasons,
since a TLS failure is reported as ``remote connection failure, transport failure reason: TLS_error...``.
"""

from __future__ import annotations

import enum
import re
import threading
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any


class Symptom(enum.Enum):
    OK = "OK"
    TLS_VERIFY_FAILED = "TLS verify failed"  # the caller rejected the server's certificate
    UNKNOWN_CA = "unknown CA"  # the server rejected the caller's certificate
    CERTIFICATE_EXPIRED = "certificate expired"  # the peer found our certificate expired
    CONNECTION_FAILURE = "connection failure"  # Envoy's "connection failure" with no reason given (see below)
    CONNECTION_RESET = "connection reset"
    CONNECTION_REFUSED = "connection refused"
    PROTOCOL_MISMATCH = "plain HTTP to a TLS port"
    NO_HEALTHY_UPSTREAM = "no healthy upstream"
    TIMEOUT = "timeout"
    NAME_RESOLUTION = "name resolution"
    RBAC_DENIED = "RBAC denied"
    HTTP_ERROR = "HTTP error"
    OTHER = "other error"
    NOT_MADE = "call not made"  # the client could not be reached (a pod still starting): no verdict on the mesh
    # Named from evidence, never from the caller's words alone (see meshfed.causes): what a bare
    # "connection failure" was, once the mesh has been read.
    TLS_FAILURE_INFERRED = "TLS failure (inferred: the proxies reject each other's certificates)"
    GATEWAY_DOWN = "east-west gateway down"


_PATTERNS: tuple[tuple[Symptom, re.Pattern[str]], ...] = tuple(
    (symptom, re.compile(pattern, re.IGNORECASE))
    for symptom, pattern in (
        (Symptom.TLS_VERIFY_FAILED, r"CERTIFICATE_VERIFY_FAILED|certificate verify failed"),
        (
            Symptom.UNKNOWN_CA,
            r"TLSV1_ALERT_UNKNOWN_CA|SSLV3_ALERT_CERTIFICATE_UNKNOWN|SSLV3_ALERT_BAD_CERTIFICATE"
            r"|TLSV1_ALERT_DECRYPT_ERROR|alert unknown ca|TLSV13_ALERT_CERTIFICATE_REQUIRED",
        ),
        (Symptom.CERTIFICATE_EXPIRED, r"SSLV3_ALERT_CERTIFICATE_EXPIRED|alert certificate expired"),
        (Symptom.PROTOCOL_MISMATCH, r"OPENSSL_internal:HTTP_REQUEST|WRONG_VERSION_NUMBER|http request"),
        (
            Symptom.NAME_RESOLUTION,
            r"could not resolve|name or service not known|temporary failure in name resolution"
            r"|nodename nor servname|NXDOMAIN",
        ),
        (Symptom.NO_HEALTHY_UPSTREAM, r"no healthy upstream"),
        # An unroutable address shows as a timeout, or as "no route to host" where something answers ICMP.
        (Symptom.TIMEOUT, r"timed out|timeout|delayed connect error: 11[03]|no route to host|EHOSTUNREACH"),
        (Symptom.CONNECTION_REFUSED, r"connection refused|delayed connect error: 111"),
        # Envoy 1.39 on (and 1.38 backports) no longer puts the transport failure reason into the body
        # (envoyproxy/envoy#44746): a TLS handshake failure and a refused connection both read "reset
        # reason: remote connection failure". Seen on real Istio with Envoy 1.40 (second-root-ca).
        (Symptom.CONNECTION_FAILURE, r"reset reason: (?:remote )?connection failure(?!, transport failure reason)"),
        (
            Symptom.CONNECTION_RESET,
            r"reset by peer|connection reset|connection termination|empty reply from server"
            r"|remote end closed connection|RemoteDisconnected|local reset|remote reset|connection failure"
            r"|disconnect/reset before headers|UNEXPECTED_EOF|EOF occurred",
        ),
    )
)

# The token a symptom is worded by, when the caller saw one (e.g. "CERTIFICATE_VERIFY_FAILED").
_TOKEN = re.compile(r"\b([A-Z0-9]+(?:_[A-Z0-9]+)+)\b")


def classify(status: int | None, text: str) -> Symptom:
    """The symptom of a call from its HTTP status (None when there was no response) and its text."""
    if status is not None and 200 <= status < 300:
        return Symptom.OK
    if status == 403 and "RBAC" in text:
        return Symptom.RBAC_DENIED
    if status == 504:
        return Symptom.TIMEOUT
    for symptom, pattern in _PATTERNS:
        if pattern.search(text):
            return symptom
    return Symptom.HTTP_ERROR if status is not None else Symptom.OTHER


@dataclass(frozen=True)
class CallResult:
    status: int | None
    reply: Mapping[str, Any] | None
    latency_ms: float
    error: str = ""
    body: str = ""
    made: bool = True  # False: the calling program could not be run at all (see ``not_made``)
    symptom: Symptom = field(init=False)
    token: str = field(init=False)  # Envoy/OpenSSL's word for the failure, when there is one

    def __post_init__(self) -> None:
        text = f"{self.body} {self.error}"
        object.__setattr__(self, "symptom", classify(self.status, text) if self.made else Symptom.NOT_MADE)
        tokens = [t for t in _TOKEN.findall(text) if not t.startswith("TLS_ERROR") and t != "TLS_ERROR_END"]
        object.__setattr__(self, "token", tokens[0] if self.symptom is not Symptom.OK and tokens else "")

    @classmethod
    def not_made(cls, reason: object) -> CallResult:
        """A call the client could not make (``kubectl exec`` into a pod still pulling its image): a failed
        attempt, never the symptom a case looks for, whatever words the reason holds."""
        return cls(None, None, 0.0, error=f"the call could not be made: {reason}", made=False)

    @classmethod
    def from_program(cls, result: Mapping[str, Any]) -> CallResult:
        """From one JSON line of ``echo.py call``."""
        return cls(
            status=result.get("status"),
            reply=result.get("reply"),
            latency_ms=float(result.get("latencyMs", 0.0)),
            error=str(result.get("error") or ""),
            body=str(result.get("body") or ""),
        )

    def named(self, symptom: Symptom) -> CallResult:
        """The same call with the symptom the evidence named (see meshfed.causes)."""
        named = CallResult(self.status, self.reply, self.latency_ms, self.error, self.body, self.made)
        object.__setattr__(named, "symptom", symptom)
        return named

    @property
    def ok(self) -> bool:
        return self.symptom is Symptom.OK

    @property
    def cluster(self) -> str | None:
        """The cluster that answered, from the echo reply."""
        return str(self.reply["cluster"]) if self.reply and "cluster" in self.reply else None

    @property
    def seen(self) -> str:
        """What the caller saw, as it saw it (Envoy's body or the socket error), on one short line."""
        text = " ".join(f"{self.status or ''} {self.body} {self.error}".split())
        return text if len(text) <= 240 else text[:237] + "..."

    @property
    def described(self) -> str:
        """The symptom in a user's words, with Envoy's token: ``TLS verify failed (CERTIFICATE_VERIFY_FAILED)``."""
        return f"{self.symptom.value} ({self.token})" if self.token else self.symptom.value


def summarize(results: Iterable[CallResult]) -> str:
    """``20/20 failed: TLS verify failed (CERTIFICATE_VERIFY_FAILED)`` or ``20/20 answered``."""
    results = list(results)
    failed = [r for r in results if not r.ok]
    if not failed:
        return f"{len(results)}/{len(results)} answered"
    counts = Counter(r.described for r in failed)
    parts = ", ".join(f"{text}" if n == len(failed) else f"{n}x {text}" for text, n in counts.most_common())
    return f"{len(failed)}/{len(results)} failed: {parts}"


class CallLedger:
    """Every call a case makes, counted as it is made (backends count into ``LEDGER``), and apart from them the
    calls of its steady windows: a report says how many calls a case made and how many failed, passed or not."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.made = self.failed = self.steady_made = self.steady_failed = 0

    def reset(self) -> None:
        with self._lock:
            self.made = self.failed = self.steady_made = self.steady_failed = 0

    def count(self, results: Iterable[CallResult]) -> None:
        results = list(results)
        with self._lock:
            self.made += len(results)
            self.failed += sum(not r.ok for r in results)

    def count_steady(self, made: int, failed: int) -> None:
        with self._lock:
            self.steady_made += made
            self.steady_failed += failed

    def figures(self) -> dict[str, int]:
        with self._lock:
            return {
                "made": self.made,
                "failed": self.failed,
                "steadyMade": self.steady_made,
                "steadyFailed": self.steady_failed,
            }


LEDGER = CallLedger()
