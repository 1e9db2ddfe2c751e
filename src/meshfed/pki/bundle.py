"""Loading a plug-in CA bundle (a folder or the data of a ``cacerts`` Secret) and validating it.

Each problem is a :class:`Finding` that names the file, says what is wrong in the words of what the
mesh will do about it, and how to fix it. Layouts are read as istiod reads them
(``detectSigningCABundle`` in ``pilot/pkg/bootstrap/istio_ca.go``): when ``tls.crt`` is present the
Kubernetes TLS names are used (signing cert ``tls.crt``, key ``tls.key``, root ``ca.crt``, chain
``tls.crt`` then ``ca.crt``); otherwise Istio's four files.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Literal

from cryptography import x509

from meshfed.pki.authority import CA_CERT, CA_KEY, CERT_CHAIN, PLUGIN_FILES, ROOT_CERT, PluginCA
from meshfed.pki.certs import (
    PemError,
    PrivateKey,
    fingerprint,
    key_matches_cert,
    load_certs,
    load_key,
    name_text,
    subject,
    utcnow,
)
from meshfed.pki.verify import self_issued, signed_by

TLS_CERT, TLS_KEY, TLS_CA = "tls.crt", "tls.key", "ca.crt"
TLS_FILES = (TLS_CERT, TLS_KEY, TLS_CA)
EXPIRY_HORIZON = timedelta(days=30)

Severity = Literal["error", "warning"]


@dataclass(frozen=True)
class Finding:
    code: str  # stable, e.g. "key-mismatch"
    severity: Severity
    file: str  # the file (or Secret key) at fault
    problem: str
    fix: str

    def sentence(self, where: str) -> str:
        """One sentence naming the place, the file, the problem and the fix."""
        return f"{where}: {self.file}: {self.problem}; {self.fix}."


@dataclass(frozen=True)
class Roles:
    """Which file plays which part in a layout."""

    signing_cert: str
    signing_key: str
    root: str
    chain: tuple[str, ...]


ISTIO_LAYOUT = Roles(CA_CERT, CA_KEY, ROOT_CERT, (CERT_CHAIN,))
TLS_LAYOUT = Roles(TLS_CERT, TLS_KEY, TLS_CA, (TLS_CERT, TLS_CA))


@dataclass(frozen=True)
class BundleReport:
    """The outcome of validating one bundle: findings, and what could be read."""

    source: str
    layout: Roles
    findings: tuple[Finding, ...]
    signing_cert: x509.Certificate | None = None
    roots: tuple[x509.Certificate, ...] = ()
    chain: tuple[x509.Certificate, ...] = ()
    signing_root: x509.Certificate | None = None  # the root ca-cert.pem chains to, by signature
    key: PrivateKey | None = field(default=None, repr=False)

    @property
    def errors(self) -> tuple[Finding, ...]:
        return tuple(f for f in self.findings if f.severity == "error")

    @property
    def ok(self) -> bool:
        return not self.errors

    def plugin_ca(self) -> PluginCA:
        """The usable signing CA; only for a bundle without errors."""
        if not self.ok or self.signing_cert is None or self.key is None:
            raise ValueError(f"{self.source} has errors and cannot be used as a CA")
        return PluginCA(self.signing_cert, self.key, self.roots, self.chain)


class BundleSourceError(ValueError):
    """The bundle cannot be read at all (no such folder, not base64, ...)."""


def read_bundle_dir(folder: Path) -> dict[str, bytes]:
    """The CA files present in ``folder`` (Istio or TLS names)."""
    if not folder.is_dir():
        raise BundleSourceError(f"{folder} is not a folder: give a folder that holds {', '.join(PLUGIN_FILES)}")
    return {name: (folder / name).read_bytes() for name in (*PLUGIN_FILES, *TLS_FILES) if (folder / name).is_file()}


def bundle_from_secret(secret: Mapping[str, object]) -> dict[str, bytes]:
    """The CA files in a Secret object (``data`` is base64, ``stringData`` plain text)."""
    files: dict[str, bytes] = {}
    data = secret.get("data") or {}
    string_data = secret.get("stringData") or {}
    if not isinstance(data, Mapping) or not isinstance(string_data, Mapping):
        raise BundleSourceError("the Secret's data must be a map of file names to contents")
    for name, value in data.items():
        try:
            files[str(name)] = base64.b64decode(str(value), validate=True)
        except binascii.Error:
            raise BundleSourceError(
                f"the Secret's data[{name!r}] is not base64: put plain PEM under stringData instead"
            ) from None
    for name, value in string_data.items():
        files[str(name)] = str(value).encode()
    return files


def _layout(files: Mapping[str, bytes]) -> Roles:
    return TLS_LAYOUT if TLS_CERT in files else ISTIO_LAYOUT


def _required(layout: Roles) -> tuple[str, ...]:
    return TLS_FILES if layout is TLS_LAYOUT else PLUGIN_FILES


class _Checker:
    def __init__(self, source: str, files: Mapping[str, bytes], now: datetime, horizon: timedelta) -> None:
        self.source = source
        self.files = files
        self.now = now
        self.horizon = horizon
        self.layout = _layout(files)
        self.findings: list[Finding] = []

    def add(self, code: str, severity: Severity, file: str, problem: str, fix: str) -> None:
        self.findings.append(Finding(code, severity, file, problem, fix))

    def certs(self, name: str) -> list[x509.Certificate]:
        if name not in self.files:
            return []
        try:
            return load_certs(self.files[name], name)
        except PemError as error:
            self.add("unreadable", "error", name, str(error), "replace it with the PEM certificate it should hold")
            return []

    def key(self, name: str) -> PrivateKey | None:
        if name not in self.files:
            return None
        try:
            return load_key(self.files[name], name)
        except PemError as error:
            self.add("unreadable", "error", name, str(error), "replace it with the unencrypted PEM key of the CA")
            return None

    def check_present(self) -> bool:
        required = _required(self.layout)
        missing = [name for name in required if name not in self.files]
        if len(missing) == len(required):
            self.add(
                "no-ca-files",
                "error",
                ", ".join(required),
                "none of the plug-in CA files is present, so istiod would use its self-signed CA",
                f"provide {', '.join(required)}",
            )
            return False
        if missing:
            self.add(
                "incomplete-bundle",
                "error",
                ", ".join(missing),
                'missing: an incomplete bundle makes istiod refuse to start ("incomplete signing CA bundle detected")',
                f"add {', '.join(missing)} to the bundle (or remove the bundle to use istiod's self-signed CA)",
            )
        return True

    def check_times(self, name: str, certs: list[x509.Certificate]) -> None:
        for cert in certs:
            label = f"{subject(cert) or 'certificate'}"
            if self.now < cert.not_valid_before_utc:
                self.add(
                    "not-yet-valid",
                    "error",
                    name,
                    f"{label} is not valid before {cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC",
                    "reissue it with a start date in the past, or check the clock of the machine that made it",
                )
            elif self.now > cert.not_valid_after_utc:
                self.add(
                    "expired",
                    "error",
                    name,
                    f"{label} expired on {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC",
                    "issue a new certificate and roll it out (istiod, then every workload)",
                )
            elif self.now + self.horizon > cert.not_valid_after_utc:
                days = (cert.not_valid_after_utc - self.now).days
                self.add(
                    "expiring",
                    "warning",
                    name,
                    f"{label} expires on {cert.not_valid_after_utc:%Y-%m-%d} UTC, in {days} days",
                    "plan its rotation now",
                )

    def check_is_ca(self, name: str, cert: x509.Certificate) -> None:
        try:
            constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
            is_ca = constraints.ca
        except x509.ExtensionNotFound:
            is_ca = False
        try:
            can_sign = cert.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign
        except x509.ExtensionNotFound:
            can_sign = True
        if not is_ca:
            self.add(
                "not-a-ca",
                "error",
                name,
                f"{subject(cert)} is not a CA (basicConstraints CA:true is missing), so the certificates "
                "it signs are rejected by every proxy",
                "reissue it with basicConstraints critical, CA:true",
            )
        elif not can_sign:
            self.add(
                "not-a-ca",
                "error",
                name,
                f"{subject(cert)} has a keyUsage without keyCertSign, so the certificates it signs are rejected",
                "reissue it with keyUsage keyCertSign",
            )

    def check_root(self, roots: list[x509.Certificate]) -> None:
        name = self.layout.root
        for root in roots:
            if not (self_issued(root) and signed_by(root, root)):
                self.add(
                    "root-not-self-signed",
                    "error",
                    name,
                    f"{subject(root)} is not self-signed (issuer {name_text(root.issuer)}), and proxies "
                    "only accept a chain that ends at a self-signed trusted root",
                    "put the self-signed root certificate here, not an intermediate",
                )
            self.check_is_ca(name, root)

    def signing_path(
        self, signing: x509.Certificate, chain: list[x509.Certificate], roots: list[x509.Certificate]
    ) -> list[x509.Certificate] | None:
        """ca-cert.pem up to a root of root-cert.pem, each link checked by signature, never by name alone."""
        path = [signing]
        pool = [cert for cert in chain if cert != signing]
        while len(path) < 16:
            current = path[-1]
            root = next((r for r in roots if signed_by(current, r)), None)
            if root is not None:
                return path if root == current else [*path, root]
            issuer = next((c for c in pool if c not in path and signed_by(current, c)), None)
            if issuer is None:
                break
            path.append(issuer)
        current = path[-1]
        namesakes = [r for r in roots if r.subject == current.issuer]
        where = "ca-cert.pem" if current is signing else f"{subject(current)} from the chain"
        if namesakes:
            problem = (
                f"{where} names {name_text(current.issuer)} as its issuer, and {self.layout.root} holds a "
                "certificate of that name, but not the key that signed it: the intermediate comes from a "
                f"different root with the same subject (root here: {fingerprint(namesakes[0])})"
            )
        else:
            problem = (
                f"{where} is not signed by any root in {self.layout.root} (its issuer is {name_text(current.issuer)})"
            )
        self.add(
            "not-signed-by-root",
            "error",
            self.layout.signing_cert,
            problem,
            f"put the root that signed it in {self.layout.root}, or sign a new intermediate with this root",
        )
        return None

    def check_path_length(self, path: list[x509.Certificate]) -> None:
        # Istio signs workload certificates directly with ca-cert.pem: path[i] has i CAs below it.
        for below, cert in enumerate(path):
            try:
                limit = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.path_length
            except x509.ExtensionNotFound:
                continue
            intermediates_below = sum(1 for c in path[:below] if not self_issued(c))
            if limit is not None and intermediates_below > limit:
                self.add(
                    "path-length",
                    "error",
                    self.layout.signing_cert if below == 0 else self.layout.root,
                    f"{subject(cert)} allows {limit} intermediate CA(s) below it (pathlen:{limit}) but "
                    f"{intermediates_below} stand below it, so every workload certificate would be rejected "
                    '("path length constraint exceeded")',
                    "reissue the CA with a larger pathlen, or sign ca-cert.pem closer to the root",
                )

    def check_chain(
        self, signing: x509.Certificate, chain: list[x509.Certificate], path: list[x509.Certificate] | None
    ) -> None:
        if self.layout is TLS_LAYOUT:
            return  # istiod builds the chain itself from tls.crt and ca.crt
        name = CERT_CHAIN
        if not chain:
            return
        if signing not in chain:
            self.add(
                "chain-content",
                "error",
                name,
                "does not contain ca-cert.pem, so workloads would send a chain their peers cannot verify",
                "make cert-chain.pem ca-cert.pem followed by its issuers up to the root",
            )
            return
        if path is None:
            return
        strangers = [cert for cert in chain if cert not in path]
        if strangers:
            self.add(
                "chain-content",
                "error",
                name,
                f"holds {subject(strangers[0])} ({fingerprint(strangers[0])}), which is not on the path from "
                "ca-cert.pem to the root: a chain from another CA was mixed in",
                "make cert-chain.pem ca-cert.pem followed by its issuers up to the root",
            )
            return
        if chain != path[: len(chain)]:
            order = " -> ".join(subject(cert) for cert in chain)
            self.add(
                "chain-order",
                "warning",
                name,
                f"is out of order ({order}); it must start with ca-cert.pem and each certificate must be "
                "followed by its issuer, as TLS requires (Envoy and istiod tolerate the disorder, "
                "other TLS peers may not)",
                "rewrite it as ca-cert.pem, then its issuer, up to the root",
            )

    def run(self) -> BundleReport:
        if not self.check_present():
            return BundleReport(self.source, self.layout, tuple(self.findings))
        layout = self.layout
        signing_certs = self.certs(layout.signing_cert)
        signing = signing_certs[0] if signing_certs else None
        key = self.key(layout.signing_key)
        roots = self.certs(layout.root)
        chain: list[x509.Certificate] = []
        for name in layout.chain:
            for cert in self.certs(name) if name != layout.signing_cert else signing_certs:
                if cert not in chain:
                    chain.append(cert)
        for name, certs in ((layout.signing_cert, signing_certs), (layout.root, roots)):
            self.check_times(name, certs)
        if layout is ISTIO_LAYOUT:
            self.check_times(CERT_CHAIN, [c for c in chain if c not in signing_certs and c not in roots])
        if signing is not None and key is not None and not key_matches_cert(key, signing):
            self.add(
                "key-mismatch",
                "error",
                layout.signing_key,
                f"is not the private key of {layout.signing_cert} ({subject(signing)}), so istiod cannot sign "
                "with it and fails to start",
                f"put the key that belongs to {layout.signing_cert} here",
            )
        self.check_root(roots)
        path = None
        if signing is not None:
            self.check_is_ca(layout.signing_cert, signing)
            if roots:
                path = self.signing_path(signing, chain, roots)
            if path is not None:
                self.check_path_length(path)
            self.check_chain(signing, chain, path)
        return BundleReport(
            self.source,
            layout,
            tuple(self.findings),
            signing_cert=signing,
            roots=tuple(roots),
            chain=tuple(chain),
            signing_root=path[-1] if path else None,
            key=key,
        )


def validate_bundle(
    files: Mapping[str, bytes],
    *,
    source: str,
    now: datetime | None = None,
    horizon: timedelta = EXPIRY_HORIZON,
) -> BundleReport:
    """Every problem of a plug-in CA bundle, as findings; ``source`` names it in messages."""
    return _Checker(source, files, now or utcnow(), horizon).run()


def load_bundle_dir(folder: Path, *, now: datetime | None = None, horizon: timedelta = EXPIRY_HORIZON) -> BundleReport:
    return validate_bundle(read_bundle_dir(folder), source=str(folder), now=now, horizon=horizon)


def compare_roots(reports: Mapping[str, BundleReport]) -> list[tuple[str, Finding]]:
    """Whether the clusters share one root of trust, judged by fingerprint, never by name.

    Two clusters can call each other only if each one's workloads chain to a root the other trusts:
    the root that signs a cluster's intermediate must be in every other cluster's ``root-cert.pem``.
    Root sets that differ while that still holds (a root rotation under way) are a warning.
    """
    findings: list[tuple[str, Finding]] = []
    names = [name for name, report in reports.items() if report.signing_root is not None]
    for index, name in enumerate(names):
        report = reports[name]
        assert report.signing_root is not None
        for other in names[:index]:
            theirs = reports[other]
            assert theirs.signing_root is not None
            trusted_here = theirs.signing_root in report.roots
            trusted_there = report.signing_root in theirs.roots
            if trusted_here and trusted_there:
                if set(report.roots) != set(theirs.roots):
                    findings.append(
                        (
                            name,
                            Finding(
                                "root-set-differs",
                                "warning",
                                report.layout.root,
                                f"holds other roots than {other}'s ({_fingerprints(report.roots)} here, "
                                f"{_fingerprints(theirs.roots)} there); calls still work, as during a root rotation",
                                "finish the rotation so that every cluster holds the same roots",
                            ),
                        )
                    )
                continue
            findings.append(
                (
                    name,
                    Finding(
                        "root-mismatch",
                        "error",
                        report.layout.root,
                        f"this cluster's root {fingerprint(report.signing_root)} differs from {other}'s root "
                        f"{fingerprint(theirs.signing_root)} and "
                        + (
                            "neither trusts the other's"
                            if not (trusted_here or trusted_there)
                            else f"{'this cluster' if not trusted_here else other} does not trust the other's"
                        )
                        + ", so mutual TLS between them fails",
                        "give every cluster an intermediate signed by the same root, with that root in root-cert.pem",
                    ),
                )
            )
    return findings


def _fingerprints(certs: tuple[x509.Certificate, ...]) -> str:
    return ", ".join(fingerprint(cert) for cert in certs)
