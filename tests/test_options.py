"""The suite's options: every bad value is refused with one sentence and a non-zero exit."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from meshfed import manifests
from meshfed.options import OptionError, SuiteOptions, host_prefix
from meshfed.topology import MeshSpec, Topology

ROOT = Path(__file__).resolve().parent.parent


def pytest_run(*args: str) -> subprocess.CompletedProcess[str]:
    """Run pytest on an empty folder with the project's conftest, as a user would."""
    return subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", "conformance", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )


@pytest.mark.parametrize(
    ("args", "sentence"),
    [
        (
            ["--backend", "docker"],
            "argument --backend: invalid choice: 'docker' (choose from",
        ),
        (
            ["--topology", "mesh"],
            "argument --topology: invalid choice: 'mesh' (choose from",
        ),
        (["--clusters", "1"], "argument --clusters: 1 clusters is out of range: give 2 to 26"),
        (["--clusters", "two"], "argument --clusters: 'two' is not a number: give 2 to 26 clusters"),
        (["--context", "kind-a"], "argument --context: 'kind-a' is not NAME=KUBECONTEXT"),
        (["--istio-version", "latest"], "argument --istio-version: 'latest' is not an Istio version"),
        (["--backend", "existing"], "the existing backend needs one --context NAME=KUBECONTEXT per cluster"),
        (["--context", "cluster-a=x"], "--context is for the existing backend only"),
        (
            ["--backend", "existing", "--context", "cluster-a=x", "--context", "cluster-a=y"],
            "--context names cluster 'cluster-a' twice",
        ),
        (["--cacerts-dir", "/nonexistent"], "--cacerts-dir /nonexistent is not a folder"),
        (["--features", "Teleport"], "argument --features: unknown feature 'Teleport': use one of"),
    ],
)
def test_bad_option_is_one_sentence(args: list[str], sentence: str) -> None:
    result = pytest_run(*args)
    assert result.returncode in (2, 4), result.stdout
    assert sentence in result.stderr
    assert "Traceback" not in result.stderr


def test_cacerts_dir_needs_a_folder_per_cluster(tmp_path: Path) -> None:
    (tmp_path / "cluster-a").mkdir()
    result = pytest_run("--cacerts-dir", str(tmp_path), "--clusters", "3")
    assert result.returncode == 4
    assert f"--cacerts-dir {tmp_path} has no sub-folder for cluster-b, cluster-c" in result.stderr


def test_good_options_are_accepted() -> None:
    result = pytest_run("--topology", "primary-remote", "--clusters", "3")
    assert result.returncode in (0, 5), result.stderr  # 5: no case collected yet


def _values(**overrides: object) -> SuiteOptions:
    defaults: dict[str, object] = {
        "meshfed_backend": "embedded",
        "meshfed_topology": "multi-primary",
        "meshfed_clusters": 2,
        "meshfed_context": None,
        "meshfed_istio_version": "1.30.3",
        "meshfed_cacerts_dir": None,
        "meshfed_keep_clusters": False,
        "meshfed_allow_destructive": False,
        "meshfed_report_dir": Path("reports"),
        "meshfed_upgrade_to": None,
        "meshfed_workload_image": None,
        "meshfed_node_image": None,
        "meshfed_istio_hub": None,
        "meshfed_istio_tag": None,
        "meshfed_bin_dir": None,
        "meshfed_envoy": None,
        "meshfed_host_prefix": "meshfed",
        "meshfed_istio_namespace": None,
        "meshfed_external_context": None,
        "meshfed_revision": None,
        "meshfed_istioctl": None,
        "meshfed_kubectl": None,
        "meshfed_profile": None,
        "meshfed_features": None,
        "meshfed_exempt_features": None,
        "meshfed_steady_calls": 50,
        "meshfed_inject_fault": None,
        "meshfed_impl_organization": "",
        "meshfed_impl_project": "",
        "meshfed_impl_version": "",
        "meshfed_impl_contact": "",
    }
    defaults.update(overrides)
    return SuiteOptions.from_values(defaults.__getitem__)


