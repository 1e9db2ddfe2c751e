"""Misconfiguration regressions: each known mistake breaks the mesh in its known way, is named by the
diagnosis, and the fix heals the mesh. Destructive: on ``existing`` only with ``--allow-destructive``."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from meshfed.backends.base import Mesh
from meshfed.calls import Symptom
from meshfed.cases import Feature, case, does_not_apply, not_supported
from meshfed.diagnose import diagnose
from meshfed.expect import require
from meshfed.manifests import ISTIO_SYSTEM
from meshfed.misconfig import CATALOG, Expect, Misconfiguration, observe
from meshfed.options import SuiteOptions
from meshfed.topology import MeshSpec


@case(
    "MisconfigurationRegression",
    "A known misconfiguration breaks the mesh in its known way, the diagnosis names it first, and the fix heals it.",
    {Feature.MISCONFIGURATION_REGRESSION},
    profile="extended",
)
@pytest.mark.parametrize("entry", CATALOG, ids=[m.name for m in CATALOG])
def test_misconfiguration_regression(
    request: pytest.FixtureRequest,
    mesh_spec: MeshSpec,
    entry: Misconfiguration,
    suite_options: SuiteOptions,
    observed: Callable[[str], None],
) -> None:
    reason = entry.not_applicable(mesh_spec)
    if reason:  # decided from the topology, before the mesh: it holds for a mesh broken from the start too
        does_not_apply(f"{mesh_spec.topology.value}: {reason}")
    mesh: Mesh = request.getfixturevalue("mesh")
    if suite_options.backend == "existing" and not suite_options.allow_destructive:
        not_supported(
            "destructive: it breaks and repairs the mesh; pass --allow-destructive to run it on existing clusters"
        )
    if mesh.spec.external is not None and mesh.external is None:
        not_supported(
            "the external control plane's cluster was not given (--external-context): its istiod, which every entry "
            "restarts or reads, cannot be reached"
        )
    saved: dict[str, object] = {}
    problems: list[str] = []
    try:
        for stage in entry.stages:
            stage.act(mesh, saved)
            expectations, belongs_to = stage.expectations(mesh.spec, mesh.istio_version)
            if belongs_to:
                observed(f"{stage.title}: expected as on {belongs_to}")
            for expect in expectations:
                shown, seen = observe(mesh, expect, suite_options.steady_calls)
                observed(f"{stage.title}: {shown}")
                if seen:
                    problems.append(f"after '{stage.title}': {seen}")
            if stage.shows is not None:
                shown, seen = stage.shows(mesh)
                observed(f"{stage.title}: {shown}")
                if seen:
                    problems.append(f"after '{stage.title}': {seen}")
            if stage.istiod_ready is not None:
                plane = mesh[mesh.spec.control_plane(mesh.spec.names[-1])]
                ready = any(p.ready for p in plane.pods(ISTIO_SYSTEM, {"app": "istiod"}))
                if ready != stage.istiod_ready:
                    problems.append(f"after '{stage.title}': istiod ready is {ready}, expected {stage.istiod_ready}")
            findings = [f for f in diagnose(mesh) if f.status != "ok"]
            observed(f"{stage.title}: diagnosis first: {findings[0].check if findings else 'nothing'}")
            if stage.finding is None:
                errors = [f.line() for f in findings if f.status == "error"]
                if errors:
                    problems.append(
                        f"after '{stage.title}' the mesh should be healthy, but the diagnosis says: {'; '.join(errors)}"
                    )
            elif not findings or findings[0].check != stage.finding:
                listed = "; ".join(f.line() for f in findings) or "nothing"
                problems.append(
                    f"after '{stage.title}' the diagnosis should name {stage.finding} first; it says: {listed}"
                )
    finally:
        entry.fix(mesh, saved)
    for pair in mesh.spec.pairs():
        _, seen = observe(
            mesh, Expect(pair.source, pair.destination, frozenset({Symptom.OK})), suite_options.steady_calls
        )
        if seen:
            problems.append(f"after the fix: {seen}")
    if entry.healed is not None:
        shown, seen = entry.healed(mesh)
        observed(f"after the fix: {shown}")
        if seen:
            problems.append(f"after the fix: {seen}")
    # A healed mesh settles within the convergence deadline: e.g. a remote's proxies that lost their istiod
    # reconnect with pilot-agent's backoff (seen on the host backend after loopback-remote-secret's fix).
    settle = time.monotonic() + mesh.convergence_deadline
    while (errors := [f.line() for f in diagnose(mesh) if f.status == "error"]) and time.monotonic() < settle:
        time.sleep(2)
    if errors:
        problems.append(f"after the fix the diagnosis still says: {'; '.join(errors)}")
    require(not problems, f"{entry.name}: " + " | ".join(problems))
