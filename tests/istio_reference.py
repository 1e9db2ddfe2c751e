"""Istio's own artefacts that tests compare meshfed with, read where they are, never copied into this project.

First the Istio source the host backend builds (Go's module cache holds the whole ``istio.io/istio``
module: its ``samples/`` and istioctl's test data; ``.ci/run`` builds before it tests), else the reference
folder beside this project (``../shared/reference/istio``). A test that finds neither is skipped with
the reason, as in a user's clone where nothing was built.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parent.parent.parent / "shared" / "reference" / "istio"
GEN_EASTWEST = "samples/multicluster/gen-eastwest-gateway.sh"
# name -> where the Istio module has it (a path, or the sample script's arguments that print it)
IN_ISTIO: dict[str, str | tuple[str, ...]] = {
    "expose-services.yaml": "samples/multicluster/expose-services.yaml",
    "expose-istiod.yaml": "samples/multicluster/expose-istiod.yaml",
    "eastwest-gateway-network1.iop.yaml": ("--network", "network1"),
    "eastwest-gateway-network1-rev.iop.yaml": ("--network", "network1", "--revision", "1-30-3"),
    "envoy-secrets-config-dump.json": "istioctl/pkg/writer/envoy/configdump/testdata/secret/istio/config_dump.json",
    "istioctl-proxy-config-secret.txt": "istioctl/pkg/writer/envoy/configdump/testdata/secret/istio/output",
    "envoy-clusters-config-dump.json": "istioctl/pkg/describe/testdata/describe/http_config.json",
}


def istio_module() -> Path | None:
    """The newest ``istio.io/istio`` module in Go's module cache that has its samples, if any."""
    cache = os.environ.get("GOMODCACHE") or str(Path(os.environ.get("GOPATH") or Path.home() / "go") / "pkg" / "mod")
    found = sorted(p for p in (Path(cache) / "istio.io").glob("istio@*") if (p / GEN_EASTWEST).is_file())
    return found[-1] if found else None


def reference(name: str) -> str:
    """The text of Istio's artefact ``name`` (a key of :data:`IN_ISTIO`), or a skip saying why there is none."""
    module, where = istio_module(), IN_ISTIO[name]
    if module is not None:
        if isinstance(where, str):
            return (module / where).read_text()
        printed = subprocess.run(
            ["bash", str(module / GEN_EASTWEST), *where], capture_output=True, text=True, check=True, timeout=30
        )
        return printed.stdout
    if (SHARED / name).is_file():
        return (SHARED / name).read_text()
    pytest.skip(
        f"Istio's {name} is not here: neither an Istio module in Go's module cache (`meshfed binaries build` "
        f"fetches it) nor {SHARED}"
    )