def test_default_mesh_names_networks_and_regions() -> None:
    spec = _values(meshfed_topology="primary-remote", meshfed_clusters=3).mesh_spec()
    assert spec.names == ("cluster-a", "cluster-b", "cluster-c")
    assert [c.network for c in spec.clusters] == ["network-a", "network-b", "network-c"]
    assert [c.region for c in spec.clusters] == ["region-a", "region-b", "region-c"]
    assert [c.role for c in spec.clusters] == ["primary", "remote", "remote"]
    assert (spec.mesh_id, spec.trust_domain) == ("mesh1", "cluster.local")


def test_existing_clusters_keep_the_names_given() -> None:
    options = _values(meshfed_backend="existing", meshfed_context=[("east", "ctx-1"), ("west", "ctx-2")])
    assert options.mesh_spec().names == ("east", "west")
    assert dict(options.contexts) == {"east": "ctx-1", "west": "ctx-2"}


def test_ordered_pairs() -> None:
    assert [p.id for p in MeshSpec.default(Topology.MULTI_PRIMARY, 2).pairs()] == [
        "cluster-a->cluster-b",
        "cluster-b->cluster-a",
    ]
    assert len(list(MeshSpec.default(Topology.MULTI_PRIMARY, 3).pairs())) == 6


@pytest.mark.parametrize(
    ("overrides", "sentence"),
    [
        ({"meshfed_upgrade_to": "1.31.0"}, r"^--upgrade-to is for the kind or host backend; drop it, or choose"),
        (
            {"meshfed_backend": "kind", "meshfed_upgrade_to": "v0.0.0-20260423205519-b01690e6db7d"},
            r"^v0\.0\.0-20260423205519-b01690e6db7d is a commit of istio\.io/istio, which only the host backend builds",
        ),
        (
            {"meshfed_backend": "kind", "meshfed_istio_namespace": "aks-istio-system"},
            r"^--istio-namespace is for the existing backend",
        ),
        ({"meshfed_workload_image": "python:3"}, r"^--workload-image is for the kind or existing backend"),
        (
            {"meshfed_backend": "host", "meshfed_node_image": "kindest/node:v1.34.3"},
            r"^--node-image is for the kind backend",
        ),
        ({"meshfed_istio_hub": "registry.corp/istio"}, r"^--istio-hub is for the kind backend"),
        ({"meshfed_istio_tag": "1.30.3-corp"}, r"^--istio-tag is for the kind backend"),
        (
            {
                "meshfed_backend": "existing",
                "meshfed_context": [("a", "x"), ("b", "y")],
                "meshfed_cacerts_dir": Path("."),
            },
            r"^--cacerts-dir is for the embedded or kind or host backend",
        ),
    ],
)
def test_options_of_another_backend_are_refused(overrides: dict[str, object], sentence: str) -> None:
    with pytest.raises(OptionError, match=sentence):
        _values(**overrides)


def test_the_workload_image_reaches_every_workload() -> None:
    spec = _values(meshfed_backend="kind", meshfed_workload_image="registry.local/python:3.12").mesh_spec()
    deployments = [o for o in manifests.workloads(spec.clusters[0], spec) if o["kind"] == "Deployment"]
    assert deployments and all(
        c["image"] == "registry.local/python:3.12"
        for d in deployments
        for c in d["spec"]["template"]["spec"]["containers"]
    )


@pytest.mark.parametrize("flag", ["meshfed_bin_dir", "meshfed_envoy"])
def test_host_options_are_refused_elsewhere(flag: str) -> None:
    with pytest.raises(
        OptionError, match=f"--{flag.removeprefix('meshfed_').replace('_', '-')} is for the host backend"
    ):
        _values(**{flag: Path("/opt/istio/out")})
    assert getattr(_values(meshfed_backend="host", **{flag: Path("/x")}), flag.removeprefix("meshfed_")) == Path("/x")


def test_a_host_prefix_is_a_short_name_for_the_host_backend() -> None:
    with pytest.raises(OptionError, match="--host-prefix is for the host backend"):
        _values(meshfed_host_prefix="ci2")
    assert _values(meshfed_backend="host", meshfed_host_prefix="ci2").host_prefix == "ci2"
    for bad in ("CI", "ci-2", "2ci", "averylongname"):
        with pytest.raises(argparse.ArgumentTypeError, match="is not a host mesh name: give 1 to 8 lower-case"):
            host_prefix(bad)
