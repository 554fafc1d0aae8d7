"""The BTF reader on any bytes, and on a kernel-like BTF cut or changed anywhere: a
layout or BtfError, never another exception."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from portside._btf import BtfError, kernel_layout
from tests.unit.test_btf import kernel_like

VALID = bytes(kernel_like()[0])


def _layout_or_refusal(data: bytes) -> None:
    try:
        layout = kernel_layout(data)
    except BtfError:
        return  # refused: the documented outcome for what it cannot read
    assert all(type(value) is int and value >= 0 for value in layout.values())


@given(st.binary(max_size=512))
def test_any_bytes(data: bytes):
    _layout_or_refusal(data)


@settings(max_examples=300)
@given(
    st.integers(min_value=0, max_value=len(VALID) - 1),
    st.binary(min_size=1, max_size=8),
    st.integers(min_value=0, max_value=len(VALID)),
)
def test_a_kernel_like_btf_changed_or_cut_anywhere(at: int, replacement: bytes, cut: int):
    changed = VALID[:at] + replacement + VALID[at + len(replacement) :]
    _layout_or_refusal(changed[:cut] if cut < len(changed) else changed)
