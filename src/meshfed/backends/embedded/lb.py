"""Endpoint choice: round robin, locality-aware with failover when a DestinationRule asks for it.

Istio enables locality load balancing only when the DestinationRule has ``outlierDetection``
("Locality failover" in Istio's docs: without it traffic is spread over all localities). Then an
endpoint's priority is 0 in the proxy's own region and zone, 1 in its region, 2 in a region named by
a ``failover`` entry ``{from: <own region>, to: <region>}``, 3 elsewhere; the best priority that has
an endpoint left is used.
"""

from __future__ import annotations

from collections.abc import Collection

from meshfed.backends.embedded import xds


def _priority(endpoint: xds.Endpoint, region: str, zone: str, failover_to: Collection[str]) -> int:
    if endpoint.region == region:
        return 0 if endpoint.zone == zone else 1
    return 2 if endpoint.region in failover_to else 3


def choose(
    view: xds.ServiceView,
    exclude: Collection[xds.Endpoint],
    turn: int,
    region: str,
    zone: str,
    ejected: Collection[xds.Endpoint] = (),
) -> xds.Endpoint | None:
    candidates = [e for e in view.endpoints if e not in exclude and e not in ejected]
    if not candidates:
        return None
    policy = view.traffic_policy
    locality = (policy.get("loadBalancer") or {}).get("localityLbSetting") or {}
    if policy.get("outlierDetection") and locality.get("enabled", True):
        failover_to = {f.get("to") for f in locality.get("failover") or [] if f.get("from") == region}
        best = min(_priority(e, region, zone, failover_to) for e in candidates)
        candidates = [e for e in candidates if _priority(e, region, zone, failover_to) == best]
    return candidates[turn % len(candidates)]
