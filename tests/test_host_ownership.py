"""Host meshes side by side: a live run's clusters are held by the kernel's lock and never taken over; each
host mesh has its own names and network. (The whole thing on real clusters runs in CI: tests/side_by_side.py.)"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from meshfed.backends.base import BackendError
from meshfed.backends.host import backend as host_backend
from meshfed.backends.host import network
from meshfed.backends.host.instance import HostInstance

HOLDER = """
import sys, time
from pathlib import Path
from meshfed.backends.host.instance import HostInstance
HostInstance(sys.argv[1], Path(sys.argv[2])).hold("pytest conformance/ --backend host")
print("held", flush=True)
time.sleep(120)
"""


def _held_by_another_process(prefix: str, cache: Path) -> subprocess.Popen[str]:
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, prefix, str(cache)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    return holder


def test_a_live_runs_mesh_is_refused_and_a_dead_ones_is_free(tmp_path: Path) -> None:
    holder = _held_by_another_process("meshfed", tmp_path)
    instance = HostInstance("meshfed", tmp_path)
    try:
        owner = instance.owner()
        assert owner is not None and owner.pid == holder.pid
        with pytest.raises(BackendError) as refused:
            instance.hold()
        said = str(refused.value)
        assert said.startswith("the host clusters of host mesh meshfed belong to a live run, ")
        assert f"PID {holder.pid} (`pytest conformance/ --backend host`), since " in said
        assert said.endswith("wait for it to end or stop it, or give this run another --host-prefix")
        HostInstance("ci2", tmp_path).hold().release()  # another host mesh is free all the same
    finally:
        holder.kill()
        holder.wait()
    assert instance.owner() is None  # the kernel released it with the process, no PID file to clean
    instance.hold().release()


def test_a_host_up_mesh_is_refused_with_host_down(tmp_path: Path) -> None:
    instance = HostInstance("ci2", tmp_path)
    hold = instance.hold("meshfed host up")
    instance.record(4242, "meshfed host up (its LoadBalancer controller, which keeps the clusters)")
    try:
        with pytest.raises(BackendError, match=r"PID 4242 .*: remove them with `meshfed host down --host-prefix ci2`"):
            HostInstance("ci2", tmp_path).hold()
    finally:
        hold.release()


def test_a_second_run_refuses_before_it_touches_the_first_runs_clusters(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The bug this guards: a second run removed a live run's clusters as "what an earlier run left" and
    built new ones under the same names, and the first run went on certifying a mesh it had not built."""
    from meshfed.topology import MeshSpec, Topology

    touched: list[str] = []
    monkeypatch.setattr(host_backend, "preflight", lambda: None)
    monkeypatch.setattr(host_backend.HostBackend, "build", lambda self, cache, progress: _FakeBuild())
    monkeypatch.setattr(host_backend, "clean_leftovers", lambda *args: touched.append("clean_leftovers"))
    monkeypatch.setattr(host_backend, "start_nodes", lambda *args: touched.append("start_nodes"))
    monkeypatch.setattr(host_backend, "kept_state", lambda *args: touched.append("kept_state") or "none")
    holder = _held_by_another_process("meshfed", tmp_path / "host")
    try:
        with pytest.raises(BackendError, match=f"belong to a live run, PID {holder.pid}"):
            host_backend.HostBackend("1.30.3", cache=tmp_path).provision(
                MeshSpec.default(Topology.MULTI_PRIMARY, 2), {}
            )
    finally:
        holder.kill()
        holder.wait()
    assert touched == []


class _FakeBuild:
    class bins:
        istio = "1.30.3"

    canary = None
    tag = "1.30.3"
    canary_tag = ""


def test_each_host_mesh_gets_its_own_network_slot(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    routes = "default via 192.0.2.1 dev eth0\n10.250.1.0/24 dev docker7 proto kernel scope link\n"
    monkeypatch.setattr(network, "_ip", lambda args, what, ok_if="": routes)
    first = HostInstance("meshfed", tmp_path).network()
    second = HostInstance("ci2", tmp_path).network()
    assert (first.slot, second.slot) == (0, 2)  # 10.250.1.0/24 is routed elsewhere on this host
    assert HostInstance("ci2", tmp_path).network() == second  # kept while the mesh is there
    assert (second.bridge, str(second.subnet), str(second.gateway)) == ("ci20", "10.250.2.0/24", "10.250.2.1")
    node = network.NodeNetwork("cluster-a", 0, second)
    assert (node.netns, node.host_veth, node.address) == ("ci2-cluster-a", "ci2-0", "10.250.2.10")
    assert all(address.startswith("10.250.2.") for address in node.lb_addresses)
    HostInstance("meshfed", tmp_path).forget()
    assert HostInstance("ci3", tmp_path).network().slot == 0  # freed when its mesh went


def test_an_interface_that_is_not_the_meshs_bridge_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    answers = {"-d": "2: eth0: <BROADCAST,UP> mtu 1500 link/ether 52:54:00:12:34:56\n", "-4": ""}
    monkeypatch.setattr(network, "_ip", lambda args, what, ok_if="": answers.get(args[0], ""))
    with pytest.raises(BackendError, match="has an interface eth0 that is not host mesh eth's bridge"):
        network.SharedNetwork("eth", 3).ensure()


def test_host_clean_refuses_a_live_mesh_unless_forced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from meshfed.backends.host import node
    from meshfed.cli import main

    monkeypatch.setenv("MESHFED_CACHE", str(tmp_path))
    monkeypatch.setattr(network, "_ip", lambda args, what, ok_if="": "")
    removed: list[str] = []
    monkeypatch.setattr(node, "clean_leftovers", lambda clusters, shared, progress: removed.append(shared.prefix))
    holder = _held_by_another_process("ci2", tmp_path / "host")
    try:
        assert main(["host", "clean"]) == 2
        assert removed == ["meshfed"]  # the dead one only
        said = capsys.readouterr().err
        assert f"host mesh ci2 belong to a live run, PID {holder.pid}" in said and "(--force removes them" in said
        assert main(["host", "clean", "--host-prefix", "ci2", "--force"]) == 0
        assert removed == ["meshfed", "ci2"]
    finally:
        holder.kill()
        holder.wait()
