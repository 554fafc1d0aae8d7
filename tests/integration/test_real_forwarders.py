"""Real forwarders, recognised for what they are: an ``ssh -L`` tunnel through a private
sshd, and QEMU user networking with ``hostfwd``. Each is started here, on 127.0.0.1 only,
and looked at twice: ``identify()`` on the process as /proc shows it, and ``portside who
PORT --json`` end to end (socket table -> owner -> identity)."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from portside.cli import main
from portside.identify import identify
from portside.processes import process_info
from tests.integration._components import (
    LOOPBACK,
    QemuVm,
    Sshd,
    SshTunnel,
    banner_server,
    qemu_with_hostfwd,
    read_through,
    running_sshd,
    ssh_tunnel,
)

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="reads /proc; Linux sshd/QEMU")

BANNER = b"portside-tunnel-target\n"


@pytest.fixture(scope="module")
def sshd() -> Iterator[Sshd]:
    with running_sshd() as server:
        yield server


@pytest.fixture(scope="module")
def target_port() -> Iterator[int]:
    with banner_server(BANNER) as port:
        yield port


@pytest.fixture
def tunnel(sshd: Sshd, target_port: int) -> Iterator[SshTunnel]:
    with ssh_tunnel(sshd, target_port) as running:
        yield running


def who(capsys: pytest.CaptureFixture[str], port: int) -> dict[str, Any]:
    code = main(["who", str(port), "--json"])
    out = capsys.readouterr().out
    assert code == 0, out
    document: dict[str, Any] = json.loads(out)
    assert document["kind"] == "who"
    assert document["port"] == port
    return document


def owners_listening(document: dict[str, Any], port: int, pid: int) -> list[dict[str, Any]]:
    """The owners with ``pid`` of the listening socket on 127.0.0.1:``port``."""
    return [
        owner
        for entry in document["sockets"]
        if entry["state"] == "listen" and entry["local"] == {"ip": LOOPBACK, "port": port}
        for owner in entry["owners"]
        if owner["process"]["pid"] == pid
    ]


# --------------------------------------------------------------------------- ssh -L


def test_the_tunnel_really_forwards_to_its_target(tunnel: SshTunnel) -> None:
    """The ground truth the identity must match: bytes sent to the tunnel's port arrive
    from the target server."""
    assert read_through(tunnel.listen_port, len(BANNER)) == BANNER


def test_the_ssh_process_is_identified_as_a_local_forward(tunnel: SshTunnel) -> None:
    info = process_info(tunnel.pid)
    assert info is not None
    assert info.name == "ssh"
    assert info.cmdline == tunnel.argv
    identity = identify(info, local_port=tunnel.listen_port)
    assert identity is not None
    assert identity.kind == "ssh-local-forward"
    assert identity.target == f"{LOOPBACK}:{tunnel.target_port}"


def test_the_sshd_is_identified_as_an_ssh_server(sshd: Sshd) -> None:
    info = process_info(sshd.pid)
    assert info is not None
    identity = identify(info, local_port=sshd.port)
    assert identity is not None
    assert identity.kind == "ssh-server"


def test_who_names_the_ssh_tunnel_and_its_target(
    capsys: pytest.CaptureFixture[str], tunnel: SshTunnel
) -> None:
    document = who(capsys, tunnel.listen_port)
    owners = owners_listening(document, tunnel.listen_port, tunnel.pid)
    assert len(owners) == 1, document
    assert owners[0]["process"]["name"] == "ssh"
    assert owners[0]["identity"]["kind"] == "ssh-local-forward"
    assert owners[0]["identity"]["target"] == f"{LOOPBACK}:{tunnel.target_port}"


# --------------------------------------------------------------------------- QEMU hostfwd


@pytest.fixture(params=[None, "portside-vm"], ids=["comm-cut-to-15", "comm-renamed"])
def vm(request: pytest.FixtureRequest) -> Iterator[QemuVm]:
    with qemu_with_hostfwd(guest_port=22, process_name=request.param) as running:
        yield running


def test_the_qemu_process_is_identified_as_a_host_forward(vm: QemuVm) -> None:
    info = process_info(vm.pid)
    assert info is not None
    assert info.cmdline == vm.argv
    # The comm is either cut to 15 characters or renamed by -name …,process=…; the
    # recogniser must not depend on it.
    assert info.name in ("qemu-system-x86", "portside-vm")
    identity = identify(info, local_port=vm.host_port)
    assert identity is not None
    assert identity.kind == "qemu-hostfwd"
    assert identity.target == f"guest:{vm.guest_port}"


def test_who_names_the_qemu_forward_and_the_guest_port(
    capsys: pytest.CaptureFixture[str], vm: QemuVm
) -> None:
    document = who(capsys, vm.host_port)
    owners = owners_listening(document, vm.host_port, vm.pid)
    assert len(owners) == 1, document
    assert owners[0]["identity"]["kind"] == "qemu-hostfwd"
    assert owners[0]["identity"]["target"] == f"guest:{vm.guest_port}"
