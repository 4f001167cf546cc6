from __future__ import annotations

import socket
import sys
from pathlib import Path

import pytest

from imagegate.errors import StartError
from imagegate.testbed import processes
from imagegate.testbed.controlplane import ControlPlane, ControlPlaneBinaries


def test_a_process_that_dies_reports_its_status_and_log_tail(tmp_path: Path) -> None:
    proc = processes.ManagedProcess(
        "etcd", ["sh", "-c", "echo 'bind: address already in use' >&2; exit 3"], tmp_path / "x.log"
    )
    proc.start()
    with pytest.raises(StartError) as caught:
        proc.wait_until(lambda: False, timeout=10, what="healthy")
    message = caught.value.user_message
    assert message.startswith("etcd exited with status 3 before it was healthy")
    assert "bind: address already in use" in message


def test_a_process_that_never_gets_ready_times_out_and_is_stopped(tmp_path: Path) -> None:
    proc = processes.ManagedProcess("slow", ["sleep", "60"], tmp_path / "slow.log")
    proc.start()
    with pytest.raises(StartError, match=r"slow was not ready within 0s"):
        proc.wait_until(lambda: False, timeout=0.3, what="ready")
    proc.stop(timeout=5)
    assert proc.exit_code() is not None


def test_stop_kills_the_whole_process_group(tmp_path: Path) -> None:
    pidfile = tmp_path / "child.pid"
    script = f"sleep 60 & echo $! > {pidfile}; wait"
    proc = processes.ManagedProcess("parent", ["sh", "-c", script], tmp_path / "p.log")
    proc.start()
    proc.wait_until(pidfile.exists, timeout=10, what="forked")
    proc.wait_until(lambda: pidfile.read_text().strip() != "", timeout=10, what="forked")
    child = int(pidfile.read_text())
    proc.stop(timeout=5)
    # Not `kill(child, 0)`: the orphaned child may linger as a zombie if nothing reaps it here.
    assert not processes.alive(child)


def test_a_missing_binary_is_a_start_error(tmp_path: Path) -> None:
    proc = processes.ManagedProcess("ghost", [str(tmp_path / "nope")], tmp_path / "g.log")
    with pytest.raises(StartError, match="ghost could not be executed"):
        proc.start()


def test_a_fixed_apiserver_port_in_use_is_one_clear_line(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        plane = ControlPlane(
            ControlPlaneBinaries(Path(sys.executable), Path(sys.executable), None), tmp_path
        )
        with pytest.raises(StartError) as caught:
            plane.start(apiserver_port=port)
    assert caught.value.user_message.startswith(f"port {port} on 127.0.0.1 is in use")
    assert "\n" not in caught.value.user_message


def test_kubebuilder_assets_are_honoured(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("etcd", "kube-apiserver", "kubectl"):
        (tmp_path / name).write_text("#!/bin/sh\n")
        (tmp_path / name).chmod(0o755)
    monkeypatch.setenv("KUBEBUILDER_ASSETS", str(tmp_path))
    binaries = ControlPlaneBinaries.resolve()
    assert binaries.etcd == tmp_path / "etcd"
    assert binaries.kube_apiserver == tmp_path / "kube-apiserver"
    assert binaries.kubectl == tmp_path / "kubectl"


def test_a_kubebuilder_assets_dir_without_the_binaries_is_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from imagegate.errors import TestbedError

    monkeypatch.setenv("KUBEBUILDER_ASSETS", str(tmp_path))
    with pytest.raises(TestbedError, match=r"KUBEBUILDER_ASSETS names .*etcd, which is not"):
        ControlPlaneBinaries.resolve()
