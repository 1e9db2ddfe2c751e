"""What a conformance case is: a stable short name, a description, the features it needs, a profile.

Features are grouped into profiles (core, extended) as in the Gateway API conformance suite. A case a
backend cannot run is "not supported", with the reason, reported apart from skipped and failed.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import pytest

NOT_SUPPORTED = "not supported: "
NOT_APPLICABLE = "not applicable: "
NOT_RUN = "not run: provisioning failed: "
BROKEN_FROM_START = "the mesh is broken from the start: "


class Feature(enum.Enum):
    CROSS_CLUSTER_CALLS = "CrossClusterCalls"
    MESH_WIDE_LOAD_BALANCING = "MeshWideLoadBalancing"
    MUTUAL_TLS = "MutualTLS"
    SHARED_ROOT = "SharedRootOfTrust"
    SPIFFE_IDENTITY = "SpiffeIdentity"
    AUTHORIZATION = "Authorization"
    MISCONFIGURATION_REGRESSION = "MisconfigurationRegression"
    CONTROL_PLANE_OUTAGE = "ControlPlaneOutage"
    LOCALITY_FAILOVER = "LocalityFailover"
    CANARY_UPGRADE = "CanaryUpgrade"
    ROOT_ROTATION = "RootRotation"


EXTENDED = frozenset(
    {
        Feature.MISCONFIGURATION_REGRESSION,
        Feature.CONTROL_PLANE_OUTAGE,
        Feature.LOCALITY_FAILOVER,
        Feature.CANARY_UPGRADE,
        Feature.ROOT_ROTATION,
    }
)
PROFILES: dict[str, frozenset[Feature]] = {
    "core": frozenset(Feature) - EXTENDED,
    "extended": EXTENDED,
}


@dataclass(frozen=True)
class CaseInfo:
    short_name: str
    description: str
    features: frozenset[Feature]
    profile: str = "core"


F = TypeVar("F", bound=Callable[..., Any])


def case(short_name: str, description: str, features: set[Feature], profile: str = "core") -> Callable[[F], F]:
    """Declare a conformance case; its features decide whether ``--features`` selects it."""
    info = CaseInfo(short_name, description, frozenset(features), profile)

    def mark(function: F) -> F:
        function.__doc__ = function.__doc__ or description
        return pytest.mark.meshfed_case(info)(function)  # type: ignore[no-any-return]

    return mark


def not_supported(reason: str) -> None:
    """End the case as "not supported" with the reason (never as a pass)."""
    pytest.skip(NOT_SUPPORTED + reason)


def does_not_apply(reason: str) -> None:
    """End the case as "not applicable": what it checks cannot happen in this topology. Neither a pass nor a
    limit of the backend: a profile whose only missing cases do not apply is a success."""
    pytest.skip(NOT_APPLICABLE + reason)


def feature_names(text: str) -> set[Feature]:
    """``--features A,B`` -> features, refusing unknown names with the valid ones listed."""
    names = {name.strip() for name in text.split(",") if name.strip()}
    known = {feature.value: feature for feature in Feature}
    unknown = sorted(names - set(known))
    if unknown:
        raise ValueError(f"unknown feature {unknown[0]!r}: use one of {', '.join(sorted(known))}")
    return {known[name] for name in names}
