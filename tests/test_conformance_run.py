"""The conformance suite as a user runs it: outcomes, messages and the three reports."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml

from meshfed.cli import main as meshfed

ROOT = Path(__file__).resolve().parent.parent


def run_suite(report_dir: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    command = [
        sys.executable,
        "-m",
        "pytest",
        "conformance/",
        "-q",
        "-p",
        "no:cacheprovider",
        "--report-dir",
        str(report_dir),
        *args,
    ]
    environment = {**os.environ, **(env or {})}
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600, check=False, env=environment)


def junit_cases(report_dir: Path) -> dict[str, ET.Element]:
    tree = ET.parse(report_dir / "junit.xml")
    return {case.get("name", ""): case for case in tree.iter("testcase")}


def properties(case: ET.Element) -> dict[str, str]:
    return {p.get("name", ""): p.get("value", "") for p in case.iter("property")}


# Each topology's extended profile on a healthy embedded mesh: passed, not applicable, not supported. The
# misconfigurations that cannot happen in a topology are not applicable, which is no limit of the mesh:
# multi-primary has no remote (four entries need one) and no external control plane (its own five);
# primary-remote has a single istiod (four) and no external control plane; an external control plane has a
# single istiod and no primary (six), and one procedure meshfed does not run on it (CanaryUpgrade: Istio
# documents none), so its extended profile is partial.
EXTENDED = {
    "multi-primary": (15, 9, [], "success"),
    "primary-remote": (15, 9, [], "success"),
    "external-control-plane": (17, 6, ["CanaryUpgrade"], "partial"),
}


@pytest.mark.slow
@pytest.mark.parametrize("topology", list(EXTENDED))
def test_a_healthy_mesh_passes_the_core_profile(tmp_path: Path, topology: str) -> None:
    result = run_suite(tmp_path, "--topology", topology)
    assert result.returncode == 0, result.stdout[-3000:]
    report = yaml.safe_load((tmp_path / "conformance-report.yaml").read_text())
    assert (report["apiVersion"], report["kind"]) == ("meshfed.dev/v1alpha1", "ConformanceReport")
    assert (report["backend"], report["topology"], report["certifiesIstio"]) == ("embedded", topology, False)
    core = report["profiles"][0]
    assert (core["name"], core["result"]) == ("core", "success")
    assert core["statistics"] == {"passed": 11, "failed": 0, "skipped": 0, "not-supported": 0, "not-applicable": 0}
    extended = report["profiles"][1]
    passed, not_applicable, not_supported, result = EXTENDED[topology]
    assert extended["result"] == result
    assert extended["statistics"]["passed"] == passed
    assert sorted(t["name"] for t in extended["notSupportedTests"]) == not_supported
    assert len(extended["notApplicableTests"]) == not_applicable
    assert all(t["reason"].startswith(f"{topology}: ") for t in extended["notApplicableTests"])
    cases = junit_cases(tmp_path)
    reach = properties(cases["test_cross_cluster_reachability[cluster-a->cluster-b]"])
    calls = {name: int(reach.pop(name)) for name in ("callsMade", "callsFailed", "steadyCalls", "steadyFailed")}
    assert reach == {
        "case": "CrossClusterReachability",
        "profile": "core",
        "features": "CrossClusterCalls",
        "pair": "cluster-a->cluster-b",
    }
    # Two steady windows of 50 (cross-cluster and same-cluster), after at least 3 converging calls each.
    assert calls["steadyCalls"] == 100 and calls["steadyFailed"] == 0 and calls["callsMade"] >= 106
    page = (tmp_path / "report.html").read_text()
    assert "<svg" in page and "it certifies no Istio installation" in page and "cross cluster" in page
    # Every case is listed with its time, and a misconfiguration with what its calls and the diagnosis showed.
    listed = {case["name"]: case for case in report["cases"]}
    assert len(listed) == len(cases) and all(case["seconds"] >= 0 for case in listed.values())
    assert sum(case["seconds"] for case in listed.values() if case["outcome"] == "passed") > 1
    # A case's seconds are JUnit's time: setup, call and teardown (the first case's setup made the mesh).
    junit_seconds = sum(float(case.get("time") or 0) for case in cases.values())
    assert abs(sum(case["seconds"] for case in listed.values()) - junit_seconds) < 0.1 * junit_seconds + 0.5
    # The report leads with the verdict, whether it certifies Istio and what ran; the PKI it was given.
    assert list(report)[:9] == [
        "apiVersion",
        "kind",
        "date",
        "suiteVersion",
        "verdict",
        "certifiesIstio",
        "backend",
        "topology",
        "istioVersion",
    ]
    assert report["verdict"] == {"core": "success", "extended": result} and report["istioVersion"] is None
    assert report["pki"]["source"].startswith("generated by meshfed for this run")
    # One CA per istiod: every cluster's, or the external control plane's only.
    assert sorted(report["pki"]["rootFingerprints"]) == (
        ["external"] if topology == "external-control-plane" else ["cluster-a", "cluster-b"]
    )
    assert len(set(report["pki"]["rootFingerprints"].values())) == 1  # one root
    assert report["provisioningSeconds"] > 0 and "implementation" not in report
    assert "remote secret deleted: cluster-a->cluster-b: no healthy upstream" in " ".join(
        listed["MisconfigurationRegression[missing-remote-secret]"]["observed"]
    )
    # The report and the JUnit file of one run read the same: verdicts and symptoms agree in every case.
    assert meshfed(["report", "compare", str(tmp_path / "junit.xml"), str(tmp_path / "conformance-report.yaml")]) == 0


@pytest.mark.slow
def test_a_second_root_ca_fails_with_the_cause_named(tmp_path: Path) -> None:
    certs = tmp_path / "certs"
    assert meshfed(["pki", "init", "--out", str(certs), "--clusters", "cluster-a", "--key-type", "ecdsa"]) == 0
    assert (
        meshfed(["pki", "init", "--out", str(tmp_path / "other"), "--clusters", "cluster-b", "--key-type", "ecdsa"])
        == 0
    )
    (tmp_path / "other" / "cluster-b").rename(certs / "cluster-b")
    result = run_suite(
        tmp_path / "reports", "--cacerts-dir", str(certs), "--exempt-features", "MisconfigurationRegression"
    )
    assert result.returncode == 1
    report = yaml.safe_load((tmp_path / "reports" / "conformance-report.yaml").read_text())
    failed = report["profiles"][0]["failedTests"]
    assert "SharedRootOfTrust" in failed and "CrossClusterReachability[cluster-a->cluster-b]" in failed
    cases = junit_cases(tmp_path / "reports")
    shared = cases["test_shared_root_of_trust"].find("failure")
    assert shared is not None and "root-cert.pem differs: cluster-a SHA256" in (shared.get("message") or "")
    reach = cases["test_cross_cluster_reachability[cluster-b->cluster-a]"].find("failure")
    message = reach.get("message") if reach is not None else ""
    assert "failed: connection failure (never converged); likely cause: root-cert.pem differs" in (message or "")


@pytest.mark.slow
def test_a_misdirected_remote_leaves_the_other_remotes_connected(tmp_path: Path) -> None:
    # Primary-remote with two remotes: the entries cut off every remote (istiod not exposed) or the one misdirected
    # (cluster-c), while cluster-b's proxies stay connected, as real Istio showed at 3 clusters.
    result = run_suite(
        tmp_path,
        "--topology",
        "primary-remote",
        "--clusters",
        "3",
        "-k",
        "istiod-not-exposed or wrong-remote-pilot-address",
    )
    assert result.returncode == 0, result.stdout[-2000:]
    report = yaml.safe_load((tmp_path / "conformance-report.yaml").read_text())
    observed = {case["name"]: case.get("observed", []) for case in report["cases"]}
    assert any(
        line.endswith("the remotes' 8 ready proxies connected to no istiod")
        for line in observed["MisconfigurationRegression[istiod-not-exposed]"]
    )
    assert any(
        line.endswith("cluster-c: 4 ready proxies connected to no istiod, the other remotes' 4 connected to an istiod")
        for line in observed["MisconfigurationRegression[wrong-remote-pilot-address]"]
    )


def test_a_mesh_broken_from_the_start_fails_every_case_at_once_with_the_cause(tmp_path: Path) -> None:
    """A bundle without ca-key.pem keeps cluster-b's istiod from starting: no case waits out its deadline
    against it; each fails at once with the findings, the cause (cacerts-incomplete, the file) first."""
    certs = tmp_path / "certs"
    clusters = "cluster-a,cluster-b"
    assert meshfed(["pki", "init", "--out", str(certs), "--clusters", clusters, "--key-type", "ecdsa"]) == 0
    (certs / "cluster-b" / "ca-key.pem").unlink()
    started = time.monotonic()
    result = run_suite(tmp_path / "reports", "--cacerts-dir", str(certs))
    assert time.monotonic() - started < 120
    assert result.returncode == 1
    report = yaml.safe_load((tmp_path / "reports" / "conformance-report.yaml").read_text())
    first, *rest = report["brokenFromStart"]
    assert first.startswith("cluster-b: cacerts-incomplete: ca-key.pem: missing")
    assert any(line.startswith("cluster-b: istiod-not-ready: ") for line in rest)
    # Every case fails, but those that cannot happen in multi-primary: they do not apply, broken mesh or not.
    outcomes = {case["name"]: case["outcome"] for case in report["cases"]}
    assert len(outcomes) == 35 and sorted(outcomes.values()).count("failed") == 26
    assert {name for name, kind in outcomes.items() if kind == "not-applicable"} == {
        f"MisconfigurationRegression[{name}]"
        for name in (
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
    }
    assert report["verdict"] == {"core": "failure", "extended": "failure"}
    assert all(
        case["message"].startswith("the mesh is broken from the start: cluster-b: cacerts-incomplete")
        for case in report["cases"]
        if case["outcome"] == "failed"
    )
    page = (tmp_path / "reports" / "report.html").read_text()
    assert "The mesh was broken from the start" in page
    # The findings are said once, under the verdict; not again per profile, per case, under the matrix or in
    # each of the 26 failed rows (a chip's hover text aside).
    shown = re.sub(r"title='[^']*'", "", page)
    assert shown.count("cacerts-incomplete: ca-key.pem: missing") == 1
    assert (
        shown.count("the mesh is broken from the start (its findings are listed under the verdict)") == 3
    )  # core, extended, matrix
    assert page.count("the mesh is broken from the start: the findings are at the top of this report") == 26
    # JUnit: each failure says the sentence (not pytest's "failed on setup with ..."), and carries the
    # diagnosis; a misconfiguration names its entry, never as a cluster.
    cases = junit_cases(tmp_path / "reports")
    failures = [c.find("error") if c.find("error") is not None else c.find("failure") for c in cases.values()]
    messages = [f.get("message", "") for f in failures if f is not None]
    assert len(messages) == 26 and all(m.startswith("the mesh is broken from the start: ") for m in messages)
    failed = [properties(c) for c in cases.values() if c.find("skipped") is None]
    assert all(p["diagnosis"].startswith("error: cluster-b: cacerts-incomplete: ") for p in failed)
    entry = properties(cases["test_misconfiguration_regression[second-root-ca]"])
    assert entry["entry"] == "second-root-ca" and "cluster" not in entry


def test_a_provisioning_failure_still_writes_every_report(tmp_path: Path) -> None:
    # The kind backend, on a machine whose Docker daemon is stopped (the fake docker of tests/fakes).
    fakes = ROOT / "tests" / "fakes" / "bin"
    env = {
        "PATH": f"{fakes}{os.pathsep}{os.environ['PATH']}",
        "MESHFED_FAKE_PYTHON": sys.executable,
        "MESHFED_FAKE_DOCKER_DOWN": "1",
        "MESHFED_FAKE_LOG": str(tmp_path / "calls.jsonl"),
        "MESHFED_FAKE_STATE": str(tmp_path / "state"),
        # Wide enough that pytest's short summary never cuts the sentence (CI terminals differ in width).
        "COLUMNS": "400",
    }
    result = run_suite(tmp_path, "--backend", "kind", "--features", "SharedRootOfTrust,CrossClusterCalls", env=env)
    assert result.returncode == 1
    report = yaml.safe_load((tmp_path / "conformance-report.yaml").read_text())
    assert report["provisioningError"] == (
        "Docker is not reachable (Cannot connect to the Docker daemon at unix:///var/run/docker.sock. "
        "Is the docker daemon running?): start Docker (or Docker Desktop) and run again"
    )
    assert [profile["result"] for profile in report["profiles"]] == ["failure", "failure"]
    # Said once: the first case carries the error, every other one is "not run" with the same sentence.
    sentence = "not run: provisioning failed: " + report["provisioningError"]
    cases = list(junit_cases(tmp_path).values())
    errors = [case.find("error") for case in cases if case.find("error") is not None]
    skips = [case.find("skipped") for case in cases if case.find("skipped") is not None]
    assert len(errors) == 1 and sentence in (errors[0].get("message") or "")
    assert len(skips) == len(cases) - 1 and all(skip.get("message") == sentence for skip in skips)
    # In the terminal: first line, then the one erroring case (its section and pytest's summary line), no chain.
    lines = result.stdout.splitlines()
    assert lines[0] == "meshfed [kind] provisioning failed: " + report["provisioningError"]
    assert [line for line in lines if sentence in line] == [sentence, lines[-2]]
    assert lines[-2].startswith("ERROR conformance/test_core.py::") and result.stdout.count("ERROR at setup") == 1
    assert "During handling" not in result.stdout and "Traceback" not in result.stdout
    assert "Provisioning failed" in (tmp_path / "report.html").read_text()


def test_features_select_cases(tmp_path: Path) -> None:
    result = run_suite(tmp_path, "--features", "SharedRootOfTrust")
    assert result.returncode == 0
    assert list(junit_cases(tmp_path)) == ["test_shared_root_of_trust"]
    result = run_suite(
        tmp_path,
        "--exempt-features",
        "CrossClusterCalls,MutualTLS,Authorization,SpiffeIdentity,MeshWideLoadBalancing,MisconfigurationRegression,ControlPlaneOutage,LocalityFailover,CanaryUpgrade,RootRotation",
    )
    assert list(junit_cases(tmp_path)) == ["test_shared_root_of_trust"]


@pytest.mark.parametrize("profile", ["core", "extended"])
def test_profile_selects_the_cases_its_report_names(tmp_path: Path, profile: str) -> None:
    """``--profile`` selects by the profile each case's report says, and that profile agrees with the
    features: a case is extended exactly when it needs an extended feature (so --features and --profile agree)."""
    from meshfed.cases import EXTENDED, PROFILES

    result = run_suite(tmp_path, "--profile", profile, "--collect-only")
    assert result.returncode == 0, result.stdout + result.stderr
    collected = {line.split("::")[1].split("[")[0] for line in result.stdout.splitlines() if "::" in line}
    expected = {
        "core": {
            "test_cross_cluster_reachability",
            "test_mesh_wide_load_balancing",
            "test_cross_cluster_mutual_tls",
            "test_shared_root_of_trust",
            "test_spiffe_identity",
            "test_cross_cluster_authorization",
        },
        "extended": {
            "test_control_plane_outage",
            "test_locality_failover",
            "test_canary_upgrade",
            "test_root_rotation",
            "test_misconfiguration_regression",
        },
    }
    assert collected == expected[profile]
    assert PROFILES["extended"] == EXTENDED and not PROFILES["core"] & EXTENDED


def test_xdist_is_refused_with_a_sentence(tmp_path: Path) -> None:
    pytest.importorskip("xdist")
    result = run_suite(tmp_path, "-n", "2")
    assert result.returncode == 4
    assert "meshfed provisions one mesh per run and its cases change that mesh in turn: run without -n" in result.stderr


def test_a_failed_misconfiguration_entry_carries_the_diagnosis(tmp_path: Path) -> None:
    """An entry takes the mesh once it knows it applies (not as an argument): its failure is diagnosed all
    the same, and JUnit names it as an entry."""
    result = run_suite(tmp_path, "-k", "second-root-ca", "--inject-fault", "deny-test-namespace")
    assert result.returncode == 1, result.stdout[-2000:]
    case = junit_cases(tmp_path)["test_misconfiguration_regression[second-root-ca]"]
    found = properties(case)
    assert case.find("failure") is not None and found["entry"] == "second-root-ca"
    assert found["diagnosis"]  # the doctor's findings, or that it found nothing wrong
