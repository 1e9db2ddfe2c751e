"""`meshfed pki init` and `meshfed pki verify`, as a user runs them."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from meshfed.cli import main
from meshfed.pki import create_mesh_pki, fingerprint, load_certs


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "meshfed.cli", *args], capture_output=True, text=True, check=False)


@pytest.fixture
def mesh_dir(tmp_path: Path) -> Path:
    out = tmp_path / "pki"
    assert main(["pki", "init", "--out", str(out), "--clusters", "cluster-a,cluster-b", "--key-type", "ecdsa"]) == 0
    return out


def test_init_writes_the_layout_with_private_keys_0600(mesh_dir: Path) -> None:
    assert stat.S_IMODE((mesh_dir / "root-key.pem").stat().st_mode) == 0o600
    for cluster in ("cluster-a", "cluster-b"):
        assert sorted(p.name for p in (mesh_dir / cluster).iterdir()) == [
            "ca-cert.pem",
            "ca-key.pem",
            "cert-chain.pem",
            "root-cert.pem",
        ]
        assert stat.S_IMODE((mesh_dir / cluster / "ca-key.pem").stat().st_mode) == 0o600


def test_init_prints_no_private_key(tmp_path: Path) -> None:
    result = run("pki", "init", "--out", str(tmp_path / "p"), "--clusters", "c1", "--key-type", "ecdsa")
    assert result.returncode == 0
    root = load_certs((tmp_path / "p" / "root-cert.pem").read_bytes(), "root")[0]
    assert fingerprint(root) in result.stdout
    assert "PRIVATE KEY" not in result.stdout + result.stderr


def test_init_refuses_to_overwrite_without_force(mesh_dir: Path) -> None:
    before = (mesh_dir / "root-cert.pem").read_bytes()
    result = run("pki", "init", "--out", str(mesh_dir), "--clusters", "cluster-a", "--key-type", "ecdsa")
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"meshfed: {mesh_dir / 'root-cert.pem'} already exists: pick another --out folder, or add --force to "
        "overwrite 6 existing file(s)"
    )
    assert (mesh_dir / "root-cert.pem").read_bytes() == before
    forced = run("pki", "init", "--out", str(mesh_dir), "--clusters", "cluster-a", "--key-type", "ecdsa", "--force")
    assert forced.returncode == 0 and (mesh_dir / "root-cert.pem").read_bytes() != before


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--clusters", "Cluster_A"], "'Cluster_A' is not a valid cluster name"),
        (["--clusters", "a,a"], "names a cluster twice"),
        (["--clusters", "a", "--key-type", "dsa"], "argument --key-type: invalid choice: 'dsa' (choose from"),
        (["--clusters", "a", "--days", "0"], "'0' is not a number of days"),
        (["--clusters", "a", "--days", "4000"], "--days 4000 outlives --root-days 3650"),
    ],
)
def test_init_bad_input_gets_one_sentence(tmp_path: Path, args: list[str], message: str) -> None:
    result = run("pki", "init", "--out", str(tmp_path / "p"), *args)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_verify_table_for_a_healthy_mesh(mesh_dir: Path) -> None:
    result = run("pki", "verify", str(mesh_dir / "cluster-a"), str(mesh_dir / "cluster-b"))
    assert result.returncode == 0, result.stdout
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["CLUSTER", "ROOT", "SHA-256", "INTERMEDIATE", "EXPIRES", "VERDICT"]
    root = load_certs((mesh_dir / "root-cert.pem").read_bytes(), "root")[0]
    for line, cluster in zip(lines[1:], ("cluster-a", "cluster-b"), strict=True):
        assert line.startswith(cluster) and fingerprint(root) in line and f"L={cluster}" in line
        assert line.endswith("ok")


def test_verify_json(mesh_dir: Path) -> None:
    result = run("pki", "verify", "-o", "json", str(mesh_dir / "cluster-a"), str(mesh_dir / "cluster-b"))
    document = json.loads(result.stdout)
    assert document["ok"] is True and document["problems"] == []
    assert [c["cluster"] for c in document["clusters"]] == ["cluster-a", "cluster-b"]
    assert document["clusters"][0]["rootFingerprint"] == document["clusters"][1]["rootFingerprint"]
    assert document["clusters"][0]["verdict"] == "ok"


def test_verify_names_a_second_root(mesh_dir: Path, tmp_path: Path) -> None:
    create_mesh_pki(["cluster-b"], key_type="ecdsa").write(tmp_path / "other")
    result = run("pki", "verify", "-o", "json", str(mesh_dir / "cluster-a"), str(tmp_path / "other" / "cluster-b"))
    assert result.returncode == 1
    document = json.loads(result.stdout)
    assert document["ok"] is False
    [problem] = document["problems"]
    assert problem.startswith("cluster-b: root-cert.pem: this cluster's root ")
    assert problem.endswith("with that root in root-cert.pem.")
    assert document["clusters"][1]["verdict"] == "error"


def test_verify_reports_every_problem_in_a_sentence(mesh_dir: Path) -> None:
    (mesh_dir / "cluster-b" / "ca-key.pem").write_bytes((mesh_dir / "cluster-a" / "ca-key.pem").read_bytes())
    (mesh_dir / "cluster-b" / "cert-chain.pem").unlink()
    result = run("pki", "verify", str(mesh_dir / "cluster-a"), str(mesh_dir / "cluster-b"))
    assert result.returncode == 1
    problems = [line for line in result.stdout.splitlines() if line.startswith("cluster-b: ")]
    assert problems[0].startswith("cluster-b: cert-chain.pem: missing: an incomplete bundle makes istiod refuse")
    assert problems[1].startswith("cluster-b: ca-key.pem: is not the private key of ca-cert.pem")
    assert "PRIVATE KEY" not in result.stdout


def test_verify_missing_folder_is_one_sentence(tmp_path: Path) -> None:
    result = run("pki", "verify", str(tmp_path / "nope"))
    assert result.returncode == 2
    assert result.stderr.strip().startswith(f"meshfed: {tmp_path / 'nope'} is not a folder: give a folder that holds")
    assert result.stderr.count("\n") == 1


def test_console_script_is_installed() -> None:
    result = subprocess.run(
        [str(Path(sys.executable).parent / "meshfed"), "pki", "--help"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0 and "verify" in result.stdout
