"""Every case leaves the mesh as it found it: run alone, a case gets the verdict it gets in the whole suite,
on a healthy mesh and on a mesh given a second root (where RootRotation must put that root back, and each
misconfiguration's fix must restore what the user gave, not a healthy mesh)."""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

from meshfed.cli import main as meshfed

ROOT = Path(__file__).resolve().parent.parent
# The entries that cannot happen in multi-primary: those that need a remote, and the external control plane's own.
NOT_MULTI_PRIMARY = (
    "istiod-not-exposed",
    "wrong-remote-pilot-address",
    "missing-control-plane-clusters",
    "external-istiod-not-exposed",
    "missing-config-secret",
    "wrong-injection-path",
    "wrong-discovery-address",
    "gateway-certificate-wrong-name",
    "config-cluster-without-configcluster",
)


def _run(report_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--report-dir", str(report_dir), *args]
    return subprocess.run(
        command, cwd=ROOT, capture_output=True, text=True, timeout=900, check=False, env=dict(os.environ)
    )


def _verdicts(report_dir: Path) -> dict[str, str]:
    report = yaml.safe_load((report_dir / "conformance-report.yaml").read_text())
    return {case["name"]: case["outcome"] for case in report["cases"]}


def _second_root(folder: Path) -> Path:
    """Plug-in bundles where cluster-b's root is not cluster-a's (``meshfed pki init`` twice)."""
    assert meshfed(["pki", "init", "--out", str(folder), "--clusters", "cluster-a", "--key-type", "ecdsa"]) == 0
    other = folder.parent / "other"
    assert meshfed(["pki", "init", "--out", str(other), "--clusters", "cluster-b", "--key-type", "ecdsa"]) == 0
    (other / "cluster-b").rename(folder / "cluster-b")
    return folder


@pytest.mark.slow
@pytest.mark.parametrize("given", ["healthy", "second-root"])
def test_each_case_has_its_suite_verdict_when_run_alone(tmp_path: Path, given: str) -> None:
    mesh = ["--cacerts-dir", str(_second_root(tmp_path / "certs"))] if given == "second-root" else []
    collected = _run(tmp_path / "collect", "conformance/", "--collect-only", *mesh)
    node_ids = [line for line in collected.stdout.splitlines() if line.startswith("conformance/")]
    assert len(node_ids) == 35, collected.stdout
    whole = _run(tmp_path / "whole", "conformance/", *mesh)
    in_suite = _verdicts(tmp_path / "whole")
    assert len(in_suite) == 35, whole.stdout[-2000:]
    if given == "healthy":
        # Every case passes, but the misconfigurations that cannot happen in multi-primary: not applicable.
        own = {f"MisconfigurationRegression[{name}]" for name in NOT_MULTI_PRIMARY}
        assert {n: v for n, v in in_suite.items() if n not in own} == dict.fromkeys(set(in_suite) - own, "passed")
        assert {in_suite[n] for n in own} == {"not-applicable"}
    else:  # the second root breaks cross-cluster trust: the suite must see it, not heal it
        assert in_suite["SharedRootOfTrust"] == "failed" and "failed" in {
            in_suite[n] for n in in_suite if n.startswith("CrossClusterReachability")
        }

    def alone(index_and_id: tuple[int, str]) -> dict[str, str]:
        index, node_id = index_and_id
        _run(tmp_path / f"alone-{index}", node_id, *mesh)
        return _verdicts(tmp_path / f"alone-{index}")

    with ThreadPoolExecutor(max_workers=2) as pool:
        alone_verdicts = {
            name: outcome for found in pool.map(alone, enumerate(node_ids)) for name, outcome in found.items()
        }
    differing = {
        name: (in_suite[name], alone_verdicts.get(name))
        for name in in_suite
        if alone_verdicts.get(name) != in_suite[name]
    }
    assert not differing, f"in the suite vs alone: {differing}"
