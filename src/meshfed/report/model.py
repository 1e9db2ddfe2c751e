"""The record of one run and the versioned ``ConformanceReport`` made from it.

A profile's result is ``success`` when every selected case of it passed, ``failure`` when one failed,
``partial`` when none failed but some were skipped or not supported, and ``unknown`` when none ran:
an empty run is never a success. A case that does not apply to the topology (``not-applicable``) is
none of these: it is listed, and counts for nothing.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from meshfed import __version__
from meshfed.cases import PROFILES

API_VERSION = "meshfed.dev/v1alpha1"
EMBEDDED_NOTE = (
    "Run against meshfed's embedded mesh, an in-process emulation of Istio's multi-cluster behaviour: "
    "it certifies no Istio installation."
)


FAULT_NOTE = (
    "A fault was injected on purpose (--inject-fault): this run shows what the cases catch, it certifies nothing."
)


OUTCOMES = ("passed", "failed", "skipped", "not-supported", "not-applicable")


@dataclass
class CaseOutcome:
    case_id: str  # ShortName or ShortName[cluster-a->cluster-b]
    short_name: str
    profile: str
    features: tuple[str, ...]
    outcome: str  # passed | failed | skipped | not-supported | not-applicable
    message: str = ""
    seconds: float = 0.0  # the case's own time (its call phase; the setup too when that failed)
    observed: tuple[str, ...] = ()  # what calls showed at each checked point: "stage: a->b: TLS verify failed"
    calls: dict[str, int] = field(default_factory=dict)  # made, failed, steadyMade, steadyFailed (CallLedger)


@dataclass
class RunRecord:
    backend: str
    topology: str
    clusters: list[dict[str, str]]  # name, network, role
    istio_version: str = "unknown"
    # The external control plane's cluster (name, network, role "external", serves: the data-plane clusters).
    external_control_plane: dict[str, Any] = field(default_factory=dict)
    implementation: dict[str, str] = field(default_factory=dict)
    outcomes: list[CaseOutcome] = field(default_factory=list)
    latencies: dict[str, dict[str, list[float]]] = field(default_factory=dict)  # pair -> same/cross -> ms
    provisioning_error: str = ""
    broken_from_start: list[str] = field(default_factory=list)  # blocking diagnosis findings right after provisioning
    environment: dict[str, str] = field(default_factory=dict)  # what it ran against: component -> version and notes
    certifies_istio: bool | None = None
    procedures: dict[str, list[tuple[str, int, int]]] = field(default_factory=dict)  # case -> (step, ok, failed)
    diagnosis: list[str] = field(default_factory=list)  # the findings attached to the last failing case
    fault: dict[str, str] = field(default_factory=dict)  # name, title: a fault injected on purpose (--inject-fault)
    pki: dict[str, Any] = field(default_factory=dict)  # source, rootFingerprints: the CA the mesh was given
    provisioning_seconds: float | None = None

    def record_latency(self, pair: str, kind: str, values: Sequence[float]) -> None:
        self.latencies.setdefault(pair, {}).setdefault(kind, []).extend(values)

    def latency_summary(self, pair: str) -> dict[str, tuple[float, float]]:
        """kind -> (median, p99) in milliseconds."""
        summary = {}
        for kind, values in self.latencies.get(pair, {}).items():
            if values:
                ordered = sorted(values)
                summary[kind] = (
                    statistics.median(ordered),
                    ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))],
                )
        return summary


def profile_result(outcomes: Sequence[CaseOutcome]) -> str:
    kinds = {o.outcome for o in outcomes} - {"not-applicable"}
    if not kinds:
        return "unknown"
    if "failed" in kinds:
        return "failure"
    if kinds == {"passed"}:
        return "success"
    return "partial" if "passed" in kinds else "unknown"


def conformance_report(record: RunRecord, now: datetime | None = None) -> dict[str, Any]:
    profiles: list[dict[str, Any]] = []
    for name in PROFILES:
        chosen = [o for o in record.outcomes if o.profile == name]
        profiles.append(
            {
                "name": name,
                # A mesh that could not be made certifies nothing, whatever the cases say.
                "result": "failure" if record.provisioning_error else profile_result(chosen),
                "statistics": {kind: sum(1 for o in chosen if o.outcome == kind) for kind in OUTCOMES},
                "failedTests": [o.case_id for o in chosen if o.outcome == "failed"],
                "skippedTests": [o.case_id for o in chosen if o.outcome == "skipped"],
                "notSupportedTests": [
                    {"name": o.case_id, "reason": o.message} for o in chosen if o.outcome == "not-supported"
                ],
                "notApplicableTests": [
                    {"name": o.case_id, "reason": o.message} for o in chosen if o.outcome == "not-applicable"
                ],
            }
        )
    # What a reviewer reads first: the verdict, whether it certifies Istio, and what ran; the details after.
    report: dict[str, Any] = {
        "apiVersion": API_VERSION,
        "kind": "ConformanceReport",
        "date": (now or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "suiteVersion": __version__,
        "verdict": {
            profile["name"]: profile["result"] if any(profile["statistics"].values()) else "not-selected"
            for profile in profiles
        },
    }
    if record.backend == "embedded" or record.fault:
        report["certifiesIstio"] = False
    elif record.certifies_istio is not None:
        report["certifiesIstio"] = record.certifies_istio
    report.update(
        {
            "backend": record.backend,
            "topology": record.topology,
            # The embedded mesh is an emulation: no Istio version ran.
            "istioVersion": None if record.backend == "embedded" else record.istio_version,
        }
    )
    if record.backend == "embedded":
        report["note"] = EMBEDDED_NOTE
    if record.fault:
        report["faultInjected"] = dict(record.fault)
        report["faultNote"] = FAULT_NOTE
    if record.provisioning_error:
        report["provisioningError"] = record.provisioning_error
    if record.broken_from_start:
        report["brokenFromStart"] = list(record.broken_from_start)
    if record.environment:
        report["environment"] = dict(record.environment)
    if record.pki:
        report["pki"] = dict(record.pki)
    if record.provisioning_seconds is not None:
        report["provisioningSeconds"] = record.provisioning_seconds
    if record.implementation:
        report["implementation"] = {
            key: record.implementation[key]
            for key in ("organization", "project", "version", "contact")
            if record.implementation.get(key)
        }
    report["clusters"] = [
        {**cluster, **({"istioVersion": record.istio_version} if record.backend != "embedded" else {})}
        for cluster in record.clusters
    ]
    if record.external_control_plane:
        report["externalControlPlane"] = dict(record.external_control_plane)
    report["profiles"] = profiles
    # Every case, passed ones included, so that two reports compare case by case (meshfed report compare).
    report["cases"] = [
        {
            "name": o.case_id,
            "profile": o.profile,
            "features": list(o.features),
            "outcome": o.outcome,
            "seconds": round(o.seconds, 2),
            **({"message": o.message} if o.message else {}),
            **({"observed": list(o.observed)} if o.observed else {}),
            **({"calls": dict(o.calls)} if o.calls else {}),
        }
        for o in record.outcomes
    ]
    return report
