"""SPIFFE IDs as Istio uses them: ``spiffe://<trust domain>/ns/<namespace>/sa/<service account>``.

Parsing follows the SPIFFE ID specification (lower-case scheme and trust domain, no port, user
info, query or fragment; path segments of letters, digits, ``.``, ``-`` and ``_``, none empty,
``.`` or ``..``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

SCHEME = "spiffe://"
MAX_LENGTH = 2048
_TRUST_DOMAIN = re.compile(r"^[a-z0-9._-]+$")
_SEGMENT = re.compile(r"^[A-Za-z0-9._-]+$")


class SpiffeIdError(ValueError):
    """A string that is not a valid SPIFFE ID; the message says which rule it breaks."""


@dataclass(frozen=True, order=True)
class SpiffeId:
    trust_domain: str
    path: str  # begins with "/", or is empty for the trust domain's own ID

    @classmethod
    def parse(cls, text: str) -> SpiffeId:
        if len(text.encode()) > MAX_LENGTH:
            raise SpiffeIdError(f"SPIFFE ID {text[:40]!r}... is longer than {MAX_LENGTH} bytes")
        if not text.startswith(SCHEME):
            raise SpiffeIdError(f"{text!r} is not a SPIFFE ID: it must start with {SCHEME!r}")
        rest = text[len(SCHEME) :]
        if "?" in rest or "#" in rest:
            raise SpiffeIdError(f"{text!r} is not a SPIFFE ID: a query or fragment is not allowed")
        domain, slash, path = rest.partition("/")
        if not domain:
            raise SpiffeIdError(f"{text!r} is not a SPIFFE ID: the trust domain is missing")
        if not _TRUST_DOMAIN.match(domain):
            raise SpiffeIdError(
                f"{text!r} is not a SPIFFE ID: trust domain {domain!r} may hold only lower-case letters, "
                "digits, '.', '-' and '_' (no port, no user info)"
            )
        if not slash:
            return cls(domain, "")
        segments = path.split("/")
        for segment in segments:
            if segment in ("", ".", ".."):
                raise SpiffeIdError(f"{text!r} is not a SPIFFE ID: its path has an empty, '.' or '..' segment")
            if not _SEGMENT.match(segment):
                raise SpiffeIdError(
                    f"{text!r} is not a SPIFFE ID: path segment {segment!r} may hold only letters, digits, "
                    "'.', '-' and '_'"
                )
        return cls(domain, "/" + path)

    @classmethod
    def for_workload(cls, trust_domain: str, namespace: str, service_account: str) -> SpiffeId:
        """The identity Istio gives a pod: its namespace and service account in the trust domain."""
        return cls.parse(f"{SCHEME}{trust_domain}/ns/{namespace}/sa/{service_account}")

    @property
    def namespace(self) -> str | None:
        """The namespace of an Istio workload ID (``/ns/<ns>/sa/<sa>``), else None."""
        parts = self.path.split("/")
        return parts[2] if len(parts) == 5 and parts[1] == "ns" and parts[3] == "sa" else None

    @property
    def service_account(self) -> str | None:
        """The service account of an Istio workload ID (``/ns/<ns>/sa/<sa>``), else None."""
        parts = self.path.split("/")
        return parts[4] if len(parts) == 5 and parts[1] == "ns" and parts[3] == "sa" else None

    def __str__(self) -> str:
        return f"{SCHEME}{self.trust_domain}{self.path}"
