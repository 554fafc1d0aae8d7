"""The endpoint parser never fails with anything but its documented error."""

from hypothesis import given
from hypothesis import strategies as st

from portside.addresses import HostKind, parse_target
from portside.errors import TargetError

PIECES = st.sampled_from(
    [*"0123456789abcdefABCDEF:.[]/@?#%-_ xyz+", "http://", "https://", "localhost", "::ffff:"]
)
ENDPOINTISH = st.lists(PIECES, max_size=20).map("".join)


@given(ENDPOINTISH | st.text(max_size=40))
def test_any_text_parses_or_raises_target_error(text):
    try:
        target = parse_target(text)
    except TargetError as exc:
        assert "\n" not in str(exc)  # noqa: PT017 -- a property over any input, not one expected error
        return
    assert target.port is None or 0 <= target.port <= 65535
    assert target.host is not None or target.port is not None
    if target.host_kind is HostKind.NAME:
        assert target.port is not None


@given(st.ip_addresses(), st.integers(min_value=0, max_value=65535))
def test_every_address_and_port_round_trips(address, port):
    text = f"[{address}]:{port}" if address.version == 6 else f"{address}:{port}"
    target = parse_target(text)
    assert target.port == port
    assert target.host_kind is HostKind.IP
    assert parse_target(target.display()) == parse_target(target.display())
