"""Hints are pure: table-tested over hand-made socket entries."""

import pytest

from portside.inspect import hints_for
from portside.models import (
    Endpoint,
    Exposure,
    Family,
    Identity,
    Owner,
    OwnerStatus,
    ProcessInfo,
    ProcessState,
    SocketEntry,
    SocketState,
    Transport,
)
from portside.ports import KernelPortSettings

KERNEL = KernelPortSettings(
    ephemeral_range=(32768, 60999), reserved_ports=frozenset(), unprivileged_port_start=1024
)


def process(state=ProcessState.SLEEPING, name="server"):
    return ProcessInfo(
        pid=10,
        ppid=1,
        name=name,
        cmdline=(name,),
        user="u",
        uid=1000,
        cwd="/",
        start_time=0.0,
        state=state,
    )


def listener(
    ip="127.0.0.1", port=8080, family=Family.IPV4, owners=(), rq=0, wq=128, status=OwnerStatus.FOUND
):
    from portside.addresses import exposure_of

    return SocketEntry(
        transport=Transport.TCP,
        family=family,
        state=SocketState.LISTEN,
        local=Endpoint(ip=ip, port=port),
        remote=None,
        uid=1000,
        inode=1,
        exposure=exposure_of(ip),
        recv_queue=rq,
        send_queue=wq,
        owners=owners,
        owner_status=status,
    )


def codes(entries, *, is_root=True):
    return [h.code for h in hints_for(entries, KERNEL, is_root=is_root)]


def test_a_healthy_loopback_listener_has_no_hints():
    assert codes([listener(owners=(Owner(process=process(), identity=None),))]) == []


def test_a_stopped_owner_is_hinted_with_the_fix():
    hints = hints_for(
        [listener(owners=(Owner(process=process(ProcessState.STOPPED), identity=None),))],
        KERNEL,
        is_root=True,
    )
    assert [h.code for h in hints] == ["owner-stopped"]
    assert hints[0].fix == "kill -CONT 10"


def test_a_full_accept_queue_is_hinted():
    assert codes([listener(rq=129, wq=128)]) == ["accept-queue-full"]
    assert codes([listener(rq=128, wq=128)]) == []


def test_an_ephemeral_port_listener_is_hinted():
    assert codes([listener(port=40000)]) == ["ephemeral-port-listener"]


def test_an_ipv6_only_loopback_listener_is_hinted_unless_ipv4_has_it_too():
    v6 = listener(ip="::1", family=Family.IPV6)
    assert codes([v6]) == ["ipv6-loopback-only"]
    assert codes([v6, listener()]) == []


@pytest.mark.parametrize(
    ("kind", "hinted"), [("service", True), ("dev-server", True), ("ssh-local-forward", False)]
)
def test_sensitive_services_on_all_interfaces_are_hinted(kind, hinted):
    owner = Owner(process=process(), identity=Identity(kind=kind, label="thing"))
    entry = listener(ip="0.0.0.0", owners=(owner,))
    assert entry.exposure is Exposure.ALL
    assert ("exposed-service" in codes([entry])) is hinted


def test_invisible_owners_suggest_sudo_only_when_not_root():
    entry = listener(status=OwnerStatus.NOT_VISIBLE)
    assert codes([entry], is_root=False) == ["owners-not-visible"]
    assert codes([entry], is_root=True) == []
