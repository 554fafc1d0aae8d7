"""The pick policy, without I/O: which numbers may be handed out, and in which order."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from portside.errors import UsageError
from portside.pick import (
    ASSUMED_EPHEMERAL_RANGE,
    DEFAULT_RANGE,
    NoFreePortError,
    Rejection,
    allowed_span,
    hashed_start,
    make_policy,
    parse_range,
    rule_out,
    walk,
)
from portside.ports import BROWSER_BAD_PORTS, DEV_DEFAULTS, KernelPortSettings

LINUX = KernelPortSettings(
    ephemeral_range=(32768, 60999),
    reserved_ports=frozenset({12345, 61500}),
    unprivileged_port_start=1024,
)
UNKNOWN_OS = KernelPortSettings(
    ephemeral_range=None, reserved_ports=frozenset(), unprivileged_port_start=None
)


@pytest.mark.parametrize(
    ("port", "expected"),
    [
        (9999, Rejection.OUT_OF_RANGE),
        (20000, None),
        (32767, None),
        (32768, Rejection.EPHEMERAL),
        (60999, Rejection.EPHEMERAL),
        (61000, None),
        (12345, Rejection.KERNEL_RESERVED),
        (10080, Rejection.BROWSER_BAD_PORT),
        (19006, Rejection.DEV_DEFAULT),
        (27017, Rejection.DEV_DEFAULT),
        (20001, Rejection.REGISTRY),
        (65535, None),
    ],
)
def test_rule_out_names_the_first_rule_a_port_breaks(port, expected):
    policy = make_policy(LINUX, registry_ports={20001})
    assert rule_out(port, policy) == expected


def test_privileged_ports_are_ruled_out_when_the_range_reaches_down():
    policy = make_policy(LINUX, port_range=(1, 2000))
    assert rule_out(80, policy) is Rejection.PRIVILEGED
    assert rule_out(1023, policy) is Rejection.PRIVILEGED
    assert rule_out(1024, policy) is None
    assert rule_out(1234, policy) is Rejection.DEV_DEFAULT


def test_every_browser_bad_port_and_dev_default_is_ruled_out():
    policy = make_policy(LINUX, port_range=(1, 65535))
    for port in BROWSER_BAD_PORTS | set(DEV_DEFAULTS):
        assert rule_out(port, policy) is not None, port


def test_an_os_without_an_ephemeral_setting_gets_the_iana_dynamic_range():
    policy = make_policy(UNKNOWN_OS)
    assert policy.ephemeral_range == ASSUMED_EPHEMERAL_RANGE
    assert policy.ephemeral_assumed
    assert policy.unprivileged_port_start == 1024
    assert rule_out(49152, policy) is Rejection.EPHEMERAL
    assert rule_out(40000, policy) is None


def test_default_range_and_usable_span():
    policy = make_policy(LINUX)
    assert policy.port_range == DEFAULT_RANGE
    # 10000-32767 and 61000-65535
    assert allowed_span(policy) == (32767 - 10000 + 1) + (65535 - 61000 + 1)


def test_walk_jumps_over_the_ephemeral_block_and_wraps_round():
    policy = make_policy(LINUX, port_range=(32760, 61005))
    ports = list(walk(policy, 61003))
    assert ports == [61003, 61004, 61005, *range(32760, 32768), 61000, 61001, 61002]
    assert list(walk(policy, 32760))[:9] == [*range(32760, 32768), 61000]


def test_a_range_inside_the_ephemeral_block_has_nothing_to_give():
    policy = make_policy(LINUX, port_range=(40000, 40010))
    assert allowed_span(policy) == 0
    with pytest.raises(NoFreePortError, match="ephemeral"):
        hashed_start("web", policy)


@given(
    low=st.integers(1, 65535),
    width=st.integers(0, 70000),
    key=st.text(max_size=40),
)
def test_walk_from_the_hashed_start_visits_each_usable_number_once(low, width, key):
    high = min(65535, low + width)
    policy = make_policy(LINUX, port_range=(low, high))
    if allowed_span(policy) == 0:
        return
    start = hashed_start(key, policy)
    ports = list(walk(policy, start))
    assert ports[0] == start
    assert len(ports) == len(set(ports)) == allowed_span(policy)
    assert all(
        rule_out(p, policy) not in (Rejection.EPHEMERAL, Rejection.PRIVILEGED) for p in ports
    )
    assert all(low <= p <= high for p in ports)


def test_hashed_start_is_stable_and_depends_on_the_key():
    policy = make_policy(LINUX)
    assert hashed_start("/src/app\0web", policy) == hashed_start("/src/app\0web", policy)
    starts = {hashed_start(f"/src/app\0svc{i}", policy) for i in range(200)}
    assert len(starts) > 190  # spread, not clumped


def test_hashed_start_is_spread_over_both_blocks():
    policy = make_policy(LINUX)
    starts = [hashed_start(f"k{i}", policy) for i in range(2000)]
    high_block = sum(1 for p in starts if p >= 61000)
    # 4536 of 27304 usable numbers lie in the high block: about 16.6 %.
    assert 200 < high_block < 470


@pytest.mark.parametrize(
    ("text", "expected"), [("20000-20999", (20000, 20999)), (" 1-65535 ", (1, 65535))]
)
def test_parse_range(text, expected):
    assert parse_range(text) == expected


@pytest.mark.parametrize("text", ["20000", "a-b", "3-2", "0-10", "1-70000", "-5", ""])
def test_parse_range_rejects_with_the_form_to_use(text):
    with pytest.raises(UsageError, match="LOW"):
        parse_range(text)
