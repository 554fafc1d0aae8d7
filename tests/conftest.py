"""Shared test set-up: root-only tests are skipped, with the reason, when not root."""

from __future__ import annotations

import os

import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(
        reason="needs root (network namespaces, other users' processes); CI runs as root"
    )
    for item in items:
        if "root" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def proc_walks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Owners and namespaces found by walking /proc, as where the kernel's BPF task
    iterators cannot run (not root, no BTF): the iterators are turned off."""
    monkeypatch.setenv("PORTSIDE_BPF", "off")
